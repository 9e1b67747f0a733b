"""What a client sees while an RLM works, measured: issue 15's figures.

The real service runs as a subprocess (``python -m service``, so its CPU can be read apart
from the client's), with docker/runsc sandboxes when Docker has the runsc runtime and the
sandbox image (else local ones; the rows say which), against the scripted upstream on a
thread of this process, so the client and the upstream share one clock.

(a) **Time to first progress.** With the upstream at a fixed latency (200 ms a call), a
    streamed chat request of three root iterations, on a session's next turn and on a new
    session: the time to the first SSE chunk (the role) and to the first
    ``delta.reasoning_content`` chunk, split into the set-up (request sent to the first
    model call reaching the upstream), the upstream's 200 ms, and the rest (the model's
    reply to the progress chunk at the client); one model round trip straight to the
    upstream for comparison. Aim: the first progress within one round trip of the first
    call's start, i.e. that rest a few milliseconds.
(b) **What progress streaming costs per iteration.** Streamed runs of N root iterations
    with ``rlm.stream_progress`` true and false, interleaved, on one session each (reset
    every run): the service process's CPU (``/proc/<pid>/task/*/schedstat``, nanoseconds,
    all its threads) per iteration, and the time from one model reply to the next model
    call as the upstream sees it; the figure is the median of the paired differences (on
    minus off), with their mean, its standard error and the run-to-run spread as the noise.
    With an instant upstream (iterations back to back, more of them) and at 200 ms a call
    (what a real run does: the service idles between iterations). Beside it, the pure
    in-process work, the ``Progress`` text and SSE framing of a real run's events, back to
    back and after 200 ms of idling (cold caches). Aim: under 0.2 ms.
(c) **Background runs.** Create latency (``background: true`` answers at once), poll latency
    (``GET /v1/responses/{id}`` while it runs), and resume: a background stream dropped after
    its third progress delta, followed again with ``starting_after``: the events replayed
    must be exactly the log's events after that number (compared with a full replay), with
    no gap and no repeat.

``python -m loadtest.bench_progress [--quick] [--sandbox auto|docker|local]`` prints one
markdown table and writes it to ``logs/bench-progress-<timestamp>.md``; ``make bench`` runs
it as one row group.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from loadtest.policies import IterationsPolicy
from loadtest.samples import pct
from loadtest.stack import ROOT, LocalStack, StackConfig, remove_containers
from loadtest.upstream import Policy, ScriptedUpstream, is_root_request, wait_until_up

LATENCY_S = 0.2
SECTION = "progress"
Row = Callable[..., dict[str, Any]]


# ---- the stack: an in-process upstream, the service as a subprocess ------------------------


class Recorder:
    """The upstream's policy: a settable inner policy, and when each root call arrived."""

    def __init__(self) -> None:
        self.policy: Policy = IterationsPolicy(3)
        self.root_arrivals: list[float] = []

    def __call__(self, body: dict[str, Any]) -> Any:
        if is_root_request(body):
            self.root_arrivals.append(time.perf_counter())
        return self.policy(body)


@dataclass
class Service:
    base_url: str
    api_key: str
    pid: int
    sandbox: str

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            headers={"authorization": f"Bearer {self.api_key}"},
            timeout=300,
        )


def docker_runsc_ready(image: str = "rlm-sandbox:latest") -> bool:
    """Docker answers, has the runsc runtime, and has the sandbox image."""
    try:
        info = subprocess.run(
            ["docker", "info", "--format", "{{json .Runtimes}}"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        img = subprocess.run(["docker", "image", "inspect", image], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return info.returncode == 0 and "runsc" in info.stdout and img.returncode == 0


@contextlib.contextmanager
def running_service(upstream_url: str, sandbox: str, max_iterations: int) -> Iterator[Service]:
    """``python -m service`` with the local stack's settings, pointed at ``upstream_url``;
    stopped by its pid (SIGTERM, then SIGKILL) and its containers checked afterwards."""
    stack = LocalStack(StackConfig(sandbox=sandbox, runtime="runsc", pool_size=2))
    log_dir = ROOT / "logs" / "bench-progress"
    log_dir.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory(prefix="rlm-bench-progress-") as store,
        open(log_dir / "service.log", "wb") as log,
    ):
        env = {
            **stack.service_env(),
            "OPENAI_BASE_URL": upstream_url,
            "RLM_SESSION_STORE": f"file://{store}",
            "RLM_MAX_ITERATIONS": str(max_iterations),
            "RLM_SANDBOX_MEMORY_MB": "256",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            wait_until_up(
                f"{stack.base_url}/readyz", timeout_s=180, proc=proc, name="the service",
                headers={"authorization": f"Bearer {stack.api_key}"}, interval_s=0.2,
            )  # fmt: skip
            yield Service(stack.base_url, stack.api_key, proc.pid, sandbox)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
            if sandbox == "docker":
                remove_containers(stack.instance)


def cpu_ns(pid: int) -> dict[int, int]:
    """CPU time of each thread of ``pid`` so far (``schedstat``: nanoseconds on a CPU)."""
    out: dict[int, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError, IndexError):
            out[int(task.name)] = int((task / "schedstat").read_text().split()[0])
    return out


def cpu_delta_ms(before: dict[int, int], after: dict[int, int]) -> float:
    """CPU between two readings (a thread that ended in between loses its share: rare, and
    the same for both modes)."""
    return sum(v - before.get(tid, 0) for tid, v in after.items()) / 1e6


# ---- one streamed chat request, timed ------------------------------------------------------


def stream_chat(http: httpx.Client, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
    """Send a streamed chat request; times (s from sending) of the first chunk, the first
    progress chunk and the first answer chunk, the progress chunk count, the ``rlm`` object."""
    out: dict[str, Any] = {"first": None, "progress": None, "content": None, "n_progress": 0}
    t0 = time.perf_counter()
    out["t0"] = t0
    with http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.read()[:300]!r}")
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            now = time.perf_counter() - t0
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                raise RuntimeError(f"stream failed: {chunk['error']}")
            if out["first"] is None:
                out["first"] = now
            if not chunk.get("choices"):
                continue
            delta = chunk["choices"][0]["delta"]
            if delta.get("reasoning_content"):
                out["n_progress"] += 1
                if out["progress"] is None:
                    out["progress"] = now
            if delta.get("content") and out["content"] is None:
                out["content"] = now
            if chunk["choices"][0].get("finish_reason"):
                out["rlm"] = chunk.get("rlm")
    out["end"] = time.perf_counter() - t0
    return out


def chat_body(query: str, **rlm: Any) -> dict[str, Any]:
    return {
        "model": "rlm",
        "stream": True,
        "messages": [{"role": "user", "content": query}],
        "rlm": {"context": "x" * 1000, **rlm},
    }


def model_round_trips(upstream_url: str, n: int) -> list[float]:
    """One model call straight to the upstream (no service): its round trip in ms."""
    body = {"model": "gpt-5", "messages": [{"role": "user", "content": "ping"}]}
    out = []
    with httpx.Client(timeout=30) as c:
        for _ in range(n + 1):
            t0 = time.perf_counter()
            c.post(f"{upstream_url}/chat/completions", json=body).raise_for_status()
            out.append((time.perf_counter() - t0) * 1000)
    return out[1:]  # the first opens the connection


# ---- (a) time to first progress -------------------------------------------------------------


def first_progress(svc: Service, up: ScriptedUpstream, rec: Recorder, n: int, row: Row) -> list[dict[str, Any]]:  # fmt: skip
    up.latency_s = LATENCY_S
    rec.policy = IterationsPolicy(3)
    rtt = model_round_trips(up.base_url, n)
    rtt_ms = statistics.median(rtt)
    rows = [row(SECTION, f"one model round trip, straight to the upstream ({LATENCY_S * 1000:.0f} ms)", rtt)]  # fmt: skip
    with svc.client() as http:
        stream_chat(http, chat_body("warm up"))
        for label, continuing in (("a session's next turn", True), ("a new session", False)):
            sid = f"bench-progress-ttfp-{time.time_ns()}"
            if continuing:
                stream_chat(http, chat_body("open"), {"x-rlm-session-id": sid})
            first, ttfp, setup, excess = [], [], [], []
            for _ in range(n):
                rec.root_arrivals.clear()
                headers = {"x-rlm-session-id": sid} if continuing else None
                res = stream_chat(http, chat_body("count"), headers)
                assert res["n_progress"] >= 3 and res["progress"] is not None, res
                first.append(res["first"] * 1000)
                ttfp.append(res["progress"] * 1000)
                setup.append((rec.root_arrivals[0] - res["t0"]) * 1000)
                excess.append(res["progress"] * 1000 - setup[-1] - up.latency_s * 1000)
                if not continuing:
                    time.sleep(1.0)  # let the warm pool refill: each run takes a fresh sandbox
            rows += [
                row(SECTION, f"time to first SSE chunk (role), {label}", first),
                row(SECTION, f"time to first progress chunk, {label}", ttfp,
                    aim="set-up + 1 round trip",
                    note=f"3 root iterations, upstream {LATENCY_S * 1000:.0f} ms, {svc.sandbox} sandbox"),
                row(SECTION, f"  set-up: request sent to first model call at the upstream, {label}",
                    setup),
                row(SECTION, f"  first model reply to first progress chunk at the client, {label}",
                    excess, aim="< 1 round trip",
                    note=f"after the upstream's {LATENCY_S * 1000:.0f} ms (a full round trip: {rtt_ms:.0f} ms)"),
            ]  # fmt: skip
    return rows


# ---- (b) the cost of progress per iteration -------------------------------------------------


def _paired(on: list[float], off: list[float]) -> tuple[list[float], str]:
    """Paired differences (on - off) and a note on their noise: mean, its standard error,
    and the spread (p90 - p10) of the runs themselves."""
    diffs = [a - b for a, b in zip(on, off, strict=True)]
    se = statistics.stdev(diffs) / len(diffs) ** 0.5 if len(diffs) > 1 else float("nan")
    spread = pct(off, 0.9) - pct(off, 0.1)
    note = (f"{len(diffs)} interleaved pairs: mean {statistics.mean(diffs):.3f} +- {se:.3f} (s.e.); "
            f"run-to-run spread (p90-p10) of one mode {spread:.3f}")  # fmt: skip
    return diffs, note


def progress_cost(svc: Service, up: ScriptedUpstream, rec: Recorder, *, latency_s: float,
                  iterations: int, runs: int, row: Row) -> list[dict[str, Any]]:  # fmt: skip
    """Paired streamed runs with progress on and off: the service's CPU per iteration, and
    the time from one model reply to the next model call as the upstream sees it."""
    up.latency_s = latency_s
    rec.policy = IterationsPolicy(iterations)
    cpu: dict[bool, list[float]] = {True: [], False: []}
    turn: dict[bool, list[float]] = {True: [], False: []}
    sessions = {mode: f"bench-progress-cost-{mode}-{time.time_ns()}" for mode in (True, False)}
    with svc.client() as http:
        for i in range(runs + 1):  # the first pair warms both sessions
            for mode in (True, False) if i % 2 == 0 else (False, True):
                body = chat_body("count", stream_progress=mode, reset=True)
                time.sleep(0.05)
                rec.root_arrivals.clear()
                before = cpu_ns(svc.pid)
                res = stream_chat(http, body, {"x-rlm-session-id": sessions[mode]})
                time.sleep(0.05)  # what the service does after [DONE] (log line, cleanup)
                after = cpu_ns(svc.pid)
                assert res["rlm"]["iterations"] == iterations, res["rlm"]
                assert (res["n_progress"] > 0) == mode, res
                if i:
                    cpu[mode].append(cpu_delta_ms(before, after) / iterations)
                    gaps = [(b - a) * 1000 - latency_s * 1000
                            for a, b in itertools.pairwise(rec.root_arrivals)]  # fmt: skip
                    turn[mode].append(statistics.median(gaps))
    cpu_diffs, cpu_note = _paired(cpu[True], cpu[False])
    turn_diffs, turn_note = _paired(turn[True], turn[False])
    where = f"{iterations} iterations, upstream {latency_s * 1000:.0f} ms, {svc.sandbox} sandbox"
    return [
        row(SECTION, f"service CPU per iteration, progress on ({where})", cpu[True]),
        row(SECTION, f"service CPU per iteration, progress off ({where})", cpu[False]),
        row(SECTION, f"added service CPU per iteration by progress ({where})", cpu_diffs,
            aim="< 0.2 ms", note=f"median of paired differences; {cpu_note}"),
        row(SECTION, f"added time from model reply to next model call ({where})", turn_diffs,
            note=f"as the upstream sees it, per run the median gap; {turn_note}"),
    ]  # fmt: skip


def progress_work_in_process(svc: Service, up: ScriptedUpstream, rec: Recorder, *,
                             iterations: int, reps: int, row: Row) -> list[dict[str, Any]]:  # fmt: skip
    """The progress text and SSE framing of a real run's events, timed in this process."""
    from service.api import sse
    from service.api.progress import Progress
    from service.api.protocol import chunk_body

    up.latency_s = 0.0
    rec.policy = IterationsPolicy(iterations)
    with svc.client() as http:
        body = {**chat_body("count", include_trajectory=True), "stream": False}
        r = http.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        events = r.json()["rlm"]["trajectory"]
    per_iteration = []
    for _ in range(reps):
        progress = Progress()
        t0 = time.perf_counter()
        for ev in events:
            text = progress.text(ev)
            if text:
                sse.sse(chunk_body("chatcmpl-x", "rlm", 0, {"reasoning_content": text}))
        per_iteration.append((time.perf_counter() - t0) * 1e6 / iterations)
    # The same work when each iteration starts after the model's 200 ms (the CPU idled, other
    # processes ran): what a real run pays, as the caches are cold every time.
    cold: list[float] = []
    progress = Progress()
    work_us = 0.0
    for ev in events:
        if ev["event"] == "iteration" and work_us:
            cold.append(work_us)
            work_us = 0.0
        if ev["event"] == "iteration":
            time.sleep(LATENCY_S)
        t0 = time.perf_counter()
        text = progress.text(ev)
        if text:
            sse.sse(chunk_body("chatcmpl-x", "rlm", 0, {"reasoning_content": text}))
        work_us += (time.perf_counter() - t0) * 1e6
    cold.append(work_us)
    return [
        row(SECTION, "progress text + SSE framing per iteration, in process, back to back",
            per_iteration, unit="us", note=f"a real run's {len(events)} events, {reps} replays; no socket"),
        row(SECTION, f"progress text + SSE framing per iteration, in process, after {LATENCY_S * 1000:.0f} ms idle",
            cold, unit="us", note="cold caches, as in a run that waits on its model; no socket"),
    ]  # fmt: skip


# ---- (c) background: create, poll, resume --------------------------------------------------


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line.removeprefix("data: "))


def background(svc: Service, up: ScriptedUpstream, rec: Recorder, runs: int, row: Row) -> list[dict[str, Any]]:  # fmt: skip
    up.latency_s = LATENCY_S
    rec.policy = IterationsPolicy(6)
    create: list[float] = []
    poll: list[float] = []
    done_s: list[float] = []
    resume_first: list[float] = []
    missed: list[float] = []
    exact = 0
    body = {"model": "rlm", "input": "count", "background": True, "rlm": {"context": "x" * 1000}}
    with svc.client() as http:
        for _ in range(runs):
            t0 = time.perf_counter()
            r = http.post("/v1/responses", json=body)
            create.append((time.perf_counter() - t0) * 1000)
            r.raise_for_status()
            rid, status = r.json()["id"], r.json()["status"]
            assert status in ("queued", "in_progress"), status
            while status in ("queued", "in_progress"):
                time.sleep(0.05)
                t1 = time.perf_counter()
                got = http.get(f"/v1/responses/{rid}")
                poll.append((time.perf_counter() - t1) * 1000)
                status = got.json()["status"]
            assert status == "completed", got.text
            done_s.append(time.perf_counter() - t0)
        for _ in range(runs):
            before: list[dict[str, Any]] = []
            deltas = 0
            with http.stream("POST", "/v1/responses", json={**body, "stream": True}) as r:
                for ev in sse_events(r.iter_lines()):
                    before.append(ev)
                    deltas += ev["type"] == "response.reasoning_summary_text.delta"
                    if deltas == 3:
                        break  # the connection drops here, mid-run
            rid, last = before[0]["response"]["id"], before[-1]["sequence_number"]
            time.sleep(LATENCY_S)  # the run goes on meanwhile: events the client misses
            t1 = time.perf_counter()
            with http.stream("GET", f"/v1/responses/{rid}",
                             params={"stream": "true", "starting_after": last}) as r:  # fmt: skip
                rest: list[dict[str, Any]] = []
                for ev in sse_events(r.iter_lines()):
                    if not rest:
                        resume_first.append((time.perf_counter() - t1) * 1000)
                    rest.append(ev)
            with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
                full = list(sse_events(r.iter_lines()))
            seqs = [e["sequence_number"] for e in before + rest]
            if (full[: last + 1] == before and full[last + 1 :] == rest
                    and seqs == list(range(len(full))) and rest[-1]["type"] == "response.completed"):  # fmt: skip
                exact += 1
            missed.append(float(len(rest)))
    where = f"6 root iterations, upstream {LATENCY_S * 1000:.0f} ms, {svc.sandbox} sandbox"
    return [
        row(SECTION, "background: create (POST, answers queued)", create, note=where),
        row(SECTION, "background: poll (GET while it runs, every 50 ms)", poll),
        row(SECTION, "background: create to completed seen by polling", done_s, unit="s"),
        row(SECTION, "background: resume, first replayed event after GET starting_after", resume_first),
        row(SECTION, "background: events received on resume (all after N, to the end)", missed, unit="events",
            note=f"exact replay (= full log after N, no gap, no repeat) in {exact} of {runs} runs"),
    ]  # fmt: skip


# ---- driver ---------------------------------------------------------------------------------


def measure(quick: bool, row: Row, sandbox: str = "auto") -> list[dict[str, Any]]:
    if sandbox == "auto":
        sandbox = "docker" if docker_runsc_ready() else "local"
    iterations = 40
    rec = Recorder()
    rows: list[dict[str, Any]] = []
    with (
        ScriptedUpstream(rec, record=False) as up,
        running_service(up.base_url, sandbox, max_iterations=iterations + 5) as svc,
    ):
        rows += first_progress(svc, up, rec, 5 if quick else 10, row)
        rows += progress_cost(svc, up, rec, latency_s=0.0, iterations=iterations,
                              runs=8 if quick else 20, row=row)  # fmt: skip
        if not quick:
            rows += progress_cost(
                svc, up, rec, latency_s=LATENCY_S, iterations=10, runs=10, row=row
            )
        rows += progress_work_in_process(svc, up, rec, iterations=iterations, reps=200, row=row)
        rows += background(svc, up, rec, 3 if quick else 6, row)
    return rows


async def rows(quick: bool, row: Row) -> list[dict[str, Any]]:
    """The section's rows for ``make bench``, built with bench.row."""
    return await asyncio.to_thread(measure, quick, row)


def main(argv: list[str] | None = None) -> int:
    from loadtest.bench import machine, markdown, row

    p = argparse.ArgumentParser(
        description="issue 15's figures: progress, its cost, background runs"
    )
    p.add_argument("--quick", action="store_true", help="fewer runs")
    p.add_argument("--sandbox", choices=("auto", "docker", "local"), default="auto")
    args = p.parse_args(argv)
    started = time.strftime("%Y%m%d-%H%M%S")
    table = markdown(measure(args.quick, row, args.sandbox))
    text = f"Progress benchmarks {started} on {machine()}\n\n{table}\n"
    print(text)
    out = ROOT / "logs" / f"bench-progress-{started}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
