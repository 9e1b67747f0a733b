"""Benchmarks of the hardening and durable-session work, on real runsc sandboxes.

* reset: ``await handle.reset()`` (a fresh interpreter from the fork server), aim < 10 ms;
* snapshot and restore of a session holding 1 MB, 100 MB of context, or 10,000 small
  variables: time and size (restore of the 1 MB session aims under 300 ms);
* a hostile sandbox flooding its channel with the costliest frames it can forge: the worst
  event-loop lag the service's other requests (``/healthz`` among them) would wait, the
  service process's memory growth, and how long until the sandbox is cut off;
* what a session costs the host live (its sandbox: runsc, gofer and shim PSS, plus the
  container's memory cgroup) and hibernated (its snapshot in the store; a hibernated session
  leaves the service's memory altogether), for sessions holding a 1 MB context, and the
  same for 1,000 sessions.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import resource
import time
from pathlib import Path
from typing import Any

from sandbox.config import SandboxConfig
from sandbox.errors import ProtocolViolation
from sandbox.handle import SandboxHandle
from sandbox.pool import launch

FLOOD = """\
import json, os, struct
W = llm_query.__self__
P = W.send.__globals__["proto"]
EXEC_ID = W.exec_stack[-1]
text = '\\U0001F600'.encode() * P.MAX_PROMPT_CHARS
env = {'v': P.VERSION, 'type': 'call', 'id': 5, 'parent': EXEC_ID,
       'body': {'kind': 'llm', 'prompt': {'\\x00': 0}, 'model': None, 'pad': [1e5] * 6500},
       'strs': [len(text)]}
data = json.dumps(env).encode() + b"\\n" + text
frame = struct.pack(">II", len(data), 0) + data
while True:
    view = memoryview(frame)
    while view:
        view = view[os.write(W.wfd, view):]
"""

SMALL_VARS = "for i in range(10_000):\n    globals()[f'v{i}'] = {'i': i, 's': str(i) * 3}\n"


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def snapshot_and_restore(
    cfg: SandboxConfig, setup: tuple[str, Any], n: int
) -> dict[str, list[float]]:
    """Seconds to snapshot and to restore (into a fresh sandbox), and the snapshot's MB."""
    code, context = setup
    out: dict[str, list[float]] = {"snapshot": [], "restore": [], "mb": []}
    source = await launch(cfg)
    try:
        if context is not None:
            await source.load(context, "root", ("context_0", "context"))
        if code:
            await source.exec(code)
        for _ in range(n):
            t0 = time.perf_counter()
            snap = await source.snapshot(0)
            out["snapshot"].append((time.perf_counter() - t0) * 1000)
            out["mb"].append(len(snap.blob) / 2**20)
            fresh = await launch(cfg)
            try:
                t0 = time.perf_counter()
                await fresh.restore(snap.blob)
                out["restore"].append((time.perf_counter() - t0) * 1000)
            finally:
                await fresh.close()
    finally:
        await source.close()
    return out


async def flood(cfg: SandboxConfig) -> dict[str, float]:
    """One sandbox floods forged frames; the loop's worst lag and the process's RSS growth."""
    box: SandboxHandle = await launch(dataclasses.replace(cfg, exec_timeout_s=20.0))
    lags: list[float] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t0 - 0.01)

    async def slow(kind: str, body: dict[str, Any]) -> Any:
        await asyncio.sleep(30)
        return "late"

    rss0 = _rss_mb()
    peak0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    task = asyncio.create_task(probe())
    t0 = time.perf_counter()
    outcome = "not cut off"
    try:
        await asyncio.wait_for(box.exec(FLOOD, on_call=slow), 60)
    except ProtocolViolation:
        outcome = "cut off (protocol_violation)"
    except Exception as exc:  # noqa: BLE001 - reported in the row
        outcome = f"{type(exc).__name__}"
    cut = time.perf_counter() - t0
    stop.set()
    await task
    await box.close()
    return {
        "worst_lag_ms": max(lags) * 1000 if lags else float("nan"),
        "median_lag_ms": sorted(lags)[len(lags) // 2] * 1000 if lags else float("nan"),
        "rss_growth_mb": _rss_mb() - rss0,
        "peak_growth_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - peak0,
        "cut_s": cut,
        "outcome": outcome,  # type: ignore[dict-item]
    }


def available_mb() -> float:
    """MemAvailable of the whole host, in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def live_and_hibernated(cfg: SandboxConfig, n: int) -> dict[str, list[float]]:
    """Per session holding a 1 MB context: host MB while live (PSS of its runsc processes,
    its memory cgroup) and MB of its snapshot (what it costs hibernated)."""
    from loadtest.bench_sandbox import cgroup_mb, host_pss_mb

    await asyncio.sleep(1.0)
    before = available_mb()
    boxes = [await launch(cfg) for _ in range(n)]
    out: dict[str, list[float]] = {"pss": [], "cgroup": [], "snapshot": [], "host": []}
    try:
        for i, box in enumerate(boxes):
            await box.load(f"{i:07d}" + "c" * (2**20 - 7), "root", ("context_0", "context"))
            await box.exec("lines = context.split('c' * 1000)\nn = len(lines)")
        await asyncio.sleep(1.0)  # let the pool's spares and the forks settle
        # What the host gave them all, kernel and page tables included, counted once.
        out["host"].append((before - available_mb()) / n)
        for box in boxes:
            cid = box.process.id  # type: ignore[attr-defined]
            out["pss"].append(await asyncio.to_thread(host_pss_mb, cid))
            out["cgroup"].append(await asyncio.to_thread(cgroup_mb, box.process))
            out["snapshot"].append(len((await box.snapshot(0)).blob) / 2**20)
    finally:
        await asyncio.gather(*(box.close() for box in boxes))
    return out


async def new_sessions(restore: bool, users: int, seconds: float, keep: int = 0) -> dict[str, Any]:
    """The service on runsc under ``users`` clients (one API key) whose every request opens a
    session (the needle task, 10,000 lines) and then deletes it: a sandbox start and teardown
    each, or with ``keep`` (RLM_SANDBOX_KEEP) a reset of the deleted session's sandbox, kept
    for the next. New sessions per second, latency, the whole machine's CPU per new session,
    and how many sandboxes were started."""
    import httpx

    from loadtest.bench import _needle_template, magic_number
    from loadtest.bench_cpu import busy_s
    from loadtest.stack import LocalStack, StackConfig

    template, marker = _needle_template()
    env = {"RLM_SANDBOX_RESTORE": "true" if restore else "false", "RLM_SANDBOX_KEEP": str(keep)}
    with LocalStack(StackConfig(sandbox="runsc", env=env)) as stack:
        auth = {"authorization": f"Bearer {stack.api_key}"}
        async with httpx.AsyncClient(base_url=stack.base_url, timeout=600) as client:

            async def user(until: float, done: list[float], failed: list[str]) -> None:
                while (t0 := time.perf_counter()) < until:
                    number = magic_number()
                    r = await client.post(
                        "/v1/chat/completions", content=template.replace(marker, number.encode()),
                        headers={**auth, "content-type": "application/json"},
                    )  # fmt: skip
                    if (
                        r.status_code != 200
                        or number not in r.json()["choices"][0]["message"]["content"]
                    ):
                        failed.append(f"HTTP {r.status_code}: {r.text[:150]}")
                        continue
                    await client.delete(
                        f"/v1/sessions/{r.json()['rlm']['session_id']}", headers=auth
                    )
                    if time.perf_counter() < until:
                        done.append((time.perf_counter() - t0) * 1000)

            async def window(length: float) -> tuple[list[float], list[str], float]:
                done: list[float] = []
                failed: list[str] = []
                c0, until = busy_s(), time.perf_counter() + length
                await asyncio.gather(*(user(until, done, failed) for _ in range(users)))
                return done, failed, busy_s() - c0

            async def starts() -> float:
                text = (await client.get("/metrics")).text
                line = next(
                    x for x in text.splitlines() if x.startswith("rlm_sandbox_start_seconds_count")
                )
                return float(line.split()[-1])

            await window(min(8.0, seconds))  # warm-up: the checkpoint, the pool's first refill
            started = await starts()
            done, failed, cpu_s = await window(seconds)
            started = await starts() - started
    return {"rate": len(done) / seconds, "latency": done, "failed": failed,
            "cpu_ms": 1000 * cpu_s / max(len(done), 1), "started": started}  # fmt: skip


async def rows(quick: bool, row: Any) -> list[dict[str, Any]]:
    """The section's rows, built with bench.row."""
    from loadtest import bench_reset

    cfg = SandboxConfig(instance=f"rlm-bench-sessions-{os.getpid()}")
    out: list[dict[str, Any]] = []
    n = 50 if quick else 200
    spaced = await bench_reset.reset_round_trips(n, cfg, gap_s=0.05)
    out.append({**row("sessions", "reset (fresh interpreter), 50 ms apart", aim="< 10 ms"),
                "n": spaced["n"], "median": spaced["median"], "p95": spaced["p95"]})  # fmt: skip
    burst = await bench_reset.reset_round_trips(n, cfg)
    out.append({**row("sessions", "reset, back to back (waits for the spare's fork)"),
                "n": burst["n"], "median": burst["median"], "p95": burst["p95"]})  # fmt: skip
    cases = {
        "1 MB context": ("", "x" * 2**20),
        "100 MB context": ("", "y" * 100 * 2**20),
        "10,000 small variables": (SMALL_VARS, None),
    }
    for label, setup in cases.items():
        reps = 2 if "100 MB" in label else (3 if quick else 5)
        got = await snapshot_and_restore(cfg, setup, reps)
        aim = "< 300 ms" if label == "1 MB context" else ""
        out.append(row("sessions", f"snapshot, {label}", got["snapshot"]))
        out.append(row("sessions", f"restore, {label}", got["restore"], aim=aim))
        out.append(row("sessions", f"snapshot size, {label}", got["mb"], unit="MB"))
    for backend in ("docker", "runsc"):
        mem = await live_and_hibernated(
            dataclasses.replace(cfg, backend=backend), 5 if quick else 12
        )
        per_live = mem["host"][0]
        mid = len(mem["pss"]) // 2
        out.append(row("sessions",
                       f"host memory per live session, 1 MB context [RLM_SANDBOX={backend}]",
                       unit="MB", value=per_live,
                       note=f"MemAvailable drop / sessions; runsc/gofer/shim PSS "
                            f"{sorted(mem['pss'])[mid]:.0f} MB, cgroup "
                            f"{sorted(mem['cgroup'])[mid]:.0f} MB (overlapping: the sentry "
                            f"is in both)"))  # fmt: skip
        if backend == "docker":
            out.append(row("sessions",
                           "per hibernated session, 1 MB context: store bytes (0 in memory)",
                           mem["snapshot"], unit="MB"))  # fmt: skip
            per_snap = sorted(mem["snapshot"])[mid]
            out.append(row("sessions", "1,000 sessions: live host memory / hibernated store size",
                           unit="GB", value=per_live * 1000 / 1024,
                           note=f"live {per_live * 1000 / 1024:.1f} GB of RAM; hibernated "
                                f"{per_snap * 1000 / 1024:.2f} GB on disk or S3, no RAM"))  # fmt: skip
    seconds = 10.0 if quick else 20.0
    for restore, keep in ((False, 0), (True, 0), (True, 20)):  # RLM_SANDBOX_RESTORE's default
        got = await new_sessions(restore, 20, seconds, keep)
        kind = "restored from a checkpoint" if restore else "booted"
        if keep:
            kind = f"kept for the key (RLM_SANDBOX_KEEP={keep})"
        out.append(row("sessions", f"new sessions, 20 users, runsc, {kind}: request latency",
                       got["latency"], rate=got["rate"], aim="10/s" if restore else "",
                       note=f"machine CPU {got['cpu_ms']:.0f} ms per new session; "
                            f"{got['started']:.0f} sandboxes started; "
                            f"{len(got['failed'])} failed"))  # fmt: skip
    f = await flood(cfg)
    note = f"{f['outcome']} after {f['cut_s']:.2f} s; median lag {f['median_lag_ms']:.1f} ms"
    out.append(row("hostile", "event-loop lag while a sandbox floods its channel (worst)",
                   unit="ms", value=f["worst_lag_ms"], aim="< 100 ms", note=note))  # fmt: skip
    out.append(row("hostile", "service memory growth during the flood (RSS / peak)", unit="MB",
                   value=f["rss_growth_mb"],
                   note=f"peak RSS grew {f['peak_growth_mb']:.0f} MB"))  # fmt: skip
    from loadtest.stack import remove_containers

    remove_containers(cfg.instance)
    return out
