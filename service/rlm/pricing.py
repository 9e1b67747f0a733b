"""What model calls cost: a price table per model and a per-request cost meter.

Prices are USD per million tokens: input, cached input and output. The table is the shipped
defaults (``DEFAULT_PRICES``), overlaid by a settings file (``RLM_PRICES_FILE``, JSON or
TOML) and then by the environment (``RLM_PRICES``, JSON): a later source replaces a model's
whole entry, and ``null`` removes a default. A model the table does not name is *unpriced*:
its cost is unknown (``None`` and a flag on the wire), never zero.

``CostMeter`` is one request's account: usage per model as the upstream reported it (root
loop, sub-calls and recursive runs alike) and the cost so far. With a cap it refuses the
next upstream call once the cap is reached, and any call to an unpriced model, whose cost
it could not bound.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PER_TOKENS = 1_000_000  # prices are per million tokens
COST_DECIMALS = 10  # wire values: far below a cent, free of float noise


class PriceTableError(ValueError):
    """A price file or RLM_PRICES that cannot be read; a start-up (configuration) error."""


@dataclass(frozen=True, slots=True)
class Price:
    """USD per million tokens. ``cached_input`` applies to the part of the prompt the
    upstream served from its cache (``usage.prompt_tokens_details.cached_tokens``)."""

    input: float
    cached_input: float
    output: float

    def cost(self, prompt_tokens: int, cached_tokens: int, completion_tokens: int) -> float:
        """``prompt_tokens`` includes the cached ones (OpenAI's convention)."""
        cached = min(cached_tokens, prompt_tokens)
        return (
            (prompt_tokens - cached) * self.input
            + cached * self.cached_input
            + completion_tokens * self.output
        ) / PER_TOKENS


# OpenAI's list prices of the default models (RLM_ROOT_MODEL gpt-5, RLM_SUB_MODEL
# gpt-5-mini), standard tier, USD per million tokens, as published on
# developers.openai.com/api/docs/pricing; taken on 2026-11-30. Operators override them
# (and price other models) with RLM_PRICES_FILE / RLM_PRICES.
DEFAULT_PRICES: dict[str, Price] = {
    "gpt-5": Price(input=1.25, cached_input=0.125, output=10.00),
    "gpt-5-mini": Price(input=0.25, cached_input=0.025, output=2.00),
}

_FIELDS = ("input", "cached_input", "output")


class PriceTable:
    """Prices by exact model name (the name the service sends upstream)."""

    def __init__(self, prices: Mapping[str, Price]) -> None:
        self._prices = dict(prices)

    @classmethod
    def defaults(cls) -> PriceTable:
        return cls(DEFAULT_PRICES)

    @classmethod
    def load(cls, file: str | None = None, env_json: str | None = None) -> PriceTable:
        """The defaults, overlaid by ``file`` (JSON, or TOML by its ``.toml`` suffix) and
        then by ``env_json``; raises PriceTableError naming the source and the entry."""
        prices = dict(DEFAULT_PRICES)
        if file:
            path = Path(file)
            try:
                text = path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise PriceTableError(
                    f"cannot read the price file {file} (RLM_PRICES_FILE): {exc}"
                ) from None
            source = f"price file {file} (RLM_PRICES_FILE)"
            try:
                raw = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
            except (tomllib.TOMLDecodeError, ValueError) as exc:
                kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
                raise PriceTableError(f"{source} is not valid {kind}: {exc}") from None
            _overlay(prices, raw, source)
        if env_json and env_json.strip():
            try:
                raw = json.loads(env_json)
            except ValueError as exc:
                raise PriceTableError(f"RLM_PRICES is not valid JSON: {exc}") from None
            _overlay(prices, raw, "RLM_PRICES")
        return cls(prices)

    def get(self, model: str) -> Price | None:
        return self._prices.get(model)

    def cost(
        self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int
    ) -> float | None:
        price = self._prices.get(model)
        if price is None:
            return None
        return price.cost(prompt_tokens, cached_tokens, completion_tokens)

    def unpriced(self, models: Iterable[str]) -> list[str]:
        return [m for m in dict.fromkeys(models) if m not in self._prices]

    def models(self) -> list[str]:
        return sorted(self._prices)

    def require(self, models: Iterable[str], because: str) -> None:
        """PriceTableError unless every model has a price (a cap or budget needs them)."""
        missing = self.unpriced(models)
        if missing:
            raise PriceTableError(
                f"{because} needs a price for every model the service may call; "
                f"none for {', '.join(map(repr, missing))}: give them one in RLM_PRICES or "
                "RLM_PRICES_FILE"
            )


def _overlay(prices: dict[str, Price], raw: Any, source: str) -> None:
    if not isinstance(raw, dict):
        raise PriceTableError(
            f"{source} must map model names to prices, e.g. "
            '{"gpt-5": {"input": 1.25, "cached_input": 0.125, "output": 10}}'
        )
    for model, entry in raw.items():
        if not isinstance(model, str) or not model.strip():
            raise PriceTableError(f"{source}: model names must be non-empty strings")
        if entry is None:  # JSON null: this model is unpriced, whatever the defaults say
            prices.pop(model, None)
            continue
        prices[model] = _price(entry, f"{source}, model {model!r}")


def _price(entry: Any, where: str) -> Price:
    if not isinstance(entry, dict):
        raise PriceTableError(
            f"{where}: expected an object with input, cached_input (optional) and output "
            "(USD per million tokens)"
        )
    unknown = sorted(set(entry) - set(_FIELDS))
    if unknown:
        raise PriceTableError(
            f"{where}: unknown field(s) {', '.join(map(str, unknown))}; "
            f"the fields are {', '.join(_FIELDS)} (USD per million tokens)"
        )
    values: dict[str, float] = {}
    for name in _FIELDS:
        value = entry.get(name)
        if value is None and name == "cached_input":
            continue
        if value is None:
            raise PriceTableError(f"{where}: {name} is missing (USD per million tokens)")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise PriceTableError(f"{where}: {name} must be a number, not {value!r}")
        if not math.isfinite(value) or value < 0:
            raise PriceTableError(f"{where}: {name} must be a finite number >= 0, not {value}")
        values[name] = float(value)
    # Without a cached-input price, cached tokens cost what other input costs: never less
    # than the upstream may charge.
    values.setdefault("cached_input", values["input"])
    return Price(**values)


@dataclass(slots=True)
class ModelUsage:
    calls: int = 0
    input_tokens: int = 0  # all prompt tokens, the cached ones included
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float | None = 0.0  # None: the model is unpriced

    def to_wire(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "input_tokens": self.input_tokens,
            "cached_input_tokens": self.cached_input_tokens,
            "output_tokens": self.output_tokens,
            "cost_usd": None if self.cost_usd is None else round(self.cost_usd, COST_DECIMALS),
            "priced": self.cost_usd is not None,
        }


class CostMeter:
    """One request's usage and cost by model, and its cap (``max_cost_usd``, None: none).

    ``cap_source`` names what set the cap, for messages (the request's ``rlm.max_cost_usd``,
    ``RLM_MAX_COST_USD``, or what is left of the key's daily budget).
    """

    def __init__(
        self,
        prices: PriceTable,
        max_cost_usd: float | None = None,
        cap_source: str = "rlm.max_cost_usd / RLM_MAX_COST_USD",
    ) -> None:
        self.prices = prices
        self.max_cost_usd = max_cost_usd
        self.cap_source = cap_source
        self.by_model: dict[str, ModelUsage] = {}
        self.known_cost_usd = 0.0  # the priced models' part

    @property
    def spent(self) -> bool:
        """The cap is reached: no further call to any model."""
        return self.max_cost_usd is not None and self.known_cost_usd >= self.max_cost_usd

    def refusal(self, model: str) -> str | None:
        """Why a call to ``model`` may not be made now, or None when it may."""
        cap = self.max_cost_usd
        if cap is None:
            return None
        if self.spent:
            return (
                f"the request's cost cap of ${cap:g} is spent (${self.known_cost_usd:.6f} "
                f"so far; {self.cap_source})"
            )
        if self.prices.get(model) is None:
            return (
                f"model {model!r} has no price, so a cost cap ({self.cap_source}) cannot "
                "bound it; give it one in RLM_PRICES or RLM_PRICES_FILE"
            )
        return None

    def add(
        self, model: str, prompt_tokens: int, cached_tokens: int, completion_tokens: int
    ) -> float | None:
        """Account one finished call; its cost, or None for an unpriced model."""
        usage = self.by_model.get(model)
        if usage is None:
            usage = self.by_model[model] = ModelUsage()
        cached = min(max(cached_tokens, 0), prompt_tokens)
        cost = self.prices.cost(model, prompt_tokens, cached, completion_tokens)
        usage.calls += 1
        usage.input_tokens += prompt_tokens
        usage.cached_input_tokens += cached
        usage.output_tokens += completion_tokens
        if cost is None:
            usage.cost_usd = None
        else:
            if usage.cost_usd is not None:
                usage.cost_usd += cost
            self.known_cost_usd += cost
        return cost

    @property
    def unpriced_models(self) -> list[str]:
        return sorted(m for m, u in self.by_model.items() if u.cost_usd is None)

    @property
    def cost_usd(self) -> float | None:
        """The request's cost; None when any call went to an unpriced model."""
        return None if self.unpriced_models else self.known_cost_usd

    def to_wire(self) -> dict[str, Any]:
        """The ``rlm`` fields: ``cost_usd``, ``usage_by_model``, ``unpriced_models`` and
        ``max_cost_usd`` (the cap that applied, None: none)."""
        cost, cap = self.cost_usd, self.max_cost_usd
        return {
            "cost_usd": None if cost is None else round(cost, COST_DECIMALS),
            "max_cost_usd": None if cap is None else round(cap, COST_DECIMALS),
            "usage_by_model": {m: u.to_wire() for m, u in sorted(self.by_model.items())},
            "unpriced_models": self.unpriced_models,
        }
