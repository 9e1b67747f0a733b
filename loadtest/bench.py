"""``make bench``: every benchmark in one run, printed as ONE markdown table and written to
``logs/bench-<timestamp>.md``.

Sections:
1. sandbox micro-benchmarks (``loadtest.bench_sandbox.run``, when that module is present);
2. engine overhead per root iteration with an instant upstream: the gap between one model
   call's return and the next call's start, measured around ``Upstream.complete`` (all
   engine work: parsing, the exec in a runsc sandbox, prompts), and the same gap seen from
   the upstream (request to request, so it includes both HTTP stacks) next to the official
   library's ``LocalREPL`` on the same scripted script, with the ratio;
3. end to end on the needle task (10,000 lines, instant upstream): this service over HTTP
   with runsc sandboxes vs the official ``LocalREPL`` and ``DockerREPL``, at 1 and 20
   concurrent requests: completions/s, median and p95 latency;
4. capacity: with the upstream at 200 ms per call, the most concurrent sessions (closed loop
   of needle requests; 2, 5, 10, 20, 40, 80, stopping at the first miss) whose p95 latency
   stays within 100 ms of the upstream's share (two calls, 400 ms), and host memory per
   session (RSS of each container's shim, runsc-sandbox and runsc-gofer processes);
5. progress (``loadtest.bench_progress``): time to the first progress chunk, the cost of
   progress streaming per iteration, a background run's create, poll and resume.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import docker
import httpx

from loadtest.haystack import NEEDLE_QUERY, filler, magic_number, with_needle
from loadtest.hostmem import RUNSC_PROCESSES, host_kb
from loadtest.policies import IterationsPolicy
from loadtest.samples import pct
from loadtest.stack import ROOT, LocalStack, StackConfig, container_ids, upstream_process
from loadtest.upstream import ScriptedUpstream

UPSTREAM_LATENCY_S = 0.2
CAPACITY_STEPS = (2, 5, 10, 20, 40, 80)
CAPACITY_SLACK_MS = 100.0


# ---- rows ----------------------------------------------------------------------------


def row(section: str, name: str, samples: list[float] | None = None, *, unit: str = "ms",
        rate: float | None = None, aim: str = "", note: str = "", value: float | None = None) -> dict[str, Any]:  # fmt: skip
    """One table row: median/p95 of samples (or a single value), optional rate per second."""
    samples = samples or []
    return {
        "section": section, "name": name, "n": len(samples) or None, "unit": unit,
        "median": statistics.median(samples) if samples else value,
        "p95": pct(samples, 0.95) if samples else None, "rate": rate, "aim": aim, "note": note,
    }  # fmt: skip


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def markdown(rows: list[dict[str, Any]]) -> str:
    head = "| section | measurement | n | median | p95 | unit | per second | aim | note |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    lines.extend(
        f"| {r['section']} | {r['name']} | {_fmt(r['n'])} | {_fmt(r['median'])} | {_fmt(r['p95'])} "
        f"| {r['unit']} | {_fmt(r['rate'], 1)} | {r['aim']} | {r['note']} |"
        for r in rows
    )
    return "\n".join(lines)


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    runsc = subprocess.run(["runsc", "--version"], capture_output=True, text=True).stdout.split(
        "\n"
    )[0]
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, "
            f"Linux {platform.release()}, Python {platform.python_version()}, "
            f"{runsc or 'runsc ?'} ({runsc_platform()})")  # fmt: skip


@functools.cache
def _docker_runtimes() -> dict[str, Any] | None:
    """Docker's runtimes, read once a run (None: Docker is not reachable)."""
    try:
        client = docker.from_env()
    except docker.errors.DockerException:
        return None
    try:
        return client.info().get("Runtimes") or {}
    except docker.errors.DockerException:
        return None
    finally:
        client.close()


def runsc_platform(runtime: str = "runsc") -> str:
    """The platform Docker's runtime runs runsc on (its --platform flag; runsc's default
    when it has none, systrap since 2023)."""
    runtimes = _docker_runtimes()
    if runtimes is None:
        return "platform ?"
    entry = runtimes.get(runtime)
    if entry is None:
        return "no such runtime"
    args = entry.get("runtimeArgs") or []
    flags = [a.split("=", 1)[1] for a in args if a.startswith("--platform=")]
    return flags[-1] if flags else "default platform"


