"""Workers in gVisor sandboxes run by ``runsc`` directly, as their OCI runtime: no daemon
on the channel.

Under Docker every frame is copied by containerd-shim, containerd and dockerd on its way
between the worker and the service. Here the service starts ``runsc run`` itself with pipes
for the sandbox's stdio, so frames cross one pipe each way. Docker stays for what it is good
at: the image. Its filesystem is exported once per image id into ``state_dir`` and shared
read-only by every sandbox (the gofer serves it; nothing of it is writable).

The OCI spec written for each sandbox (``oci_spec``) carries every isolation setting of
``docker_backend.container_spec`` as Docker itself renders it: user, no capabilities,
no-new-privileges, read-only root, the same mounts, masked and read-only paths, namespaces,
rlimits, OOM score and the memory, CPU and pids caps in the sandbox's own cgroup. The runsc
flags are Docker's for the same runtime (``/etc/docker/daemon.json``, written by the
playbook), with ``--network=none`` always added. ``tests/sandbox/test_runsc_spec.py`` reads
both effective specs and compares them.

runsc needs root. A service running as another user reaches it through ``sudo -n`` (the
playbook's sudoers rule): no weaker than the docker group it needs otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import docker.errors

from sandbox.config import SandboxConfig
from sandbox.docker_backend import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_OWNER_PID,
    LABEL_SESSION,
    WORKER_CMD,
    client,
    max_procs,
    run_blocking,
)
from sandbox.errors import SandboxStartError, SandboxUnavailable
from sandbox.process import (
    CGROUP_ROOT,
    PipeProcess,
    find_cpu_file,
    read_cpu_file,
    start_shielded,
    worker_args,
)

log = logging.getLogger(__name__)

# Cgroups of these sandboxes live under this parent, in each hierarchy (v1) or the one (v2).
CGROUP_PARENT = "rlm-py"
# How long a resolved image id is trusted before the tag is looked up again (a rebuilt image
# is picked up by sandboxes started after that; a Docker outage does not stop new ones).
IMAGE_RECHECK_S = 30.0
# The devices a Docker container may use (Docker's defaults, as it renders them).
_DEVICES: list[dict[str, Any]] = [
    {"allow": False, "access": "rwm"},
    *(
        {"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
        for major, minor in ((1, 5), (1, 3), (1, 9), (1, 8), (5, 0), (5, 1))
    ),
    {"allow": False, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
]
MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
]  # fmt: skip
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


def state_paths(cfg: SandboxConfig) -> tuple[Path, Path, Path]:
    """(runsc's state root, the bundles, the exported root filesystems) under state_dir."""
    base = Path(cfg.state_dir)
    return base / "runsc", base / "bundles", base / "rootfs"


def runsc_command(cfg: SandboxConfig) -> list[str]:
    """How runsc is invoked: directly as root, else through ``sudo -n``. The binary is
    ``cfg.runsc_path`` when set, else the one Docker runs for the same runtime (once known):
    both backends run one runsc, with one set of flags."""
    binary = cfg.runsc_path or _runtimes.get(cfg.runtime, ("runsc", []))[0]
    return [binary] if os.geteuid() == 0 else ["sudo", "-n", binary]


def _tied_to_us() -> list[str]:
    """A prefix that kills ``runsc run`` when the service dies (its parent death signal,
    kept across exec), and with it the sandbox it runs attached: a service killed outright
    leaves no sandbox running. Not through sudo, which clears it; the reaper covers that."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        return []
    return [setpriv, "--pdeathsig", "KILL"]


def oci_spec(
    cfg: SandboxConfig, rootfs: str, image_env: list[str], name: str, session: str = ""
) -> dict[str, Any]:
    """The sandbox's OCI runtime spec: every isolation setting lives here (see the module)."""
    mb = cfg.memory_mb
    env = dict(e.split("=", 1) for e in image_env if "=" in e)
    env.update({"HOSTNAME": "sandbox", "HOME": "/tmp", "LANG": "C.UTF-8"})
    quiet = ["nosuid", "noexec", "nodev"]
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 10001, "gid": 10001, "additionalGids": [10001]},
            "args": [*WORKER_CMD, *worker_args(cfg), "--max-procs", str(max_procs(cfg))],
            "env": [f"{k}={v}" for k, v in env.items()],
            "cwd": "/tmp",
            "capabilities": {},
            "rlimits": [
                {"type": "RLIMIT_NOFILE", "hard": cfg.nofile, "soft": cfg.nofile},
                {
                    "type": "RLIMIT_FSIZE",
                    "hard": cfg.fsize_mb * 2**20,
                    "soft": cfg.fsize_mb * 2**20,
                },
            ],
            "noNewPrivileges": True,
            "oomScoreAdj": 1000,
        },
        "root": {"path": rootfs, "readonly": True},
        "hostname": "sandbox",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": quiet},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": [
                    "nosuid",
                    "noexec",
                    "newinstance",
                    "ptmxmode=0666",
                    "mode=0620",
                    "gid=5",
                ],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": [*quiet, "ro"]},
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["ro", *quiet],
            },
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": quiet},
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": [*quiet, "mode=1777", "size=67108864"],
            },
            {
                "destination": "/tmp",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": [
                    "rprivate",
                    "rw",
                    "nosuid",
                    "nodev",
                    "noexec",
                    f"size={cfg.tmpfs_mb}m",
                    "mode=1777",
                ],
            },
        ],
        "annotations": {
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: cfg.instance,
            LABEL_SESSION: session,
            LABEL_OWNER_PID: str(os.getpid()),
        },
        "linux": {
            "resources": {
                "devices": _DEVICES,
                "memory": {"limit": mb * 2**20, "swap": mb * 2**20, "disableOOMKiller": False},
                "cpu": {"shares": 0, "quota": int(cfg.cpus * 100_000), "period": 100_000},
                "pids": {"limit": cfg.pids},
                "blockIO": {"weight": 0},
            },
            "cgroupsPath": f"/{CGROUP_PARENT}/{name}",
            "namespaces": [
                {"type": "mount"},
                {"type": "network"},
                {"type": "uts"},
                {"type": "pid"},
                {"type": "ipc"},
            ],
            "maskedPaths": MASKED_PATHS,
            "readonlyPaths": READONLY_PATHS,
        },
    }


