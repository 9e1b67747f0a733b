"""Retry with exponential backoff, for EC2's eventual consistency.

Right after a create, EC2 may answer `InvalidGroup.NotFound` or `InvalidInstanceID.NotFound`
for the thing it just created. Those calls are retried; every other error surfaces at once.
The sleep is a parameter so tests run without waiting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from infra.ec2.errors import WaitTimeout

T = TypeVar("T")


def backoff_delays(attempts: int, base_s: float, cap_s: float) -> list[float]:
    """Delays slept between `attempts` tries: base, 2*base, 4*base..., each at most cap_s.

    No jitter: one client retries here, there is no herd to spread.
    """
    return [min(cap_s, base_s * 2**i) for i in range(max(0, attempts - 1))]


def retry(
    call: Callable[[], T],
    *,
    retryable: Callable[[Exception], bool],
    sleep: Callable[[float], None],
    attempts: int,
    base_s: float,
    cap_s: float,
    what: str,
) -> T:
    """Return `call()`, retrying while it raises an exception `retryable` accepts.

    Raises WaitTimeout (chained to the last error) once `attempts` tries all failed that way;
    a non-retryable exception propagates unchanged on the first occurrence.
    """
    delays = backoff_delays(attempts, base_s, cap_s)
    for delay in [*delays, None]:
        try:
            return call()
        except Exception as exc:
            if not retryable(exc):
                raise
            if delay is None:
                raise WaitTimeout(f"{what}: still failing after {attempts} tries: {exc}") from exc
            sleep(delay)
    raise AssertionError("unreachable")  # the loop returns or raises