def other_platforms() -> list[str]:
    """gVisor platforms Docker has a ``runsc-<platform>`` runtime for (the playbook registers
    them) other than the one ``runsc`` runs on: the rows a host can add for comparison."""
    here = runsc_platform()
    return [p for p in ("ptrace", "systrap") if p != here and runsc_platform(f"runsc-{p}") == p]


# ---- 1. sandbox ----------------------------------------------------------------------


async def sandbox_rows(quick: bool) -> list[dict[str, Any]]:
    try:
        from loadtest import bench_sandbox
    except ImportError:
        return [row("sandbox", "micro-benchmarks", note="loadtest/bench_sandbox.py not present")]
    from sandbox.config import SandboxConfig

    rows: list[dict[str, Any]] = []
    got: list[dict[str, Any]] = []
    variants = [("docker", "runsc", ""), ("runsc", "runsc", " [RLM_SANDBOX=runsc]")]
    variants += [
        ("runsc", f"runsc-{p}", f" [RLM_SANDBOX=runsc, {p}]") for p in other_platforms()
    ]  # the platform the host does not run, where the playbook registered it
    for backend, runtime, suffix in variants:
        cfg = SandboxConfig(backend=backend, runtime=runtime, instance=f"rlm-bench-{os.getpid()}")
        try:
            found = await bench_sandbox.run(cfg, n=50 if quick else 200, starts=3 if quick else 10)
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            note = f"failed: {type(exc).__name__}: {exc}"[:200]
            rows.append(row("sandbox", f"micro-benchmarks{suffix}", note=note))
            continue
        finally:
            from loadtest.stack import remove_containers

            remove_containers(cfg.instance)
        got += found if backend == "docker" else []
        rows += [
            {**row("sandbox", r["name"] + suffix, unit=r.get("unit", "ms"), aim=r.get("aim", "")),
             "n": r.get("n"), "median": r.get("median"), "p95": r.get("p95")}
            for r in found
        ]  # fmt: skip
    # The same trivial exec in the official library's DockerREPL, and the ratio.
    ours = next((r["median"] for r in got if r["name"].startswith("exec")), None)
    try:
        from loadtest.bench_official import exec_round_trips

        theirs = await asyncio.to_thread(exec_round_trips, 10 if quick else 30)
    except Exception as exc:  # noqa: BLE001 - the comparison is optional
        rows.append(row("sandbox", "official DockerREPL exec `1`", note=f"not run: {exc}"[:200]))
        return rows
    rows.append(
        row(
            "sandbox",
            "official DockerREPL exec `1` (runc)",
            theirs,
            note="docker exec + pickle per block",
        )
    )
    if ours:
        rows.append(row("sandbox", "exec ratio: official DockerREPL / this sandbox", unit="x",
                        value=statistics.median(theirs) / ours))  # fmt: skip
    return rows


# ---- 2. engine overhead --------------------------------------------------------------


class _Recorder:
    """Wraps a policy: the time of every root request as the upstream receives it."""

    def __init__(self, policy: Any) -> None:
        self.policy = policy
        self.times: list[float] = []

    def __call__(self, body: dict[str, Any]) -> Any:
        self.times.append(time.perf_counter())
        return self.policy(body)


def _gaps(times: list[float]) -> list[float]:
    return [(b - a) * 1000 for a, b in itertools.pairwise(times)]


