"""The needle-in-a-haystack task: one generator for the load test, the benchmarks and the demo.

A haystack is ``filler(lines)`` (deterministic lines of words, built once and reused) with one
needle line, "The magic number is N.", inserted by ``with_needle``. The scripted model
(``loadtest.upstream.NEEDLE_CODE``) finds it by the words "magic number is"; a real model is
asked ``NEEDLE_QUERY``. Standard library only: the Locust file and the official library's
forked workers import it without pulling in anything else.
"""

from __future__ import annotations

import random

NEEDLE_QUERY = "What is the magic number in the context? Answer with the number only."

WORDS = (
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
    "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
    "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
)  # fmt: skip


def filler(lines: int, seed: int = 7) -> list[str]:
    """``lines`` numbered lines of eight random words each, the same for the same seed."""
    rng = random.Random(seed)
    return [f"line {i:05d}: " + " ".join(rng.choices(WORDS, k=8)) for i in range(lines)]


def magic_number() -> str:
    """A fresh seven-digit magic number."""
    return str(random.randint(1_000_000, 9_999_999))


def needle(number: str) -> str:
    return f"The magic number is {number}."


def with_needle(lines: list[str], number: str, at: int | None = None) -> str:
    """The context: ``lines`` (not modified) with the needle for ``number`` inserted before
    line ``at`` (a random place when None), joined by newlines."""
    out = list(lines)
    out.insert(random.randrange(len(out) + 1) if at is None else at, needle(number))
    return "\n".join(out)
