"""runsc run directly (RLM_SANDBOX=runsc): as strict as Docker + runsc, with the channel on
one pipe, and nothing left behind. Real runsc, real Docker for the image and the comparison.
"""

from __future__ import annotations

import asyncio
import dataclasses
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from loadtest.hostmem import cmdlines
from sandbox import pool as pool_module
from sandbox import runsc_backend
from sandbox.config import SandboxConfig
from sandbox.docker_backend import DockerProcess
from sandbox.errors import SandboxLost, SandboxStartError
from sandbox.handle import SandboxHandle
from sandbox.pool import SandboxPool, launch
from sandbox.runsc_backend import RunscProcess, state_paths

from .conftest import assert_no_leak, containers

# The parts of an OCI spec that decide what sandboxed code can do.
ISOLATION = ("process", "root", "hostname", "mounts", "linux")
# Docker's own, irrelevant to isolation: its bind mounts of resolv.conf, hosts and hostname
# (there is no network to resolve on), its network hook, and the paths naming the container.
DOCKER_ONLY_MOUNTS = {"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"}


def docker_effective_spec(container_id: str) -> dict[str, Any]:
    found = glob.glob(f"/run/docker/containerd/**/{container_id}/config.json", recursive=True)
    found += glob.glob(f"/run/containerd/**/{container_id}/config.json", recursive=True)
    assert found, f"no effective spec for container {container_id}"
    return json.loads(Path(found[0]).read_text())


def comparable(spec: dict[str, Any]) -> dict[str, Any]:
    """The isolation-relevant part of a spec, with per-sandbox names taken out."""
    out = {k: json.loads(json.dumps(spec[k])) for k in ISOLATION}
    out["root"].pop("path")
    out["process"]["env"].sort()
    out["mounts"] = [m for m in out["mounts"] if m["destination"] not in DOCKER_ONLY_MOUNTS]
    out["linux"].pop("cgroupsPath")
    # Docker hands runsc its seccomp profile and sysctls; runsc applies neither without its
    # --oci-seccomp flag (checked below to be absent from both), the Sentry being the filter.
    out["linux"].pop("seccomp", None)
    out["linux"].pop("sysctl", None)
    return out


def boot_flags(cmd: str) -> list[str]:
    """The runsc-sandbox process's global flags that shape the sandbox (not paths)."""
    head = cmd.split(" boot ", 1)[0].split()[1:]
    return sorted(f for f in head if not f.startswith(("--root", "--log")))


def sandbox_cmd(name: str) -> tuple[int, str]:
    hits = [(pid, c) for pid, c in cmdlines() if c.startswith("runsc-sandbox") and name in c]
    assert len(hits) == 1, hits
    return hits[0]


async def test_the_effective_spec_is_dockers(docker_cfg: SandboxConfig) -> None:
    """Every isolation setting Docker renders for a sandbox is in the direct one's spec, and
    runsc boots both with the same flags (platform, network none, no OCI seccomp)."""
    cfg = dataclasses.replace(docker_cfg, memory_mb=384, cpus=0.5, pids=160, nofile=77)
    boxes = [await launch(cfg), await launch(dataclasses.replace(cfg, backend="runsc"))]
    try:
        docker_proc, direct = boxes[0].process, boxes[1].process
        assert isinstance(docker_proc, DockerProcess) and isinstance(direct, RunscProcess)
        ours = json.loads((state_paths(cfg)[1] / direct.id / "config.json").read_text())
        theirs = docker_effective_spec(docker_proc.id)
        assert comparable(ours) == comparable(theirs)
        assert ours["process"]["capabilities"] == {} and ours["process"]["noNewPrivileges"]
        assert ours["root"]["readonly"] is True
        assert {"type": "network"} in ours["linux"]["namespaces"]
        assert ours["linux"]["resources"]["memory"]["limit"] == 384 * 2**20
        docker_flags = boot_flags(sandbox_cmd(docker_proc.id)[1])
        direct_flags = boot_flags(sandbox_cmd(direct.id)[1])
        assert docker_flags == direct_flags and "--network=none" in direct_flags
        assert not any("oci-seccomp" in f for f in direct_flags)
        # And they hold inside: the same user, the same caps and limits, seen by the code.
        probe = (
            "import os, resource\n"
            "st = open('/proc/self/status').read()\n"
            "caps = [l for l in st.splitlines() if l.startswith('Cap')]\n"
            "print(os.getuid(), os.getgid(), caps, resource.getrlimit(resource.RLIMIT_NOFILE),"
            " resource.getrlimit(resource.RLIMIT_FSIZE), os.uname().nodename)"
        )
        seen = [(await b.exec(probe)).stdout for b in boxes]
        assert seen[0] == seen[1] and seen[0].startswith("10001 10001"), seen
    finally:
        for b in boxes:
            await b.close()


@pytest.mark.parametrize("backend", ["docker", "runsc"])
async def test_sandboxes_run_on_systrap_too(docker_cfg: SandboxConfig, backend: str) -> None:
    """gVisor's own builds (the fleet's hosts) run systrap: on the runtime the playbook
    registers for it, a sandbox boots on that platform, keeps variables, resets and stops."""
    cfg = dataclasses.replace(docker_cfg, backend=backend, runtime="runsc-systrap")
    box = await launch(cfg)
    try:
        name = box.process.id
        assert "--platform=systrap" in boot_flags(sandbox_cmd(name)[1])
        assert (await box.exec("x = 6 * 7\nx")).stdout == "42\n"
        await box.reset()
        assert "NameError" in (await box.exec("x")).stderr
    finally:
        await box.close()
    assert not [c for _, c in cmdlines() if c.startswith("runsc") and name in c]


async def test_the_channel_is_one_pipe_from_the_sandbox(runsc_cfg: SandboxConfig) -> None:
    """The worker writes its frames into a pipe this process reads: the runsc-sandbox
    process holds the other end itself, with no daemon or shim in between."""
    box = await launch(runsc_cfg)
    try:
        proc = box.process
        assert isinstance(proc, RunscProcess)
        transport = proc._proc.stdout._transport  # type: ignore[union-attr]
        ours = os.readlink(f"/proc/self/fd/{transport.get_extra_info('pipe').fileno()}")
        pid, _ = sandbox_cmd(proc.id)
        held = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        assert ours.startswith("pipe:[") and ours in held
        assert not any("containerd-shim" in c and proc.id in c for _, c in cmdlines())
        assert (await box.exec("print('through the pipe')")).stdout == "through the pipe\n"
    finally:
        await box.close()


async def test_close_leaves_nothing(runsc_cfg: SandboxConfig) -> None:
    box = await launch(runsc_cfg)
    name = box.process.name
    await box.exec("x = bytearray(10 * 2**20)")
    cpu = box.cpu_seconds()
    assert cpu is not None and cpu > 0  # read from the sandbox's own cgroup
    assert any(name in c for c in await asyncio.to_thread(containers))
    await box.close()
    assert not (state_paths(runsc_cfg)[1] / name).exists()
    await assert_no_leak([name])


async def test_a_crashed_sandbox_is_reported_and_cleaned(runsc_cfg: SandboxConfig) -> None:
    """The sentry dies on the host (an OOM kill, a runsc bug): the session's sandbox is lost
    with a reason, and closing it leaves nothing behind."""
    box = await launch(runsc_cfg)
    name = box.process.name
    pid, _ = sandbox_cmd(name)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(SandboxLost, match=r"sandbox"):
        await box.exec("1")
    assert not box.alive and box.lost_error is not None
    await box.close()
    await assert_no_leak([name])


async def test_the_reaper_deletes_leftovers_of_this_instance_only(
    runsc_cfg: SandboxConfig,
) -> None:
    """A service that died left sandboxes running: the next one's pool removes its own."""
    mine = dataclasses.replace(runsc_cfg, instance="rlm-test-reaper")
    theirs = dataclasses.replace(runsc_cfg, instance="rlm-test-bystander")
    # Started and abandoned (not closed): as a crashed service leaves them.
    boxes = [await launch(c) for c in (mine, theirs)]
    left = [b.process for b in boxes]
    assert isinstance(left[0], RunscProcess) and isinstance(left[1], RunscProcess)
    try:
        assert any(left[0].id in c for c in containers(mine.instance))
        pool = SandboxPool(mine, size=0)
        await pool.start()
        await pool.close()
        assert containers(mine.instance) == []
        assert any(left[1].id in c for c in containers(theirs.instance))
        assert (await boxes[1].exec("'still here'")).stdout == "'still here'\n"
    finally:
        for box in boxes:
            await box.close()
    await assert_no_leak([left[0].id], mine.instance)
    await assert_no_leak([left[1].id], theirs.instance)


def test_a_killed_service_leaves_no_sandbox_running(runsc_cfg: SandboxConfig) -> None:
    """SIGKILL of the service process: its sandboxes die with it (runsc run's parent death
    signal and runsc's attached sandbox); their state is reaped at the next start."""
    cfg = dataclasses.replace(runsc_cfg, instance="rlm-test-killed")
    script = (
        "import asyncio, dataclasses, sys, time\n"
        "from sandbox.config import SandboxConfig\n"
        "from sandbox.pool import launch\n"
        "async def main():\n"
        f"    h = await launch(SandboxConfig(backend='runsc', image={cfg.image!r}, "
        f"instance={cfg.instance!r}, memory_mb=256, pids=192))\n"
        "    print(h.process.id, flush=True)\n"
        "    await asyncio.sleep(120)\n"
        "asyncio.run(main())\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=Path.cwd()
    )
    try:
        assert child.stdout is not None
        name = child.stdout.readline().strip()
        assert name.startswith("rlm-rlm-test-killed-"), name
        assert any(name in c for _, c in cmdlines())
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        deadline = time.monotonic() + 10
        while (alive := [c for _, c in cmdlines() if name in c]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive == [], alive
    finally:
        if child.poll() is None:
            child.kill()
    assert asyncio.run(runsc_backend.reap(cfg)) == 1
    assert containers(cfg.instance) == []


async def test_interrupt_reaches_the_running_block(runsc_cfg: SandboxConfig) -> None:
    box = await launch(dataclasses.replace(runsc_cfg, exec_timeout_s=20))
    try:
        task = asyncio.create_task(
            box.exec(
                "import time\ntry:\n    time.sleep(10)\nexcept KeyboardInterrupt:\n    print('stopped')"
            )
        )
        await asyncio.sleep(0.5)
        t0 = time.perf_counter()
        await box.interrupt()
        result = await task
        assert result.stdout == "stopped\n" and time.perf_counter() - t0 < 5
        assert (await box.exec("1 + 1")).stdout == "2\n"
    finally:
        await box.close()


@pytest.mark.parametrize("runtime", ["runsc", "runsc-systrap"])
def test_runtime_binary_and_flags_come_from_dockers_runtime(
    runsc_cfg: SandboxConfig, runtime: str
) -> None:
    """Both backends run one runsc with one set of flags, for any runtime the playbook
    registered (one a platform); an explicit runsc_path wins over Docker's."""
    cfg = dataclasses.replace(runsc_cfg, runtime=runtime)
    flags = asyncio.run(runsc_backend.runtime_flags(cfg))
    entry = json.loads(Path("/etc/docker/daemon.json").read_text())["runtimes"][runtime]
    expected = [a for a in entry.get("runtimeArgs", []) if "network" not in a]
    assert flags == [*expected, "--network=none"]
    assert runsc_backend.runsc_command(cfg)[0] == entry["path"]
    own = dataclasses.replace(cfg, runsc_path="/opt/other/runsc")
    assert runsc_backend.runsc_command(own)[0] == "/opt/other/runsc"


async def test_a_runtime_docker_does_not_have_is_a_start_error(runsc_cfg: SandboxConfig) -> None:
    """A mistyped RLM_SANDBOX_RUNTIME must not run some runsc with default flags (another
    platform, say): the start fails naming the setting, and nothing is left behind."""
    cfg = dataclasses.replace(runsc_cfg, runtime="runsc-no-such-platform")
    with pytest.raises(SandboxStartError, match="RLM_SANDBOX_RUNTIME"):
        await launch(cfg)
    assert not [c for _, c in cmdlines() if c.startswith("runsc") and cfg.instance in c]


async def test_an_unusable_state_dir_is_a_start_error(
    runsc_cfg: SandboxConfig, tmp_path: Path
) -> None:
    """The image cannot be unpacked (a file where the directory should be): a start error
    naming the setting, nothing left behind, and the pool says why it is not ready."""
    blocker = tmp_path / "state"
    blocker.write_text("not a directory")
    cfg = dataclasses.replace(runsc_cfg, state_dir=str(blocker), image=runsc_cfg.image)
    runsc_backend._images.clear()  # force the export of the image for this state dir
    with pytest.raises(SandboxStartError, match="RLM_SANDBOX_STATE_DIR"):
        await launch(cfg)
    pool = SandboxPool(cfg, size=1)
    await pool.start()
    try:
        deadline = time.monotonic() + 10
        while pool.last_error is None and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        assert pool.last_error is not None and "RLM_SANDBOX_STATE_DIR" in pool.last_error
        assert not pool.ready
    finally:
        await pool.close()
        runsc_backend._images.clear()


# ---- checkpoint and restore (measured against cold boots in make bench) ---------------


async def test_an_export_pruned_under_us_is_unpacked_again(runsc_cfg: SandboxConfig) -> None:
    """A process with another image prunes the exports no live sandbox uses: ours, while we
    have none running. The next start unpacks it again instead of failing for good (it used
    to trust the cached path, and every start died: "cannot read client sync file")."""
    cfg = dataclasses.replace(runsc_cfg, restore=False)
    await (await launch(cfg)).close()
    image = runsc_backend._images[cfg.image]
    await asyncio.to_thread(shutil.rmtree, image.rootfs)  # what _prune does to it
    box = await launch(cfg)
    try:
        assert (await box.exec("print(6 * 7)")).stdout == "42\n"
    finally:
        await box.close()
    assert (image.rootfs / "etc").is_dir()


async def test_a_sandbox_that_dies_starting_leaves_no_cgroup(
    runsc_cfg: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """runsc dies before its sandbox runs (here: the root filesystem vanished between our
    check and its start). It removes the bundle's container but not its cgroups: we do."""
    cfg = dataclasses.replace(runsc_cfg, restore=False, instance="rlm-test-dies-starting")
    await (await launch(cfg)).close()
    image = runsc_backend._images[cfg.image]
    monkeypatch.setattr(runsc_backend._Image, "present", lambda self: True)
    monkeypatch.setattr(image, "rootfs", Path("/nonexistent/rootfs"))
    with pytest.raises(SandboxStartError, match="died at start-up"):
        await launch(cfg)
    await assert_no_leak([], cfg.instance)


async def test_a_checkpointed_worker_restores_into_independent_sandboxes(
    runsc_cfg: SandboxConfig, tmp_path: Path
) -> None:
    """A started worker is checkpointed; each restore is a new sandbox (own name, bundle and
    channel) that resumes with the saved state, diverges on its own, draws its own entropy,
    resets to a fresh interpreter, and leaves nothing behind when closed."""
    origin = await launch(runsc_cfg)
    await origin.exec("saved = 41")
    assert isinstance(origin.process, RunscProcess)
    await runsc_backend.checkpoint(origin.process, tmp_path)
    await origin.close()
    copies = [
        await SandboxHandle.resume(
            await RunscProcess.restore(runsc_cfg, tmp_path), runsc_cfg, origin.info
        )
        for _ in range(2)
    ]
    names = [c.process.name for c in copies]
    try:
        assert len({origin.process.name, *names}) == 3
        for i, copy in enumerate(copies):
            out = await copy.exec(f"saved += {i + 1}; print(saved)")
            assert out.stdout == f"{42 + i}\n"
        draws = [(await c.exec("import os; print(os.urandom(16).hex())")).stdout for c in copies]
        assert draws[0] != draws[1]
        await copies[0].reset()
        assert "NameError" in (await copies[0].exec("saved")).stderr
        assert (await copies[1].exec("print(saved)")).stdout == "43\n"
    finally:
        for c in copies:
            await c.close()
    for name in names:
        assert not (state_paths(runsc_cfg)[1] / name).exists()
    rc, listed = await runsc_backend.runsc(runsc_cfg, "list", "--quiet")
    assert rc == 0 and not set(listed.split()) & {origin.process.name, *names}
    await assert_no_leak([origin.process.name, *names])


async def test_a_restore_without_a_checkpoint_is_a_start_error(
    runsc_cfg: SandboxConfig, tmp_path: Path
) -> None:
    with pytest.raises(SandboxStartError, match="restored sandbox"):
        await SandboxHandle.resume(
            await RunscProcess.restore(runsc_cfg, tmp_path / "none"), runsc_cfg, {}
        )
    # Ours only: other services on this host keep their bundles in the same directory.
    ours = f"rlm-{runsc_cfg.instance}-"
    assert not [p for p in state_paths(runsc_cfg)[1].iterdir() if p.name.startswith(ours)]
    rc, listed = await runsc_backend.runsc(runsc_cfg, "list", "--quiet")
    assert rc == 0 and not [n for n in listed.split() if runsc_cfg.instance in n]


def _restored_from(box: SandboxHandle) -> bool:
    assert isinstance(box.process, RunscProcess)
    return box.process._restored


async def test_launch_restores_new_sandboxes_from_one_checkpoint(
    runsc_cfg: SandboxConfig, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RLM_SANDBOX_RESTORE: the first launch boots a worker and checkpoints it after its
    hello; later launches are restores of it. A checkpoint that is gone costs one cold boot
    and a warning; after RESTORE_RETRY_S a new checkpoint is made. The reaper removes it."""
    cfg = dataclasses.replace(runsc_cfg, instance="rlm-test-restore")
    saved = runsc_backend.checkpoints_dir(cfg)
    first = await launch(cfg)
    second = await launch(cfg)
    try:
        assert _restored_from(first) and _restored_from(second)
        (made,) = list(saved.iterdir())
        assert (saved.stat().st_mode & 0o777) == 0o700
        await first.exec("mine = 1")
        assert "NameError" in (await second.exec("mine")).stderr
        assert first.info == second.info and first.info  # the checkpointed worker's hello
        assert not _restored_from(await _closing(launch(dataclasses.replace(cfg, restore=False))))
        # The checkpoint goes missing: that start boots cold, and says why.
        await asyncio.to_thread(shutil.rmtree, made)
        third = await _closing(launch(cfg))
        assert not _restored_from(third) and "booting it instead" in caplog.text
        assert not _restored_from(await _closing(launch(cfg)))  # not retried at once
        monkeypatch.setattr(pool_module, "RESTORE_RETRY_S", 0.0)
        assert _restored_from(await _closing(launch(cfg)))  # a new checkpoint
        assert [p.name for p in saved.iterdir()] == [made.name]  # same settings, same key
    finally:
        await first.close()
        await second.close()
    await runsc_backend.reap(cfg)
    assert not saved.exists()
    rc, listed = await runsc_backend.runsc(cfg, "list", "--quiet")
    assert rc == 0 and cfg.instance not in listed


async def test_a_checkpoint_stands_only_for_its_own_settings(runsc_cfg: SandboxConfig) -> None:
    """A restored worker keeps the limits it booted with: other settings (or another image)
    get their own checkpoint, which replaces the instance's older one."""
    cfg = dataclasses.replace(runsc_cfg, instance="rlm-test-restore-keys")
    other = dataclasses.replace(cfg, exec_timeout_s=cfg.exec_timeout_s + 1)
    assert await runsc_backend.checkpoint_key(cfg) != await runsc_backend.checkpoint_key(other)
    for c in (cfg, other):
        box = await _closing(launch(c))
        assert _restored_from(box)
        (only,) = list(runsc_backend.checkpoints_dir(c).iterdir())
        assert only.name == await runsc_backend.checkpoint_key(c)
    await runsc_backend.reap(cfg)


async def _closing(starting: Awaitable[SandboxHandle]) -> SandboxHandle:
    """Start a sandbox, prove it answers, close it; the handle stays readable."""
    box = await starting
    try:
        assert (await box.exec("print(6 * 7)")).stdout == "42\n"
    finally:
        await box.close()
    return box


async def test_the_pool_serves_restored_sandboxes_and_removes_the_checkpoint(
    runsc_cfg: SandboxConfig,
) -> None:
    cfg = dataclasses.replace(runsc_cfg, instance="rlm-test-restore-pool")
    pool = SandboxPool(cfg, size=2)
    await pool.start()
    try:
        box = await pool.acquire()
        assert _restored_from(box)
        assert (await box.exec("print(1 + 1)")).stdout == "2\n"
        await pool.release(box)
        assert runsc_backend.checkpoints_dir(cfg).exists()
    finally:
        await pool.close()
    assert not runsc_backend.checkpoints_dir(cfg).exists()
    rc, listed = await runsc_backend.runsc(cfg, "list", "--quiet")
    assert rc == 0 and cfg.instance not in listed