async def engine_rows(iterations: int, runs: int) -> tuple[list[dict[str, Any]], float]:
    """Engine-only gap per iteration and the upstream-side gap; returns rows and the latter."""
    from sandbox.config import SandboxConfig
    from sandbox.pool import launch
    from service.rlm.budget import Budget
    from service.rlm.engine import EngineConfig, RLMEngine
    from service.rlm.upstream import Upstream

    recorder = _Recorder(IterationsPolicy(iterations))
    engine_gaps: list[float] = []
    upstream_gaps: list[float] = []
    with ScriptedUpstream(recorder, record=False) as up:
        upstream = Upstream(
            api_key="x", base_url=up.base_url, timeout_s=60, retries=0, concurrency=8
        )
        engine = RLMEngine(upstream, EngineConfig(root_model="gpt-5", sub_model="gpt-5-mini"))
        calls: list[tuple[float, float]] = []
        real_complete = upstream.complete

        async def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await real_complete(*a, **kw)
            finally:
                calls.append((t0, time.perf_counter()))

        upstream.complete = timed  # type: ignore[method-assign]
        cfg = SandboxConfig(instance=f"rlm-bench-{os.getpid()}")
        sandbox = await launch(cfg)
        try:
            for i in range(runs + 1):  # the first run warms imports and connections
                # A fresh worker state per run, as a request with reset: true gets.
                await sandbox.reset()
                info = await sandbox.load("x" * 1000, "root", ("context",))
                calls.clear()
                recorder.times.clear()
                budget = Budget(max_iterations=iterations + 2, max_depth=1, max_sub_calls=256,
                                max_total_tokens=None, deadline=time.monotonic() + 120)  # fmt: skip
                result = await engine.run(query="count", sandbox=sandbox, context_info=info,
                                          budget=budget, emit=lambda ev: None)  # fmt: skip
                assert result.iterations == iterations, result
                if i:
                    engine_gaps += [(b[0] - a[1]) * 1000 for a, b in itertools.pairwise(calls)]
                    upstream_gaps += _gaps(recorder.times)
        finally:
            await sandbox.close()
            await upstream.close()
    rows = [
        row("engine", "overhead per iteration, engine only (runsc sandbox)", engine_gaps,
            aim="< 2 ms", note="model call return to next call start: parse, exec, prompts"),
        row("engine", "per iteration incl. both HTTP stacks, this engine", upstream_gaps,
            note="request to request as the instant upstream sees them"),
    ]  # fmt: skip
    return rows, statistics.median(upstream_gaps)


def official_engine_rows(iterations: int, runs: int, ours_ms: float) -> list[dict[str, Any]]:
    try:
        from rlm import RLM
    except ImportError:
        return [
            row("engine", "official rlms LocalREPL", note="rlms not installed (pip install rlms)")
        ]
    recorder = _Recorder(IterationsPolicy(iterations))
    gaps: list[float] = []
    with ScriptedUpstream(recorder, record=False) as up:
        for i in range(runs + 1):
            recorder.times.clear()
            rlm = RLM(backend="openai", environment="local", max_iterations=iterations + 2,
                      backend_kwargs={"model_name": "gpt-5", "base_url": up.base_url, "api_key": "x"})  # fmt: skip
            rlm.completion("x" * 1000, root_prompt="count")
            if i:
                gaps += _gaps(recorder.times)
    median = statistics.median(gaps)
    return [row("engine", "per iteration incl. both HTTP stacks, official LocalREPL", gaps,
                note=f"ratio official/ours: {median / ours_ms:.1f}x")]  # fmt: skip


# ---- 3. end to end -------------------------------------------------------------------


