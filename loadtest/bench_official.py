"""The official RLM library (PyPI ``rlms``, package ``rlm``) on the needle task, for ``make bench``.

``python -m loadtest.bench_official --base-url URL --env local --concurrency 20 --seconds 15``
prints one JSON object: completions, failures, elapsed seconds and per-completion latencies.

The library is synchronous and its ``LocalREPL`` swaps ``sys.stdout`` and the working
directory process-wide, so concurrent completions can't share a process: each concurrent
stream is a forked worker process (forked before any thread starts). Workers start
together after a barrier, so import and fork time are not measured.

``--env docker`` uses its ``DockerREPL``: ``docker run`` per completion, a ``docker exec
python`` per code block that unpickles and re-pickles the REPL state, and code reaches the
host through an HTTP proxy. It expects an image with ``python`` and ``requests``
(``ensure_image`` builds one offline from the sandbox image). It normally reaches the proxy
over Docker's bridge via ``host.docker.internal``; here the container joins the host's
network namespace and that name points at 127.0.0.1 instead, so every byte stays on
loopback (this makes it, if anything, a little faster than stock).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from loadtest.haystack import NEEDLE_QUERY, filler, magic_number, with_needle

OFFICIAL_IMAGE = "rlm-bench-official-repl:latest"
BASE_IMAGE = os.environ.get("RLM_SANDBOX_IMAGE", "rlm-sandbox:latest")
PACKAGES = ("requests", "urllib3", "idna", "charset_normalizer", "certifi")


def ensure_image() -> str:
    """Build ``OFFICIAL_IMAGE`` (sandbox image + ``python`` + requests) if it is missing."""
    if (
        subprocess.run(
            ["docker", "image", "inspect", OFFICIAL_IMAGE], capture_output=True
        ).returncode
        == 0
    ):
        return OFFICIAL_IMAGE
    import requests  # the host's copies of pure-Python packages, same Python minor version

    site = Path(requests.__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as ctx:
        for name in PACKAGES:
            shutil.copytree(site / name, Path(ctx) / "pkgs" / name)
        (Path(ctx) / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nUSER root\n"
            "COPY pkgs/ /usr/lib/python3/dist-packages/\n"
            'RUN ln -sf "$(command -v python3)" /usr/local/bin/python\n'
            "WORKDIR /\nENTRYPOINT []\n"
        )
        subprocess.run(
            ["docker", "build", "-q", "--network", "none", "-t", OFFICIAL_IMAGE, ctx],
            check=True,
            capture_output=True,
        )
    return OFFICIAL_IMAGE


def remove_containers() -> None:
    """Remove containers of the official image that a killed worker may have left."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"ancestor={OFFICIAL_IMAGE}"],
        capture_output=True,
        text=True,
    )
    if out.stdout.split():
        subprocess.run(["docker", "rm", "-f", *out.stdout.split()], capture_output=True)


def _loopback_docker_run() -> None:
    """Make DockerREPL's ``docker run`` join the host network with host.docker.internal=127.0.0.1."""
    from rlm.environments import docker_repl

    real_run = subprocess.run

    def run(args: Any, *a: Any, **kw: Any) -> Any:
        if (
            isinstance(args, list)
            and args[:2] == ["docker", "run"]
            and "host.docker.internal:host-gateway" in args
        ):
            i = args.index("host.docker.internal:host-gateway")
            args = [
                *args[: i - 1],
                "--network",
                "host",
                "--add-host",
                "host.docker.internal:127.0.0.1",
                *args[i + 1 :],
            ]
        return real_run(args, *a, **kw)

    docker_repl.subprocess = type("patched", (), {"run": staticmethod(run), **{
        k: getattr(subprocess, k) for k in ("PIPE", "DEVNULL", "CalledProcessError")
    }})  # fmt: skip


def exec_round_trips(n: int = 20) -> list[float]:
    """Milliseconds per trivial code block (``1``) in the official DockerREPL.

    The same workload as the sandbox benchmark's exec row: one live REPL, one block at a time
    (each is a ``docker exec python`` that loads and saves the pickled state).
    """
    os.environ.setdefault("RLM_DOCKER_WORKSPACE_DIR", tempfile.mkdtemp(prefix="rlm-official-"))
    ensure_image()
    _loopback_docker_run()
    from rlm.environments.docker_repl import DockerREPL

    env = DockerREPL(image=OFFICIAL_IMAGE)
    try:
        env.execute_code("1")  # warm-up
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            env.execute_code("1")
            out.append((time.perf_counter() - t0) * 1000)
        return out
    finally:
        env.cleanup()


def _worker(args: argparse.Namespace, barrier: Any, results: Any) -> None:
    from rlm import RLM

    if args.env == "docker":
        _loopback_docker_run()
    env_kwargs = {"image": OFFICIAL_IMAGE} if args.env == "docker" else {}
    lines = filler(args.lines)
    latencies: list[float] = []
    failures = 0
    errors: list[str] = []
    barrier.wait()
    deadline = time.perf_counter() + args.seconds
    while time.perf_counter() < deadline:
        number = magic_number()
        rlm = RLM(
            backend="openai",
            backend_kwargs={"model_name": "gpt-5", "base_url": args.base_url, "api_key": "scripted"},
            environment=args.env, environment_kwargs=env_kwargs, max_iterations=5,
        )  # fmt: skip
        t0 = time.perf_counter()
        try:
            out = rlm.completion(with_needle(lines, number), root_prompt=NEEDLE_QUERY)
            ok = number in str(out.response)
            if not ok:
                errors.append(f"wrong answer {str(out.response)[:80]!r}")
        except Exception as exc:  # noqa: BLE001 - counted and reported
            ok = False
            errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")
        latencies.append((time.perf_counter() - t0) * 1000)
        failures += not ok
    results.put({"latencies_ms": latencies, "failures": failures, "errors": errors[:3]})


def run(
    base_url: str, env: str, concurrency: int, seconds: float, lines: int = 10_000
) -> dict[str, Any]:
    """Closed loop of ``concurrency`` workers for ``seconds``; the merged results."""
    args = argparse.Namespace(base_url=base_url, env=env, seconds=seconds, lines=lines)
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(concurrency + 1)
    results = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(args, barrier, results)) for _ in range(concurrency)]
    for p in procs:
        p.start()
    barrier.wait(timeout=300)
    t0 = time.perf_counter()
    merged: dict[str, Any] = {"latencies_ms": [], "failures": 0, "errors": []}
    for _ in procs:
        part = results.get(timeout=seconds + 600)
        merged["latencies_ms"] += part["latencies_ms"]
        merged["failures"] += part["failures"]
        merged["errors"] += part["errors"]
    merged["elapsed_s"] = time.perf_counter() - t0
    for p in procs:
        p.join(timeout=30)
    merged["completions"] = len(merged["latencies_ms"])
    return merged


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="the official rlm library on the needle task")
    p.add_argument("--base-url", required=True)
    p.add_argument("--env", choices=["local", "docker"], default="local")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--lines", type=int, default=10_000)
    args = p.parse_args(argv)
    workspace = tempfile.mkdtemp(prefix="rlm-bench-official-")
    os.environ["RLM_DOCKER_WORKSPACE_DIR"] = workspace  # DockerREPL's mounts, not the repo's cwd
    try:
        if args.env == "docker":
            ensure_image()
        out = run(args.base_url, args.env, args.concurrency, args.seconds, args.lines)
    finally:
        if args.env == "docker":
            remove_containers()
        shutil.rmtree(workspace, ignore_errors=True)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
