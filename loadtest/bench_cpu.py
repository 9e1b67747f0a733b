"""CPU per request, by process group: where a reused session's request spends the host's CPU.

The needle task at 20 users, each reusing its session with a reset per request (closed loop,
instant scripted upstream), through the real service on loopback. Around the measured
window every host process's CPU time (utime + stime from /proc, all its threads) is read
and summed by group: the service, runsc (sentry, gofer, ``runsc run``), dockerd and
containerd, containerd-shim, kernel threads, and the load client with the scripted
upstream. The machine's busy time from /proc/stat is the total; what no process accounts
for (interrupts, softirqs, processes that came and went) is its own row.

Variants run one after another in the same invocation: this tree with ``RLM_SANDBOX=docker``
and with ``RLM_SANDBOX=runsc`` (a ``/keep`` variant sends the same requests without a reset:
each turn goes on in its session's REPL, so the difference is what a reset costs), and,
with ``--baseline REF``, the service and worker image of
another commit (default: the previous one) checked out in a git worktree, so the table
prints beside the previous commit's figures from the same run.

    python -m loadtest.bench_cpu [--seconds 20] [--users 20] [--baseline HEAD~1|none]
                                 [--profile DIR]

``--profile`` samples the service with py-spy (threads holding the GIL) in each window and
prints the functions by their share per request. Under load the samples also count the
moments the loop holds the GIL but waits for a core (a write that woke a sandbox's thread
on its CPU), so their sum exceeds the measured CPU; at 1 user they come close to it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.bench import drive_service, machine
from loadtest.samples import pct
from loadtest.stack import ROOT, LocalStack, StackConfig

GROUPS = (
    "the service process",
    "runsc (sentry, gofer, the stubs running sandboxed code)",
    "dockerd + containerd relaying the channel's bytes",
    "containerd-shim",
    "kernel threads",
    "(the load client and the scripted upstream)",
    "other processes",
)
TICK_S = 1 / os.sysconf("SC_CLK_TCK")
PROFILE_HZ = 200


@dataclass
class Proc:
    cmd: str
    ppid: int
    cpu_s: float


def processes() -> dict[int, Proc]:
    """Every readable host process: command line, parent and CPU seconds so far."""
    out: dict[int, Proc] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
            cmd = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, UnicodeDecodeError):
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        # After the name: state ppid ... utime (field 14) stime (15), counted from state=3.
        out[int(name)] = Proc(
            cmd.strip(), int(fields[1]), (int(fields[11]) + int(fields[12])) * TICK_S
        )
    return out


def busy_s() -> float:
    """Seconds of CPU the whole machine has been busy (all cores, /proc/stat)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + parts[4]  # idle + iowait
    return (sum(parts[:8]) - idle) * TICK_S


def _is_runsc(p: Proc) -> bool:
    return p.cmd.startswith(("runsc", "/usr/bin/runsc")) or " runsc " in f" {p.cmd} "


def group_of(pid: int, p: Proc, service_pid: int, ours: set[int], table: dict[int, Proc]) -> str:
    if pid == service_pid or (p.ppid == service_pid and "-m service" in p.cmd):
        return GROUPS[0]  # the service, or its workers (RLM_WORKERS)
    if pid in ours or "loadtest.serve_upstream" in p.cmd:
        return GROUPS[5]
    if _is_runsc(p):
        return GROUPS[1]
    if not p.cmd:  # runsc's ptrace stubs run the sandboxed code, with no command line
        parent, hops = table.get(p.ppid), 0
        while parent is not None and not parent.cmd and hops < 64:
            parent, hops = table.get(parent.ppid), hops + 1
        if parent is not None and _is_runsc(parent):
            return GROUPS[1]
    if "containerd-shim" in p.cmd:
        return GROUPS[3]
    if "dockerd" in p.cmd or "containerd" in p.cmd:
        return GROUPS[2]
    if not p.cmd and (p.ppid == 2 or pid == 2):
        return GROUPS[4]
    return GROUPS[6]


def cpu_by_group(
    before: dict[int, Proc], after: dict[int, Proc], service_pid: int
) -> dict[str, float]:
    ours = {os.getpid()}
    out = dict.fromkeys(GROUPS, 0.0)
    for pid, p in after.items():
        start = before[pid].cpu_s if pid in before and before[pid].cmd == p.cmd else 0.0
        out[group_of(pid, p, service_pid, ours, after)] += max(0.0, p.cpu_s - start)
    return out


