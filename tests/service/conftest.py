"""Fixtures for the engine and HTTP tests: one scripted upstream, engines, sandboxes."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from loadtest.upstream import Reply, Script, ScriptedUpstream, is_root_request, needle_policy
from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle
from sandbox.pool import SandboxPool, launch
from service.rlm.budget import Budget
from service.rlm.engine import EngineConfig, RLMEngine
from service.rlm.upstream import Upstream
from tests.service.fake_aws import moto_endpoint  # noqa: F401 - the store tests' fixture


class Router:
    """Root-loop calls go to ``root``; sub-calls (llm_query, child runs' calls) to ``sub``."""

    def __init__(
        self, root: Any, sub: Callable[[dict[str, Any]], str | Reply] | None = None
    ) -> None:
        self.root = root if callable(root) else Script(root)
        self.sub = sub or (lambda body: "sub:" + body["messages"][-1]["content"][:40])

    def __call__(self, body: dict[str, Any]) -> str | Reply:
        return self.root(body) if is_root_request(body) else self.sub(body)


@pytest.fixture(scope="session")
def upstream() -> Iterator[ScriptedUpstream]:
    with ScriptedUpstream() as up:
        yield up


@pytest.fixture
def up(upstream: ScriptedUpstream) -> Iterator[ScriptedUpstream]:
    """The shared upstream, reset for one test (policy, latency and counters)."""
    upstream.policy = needle_policy
    upstream.latency_s = 0.0
    upstream.reset_stats()
    yield upstream
    upstream.policy = needle_policy
    upstream.latency_s = 0.0


@pytest.fixture
async def client_upstream(up: ScriptedUpstream) -> AsyncIterator[Upstream]:
    u = Upstream(
        api_key="sk-test-upstream", base_url=up.base_url, timeout_s=30, retries=2, concurrency=32
    )
    yield u
    await u.close()


@pytest.fixture
def engine(client_upstream: Upstream) -> RLMEngine:
    return RLMEngine(client_upstream, EngineConfig(root_model="gpt-5", sub_model="gpt-5-mini"))


@pytest.fixture
async def sandbox(local_cfg: SandboxConfig) -> AsyncIterator[SandboxHandle]:
    handle = await launch(local_cfg)
    yield handle
    await handle.close()


@pytest.fixture
async def pool(local_cfg: SandboxConfig) -> AsyncIterator[SandboxPool]:
    """A pool of local sandboxes that keeps none warm (sessions tests start their own)."""
    p = SandboxPool(local_cfg, 0)
    yield p
    await p.close()


def make_budget(**kw: Any) -> Budget:
    args: dict[str, Any] = {
        "max_iterations": 10,
        "max_depth": 1,
        "max_sub_calls": 256,
        "max_total_tokens": None,
    }
    args.update(kw)
    timeout = args.pop("timeout_s", 60.0)
    return Budget(deadline=time.monotonic() + timeout, **args)


def haystack(n: int = 10_000, magic: int = 424242, at: int = 7777) -> str:
    lines = [f"line {i}: nothing to see, filler text {i * 7 % 13}" for i in range(n)]
    lines[at] = f"line {at}: the magic number is {magic}"
    return "\n".join(lines)


class ServiceServer:
    """The real app under uvicorn on a loopback port, on its own thread and event loop."""

    def __init__(self, **overrides: Any) -> None:
        from loadtest.upstream import ThreadedServer, free_port
        from service.app import create_app
        from service.config import Settings

        self.port = free_port()
        # Each test service has a session store of its own, gone with the test run.
        self._store_dir = tempfile.TemporaryDirectory(prefix="rlm-test-store-")
        overrides.setdefault("rlm_session_store", f"file://{self._store_dir.name}")
        self.settings = Settings(_env_file=None, rlm_port=self.port, **overrides)  # type: ignore[call-arg]
        self.app = create_app(self.settings)
        self._server = ThreadedServer(
            self.app, self.port, name="service", timeout_graceful_shutdown=5
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ServiceServer:
        self._server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.stop()
        self._store_dir.cleanup()


def service_env(up: ScriptedUpstream, **extra: Any) -> dict[str, Any]:
    return dict(
        openai_base_url=up.base_url,
        openai_api_key="sk-upstream-secret-value",
        rlm_api_keys="key-alpha,key-beta",
        rlm_exec_timeout_s=5,
        rlm_exec_hard_grace_s=5,
        **extra,
    )


def terminate(proc: subprocess.Popen[Any], timeout_s: float = 90) -> int:
    """SIGTERM a service process (it drains and removes its sandboxes), SIGKILL past
    ``timeout_s``; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode
