"""Run the Locust scenarios headless and keep everything under ``logs/<timestamp>/``.

``python -m loadtest.run --host https://my-alb.example.com --users 20 --run-time 5m``
(``make loadtest HOST=...``) writes ``report.html``, Locust's CSVs (``locust_stats.csv``,
``locust_stats_history.csv``, ``locust_failures.csv``, ``locust_exceptions.csv``),
``requests.png`` and ``response_times.png``, and exits with Locust's code: non-zero when
any request failed.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from loadtest.plots import plot_history

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = Path(__file__).with_name("locustfile.py")
USER_CLASSES = ("NeedleUser", "MultiTurnUser", "StreamingUser")


@dataclass
class RunResult:
    returncode: int
    out_dir: Path
    requests: int
    failures: int
    rps: float
    rows: list[dict[str, str]]


def new_log_dir(base: Path = ROOT / "logs") -> Path:
    path = base / time.strftime("%Y%m%d-%H%M%S")
    path.mkdir(parents=True, exist_ok=True)
    return path


def run_locust(
    host: str,
    *,
    users: int = 20,
    spawn_rate: float = 5,
    run_time: str = "5m",
    out_dir: Path | None = None,
    classes: tuple[str, ...] = (),
    api_key: str | None = None,
    progress: bool = True,
    extra_env: dict[str, str] | None = None,
) -> RunResult:
    """Run Locust headless against ``host``; returns its exit code and the summary figures."""
    out_dir = out_dir or new_log_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless",
        "--host", host, "--users", str(users), "--spawn-rate", str(spawn_rate),
        "--run-time", run_time, "--stop-timeout", "60",
        "--csv", str(out_dir / "locust"), "--csv-full-history",
        "--html", str(out_dir / "report.html"), "--loglevel", "WARNING",
    ]  # fmt: skip
    if not progress:
        cmd.append("--only-summary")
    cmd += list(classes)
    env = {**os.environ, **(extra_env or {})}
    if api_key is not None:
        env["RLM_API_KEY"] = api_key
    with (out_dir / "locust.log").open("wb") as log:
        # Locust's tables go to both the terminal and the log file.
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            log.write(line)
        returncode = proc.wait()
    history = out_dir / "locust_stats_history.csv"
    if history.exists():
        plot_history(history, out_dir)
    return summarize(returncode, out_dir)


def summarize(returncode: int, out_dir: Path) -> RunResult:
    """Totals of the real requests (custom METRIC rows left out) from ``locust_stats.csv``."""
    stats = out_dir / "locust_stats.csv"
    rows: list[dict[str, str]] = []
    if stats.exists():
        with stats.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if r["Name"] != "Aggregated"]
    real = [r for r in rows if r["Type"] != "METRIC"]
    return RunResult(
        returncode=returncode,
        out_dir=out_dir,
        requests=sum(int(r["Request Count"]) for r in real),
        failures=sum(int(r["Failure Count"]) for r in real),
        rps=sum(float(r["Requests/s"]) for r in real),
        rows=rows,
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="headless Locust run with report, CSVs and plots")
    p.add_argument(
        "--host", required=True, help="service base URL, e.g. https://my-alb.example.com"
    )
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=5)
    p.add_argument("--run-time", default="5m")
    p.add_argument("--classes", nargs="*", default=[], choices=USER_CLASSES,
                   help="user classes to run (default: all, weighted 3:1:1)")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    result = run_locust(
        args.host.rstrip("/"), users=args.users, spawn_rate=args.spawn_rate,
        run_time=args.run_time, classes=tuple(args.classes),
    )  # fmt: skip
    print(
        f"\n{result.requests} requests, {result.failures} failed, {result.rps:.1f} req/s; "
        f"report, CSVs and plots in {result.out_dir}"
    )
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
