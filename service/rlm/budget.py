"""Per-request budgets and usage, shared by the root run and every recursive run.

One ``Budget`` lives for one request. Sub-calls and tokens are counted across all runs;
the first limit reached is remembered in ``exhausted`` and ends the run with the best
partial answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


class BudgetExceeded(Exception):
    """A request budget ran out; ``name`` says which one."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    calls: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, prompt: int, completion: int) -> None:
        self.prompt_tokens += prompt
        self.completion_tokens += completion
        self.calls += 1


@dataclass(slots=True)
class Budget:
    max_iterations: int
    max_depth: int
    max_sub_calls: int
    max_total_tokens: int | None
    deadline: float  # time.monotonic() value
    usage: Usage = field(default_factory=Usage)
    sub_calls: int = 0
    exhausted: str | None = None

    def remaining_s(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        """Raise if a request-wide budget is already spent."""
        if self.exhausted:
            raise BudgetExceeded(self.exhausted, f"the {self.exhausted} budget is spent")
        if self.remaining_s() <= 0:
            self._spend("deadline", "the request's wall deadline passed (RLM_REQUEST_TIMEOUT_S)")
        if self.max_total_tokens is not None and self.usage.total_tokens >= self.max_total_tokens:
            self._spend(
                "max_total_tokens",
                f"the request used {self.usage.total_tokens} tokens, its budget is "
                f"{self.max_total_tokens} (RLM_MAX_TOTAL_TOKENS)",
            )

    def take_sub_call(self, n: int = 1) -> None:
        """Count ``n`` sub-calls, refusing when that would pass the cap."""
        self.check()
        if self.sub_calls + n > self.max_sub_calls:
            self._spend(
                "max_sub_calls",
                f"this request may make at most {self.max_sub_calls} sub-calls (RLM_MAX_SUB_CALLS)",
            )
        self.sub_calls += n

    def _spend(self, name: str, message: str) -> None:
        self.exhausted = self.exhausted or name
        raise BudgetExceeded(name, message)