def _needle_template(lines: int = 10_000, *, reset: bool = True) -> tuple[bytes, bytes]:
    """A needle request's JSON with a placeholder number (a third of the way in) to replace."""
    marker = "0000000"
    body = json.dumps({
        "model": "rlm", "messages": [{"role": "user", "content": NEEDLE_QUERY}],
        "rlm": {"reset": reset, "context": with_needle(filler(lines), marker, at=lines // 3)},
    }).encode()  # fmt: skip
    return body, marker.encode()


async def drive_service(base_url: str, api_key: str, concurrency: int, seconds: float,
                        prefix: str, mark: Callable[[str], None] | None = None,
                        settle: Callable[[], Awaitable[None]] | None = None,
                        reset: bool = True) -> dict[str, Any]:  # fmt: skip
    """Closed loop: ``concurrency`` sessions, each sending needle requests back to back, with
    a reset and a new needle each (``reset``), else each turn going on in its session's REPL
    and resending its session's context (as a stateless client does). ``settle`` is awaited
    after the warm-up (e.g. until the pool has refilled); ``mark`` is told "start" and "end"
    around the measured window."""
    template, marker = _needle_template(reset=reset)
    latencies: list[float] = []
    failures: list[str] = []
    limits = httpx.Limits(
        max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4
    )
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        kept: dict[str, str] = {}  # session -> its needle, when turns go on without a reset

        async def one(session: str, measure: bool) -> None:
            number = magic_number() if reset else kept.setdefault(session, magic_number())
            headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json",
                       "x-rlm-session-id": session}  # fmt: skip
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/chat/completions",
                                      content=template.replace(marker, number.encode()), headers=headers)  # fmt: skip
                ok = r.status_code == 200 and number in r.json()["choices"][0]["message"]["content"]
                why = "" if ok else f"HTTP {r.status_code}: {r.text[:150]}"
            except Exception as exc:  # noqa: BLE001 - counted as a failure
                ok, why = False, f"{type(exc).__name__}: {exc}"
            if measure:
                latencies.append((time.perf_counter() - t0) * 1000)
                if not ok:
                    failures.append(why)

        # Ids new to the session store, which may outlive the stack (a stack given its own
        # RLM_SESSION_STORE): a session left by an earlier run would be restored, or answer
        # 410 if it could not be saved.
        run = os.urandom(4).hex()
        sessions = [f"{prefix}-{run}-{i}" for i in range(concurrency)]
        await asyncio.gather(*(one(s, False) for s in sessions))  # warm: one sandbox per session
        if settle is not None:
            await settle()
        if mark is not None:
            mark("start")
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def loop(session: str) -> None:
            while time.perf_counter() < deadline:
                await one(session, True)

        await asyncio.gather(*(loop(s) for s in sessions))
        elapsed = time.perf_counter() - t0
        if mark is not None:
            mark("end")
    return {"latencies_ms": latencies, "failures": len(failures), "errors": failures[:3],
            "completions": len(latencies), "elapsed_s": elapsed}  # fmt: skip


def _e2e_row(label: str, c: int, res: dict[str, Any], aim: str = "") -> dict[str, Any]:
    rate = res["completions"] / res["elapsed_s"] if res["elapsed_s"] else 0.0
    note = f"{res['failures']} failed" + (f": {res['errors'][0][:120]}" if res["errors"] else "")
    return row(
        "end to end", f"{label}, {c} concurrent", res["latencies_ms"], rate=rate, note=note, aim=aim
    )


async def service_e2e_rows(seconds: float, results: dict[str, float]) -> list[dict[str, Any]]:
    cfg = StackConfig(sandbox="docker", runtime="runsc", policy="needle-answer", pool_size=24,
                      log_dir=ROOT / "logs" / "bench-service-e2e")  # fmt: skip
    rows = []
    with LocalStack(cfg) as stack:
        for c in (1, 20):
            res = await drive_service(stack.base_url, stack.api_key, c, seconds, f"e2e{c}")
            results[f"ours{c}"] = res["completions"] / res["elapsed_s"]
            rows.append(_e2e_row("this service (HTTP + runsc)", c, res))
        # A session's later turns: the same request, no reset (the context is bound again).
        res = await drive_service(
            stack.base_url, stack.api_key, 1, seconds, "e2e-keep", reset=False
        )
        rows.append(_e2e_row("this service, a reused session without reset", 1, res, "<= 10 ms"))
    leftovers = len(stack.leftovers)
    # The same reused session with runsc run directly, on this host's platform and on the
    # other one where the playbook registered it (the fleet runs systrap). No warm pool: no
    # refill competes with the measured window.
    platforms = [("runsc", runsc_platform())] + [(f"runsc-{p}", p) for p in other_platforms()]
    for runtime, name in platforms:
        cfg = StackConfig(sandbox="runsc", runtime=runtime, policy="needle-answer", pool_size=0,
                          log_dir=ROOT / "logs" / f"bench-service-e2e-{runtime}")  # fmt: skip
        with LocalStack(cfg) as stack:
            res = await drive_service(
                stack.base_url, stack.api_key, 1, seconds, f"e2e-keep-{runtime}", reset=False
            )
        leftovers += len(stack.leftovers)
        label = f"this service, a reused session without reset [RLM_SANDBOX=runsc, {name}]"
        rows.append(_e2e_row(label, 1, res, "<= 10 ms"))
    if leftovers:
        rows.append(row("end to end", "leftover sandbox containers", note=f"{leftovers} removed"))
    return rows


