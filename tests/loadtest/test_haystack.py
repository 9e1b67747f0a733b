"""The needle task's one generator, checked against the scripted model's own search code."""

from __future__ import annotations

import contextlib
import io
import re

from loadtest.haystack import NEEDLE_QUERY, filler, magic_number, needle, with_needle
from loadtest.upstream import NEEDLE_CODE


def _run_needle_code(context: str) -> str:
    """What the scripted root model's search block prints for ``context``."""
    code = re.search(r"```repl\n(.*?)```", NEEDLE_CODE, re.DOTALL)
    assert code is not None
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(code.group(1), {"context": context})  # noqa: S102 - our own scripted block
    return out.getvalue().strip()


def test_the_filler_is_the_same_for_the_same_seed() -> None:
    assert filler(50) == filler(50)
    assert filler(50) != filler(50, seed=8)
    assert len(filler(50)) == 50
    assert not any("magic" in line for line in filler(2000))


def test_the_needle_goes_where_asked_and_the_filler_is_left_alone() -> None:
    lines = filler(10)
    context = with_needle(lines, "1234567", at=3).splitlines()
    assert context[3] == needle("1234567") == "The magic number is 1234567."
    assert context[:3] + context[4:] == lines
    assert len(lines) == 10


def test_the_scripted_model_finds_a_random_needle() -> None:
    number = magic_number()
    assert re.fullmatch(r"\d{7}", number)
    assert _run_needle_code(with_needle(filler(2000), number)) == f"FOUND {number}"
    assert "magic number" in NEEDLE_QUERY
