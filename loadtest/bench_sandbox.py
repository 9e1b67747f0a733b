"""Sandbox benchmark: start, acquire, exec, context load, nested call, idle memory.

``python -m loadtest.bench_sandbox`` (or ``make bench``) prints a markdown table of median
and p95 per measurement. Idle memory is given two ways:

* the container's memory cgroup usage without page cache (what ``docker stats`` shows and
  what the memory cap is enforced against): the sandbox's own memory;
* the host processes that serve the container (runsc-sandbox, runsc-gofer, containerd shim),
  as PSS from /proc/<pid>/smaps_rollup, so pages shared by every sandbox (the runsc binary)
  are counted once across them, not once per sandbox as RSS would.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from loadtest.hostmem import cgroup_memory_mb, host_kb
from loadtest.samples import summary
from sandbox.config import SandboxConfig
from sandbox.pool import SandboxPool, launch

AIMS = {
    "cold start": "< 500 ms",
    "warm acquire": "< 10 ms",
    "exec `1`": "< 1 ms",
    "load 1 MB": "",
    "load 100 MB": "< 1500 ms",
    "nested llm_query": "",
    "idle memory, container cgroup (MB)": "< 25 MB",
    "start + first exec, cold boot": "p95 <= 300 ms",
    "start + first exec, restored from a checkpoint": "p95 <= 300 ms",
}


def _row(name: str, samples: list[float], unit: str = "ms") -> dict[str, Any]:
    return {"name": name, "unit": unit, "aim": AIMS.get(name, ""), **summary(samples)}


async def _timed(fn: Callable[[], Awaitable[Any]], n: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        await fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def host_pss_mb(container_id: str) -> float:
    """Summed PSS of the host processes that serve this container (runsc, gofer, shim)."""
    return host_kb([container_id], "smaps_rollup", "Pss:")[container_id] / 1024


def host_rss_mb(container_id: str) -> float:
    """Summed RSS of the same processes: shared pages counted once per process (an upper bound)."""
    return host_kb([container_id], "status", "VmRSS:")[container_id] / 1024


def cgroup_mb(process: object) -> float:
    """The sandbox's memory cgroup usage less page cache, as ``docker stats`` reports it
    (Docker's container, or the cgroup runsc made for RLM_SANDBOX=runsc)."""
    from sandbox.runsc_backend import CGROUP_PARENT, RunscProcess

    name = getattr(process, "id", "")
    group = f"{CGROUP_PARENT}/{name}" if isinstance(process, RunscProcess) else f"docker/{name}"
    return cgroup_memory_mb(group)


async def run(
    cfg: SandboxConfig | None = None, *, n: int = 200, starts: int = 10
) -> list[dict[str, Any]]:
    """Run every measurement and return one row per measurement."""
    cfg = cfg or SandboxConfig(instance="rlm-bench")
    rows: list[dict[str, Any]] = []

    cold: list[float] = []
    idle_mb: list[float] = []
    idle_pss: list[float] = []
    idle_rss: list[float] = []
    boot = dataclasses.replace(cfg, restore=False)  # the restores have their own rows
    for _ in range(starts):
        t0 = time.perf_counter()
        handle = await launch(boot)
        cold.append((time.perf_counter() - t0) * 1000)
        if cfg.backend in ("docker", "runsc"):
            await asyncio.sleep(0.5)
            cid = handle.process.id  # type: ignore[attr-defined]
            idle_mb.append(cgroup_mb(handle.process))
            idle_pss.append(host_pss_mb(cid))
            idle_rss.append(host_rss_mb(cid))
        await handle.close()
    rows.append(_row("cold start", cold))

    pool = SandboxPool(cfg, size=2)
    await pool.start()
    acquire: list[float] = []
    try:
        for _ in range(min(starts, 10)):
            while pool.idle < 2:  # noqa: ASYNC110 - the pool exposes counts, not events
                await asyncio.sleep(0.02)
            t0 = time.perf_counter()
            handle = await pool.acquire()
            acquire.append((time.perf_counter() - t0) * 1000)
            await pool.release(handle)
    finally:
        await pool.close()
    rows.append(_row("warm acquire", acquire))

    async def instant(kind: str, body: dict[str, Any]) -> Any:
        return (
            "ok" if kind == "llm" else ["ok"] * len(body.get("prompts") or body.get("items") or [])
        )

    handle = await launch(cfg)
    try:
        rows.append(_row("exec `1`", await _timed(lambda: handle.exec("1"), n)))
        one_mb = "x" * 2**20
        rows.append(_row("load 1 MB", await _timed(lambda: handle.load(one_mb), max(20, n // 10))))
        hundred_mb = "y" * (100 * 2**20)
        rows.append(_row("load 100 MB", await _timed(lambda: handle.load(hundred_mb), 5, warmup=1)))
        await handle.exec("del context")
        base = await _timed(lambda: handle.exec("1"), n)
        nested = await _timed(lambda: handle.exec("llm_query('q')", on_call=instant), n)
        # The row is the call's own cost: the exec round trip around it is subtracted.
        rows.append(_row("nested llm_query", [t - statistics.median(base) for t in nested]))
    finally:
        await handle.close()
    if idle_mb:
        rows.append(_row("idle memory, container cgroup (MB)", idle_mb, unit="MB"))
        rows.append(_row("idle memory, host PSS of runsc+gofer+shim (MB)", idle_pss, unit="MB"))
        rows.append(_row("idle memory, host RSS of runsc+gofer+shim (MB)", idle_rss, unit="MB"))
    if cfg.backend == "runsc":
        from sandbox import runsc_backend

        await runsc_backend.reap(cfg)  # the checkpoint the launches above made
        rows += await restore_rows(cfg, starts)
    return rows


async def restore_rows(cfg: SandboxConfig, starts: int) -> list[dict[str, Any]]:
    """RLM_SANDBOX_RESTORE: a new sandbox restored from a checkpoint of a started worker,
    against a cold boot. Time to the first exec's answer and the whole machine's CPU per
    start, alternating the two so both see the same machine."""
    from sandbox import runsc_backend

    # An instance of its own: its first start makes the checkpoint (the other rows' is theirs).
    boot = dataclasses.replace(cfg, restore=False, instance=f"{cfg.instance}-restore")
    restore = dataclasses.replace(boot, restore=True)
    try:
        return await _restore_rows(boot, restore, starts)
    finally:
        await runsc_backend.reap(restore)  # its sandboxes (none) and its checkpoint


async def _restore_rows(
    boot: SandboxConfig, restore: SandboxConfig, starts: int
) -> list[dict[str, Any]]:
    from loadtest.bench_cpu import busy_s
    from sandbox import runsc_backend

    t0 = time.perf_counter()
    first = await launch(restore)  # boots a worker, checkpoints it, restores the first
    first_ms = (time.perf_counter() - t0) * 1000
    await first.close()
    size_mb = await asyncio.to_thread(_tree_mb, runsc_backend.checkpoints_dir(restore))
    times: dict[str, list[float]] = {"cold boot": [], "restored from a checkpoint": []}
    cpu: dict[str, list[float]] = {k: [] for k in times}
    mem: dict[str, list[float]] = {"container cgroup": [], "host PSS of runsc+gofer": []}
    for _ in range(starts):
        for kind, c in (("cold boot", boot), ("restored from a checkpoint", restore)):
            c0, t0 = busy_s(), time.perf_counter()
            handle = await launch(c)
            try:
                await handle.exec("1")
                times[kind].append((time.perf_counter() - t0) * 1000)
                cpu[kind].append((busy_s() - c0) * 1000)
                if c.restore:
                    name = handle.process.id  # type: ignore[attr-defined]
                    mem["container cgroup"].append(cgroup_mb(handle.process))
                    mem["host PSS of runsc+gofer"].append(host_pss_mb(name))
            finally:
                await handle.close()
    rows = [_row(f"start + first exec, {k}", v) for k, v in times.items()]
    rows += [_row(f"machine CPU per start, {k}", v) for k, v in cpu.items()]
    rows += [_row(f"memory of a restored sandbox, {k} (MB)", v, unit="MB") for k, v in mem.items()]
    rows.append(
        _row("first start with a checkpoint to make (boot, checkpoint, restore)", [first_ms])
    )
    rows.append(_row("the worker's checkpoint on disk (MB)", [size_mb], unit="MB"))
    return rows


def _tree_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def table(rows: list[dict[str, Any]], title: str = "") -> str:
    lines = [f"### {title}"] if title else []
    lines += ["| measurement | n | median | p95 | aim |", "|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['median']:.3f} {r['unit']} | {r['p95']:.3f} {r['unit']} | {r['aim']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="docker", choices=["docker", "runsc", "local"])
    parser.add_argument("--runtime", default="runsc")
    parser.add_argument("--image", default="rlm-sandbox:latest")
    parser.add_argument("-n", type=int, default=200, help="samples per round-trip measurement")
    parser.add_argument("--starts", type=int, default=10, help="cold starts to time")
    args = parser.parse_args()
    cfg = SandboxConfig(
        backend=args.backend, runtime=args.runtime, image=args.image, instance="rlm-bench"
    )
    rows = asyncio.run(run(cfg, n=args.n, starts=args.starts))
    print(table(rows, f"sandbox benchmark ({args.backend}/{args.runtime}, {os.cpu_count()} cores)"))


if __name__ == "__main__":
    main()
