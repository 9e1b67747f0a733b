"""Summaries of timing samples, one definition for every benchmark's table."""

from __future__ import annotations

import math
import statistics
from typing import Any


def pct(samples: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; NaN when there are no samples."""
    ordered = sorted(samples)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: list[float]) -> dict[str, Any]:
    """``n``, ``median`` and ``p95`` of non-empty ``samples``."""
    return {"n": len(samples), "median": statistics.median(samples), "p95": pct(samples, 0.95)}
