"""Reset benchmark: what a fresh interpreter per request costs on a real runsc sandbox.

``python -m loadtest.bench_reset`` prints a markdown table:

* ``reset round trip``: ``await handle.reset()`` on one sandbox (the REPL stops, the fork
  server kills what it left, empties the scratch directories and releases its parked spare,
  which answers), aim < 10 ms median on 2 cores. Measured two ways: resets ``--gap`` apart
  (a session resets once per request, and a request lasts longer than that), and back to
  back, where each reset also waits for the fork of the spare the previous one used up;
* ``reset + first exec``: a reset and the ``exec("1")`` after it, so work deferred past the
  reset's answer is counted too;
* ``cold start (hello)`` and ``cold start + first exec``: container start to the worker's
  hello, and to the first code block's answer (the fork server says hello before it forks);
* ``reuse+reset cycles/s``: ``--users`` sessions, each on its own sandbox, looping the load
  pattern of a user who reuses a session with a reset per request (reset, load a small
  context, two code blocks), for ``--seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle
from sandbox.pool import launch

DEFAULT_IMAGE = "rlm-sandbox:latest"
CONTEXT = "line of a small context\n" * 400  # about 10 KB


def _stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"n": len(ordered), "median": statistics.median(ordered), "p95": p95}


def _cfg(cfg: SandboxConfig | None) -> SandboxConfig:
    return cfg or SandboxConfig(instance="rlm-bench-reset")


async def reset_round_trips(
    n: int = 200, cfg: SandboxConfig | None = None, *, gap_s: float = 0.0, warmup: int = 5
) -> dict[str, float]:
    """Median and p95 (ms) of ``await handle.reset()`` on one sandbox, ``n`` times,
    ``gap_s`` apart (0: back to back)."""
    handle = await launch(_cfg(cfg))
    try:
        await handle.exec("1")
        for _ in range(warmup):
            await handle.reset()
        samples = []
        for _ in range(n):
            if gap_s:
                await asyncio.sleep(gap_s)
            t0 = time.perf_counter()
            await handle.reset()
            samples.append((time.perf_counter() - t0) * 1000)
        return _stats(samples)
    finally:
        await handle.close()


async def reset_then_exec(
    n: int = 100, cfg: SandboxConfig | None = None, *, warmup: int = 5
) -> dict[str, float]:
    """Median and p95 (ms) of a reset followed by ``exec("1")``."""
    handle = await launch(_cfg(cfg))
    try:
        await handle.exec("1")
        for _ in range(warmup):
            await handle.reset()
            await handle.exec("1")
        samples = []
        for _ in range(n):
            t0 = time.perf_counter()
            await handle.reset()
            await handle.exec("1")
            samples.append((time.perf_counter() - t0) * 1000)
        return _stats(samples)
    finally:
        await handle.close()


async def cold_starts(n: int = 10, cfg: SandboxConfig | None = None) -> dict[str, dict[str, float]]:
    """Container start to hello, and to the first exec's answer (ms), ``n`` sandboxes."""
    hello, first = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        handle = await launch(_cfg(cfg))
        hello.append((time.perf_counter() - t0) * 1000)
        try:
            await handle.exec("1")
            first.append((time.perf_counter() - t0) * 1000)
        finally:
            await handle.close()
    return {"hello": _stats(hello), "first exec": _stats(first)}


async def _cycle(handle: SandboxHandle) -> None:
    await handle.reset()
    await handle.load(CONTEXT)
    r = await handle.exec("lines = context.splitlines()\nlen(lines)")
    assert r.error is None, r.output()
    r = await handle.exec("FINAL(str(len(lines)))")
    assert r.final == "400", r.output()


async def reuse_reset_throughput(
    users: int = 4, seconds: float = 10.0, cfg: SandboxConfig | None = None
) -> dict[str, float]:
    """Cycles per second of ``users`` sessions looping reset, load and two code blocks."""
    handles = await asyncio.gather(*(launch(_cfg(cfg)) for _ in range(users)))
    latencies: list[float] = []
    try:
        for handle in handles:  # warm up: imports, the first spare
            await _cycle(handle)
        deadline = time.perf_counter() + seconds

        async def user(handle: SandboxHandle) -> int:
            done = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                await _cycle(handle)
                latencies.append((time.perf_counter() - t0) * 1000)
                done += 1
            return done

        t0 = time.perf_counter()
        counts = await asyncio.gather(*(user(h) for h in handles))
        elapsed = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(h.close() for h in handles))
    stats = _stats(latencies)
    return {"cycles_per_s": sum(counts) / elapsed, "median": stats["median"], "p95": stats["p95"]}


async def run(
    cfg: SandboxConfig | None = None,
    *,
    n: int = 200,
    starts: int = 10,
    users: int = 4,
    seconds: float = 10.0,
    gap_s: float = 0.2,
) -> list[dict[str, Any]]:
    """Every measurement, one row each."""
    rows: list[dict[str, Any]] = []
    spaced = await reset_round_trips(max(20, n // 4), cfg, gap_s=gap_s)
    rows.append({"name": f"reset round trip, {gap_s:g} s apart", "unit": "ms", **spaced})
    rows.append(
        {"name": "reset round trip, back to back", "unit": "ms", **await reset_round_trips(n, cfg)}
    )
    rows.append(
        {"name": "reset + first exec", "unit": "ms", **await reset_then_exec(max(20, n // 2), cfg)}
    )
    starts_ms = await cold_starts(starts, cfg)
    rows.append({"name": "cold start (hello)", "unit": "ms", **starts_ms["hello"]})
    rows.append({"name": "cold start + first exec", "unit": "ms", **starts_ms["first exec"]})
    tput = await reuse_reset_throughput(users, seconds, cfg)
    rows.append(
        {
            "name": f"reuse+reset cycle, {users} users",
            "unit": "ms",
            "n": round(tput["cycles_per_s"] * seconds),
            "median": tput["median"],
            "p95": tput["p95"],
            "note": f"{tput['cycles_per_s']:.1f} cycles/s",
        }
    )
    return rows


def table(rows: list[dict[str, Any]], title: str = "") -> str:
    lines = [f"### {title}"] if title else []
    lines += ["| measurement | n | median | p95 | note |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['median']:.2f} {r['unit']} | {r['p95']:.2f} {r['unit']}"
            f" | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="docker", choices=["docker", "local"])
    parser.add_argument("--runtime", default="runsc")
    parser.add_argument("--image", default=DEFAULT_IMAGE)
    parser.add_argument("--pids", type=int, default=SandboxConfig().pids)
    parser.add_argument("-n", type=int, default=200, help="resets to time")
    parser.add_argument("--starts", type=int, default=10, help="cold starts to time")
    parser.add_argument("--users", type=int, default=4, help="concurrent reuse+reset sessions")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the cycle run")
    parser.add_argument("--gap", type=float, default=0.2, help="pause between spaced resets (s)")
    args = parser.parse_args()
    cfg = SandboxConfig(
        backend=args.backend,
        runtime=args.runtime,
        image=args.image,
        pids=args.pids,
        instance="rlm-bench-reset",
    )
    rows = asyncio.run(
        run(
            cfg,
            n=args.n,
            starts=args.starts,
            users=args.users,
            seconds=args.seconds,
            gap_s=args.gap,
        )
    )
    title = f"reset benchmark ({args.backend}/{args.runtime}, {args.image}, {os.cpu_count()} cores)"
    print(table(rows, title))


if __name__ == "__main__":
    main()