def official_e2e_rows(env: str, seconds: float, results: dict[str, float]) -> list[dict[str, Any]]:
    label = {"local": "official rlms LocalREPL", "docker": "official rlms DockerREPL (runc)"}[env]
    rows = []
    with upstream_process("needle-answer", 0.0) as url:
        for c in (1, 20):
            out = subprocess.run(
                [sys.executable, "-m", "loadtest.bench_official", "--base-url", url, "--env", env,
                 "--concurrency", str(c), "--seconds", str(seconds)],
                cwd=ROOT, capture_output=True, text=True, timeout=seconds + 900,
            )  # fmt: skip
            if out.returncode != 0:
                rows.append(
                    row(
                        "end to end",
                        f"{label}, {c} concurrent",
                        note=f"failed: {out.stderr[-200:]}",
                    )
                )
                continue
            res = json.loads(out.stdout.strip().splitlines()[-1])
            results[f"{env}{c}"] = res["completions"] / res["elapsed_s"]
            rows.append(_e2e_row(label, c, res))
    return rows


# ---- 4. capacity ---------------------------------------------------------------------


def runsc_rss_mb(ids: list[str]) -> list[float]:
    """Per container: summed RSS of the host processes naming its id (shim, sandbox, gofer)."""
    return [kb / 1024 for kb in host_kb(ids, only=RUNSC_PROCESSES).values()]


async def capacity_rows(
    seconds: float, steps: tuple[int, ...], *, reset: bool = True
) -> list[dict[str, Any]]:
    """How many concurrent sessions keep the p95 overhead above the model calls within
    ``CAPACITY_SLACK_MS``: with a reset per request (the seed's load), or sessions whose
    turns go on in their REPL (``reset=False``)."""
    floor_ms = 2 * UPSTREAM_LATENCY_S * 1000  # two root calls per needle run
    kind = "" if reset else ", no reset"
    cfg = StackConfig(
        sandbox="docker", runtime="runsc", policy="needle-answer", latency_s=UPSTREAM_LATENCY_S,
        pool_size=16, log_dir=ROOT / "logs" / "bench-capacity",
        env={"RLM_MAX_RUNNING": "512", "RLM_MAX_QUEUED": "512", "RLM_UPSTREAM_CONCURRENCY": "512",
             "RLM_MAX_SESSIONS": "1024"},
    )  # fmt: skip
    rows = []
    best = 0
    with LocalStack(cfg) as stack:
        for n in steps:
            res = await drive_service(
                stack.base_url,
                stack.api_key,
                n,
                seconds,
                f"cap{n}{'' if reset else '-keep'}",
                reset=reset,
            )
            over = [x - floor_ms for x in res["latencies_ms"]]
            p95 = pct(over, 0.95)
            held = res["failures"] == 0 and p95 < CAPACITY_SLACK_MS
            mem = runsc_rss_mb(container_ids(stack.instance))
            rows.append(row(
                "capacity", f"{n} sessions{kind}, upstream 200 ms: overhead above 400 ms", over,
                rate=res["completions"] / res["elapsed_s"], aim="p95 < 100 ms",
                note=(f"{'holds' if held else 'does not hold'}; {res['failures']} failed; "
                      f"host RSS/session {statistics.median(mem) if mem else float('nan'):.0f} MB "
                      f"({len(mem)} sandboxes)"),
            ))  # fmt: skip
            if not held:
                break
            best = n
    rows.append(row("capacity", f"most concurrent sessions within the aim{kind}", unit="sessions",
                    value=float(best), note=f"searched {', '.join(map(str, steps))}"))  # fmt: skip
    return rows


# ---- driver --------------------------------------------------------------------------


