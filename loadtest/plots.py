"""Request-rate and response-time plots (PNG) from Locust's ``*_stats_history.csv``."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only, no display

import matplotlib.pyplot as plt
from matplotlib.figure import Figure


def _num(value: str) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None  # Locust writes "N/A" before a percentile exists


def read_history(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def plot_history(history_csv: Path, out_dir: Path) -> list[Path]:
    """Write ``requests.png`` and ``response_times.png``; returns the files written.

    Custom ``METRIC`` entries (stream timings) are left out of the request rate and drawn
    as their own lines on the response-time plot; per-request-name lines, not Locust's
    "Aggregated" row, because that one mixes the metrics in.
    """
    rows = read_history(history_csv)
    named = [r for r in rows if r.get("Name") not in ("Aggregated", "") and r.get("Type")]
    if not named:
        return []
    t0 = min(float(r["Timestamp"]) for r in named)
    written = []

    totals: dict[float, list[float]] = {}
    users: dict[float, float] = {}
    for r in named:
        ts = float(r["Timestamp"]) - t0
        users[ts] = _num(r["User Count"]) or 0.0
        if r["Type"] == "METRIC":
            continue
        acc = totals.setdefault(ts, [0.0, 0.0])
        acc[0] += _num(r["Requests/s"]) or 0.0
        acc[1] += _num(r["Failures/s"]) or 0.0
    ts_sorted = sorted(totals)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.plot(ts_sorted, [totals[t][0] for t in ts_sorted], label="requests/s")
    ax.plot(ts_sorted, [totals[t][1] for t in ts_sorted], label="failures/s", color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    ax.set_title("Request rate")
    twin = ax.twinx()
    u_sorted = sorted(users)
    twin.plot(u_sorted, [users[t] for t in u_sorted], label="users", color="tab:gray", ls="--")
    twin.set_ylabel("users")
    ax.legend(loc="upper left")
    twin.legend(loc="upper right")
    written.append(_save(fig, out_dir / "requests.png"))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    # A percentile Locust has not computed yet is NaN: a gap in the line.
    series: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
    for r in named:
        median, p95 = (_num(r.get(q, "")) for q in ("50%", "95%"))
        series.setdefault((r["Type"], r["Name"]), []).append((
            float(r["Timestamp"]) - t0,
            math.nan if median is None else median,
            math.nan if p95 is None else p95,
        ))  # fmt: skip
    for (kind, name), points in sorted(series.items()):
        label = name if kind != "METRIC" else f"{name} (stream metric)"
        line = ax.plot([p[0] for p in points], [p[2] for p in points], label=f"{label} p95")
        ax.plot([p[0] for p in points], [p[1] for p in points], ls=":", color=line[0].get_color(),
                label=f"{label} median")  # fmt: skip
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms")
    ax.set_title("Response time (rolling window)")
    ax.legend(loc="upper left", fontsize="small", ncol=2)
    written.append(_save(fig, out_dir / "response_times.png"))
    return written


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
