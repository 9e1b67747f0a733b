"""The Locust scenarios against a real service on loopback and the scripted upstream.

The service runs as a subprocess with the local sandbox backend (fast; the runsc path is
``make loadtest-local``'s). Each run is a few seconds of real Locust, headless.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from loadtest.run import run_locust
from loadtest.stack import LocalStack, StackConfig

pytestmark = pytest.mark.timeout(120)


def _stats(out_dir: Path) -> dict[str, dict[str, str]]:
    with (out_dir / "locust_stats.csv").open(newline="") as f:
        return {r["Name"]: r for r in csv.DictReader(f)}


def _run(policy: str, tmp_path: Path, run_time: str, classes: tuple[str, ...] = ()) -> tuple:
    cfg = StackConfig(sandbox="local", policy=policy, pool_size=4, log_dir=tmp_path / "stack")
    with LocalStack(cfg) as stack:
        result = run_locust(
            stack.base_url, users=6, spawn_rate=6, run_time=run_time, out_dir=tmp_path,
            classes=classes, api_key=stack.api_key, progress=False,
            extra_env={"RLM_LOADTEST_LINES": "2000"},
        )  # fmt: skip
    return result, _stats(tmp_path)


def test_all_scenarios_pass_against_the_scripted_upstream(tmp_path: Path) -> None:
    result, stats = _run("scenarios", tmp_path, "8s")
    assert result.returncode == 0, (tmp_path / "locust.log").read_text()[-3000:]
    assert result.failures == 0
    for name in ("needle", "multi-turn 1", "multi-turn 2", "needle (stream)", "ttfb", "ttfc"):
        assert int(stats[name]["Request Count"]) > 0, name
    assert stats["ttfc"]["Type"] == "METRIC"
    # Stream metrics: the first byte comes before the first content chunk.
    assert float(stats["ttfb"]["Median Response Time"]) <= float(
        stats["ttfc"]["Median Response Time"]
    )
    assert (tmp_path / "report.html").exists()
    assert (tmp_path / "requests.png").stat().st_size > 0
    assert (tmp_path / "response_times.png").stat().st_size > 0


def test_a_wrong_magic_number_is_a_failure(tmp_path: Path) -> None:
    result, stats = _run("wrong-needle", tmp_path, "4s", ("NeedleUser",))
    assert result.returncode != 0
    assert int(stats["needle"]["Request Count"]) > 0
    assert stats["needle"]["Failure Count"] == stats["needle"]["Request Count"]
    failures = (tmp_path / "locust_failures.csv").read_text()
    assert "not in the answer" in failures


def test_a_wrong_recall_fails_the_multi_turn_check(tmp_path: Path) -> None:
    # An upstream that only plays the needle task never stores nor recalls the code word.
    result, stats = _run("needle-answer", tmp_path, "4s", ("MultiTurnUser",))
    assert result.returncode != 0
    assert int(stats["multi-turn 2"]["Failure Count"]) > 0
