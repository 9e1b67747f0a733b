"""Daily budgets per key (``RLM_KEY_DAILY_USD``): what each key spent this UTC day.

Spent amounts live in this process's memory, by owner tag (the key's hash, never the key):
a restart forgets them, and each service process behind a load balancer counts its own
(the README's design notes say why that is enough for now). A key past its budget is
refused with 429 ``budget_exceeded`` until the next UTC midnight; a running request is
capped at what its key has left (see ``ChatService``), so it ends with ``stopped_by: "cost"``
rather than overspending.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from service.errors import BudgetExhausted


def next_reset(now: float) -> datetime:
    """The next UTC midnight after ``now`` (Unix seconds)."""
    day = datetime.fromtimestamp(now, UTC).date()
    return datetime(day.year, day.month, day.day, tzinfo=UTC) + timedelta(days=1)


class DailySpend:
    """USD spent per owner on the current UTC day; ``limit_usd`` None means no budget."""

    def __init__(self, limit_usd: float | None, clock: Callable[[], float] = time.time) -> None:
        self.limit_usd = limit_usd
        self._clock = clock
        self._day = self._today()
        self._spent: dict[str, float] = {}

    def _today(self) -> int:
        return int(self._clock() // 86400)

    def _roll(self) -> None:
        today = self._today()
        if today != self._day:  # a new UTC day: every key starts again
            self._day = today
            self._spent.clear()

    def spent(self, owner: str) -> float:
        self._roll()
        return self._spent.get(owner, 0.0)

    def remaining(self, owner: str) -> float | None:
        """What ``owner`` may still spend today (None: no budget)."""
        if self.limit_usd is None:
            return None
        return max(0.0, self.limit_usd - self.spent(owner))

    def charge(self, owner: str, usd: float) -> None:
        if usd > 0:
            self._roll()
            self._spent[owner] = self._spent.get(owner, 0.0) + usd

    def check(self, owner: str) -> None:
        """Raise BudgetExhausted (429, Retry-After to the reset) once a key spent its budget."""
        limit = self.limit_usd
        if limit is None:
            return
        spent = self.spent(owner)
        if spent < limit:
            return
        now = self._clock()
        reset = next_reset(now)
        raise BudgetExhausted(
            f"this key spent ${spent:.4f} of its daily budget of ${limit:g} (RLM_KEY_DAILY_USD); "
            f"it resets at {reset.strftime('%Y-%m-%dT%H:%M:%SZ')}",
            retry_after=max(1, math.ceil(reset.timestamp() - now)),
        )