async def pool_refilled(base_url: str, size: int, timeout_s: float = 180.0) -> None:
    """Wait until the warm pool is whole again and no sandbox is starting: the measured
    window must not pay for the refills of the warm-up's sandboxes."""
    gauge = re.compile(r'^rlm_sandboxes\{state="(idle|starting)"[^}]*\} ([0-9.e+]+)$', re.MULTILINE)
    deadline = time.monotonic() + timeout_s
    state: dict[str, float] = {}
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        while time.monotonic() < deadline:
            text = (await client.get("/metrics")).text
            state = {"idle": 0.0, "starting": 0.0}
            for k, v in gauge.findall(text):  # summed over workers (RLM_WORKERS)
                state[k] += float(v)
            if state["starting"] == 0 and state["idle"] >= size:
                await asyncio.sleep(2)  # the last start's own tail (runsc settling)
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"the pool did not refill to {size} within {timeout_s:g}s: {state}")


def _slug(label: str) -> str:
    return re.sub(r"\W+", "-", label).strip("-")


def start_profile(out: Path, pid: int, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy on the service process (its main thread and the others) for the measured
    window, sampling without stopping it (``--nonblocking``), as collapsed stacks."""
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(spy), "record", "--pid", str(pid), "--rate", str(PROFILE_HZ), "--format", "raw",
         "--nonblocking", "--gil", "--duration", str(max(1, int(seconds))), "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _frame(raw: str) -> str:
    """``name (path/file.py:line)`` -> ``name (file.py)``: one entry per function."""
    name, _, where = raw.partition(" (")
    return f"{name} ({where.rsplit(':', 1)[0].rsplit('/', 1)[-1]})" if where else name


def hot_spots(path: Path, requests: int, top: int = 30) -> str:
    """The service's CPU per request by function, from py-spy's collapsed stacks: each
    function's own samples and the samples with it anywhere on the stack, in ms per request
    (idle samples are not recorded)."""
    own: dict[str, int] = {}
    within: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_frame(f) for f in stack.split(";")[1:]]  # the first is the thread
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for f in set(frames):
            within[f] = within.get(f, 0) + n
    ms = 1000 / PROFILE_HZ / max(1, requests)
    lines = [f"py-spy: {total * ms:.2f} ms of the service's CPU per request sampled ({path})",
             "own ms/req | within ms/req | function"]  # fmt: skip
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{n * ms:10.3f} | {within[name] * ms:13.3f} | {name}")
    lines.append("-- by samples anywhere on the stack --")
    for name, n in sorted(within.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"{own.get(name, 0) * ms:10.3f} | {n * ms:13.3f} | {name}")
    return "\n".join(lines)


async def measure(
    label: str,
    cfg: StackConfig,
    users: int,
    seconds: float,
    *,
    reset: bool = True,
    profile: Path | None = None,
) -> dict[str, Any]:
    print(f"[bench_cpu] {label}: starting", file=sys.stderr, flush=True)
    with LocalStack(cfg) as stack:
        service_pid = stack.service_pid
        marks: dict[str, Any] = {}

        spy: subprocess.Popen[bytes] | None = None

        def mark(at: str) -> None:
            nonlocal spy
            marks[at] = (processes(), busy_s(), time.perf_counter())
            if profile is not None and at == "start":
                spy = start_profile(profile / f"{_slug(label)}.txt", service_pid, seconds)

        async def settle() -> None:
            workers = int(cfg.env.get("RLM_WORKERS", "1"))
            await pool_refilled(stack.base_url, cfg.pool_size * workers)

        res = await drive_service(
            stack.base_url, stack.api_key, users, seconds, f"cpu-{cfg.sandbox}",
            mark=mark, settle=settle, reset=reset,
        )  # fmt: skip
    (p0, b0, t0), (p1, b1, t1) = marks["start"], marks["end"]
    n = max(1, res["completions"])
    if spy is not None and profile is not None:
        spy.wait(timeout=60)
        print(hot_spots(profile / f"{_slug(label)}.txt", n), file=sys.stderr)
    groups = cpu_by_group(p0, p1, service_pid)
    total = b1 - b0
    return {
        "label": label,
        "users": users,
        "reset": reset,
        "requests": res["completions"],
        "failures": res["failures"],
        "errors": res["errors"],
        "rate": res["completions"] / (t1 - t0),
        "p50_ms": statistics.median(res["latencies_ms"]) if res["latencies_ms"] else float("nan"),
        "p95_ms": pct(res["latencies_ms"], 0.95) if res["latencies_ms"] else float("nan"),
        "ms": {g: 1000 * v / n for g, v in groups.items()},
        "total_ms": 1000 * total / n,
        "unattributed_ms": 1000 * (total - sum(groups.values())) / n,
        "cores_busy": total / (t1 - t0),
    }


def baseline_tree(ref: str) -> tuple[Path, str, str]:
    """A worktree of ``ref`` with its sandbox image built: (path, image tag, short sha)."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", ref], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"rlm-bench-baseline-{sha}"
    if not path.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(path), sha],
            cwd=ROOT, check=True, capture_output=True,
        )  # fmt: skip
    image = f"rlm-sandbox:baseline-{sha}"
    subprocess.run(
        [str(path / "sandbox" / "build_image.sh")], env={**os.environ, "IMAGE": image},
        check=True, capture_output=True, timeout=900,
    )  # fmt: skip
    return path, image, sha


