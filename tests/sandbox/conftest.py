"""Sandbox test helpers: a handle per test on either backend, and leak checks for Docker."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from loadtest.hostmem import cmdlines
from sandbox.config import SandboxConfig
from sandbox.handle import SandboxHandle
from sandbox.pool import launch
from sandbox.process import CGROUP_ROOT

TEST_INSTANCE = "rlm-test"


@pytest.fixture(params=["local", "docker", "runsc"])
def cfg(request: pytest.FixtureRequest) -> SandboxConfig:
    """The same contract runs on the unsafe local backend, on Docker + runsc, and on runsc
    run directly."""
    return request.getfixturevalue(f"{request.param}_cfg")


@pytest.fixture(params=["docker", "runsc"])
def contained_cfg(request: pytest.FixtureRequest) -> SandboxConfig:
    """Both ways a gVisor sandbox is run: through Docker, and by runsc directly."""
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
    """Ids of every sandbox (running or not) of ``instance``: Docker's containers, and what
    the runsc backend left in its state (runsc's own list, bundles and cgroups)."""
    from sandbox.docker_backend import LABEL_INSTANCE, client
    from sandbox.runsc_backend import CGROUP_PARENT, state_paths

    found = client().containers.list(all=True, filters={"label": f"{LABEL_INSTANCE}={instance}"})
    ids = [c.id for c in found]
    root, bundles, _ = state_paths(SandboxConfig())
    prefix = f"rlm-{instance}-"
    listed = subprocess.run(
        ["runsc", "--root", str(root), "list", "--quiet"], capture_output=True, text=True
    ).stdout.split()
    ids += [f"runsc:{n}" for n in listed if n.startswith(prefix)]
    ids += [f"bundle:{p.name}" for p in bundles.glob(f"{prefix}*")]
    for hierarchy in ("memory", "cpuacct", "pids", ""):
        base = Path(CGROUP_ROOT) / hierarchy / CGROUP_PARENT
        ids += [f"cgroup:{p}" for p in base.glob(f"{prefix}*")]
    return ids


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
