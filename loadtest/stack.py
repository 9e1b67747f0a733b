"""A local stack on loopback: the scripted upstream and the real service, as subprocesses.

``LocalStack`` starts ``python -m loadtest.serve_upstream`` and ``python -m service`` (with
its own ``RLM_INSTANCE`` label, so its start-up reaping and our leak check touch only its
own containers, and its own session store, a temporary directory, unless the config sets
``RLM_SESSION_STORE``), waits for ``/readyz``, and on exit stops both by pid, then checks
that no container of that instance is left (removing any it finds and reporting them in
``leftovers``) and removes the store.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from loadtest.upstream import free_port, wait_until_up
from sandbox import runsc_backend
from sandbox.config import SandboxConfig

ROOT = Path(__file__).resolve().parents[1]
# runsc's state root for RLM_SANDBOX=runsc at the default RLM_SANDBOX_STATE_DIR.
RUNSC_ROOT = str(Path(SandboxConfig().state_dir) / "runsc")
API_KEY = "loadtest-key"


@dataclass
class StackConfig:
    """What to run: sandbox backend, upstream policy and latency, extra service settings."""

    sandbox: str = "docker"  # docker | runsc | local
    runtime: str = "runsc"
    policy: str = "scenarios"
    latency_s: float = 0.0
    pool_size: int = 8
    env: dict[str, str] = field(default_factory=dict)  # more service settings (RLM_*)
    log_dir: Path | None = None  # where the two processes' output goes (else discarded)
    ready_timeout_s: float = 120.0
    service_dir: Path = ROOT  # run the service from another checkout (e.g. a release) here


class LocalStack:
    """Use as a context manager; ``base_url`` is the service, ``upstream_url`` the model."""

    def __init__(self, cfg: StackConfig) -> None:
        self.cfg = cfg
        self.instance = f"rlm-loadtest-{uuid.uuid4().hex[:8]}"
        self.port = free_port()
        self.upstream_port = free_port()
        self.api_key = API_KEY
        self.leftovers: list[str] = []
        # The stack's own session store (unless the config names one): sessions of one run
        # never meet another's, and none are left on the machine.
        self.store_dir: Path | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    @property
    def service_pid(self) -> int:
        """The service process's pid (the second one started, after the upstream)."""
        return self._procs[1].pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/v1"

    def service_env(self) -> dict[str, str]:
        c = self.cfg
        env = {
            **os.environ,
            "OPENAI_API_KEY": "scripted",
            "OPENAI_BASE_URL": self.upstream_url,
            "RLM_ROOT_MODEL": "gpt-5",
            "RLM_SUB_MODEL": "gpt-5-mini",
            "RLM_HOST": "127.0.0.1",
            "RLM_PORT": str(self.port),
            "RLM_API_KEYS": self.api_key,
            "RLM_SANDBOX": c.sandbox,
            "RLM_SANDBOX_RUNTIME": c.runtime,
            "RLM_SANDBOX_POOL_SIZE": str(c.pool_size),
            "RLM_INSTANCE": self.instance,
            "RLM_LOG_LEVEL": "warning",
            "RLM_SHUTDOWN_GRACE_S": "5",
            "RLM_TRAJECTORY_DIR": "",
        }
        if self.store_dir is not None:
            env["RLM_SESSION_STORE"] = f"file://{self.store_dir}"
        env.update(c.env)
        return env

    def _spawn(
        self, name: str, args: list[str], env: dict[str, str], cwd: Path = ROOT
    ) -> subprocess.Popen[bytes]:
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.cfg.log_dir is not None:
            self.cfg.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.cfg.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - closed in stop()
            self._logs.append(out)
        proc = subprocess.Popen(
            [sys.executable, *args], cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        self._procs.append(proc)
        return proc

    def start(self) -> LocalStack:
        c = self.cfg
        if "RLM_SESSION_STORE" not in c.env:
            self.store_dir = Path(tempfile.mkdtemp(prefix=f"{self.instance}-sessions-"))
        try:
            up = self._spawn(
                "upstream",
                _upstream_args(self.upstream_port, c.policy, c.latency_s),
                {**os.environ},
            )
            self._wait("the scripted upstream", f"{self.upstream_url}/models", up, 30)
            svc = self._spawn("service", ["-m", "service"], self.service_env(), c.service_dir)
            self._wait("the service", f"{self.base_url}/readyz", svc, c.ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self, name: str, url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
        headers = {"authorization": f"Bearer {self.api_key}"}
        wait_until_up(
            url, timeout_s=timeout_s, proc=proc, headers=headers, name=name, interval_s=0.2
        )

    def stop(self) -> None:
        """Stop the service first (it removes its sandboxes), then the upstream; check leaks."""
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        self._procs.clear()
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self.cfg.sandbox in ("docker", "runsc"):
            self.leftovers = remove_containers(self.instance)
        if self.store_dir is not None:
            shutil.rmtree(self.store_dir, ignore_errors=True)
            self.store_dir = None

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def container_ids(instance: str) -> list[str]:
    """Full ids of every container (running or not) labelled with this service instance,
    then the names of the sandboxes runsc runs directly for it (RLM_SANDBOX=runsc)."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--no-trunc", "--filter", f"label=rlm-py.instance={instance}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    return out.stdout.split() + _runsc_sandboxes(instance)


def _runsc_sandboxes(instance: str) -> list[str]:
    out = subprocess.run(
        ["runsc", "--root", RUNSC_ROOT, "list", "--quiet"], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    return [n for n in out.stdout.split() if n.startswith(f"rlm-{instance}-")]


def remove_containers(instance: str) -> list[str]:
    """Remove what a stopped service left behind; returns what there was (should be []).

    Sandboxes runsc runs directly, with their bundles, cgroups and checkpoint, go through
    the service's own reaper: a bundle whose sandbox runsc no longer lists (a service killed
    mid-start) is found too."""
    ids = container_ids(instance)
    direct = set(_runsc_sandboxes(instance))
    bundles = Path(SandboxConfig().state_dir) / "bundles"
    leftover = {p.name for p in bundles.glob(f"rlm-{instance}-*")} - direct
    ids += sorted(leftover)
    in_docker = [i for i in ids if i not in direct and i not in leftover]
    if in_docker:
        subprocess.run(["docker", "rm", "-f", *in_docker], capture_output=True, timeout=120)
    if direct or leftover:
        cfg = SandboxConfig(backend="runsc", instance=instance)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # callers may run a loop
            pool.submit(asyncio.run, runsc_backend.reap(cfg)).result(timeout=300)
    return ids


def _upstream_args(port: int, policy: str, latency_s: float) -> list[str]:
    """``python`` arguments that serve the scripted upstream with a policy on ``port``."""
    return ["-m", "loadtest.serve_upstream", "--port", str(port),
            "--latency", str(latency_s), "--policy", policy]  # fmt: skip


@contextlib.contextmanager
def upstream_process(policy: str, latency_s: float = 0.0) -> Iterator[str]:
    """Only the scripted upstream, as a subprocess; yields its base URL (``.../v1``)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, *_upstream_args(port, policy, latency_s)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(f"{url}/models", timeout_s=30, proc=proc, name="the scripted upstream")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