def table(results: list[dict[str, Any]]) -> str:
    head = "| CPU per request (ms) | " + " | ".join(r["label"] for r in results) + " |"
    lines = [head, "|---" * (len(results) + 1) + "|"]
    lines += [f"| {g} | " + " | ".join(f"{r['ms'][g]:.2f}" for r in results) + " |" for g in GROUPS]
    extra = (
        ("not attributed (irq, softirq, short-lived)", lambda r: f"{r['unattributed_ms']:.2f}"),
        ("**whole machine (/proc/stat)**", lambda r: f"**{r['total_ms']:.2f}**"),
        (
            "whole machine but the load client and the upstream",
            lambda r: f"{r['total_ms'] - r['ms'][GROUPS[5]]:.2f}",
        ),
        (
            "requests/s",
            lambda r: f"{r['rate']:.1f} ({r['users']} users{'' if r['reset'] else ', no reset'})",
        ),
        ("latency p50 / p95 (ms)", lambda r: f"{r['p50_ms']:.1f} / {r['p95_ms']:.1f}"),
        ("cores busy", lambda r: f"{r['cores_busy']:.2f}"),
        ("failed requests", lambda r: str(r["failures"])),
    )
    lines += [f"| {name} | " + " | ".join(fmt(r) for r in results) + " |" for name, fmt in extra]
    return "\n".join(lines)


@dataclass(frozen=True)
class Variant:
    backend: str
    runtime: str = ""  # a Docker runtime's name ("": the default)
    workers: str = ""  # RLM_WORKERS ("": not set)
    reset: bool = True  # False: each turn goes on in its session's REPL


def parse_spec(spec: str) -> Variant:
    """``backend[@runtime][:workers][/keep]``: runsc:2 is RLM_WORKERS=2; docker@runsc-systrap
    uses that Docker runtime (its runsc binary and flags, for the runsc backend too);
    ``/keep`` sends the requests without a reset."""
    head, slash, mode = spec.strip().partition("/")
    head, _, workers = head.partition(":")
    backend, _, runtime = head.partition("@")
    if (
        backend not in ("docker", "runsc", "local")
        or not (workers or "1").isdigit()
        or (slash and mode != "keep")
    ):
        raise ValueError(f"not a variant: {spec!r} (backend[@runtime][:workers][/keep])")
    return Variant(backend, runtime, workers, reset=not slash)


async def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    base: dict[str, Any] = {"policy": "needle-answer", "pool_size": args.users + 4}
    variants: list[tuple[str, StackConfig, bool]] = []
    if args.baseline != "none":
        path, image, sha = baseline_tree(args.baseline)
        env = {"RLM_SANDBOX_IMAGE": image}
        variants.append(
            (
                f"{sha} (docker)",
                StackConfig(sandbox="docker", env=env, service_dir=path, **base),
                True,
            )
        )
    for spec in args.backends.split(","):
        v = parse_spec(spec)
        name = f"{v.backend}, {v.runtime}" if v.runtime else v.backend
        name += "" if v.reset else ", no reset"
        cfg = {**base, "runtime": v.runtime} if v.runtime else dict(base)
        if v.workers:
            n = int(v.workers)
            split = {**cfg, "pool_size": -(-base["pool_size"] // n)}
            stack = StackConfig(sandbox=v.backend, env={"RLM_WORKERS": v.workers}, **split)
            variants.append((f"this tree ({name}, {n} workers)", stack, v.reset))
        else:
            variants.append((f"this tree ({name})", StackConfig(sandbox=v.backend, **cfg), v.reset))
    out = []
    for label, variant, reset in variants:
        variant.log_dir = ROOT / "logs" / "bench-cpu" / _slug(label)
        try:
            out.append(
                await measure(
                    label, variant, args.users, args.seconds, reset=reset, profile=args.profile
                )
            )
        except Exception as exc:  # noqa: BLE001 - one failed variant must not hide the others
            print(f"[bench_cpu] {label} failed: {exc} ({variant.log_dir})", file=sys.stderr)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument(
        "--backends",
        default="docker,runsc",
        help="backend[@docker runtime][:workers][/keep], e.g. "
        "docker,runsc,runsc:2,runsc@runsc-systrap,runsc/keep (/keep: no reset per request)",
    )
    parser.add_argument("--baseline", default="HEAD~1", help="git ref, or none")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="a directory: record the service with py-spy in each measured window and print "
        f"its CPU per request by function (py-spy samples at {PROFILE_HZ} Hz; it costs CPU too)",
    )
    args = parser.parse_args(argv)
    results = asyncio.run(run(args))
    print(f"\nMachine: {machine()}\n")
    print(table(results))
    bad = [r for r in results if r["failures"]]
    for r in bad:
        print(f"\n{r['label']}: {r['failures']} failed, e.g. {r['errors'][:1]}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
