"""``make demo`` (``python -m loadtest.demo``) end to end, with the local sandbox."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.timeout(120)


def test_the_demo_answers_the_magic_number() -> None:
    env = {**os.environ, "RLM_SANDBOX": "local", "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-m", "loadtest.demo"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=100,
    )  # fmt: skip
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    answer = next(line for line in out.stdout.splitlines() if line.startswith("Answer:"))
    number = answer.split()[1]
    assert f"(expected {number};" in answer
    assert "final answer" in out.stdout
