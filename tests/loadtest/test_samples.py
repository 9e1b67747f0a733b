"""The benchmarks' one percentile."""

from __future__ import annotations

import math

from loadtest.samples import pct, summary


def test_nearest_rank_percentiles() -> None:
    samples = [float(x) for x in range(100, 0, -1)]  # unsorted on purpose
    assert pct(samples, 0.0) == 1.0
    assert pct(samples, 0.95) == 95.0
    assert pct(samples, 1.0) == 100.0
    assert math.isnan(pct([], 0.5))
    assert summary([3.0, 1.0, 2.0]) == {"n": 3, "median": 2.0, "p95": 3.0}