# ---- the image's filesystem, exported once per image id -------------------------------


class _Image:
    def __init__(self, image_id: str, rootfs: Path, env: list[str]) -> None:
        self.id, self.rootfs, self.env = image_id, rootfs, env
        self.checked = time.monotonic()

    def usable(self) -> bool:
        """Looked up within IMAGE_RECHECK_S, and its export is still there: another process
        with another image prunes exports no live sandbox uses (``_prune``), ours included
        while we have none running."""
        return time.monotonic() - self.checked < IMAGE_RECHECK_S and self.present()

    def present(self) -> bool:
        return (self.rootfs / "etc").is_dir()


_images: dict[str, _Image] = {}
_image_lock = asyncio.Lock()
_runtimes: dict[str, tuple[str, list[str]]] = {}  # runtime name: (Docker's path, flags)


async def _resolve_image(cfg: SandboxConfig) -> _Image:
    """The image's exported root filesystem and environment, exporting it when new."""
    known = _images.get(cfg.image)
    if known is not None and known.usable():
        return known
    async with _image_lock:
        known = _images.get(cfg.image)
        if known is not None and known.usable():
            return known
        try:
            attrs = (await run_blocking(client().images.get, cfg.image)).attrs
        except docker.errors.ImageNotFound as exc:
            raise SandboxStartError(
                f"sandbox image {cfg.image!r} not found: run `make image` (RLM_SANDBOX_IMAGE)"
            ) from exc
        except (docker.errors.DockerException, SandboxUnavailable) as exc:
            if known is not None and known.present():  # Docker is away: the export serves
                log.debug("image lookup failed, keeping %s: %s", known.id[:19], exc)
                known.checked = time.monotonic()
                return known
            raise SandboxUnavailable(
                f"Docker is not reachable to export the sandbox image: {exc}"
            ) from exc
        image_id: str = attrs["Id"]
        env: list[str] = list((attrs.get("Config") or {}).get("Env") or [])
        if known is not None and known.id == image_id and known.present():
            known.checked = time.monotonic()
            return known
        rootfs = await _export(cfg, image_id)
        _images[cfg.image] = entry = _Image(image_id, rootfs, env)
        return entry


async def _export(cfg: SandboxConfig, image_id: str) -> Path:
    """Unpack the image into ``rootfs/<id>`` (once; concurrent processes race harmlessly)."""
    _, _, rootfs_dir = state_paths(cfg)
    target = rootfs_dir / image_id.replace("sha256:", "")[:16]
    if (target / "etc").is_dir():
        return target
    partial = rootfs_dir / f".partial-{uuid.uuid4().hex[:8]}"
    api = client().api
    t0 = time.perf_counter()
    created: dict[str, Any] | None = None
    try:
        partial.mkdir(parents=True)
        created = await run_blocking(api.create_container, image_id, command=["true"])
        tar = await asyncio.create_subprocess_exec(
            "tar", "-x", "-C", str(partial), "--no-same-owner" if os.geteuid() else "-p",
            stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert tar.stdin is not None
        stream = await run_blocking(api.export, created["Id"])
        it = iter(stream)
        while chunk := await run_blocking(next, it, b""):
            tar.stdin.write(chunk)
            await tar.stdin.drain()
        tar.stdin.close()
        _, err = await tar.communicate()
        if tar.returncode != 0:
            raise SandboxStartError(f"unpacking the sandbox image failed: {err.decode()[-400:]}")
        try:
            partial.rename(target)
        except OSError:  # another process unpacked it first
            if not (target / "etc").is_dir():
                raise
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"Docker failed to export the sandbox image: {exc}") from exc
    except OSError as exc:  # the state directory is not writable, full, or tar is missing
        raise SandboxStartError(
            f"could not unpack the sandbox image into {rootfs_dir}: {exc} (RLM_SANDBOX_STATE_DIR)"
        ) from exc
    finally:
        shutil.rmtree(partial, ignore_errors=True)
        if created is not None:
            with contextlib.suppress(docker.errors.DockerException, SandboxUnavailable):
                await run_blocking(api.remove_container, created["Id"], force=True)
    log.info("exported sandbox image %s to %s in %.1fs", image_id[:19], target,
             time.perf_counter() - t0)  # fmt: skip
    await asyncio.to_thread(_prune, rootfs_dir, target)
    return target


def _prune(rootfs_dir: Path, keep: Path) -> None:
    """Remove older exports no live sandbox's bundle uses (best effort)."""
    bundles = rootfs_dir.parent / "bundles"
    used = {keep.name}
    for spec in bundles.glob("*/config.json"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            used.add(Path(json.loads(spec.read_text())["root"]["path"]).name)
    for old in rootfs_dir.iterdir():
        if old.name not in used and not old.name.startswith("."):
            shutil.rmtree(old, ignore_errors=True)


async def runtime_flags(cfg: SandboxConfig) -> list[str]:
    """runsc's global flags: Docker's for the same runtime, and never a network. Looked up
    once; the binary Docker runs for it is kept too (see ``runsc_command``)."""
    if cfg.runtime not in _runtimes:
        try:
            info = await run_blocking(client().info)
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        entry = (info.get("Runtimes") or {}).get(cfg.runtime)
        if not isinstance(entry, dict):  # not cached: a fixed daemon.json is seen next time
            raise SandboxStartError(
                f"Docker has no runtime {cfg.runtime!r} (RLM_SANDBOX_RUNTIME) to take runsc's "
                "binary and flags from: register it in /etc/docker/daemon.json"
            )
        args = [a for a in entry.get("runtimeArgs") or [] if not a.startswith("--network")]
        _runtimes[cfg.runtime] = (str(entry.get("path") or "runsc"), [*args, "--network=none"])
    return _runtimes[cfg.runtime][1]


async def _learn_binary(cfg: SandboxConfig) -> None:
    """Look up Docker's runsc before a command that may come before any start (the start-up
    reaping, readiness): another runsc could not read this one's state. Best effort: without
    Docker, ``runsc`` on PATH is used."""
    if not cfg.runsc_path and cfg.runtime not in _runtimes:
        with contextlib.suppress(SandboxUnavailable, SandboxStartError):
            await runtime_flags(cfg)


# ---- one sandbox ----------------------------------------------------------------------


class RunscProcess(PipeProcess):
    """One gVisor sandbox: ``runsc run`` in the foreground, its stdio the channel."""

    def __init__(self, proc: asyncio.subprocess.Process, cfg: SandboxConfig, name: str) -> None:
        super().__init__(proc, name)
        self.id = name
        self._cfg = cfg
        self._killed = False
        self._restored = False  # a foreground `runsc restore` leaves its container behind
        self._cpu_file: tuple[str, str] | None = None

    @classmethod
    async def spawn(cls, cfg: SandboxConfig, session: str = "") -> RunscProcess:
        """Start ``runsc run``. Cancellation-safe: a start already under way completes and
        is then closed, so a pool shutting down leaves no sandbox behind."""
        return await start_shielded(cls._spawn(cfg, session))

    @classmethod
    async def restore(cls, cfg: SandboxConfig, image_dir: Path, session: str = "") -> RunscProcess:
        """A new sandbox from a checkpoint (see ``checkpoint``): ``runsc restore`` in the
        foreground, with a fresh bundle and name, its stdio the channel. The worker resumes
        where the checkpoint stopped it: take it with ``SandboxHandle.resume``."""
        return await start_shielded(cls._spawn(cfg, session, restore_from=image_dir))

    @classmethod
    async def _spawn(
        cls, cfg: SandboxConfig, session: str, *, restore_from: Path | None = None
    ) -> RunscProcess:
        image = await _resolve_image(cfg)
        flags = await runtime_flags(cfg)
        root, bundles, _ = state_paths(cfg)
        name = f"rlm-{cfg.instance}-{uuid.uuid4().hex[:12]}"
        bundle = bundles / name
        try:
            root.mkdir(parents=True, exist_ok=True)
            bundle.mkdir(parents=True)
            spec = oci_spec(cfg, str(image.rootfs), image.env, name, session)
            (bundle / "config.json").write_text(json.dumps(spec))
            command = (
                ["run"] if restore_from is None else ["restore", f"--image-path={restore_from}"]
            )
            proc = await asyncio.create_subprocess_exec(
                *_tied_to_us(), *runsc_command(cfg), "--root", str(root), *flags,
                *command, "--bundle", str(bundle), name,
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, limit=2**20,
            )  # fmt: skip
        except OSError as exc:
            shutil.rmtree(bundle, ignore_errors=True)
            raise SandboxStartError(f"could not start runsc: {exc}") from exc
        made = cls(proc, cfg, name)
        made._restored = restore_from is not None
        return made

    async def _runsc(self, *args: str, timeout_s: float = 10.0) -> tuple[int, str]:
        return await runsc(self._cfg, *args, timeout_s=timeout_s)

    def cpu_seconds(self) -> float | None:
        """The sandbox's CPU time from its cgroup, read on the host (unforgeable inside)."""
        if self._cpu_file is None:
            self._cpu_file = find_cpu_file(f"{CGROUP_PARENT}/{self.id}")
            if self._cpu_file is None:
                return None
        return read_cpu_file(self._cpu_file)

    async def interrupt(self) -> None:
        if self._proc.returncode is None:
            await self._runsc("kill", self.id, "INT")

    async def kill(self) -> None:
        self._killed = True
        if self._proc.returncode is None:
            await self._runsc("kill", "--all", self.id, "KILL")

    async def exit_reason(self) -> str:
        code = await self._wait(10)
        if code is None:
            return "the sandbox stopped answering"
        if code == 137 and not self._killed:
            # The OOM killer picks the sentry (it holds the sandbox's memory), and so would an
            # operator's kill: the cgroup that could tell them apart is gone with the sandbox.
            return (
                f"the sandbox was killed (exit {code}): its memory cap of "
                f"{self._cfg.memory_mb} MB (RLM_SANDBOX_MEMORY_MB), or a kill from outside"
            )
        if self._killed:
            return f"the sandbox was killed by the host (exit {code})"
        if code in (2, 128) and not self.diagnostics().strip():
            return (
                f"the sandbox runtime stopped (exit {code}): most likely too many processes "
                f"or threads for its cap of {self._cfg.pids} pids (RLM_SANDBOX_PIDS)"
            )
        if code == 143:
            return "the sandbox was stopped from outside the service (SIGTERM, exit 143)"
        return f"the sandbox exited with code {code}"

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # The foreground `runsc run` deletes its container when the container ends: kill it
        # and wait for that. `delete --force` while it waits times out (measured).
        if self._proc.returncode is None:
            await self._runsc("kill", "--all", self.id, "KILL")
        if await self._wait(5) is None:
            await _delete(self._cfg, self.id)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signal.SIGKILL)
            await self._wait(5)
        else:
            if self._restored:
                await _delete(self._cfg, self.id)
            _, bundles, _ = state_paths(self._cfg)
            shutil.rmtree(bundles / self.id, ignore_errors=True)
            # runsc removes them when its container ends, but not when it dies starting it
            # (measured: "cannot read client sync file" left all nine v1 hierarchies).
            await _remove_cgroups(self.id)
        self._close_pipes()


def checkpoints_dir(cfg: SandboxConfig) -> Path:
    """This instance's checkpoints of started workers (see ``sandbox.pool``)."""
    return Path(cfg.state_dir) / "checkpoints" / cfg.instance


async def checkpoint_key(cfg: SandboxConfig) -> str:
    """What a checkpoint was taken with: a restored worker keeps the arguments, environment
    and limits it booted with, so it may only stand in for a sandbox of the same settings,
    image and runsc (binary and flags)."""
    image = await _resolve_image(cfg)
    flags = await runtime_flags(cfg)
    fields = {
        **dataclasses.asdict(cfg), "image_id": image.id, "runsc": runsc_command(cfg)[-1],
        "flags": flags,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


async def checkpoint(process: RunscProcess, image_dir: Path) -> None:
    """Save a running sandbox's whole state into ``image_dir``; the sandbox stops (close its
    handle after). Uncompressed: a restore from it took half the time of a flate-compressed
    one here (the pages are read back, not inflated)."""
    rc, out = await process._runsc(
        "checkpoint", f"--image-path={image_dir}", "--compression=none", process.id,
        timeout_s=60,
    )  # fmt: skip
    if rc != 0:
        raise SandboxStartError(f"runsc checkpoint failed ({rc}): {out[-300:]}")


# ---- runsc commands, leftovers --------------------------------------------------------

_orphans: set[str] = set()


async def runsc(cfg: SandboxConfig, *args: str, timeout_s: float = 10.0) -> tuple[int, str]:
    """Run one runsc command on our state root: (exit code, stderr+stdout tail)."""
    root, _, _ = state_paths(cfg)
    try:
        proc = await asyncio.create_subprocess_exec(
            *runsc_command(cfg), "--root", str(root), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
    except OSError as exc:
        return 127, str(exc)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        return -1, f"runsc {args[0]} did not finish within {timeout_s:g}s"
    return proc.returncode or 0, out.decode("utf-8", "replace")[-2000:]


async def _delete(cfg: SandboxConfig, name: str) -> bool:
    """Stop and forget one sandbox (runsc state, cgroup, bundle); False when it failed."""
    await runsc(cfg, "kill", "--all", name, "KILL")
    code, out = await runsc(cfg, "delete", "--force", name)
    gone = code == 0 or "does not exist" in out or "not found" in out.lower()
    if gone:
        _, bundles, _ = state_paths(cfg)
        shutil.rmtree(bundles / name, ignore_errors=True)
        await _remove_cgroups(name)
        _orphans.discard(name)
    else:
        _orphans.add(name)
        log.warning("could not delete sandbox %s (retried later): %s", name, out.strip()[-300:])
    return gone


def _rmdir_cgroups(name: str) -> bool:
    """One pass over every hierarchy (v1) and the unified one (v2); True when none is left."""
    left = False
    groups = [*Path(CGROUP_ROOT).glob(f"*/{CGROUP_PARENT}/{name}")]
    v2 = Path(CGROUP_ROOT) / CGROUP_PARENT / name
    if (v2 / "cgroup.procs").exists():
        groups.append(v2)
    for group in groups:
        try:
            group.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            left = True
    return not left


async def _remove_cgroups(name: str) -> None:
    """Remove a deleted sandbox's cgroups, which ``runsc delete`` leaves when another
    process ran it; each empties once its processes have exited (within a second)."""
    for _ in range(20):
        if await asyncio.to_thread(_rmdir_cgroups, name):
            return
        await asyncio.sleep(0.05)
    log.warning("cgroups of sandbox %s are still busy; left in place", name)


def orphans() -> int:
    """How many sandboxes wait for their deletion (see ``remove_orphans``)."""
    return len(_orphans)


async def remove_orphans(cfg: SandboxConfig) -> int:
    for name in list(_orphans):
        await _delete(cfg, name)
    return len(_orphans)


async def reap(cfg: SandboxConfig) -> int:
    """Delete sandboxes of this instance left by earlier runs of the service; how many."""
    root, bundles, _ = state_paths(cfg)
    if not await asyncio.to_thread(root.exists):
        return 0
    await _learn_binary(cfg)
    code, out = await runsc(cfg, "list", "--format=json")
    if code != 0:
        raise SandboxUnavailable(f"runsc list failed: {out.strip()[-300:]}")
    try:
        listed = json.loads(out[out.index("[") :]) if "[" in out else []
    except ValueError:
        listed = []
    names = {c.get("id", "") for c in listed if isinstance(c, dict)}
    names |= {p.name for p in bundles.glob("*")} if bundles.exists() else set()
    stale = []
    for name in sorted(n for n in names if n):
        try:
            spec = json.loads((bundles / name / "config.json").read_text())
            instance = spec["annotations"][LABEL_INSTANCE]
        except (OSError, ValueError, KeyError):
            instance = None  # no readable bundle: ours only when named after this instance
            if not name.startswith(f"rlm-{cfg.instance}-"):
                continue
        if instance not in (None, cfg.instance):
            continue
        stale.append(name)
    await asyncio.gather(*(_delete(cfg, n) for n in stale))
    await asyncio.to_thread(shutil.rmtree, checkpoints_dir(cfg), True)
    return len(stale)


async def ping(cfg: SandboxConfig) -> float:
    """runsc answers (readiness): the time of ``runsc --version``."""
    await _learn_binary(cfg)
    t0 = time.perf_counter()
    code, out = await runsc(cfg, "--version", timeout_s=5)
    if code != 0:
        raise SandboxUnavailable(f"runsc is not usable: {out.strip()[-300:]}")
    return time.perf_counter() - t0
