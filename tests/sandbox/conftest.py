"""Sandbox test helpers: a handle per test on either backend, and leak checks for Docker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from loadtest.hostmem import cmdlines
from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle
from sandbox.pool import launch

TEST_INSTANCE = "rlm-test"


@pytest.fixture(params=["local", "docker"])
def cfg(request: pytest.FixtureRequest) -> SandboxConfig:
    """The same contract runs on the unsafe local backend and on Docker + runsc."""
    return request.getfixturevalue(f"{request.param}_cfg")


@pytest.fixture
async def sandbox(cfg: SandboxConfig) -> AsyncIterator[SandboxHandle]:
    handle = await launch(cfg)
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def docker_sandbox(docker_cfg: SandboxConfig) -> AsyncIterator[SandboxHandle]:
    handle = await launch(docker_cfg)
    try:
        yield handle
    finally:
        await handle.close()


def containers(instance: str = TEST_INSTANCE) -> list[str]:
    """Ids of every container (running or not) labelled for ``instance``."""
    from sandbox.docker_backend import LABEL_INSTANCE, client

    found = client().containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
    return [c.id for c in found]


def processes_mentioning(container_id: str) -> list[str]:
    """Host processes (runsc-sandbox, runsc-gofer, containerd-shim...) naming a container."""
    hits = [f"{pid}: {cmd[:160]}" for pid, cmd in cmdlines() if container_id in cmd]
    return hits


async def assert_no_leak(container_ids: list[str], instance: str = TEST_INSTANCE) -> None:
    """No container of ``instance`` left, and no host process still naming one of ours."""
    left = await asyncio.to_thread(containers, instance)
    assert left == [], f"containers left behind: {left}"
    stray: list[str] = []
    for _ in range(30):  # the runtime tears its processes down just after the removal
        stray = [p for cid in container_ids for p in processes_mentioning(cid)]
        if not stray:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"runtime processes left behind: {stray}")