async def run_all(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    results: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str) -> None:
        print(f"[bench {time.perf_counter() - t0:5.0f}s] {name}", file=sys.stderr, flush=True)

    stage("sandbox micro-benchmarks")
    rows += await sandbox_rows(args.quick)
    stage("sessions: reset, snapshot/restore; a hostile sandbox's flood")
    try:
        from loadtest import bench_sessions

        rows += await bench_sessions.rows(args.quick, row)
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        rows.append(row("sessions", "section", note=f"failed: {type(exc).__name__}: {exc}"[:200]))
    stage("progress: time to first progress, its cost per iteration, background runs")
    try:
        from loadtest import bench_progress

        rows += await bench_progress.rows(args.quick, row)
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        rows.append(row("progress", "section", note=f"failed: {type(exc).__name__}: {exc}"[:200]))
    stage("engine overhead")
    eng, ours_gap = await engine_rows(args.iterations, args.runs)
    rows += eng
    stage("official LocalREPL, same script")
    rows += await asyncio.to_thread(official_engine_rows, args.iterations, args.runs, ours_gap)
    stage("end to end: this service")
    rows += await service_e2e_rows(args.seconds, results)
    for env in ("local", "docker"):
        stage(f"end to end: official {env}")
        rows += await asyncio.to_thread(official_e2e_rows, env, args.seconds, results)
    if "ours20" in results and "docker20" in results:
        ratio = results["ours20"] / max(results["docker20"], 1e-9)
        rows.append(row("end to end", "throughput ratio at 20: this service / official DockerREPL",
                        unit="x", value=ratio, aim=">= 10x"))  # fmt: skip
    if "ours20" in results and "local20" in results:
        rows.append(row("end to end", "throughput ratio at 20: this service / official LocalREPL",
                        unit="x", value=results["ours20"] / max(results["local20"], 1e-9)))  # fmt: skip
    stage("capacity")
    rows += await capacity_rows(args.capacity_seconds, tuple(args.steps))
    rows += await capacity_rows(args.capacity_seconds, tuple(args.steps), reset=False)
    stage("CPU per request by process group (this tree on both backends, and the baseline)")
    try:
        from loadtest import bench_cpu

        # The other platform too, where the playbook registered one runtime per platform.
        # And runsc without a reset per request: what a reset costs is the difference.
        backends = "docker,runsc" + "".join(f",runsc@runsc-{p}" for p in other_platforms())
        backends += ",runsc/keep"
        cpu_args = argparse.Namespace(
            seconds=args.seconds,
            users=20,
            backends=backends,
            baseline=args.baseline,
            profile=None,
        )
        args.cpu_table = bench_cpu.table(await bench_cpu.run(cpu_args))
    except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
        rows.append(
            row("cpu", "CPU per request", note=f"failed: {type(exc).__name__}: {exc}"[:200])
        )
    stage("done")
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="all benchmarks, one markdown table")
    p.add_argument(
        "--seconds", type=float, default=15, help="measured seconds per end-to-end point"
    )
    p.add_argument("--capacity-seconds", type=float, default=20)
    p.add_argument("--steps", type=int, nargs="*", default=list(CAPACITY_STEPS))
    p.add_argument("--iterations", type=int, default=20, help="root iterations per engine run")
    p.add_argument("--runs", type=int, default=10, help="engine runs to time")
    p.add_argument("--quick", action="store_true", help="fewer samples in the sandbox section")
    p.add_argument("--baseline", default="HEAD~1",
                   help="commit whose CPU per request is measured beside this tree's (or none)")  # fmt: skip
    args = p.parse_args(argv)
    args.cpu_table = ""
    started = time.strftime("%Y%m%d-%H%M%S")
    rows = asyncio.run(run_all(args))
    table = markdown(rows)
    text = f"Benchmarks {started} on {machine()}\n\n{table}\n"
    if args.cpu_table:
        text += (
            "\nCPU per request, 20 users reusing their sessions (a reset each, unless the"
            f" column says no reset):\n\n{args.cpu_table}\n"
        )
    print(text)
    out = ROOT / "logs" / f"bench-{started}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
