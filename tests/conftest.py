"""Shared fixtures: the sandbox runtime (real Docker + runsc) and configurations.

Docker tests never skip silently: when Docker or runsc is missing they fail with what to
do, unless RLM_TEST_SKIP_DOCKER=1 says this machine deliberately runs without them
(CI never sets it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox.config import SandboxConfig

ROOT = Path(__file__).resolve().parents[1]
IMAGE = os.environ.get("RLM_SANDBOX_IMAGE", "rlm-sandbox:latest")
RUNTIME = os.environ.get("RLM_SANDBOX_RUNTIME", "runsc")


def _docker_problem() -> str | None:
    try:
        import docker

        client = docker.from_env(timeout=10)
        info = client.info()
    except Exception as exc:  # noqa: BLE001
        return f"Docker daemon not reachable ({exc}); start dockerd (see README, .ci/run)"
    if RUNTIME not in (info.get("Runtimes") or {}):
        return f"Docker has no {RUNTIME!r} runtime; register runsc in /etc/docker/daemon.json"
    # Build when missing or stale (the script compares a hash of the worker's sources).
    build = subprocess.run(
        [str(ROOT / "sandbox" / "build_image.sh")],
        env={**os.environ, "IMAGE": IMAGE},
        capture_output=True,
        text=True,
        timeout=900,
    )
    if build.returncode != 0:
        return f"sandbox image {IMAGE} could not be built (`make image`): {build.stderr[-800:]}"
    _remove_dead_runsc_sandboxes()
    # Containers of test instances left by an interrupted earlier run would fail the leak
    # checks: remove those whose test process is gone (a concurrent run keeps its own).
    for c in client.containers.list(all=True, filters={"label": "rlm-py.managed=1"}):
        owner = c.labels.get("rlm-py.owner-pid", "")
        alive = owner.isdigit() and Path(f"/proc/{owner}").exists()
        if c.labels.get("rlm-py.instance", "").startswith("rlm-test") and not alive:
            c.remove(force=True)
    return None


def _remove_dead_runsc_sandboxes() -> None:
    """The same for sandboxes the runsc backend ran directly (their bundles name the owner)."""
    state = Path(SandboxConfig().state_dir)
    for spec in (state / "bundles").glob("*/config.json"):
        try:
            notes = json.loads(spec.read_text()).get("annotations", {})
        except (OSError, ValueError):
            continue
        owner = notes.get("rlm-py.owner-pid", "")
        alive = owner.isdigit() and Path(f"/proc/{owner}").exists()
        if notes.get("rlm-py.instance", "").startswith("rlm-test") and not alive:
            name = spec.parent.name
            for args in (["kill", "--all", name, "KILL"], ["delete", "--force", name]):
                subprocess.run(
                    ["runsc", "--root", str(state / "runsc"), *args],
                    capture_output=True,
                    timeout=30,
                )
            shutil.rmtree(spec.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def docker_ready() -> None:
    """Real Docker with the runsc runtime and the sandbox image, or a failure saying why."""
    problem = _docker_problem()
    if problem is None:
        return
    if os.environ.get("RLM_TEST_SKIP_DOCKER") == "1":
        pytest.skip(problem)
    pytest.fail(problem)


@pytest.fixture
def local_cfg() -> SandboxConfig:
    return SandboxConfig(backend="local", exec_timeout_s=2.0, hard_grace_s=3.0)


@pytest.fixture
def docker_cfg(docker_ready: None) -> SandboxConfig:
    return SandboxConfig(
        backend="docker",
        runtime=RUNTIME,
        image=IMAGE,
        instance="rlm-test",
        exec_timeout_s=2.0,
        hard_grace_s=3.0,
        memory_mb=256,
        pids=192,  # the fork server and its spare need room; 64 died after a few resets
        tmpfs_mb=32,
        fsize_mb=32,
    )


@pytest.fixture
def runsc_cfg(docker_cfg: SandboxConfig) -> SandboxConfig:
    """The same sandbox run by runsc directly (the image still comes from Docker)."""
    return dataclasses.replace(docker_cfg, backend="runsc")
