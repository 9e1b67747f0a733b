"""Workers in Docker containers under gVisor (``runsc``), driven by the Docker SDK.

The container is created with its stdin open and attached *before* it starts, so the
worker's first byte is never lost. The attach socket is bidirectional: we write raw frames
to the worker's stdin and read its stdout multiplexed by Docker (8-byte header: stream id,
three zero bytes, big-endian length). Blocking SDK calls run in a small dedicated thread pool
so they never block the event loop nor starve ``asyncio.to_thread`` users.

Every Docker SDK exception is translated here into the sandbox error tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker
import docker.errors
import requests
from docker.types import Ulimit

from sandbox.config import SandboxConfig
from sandbox.errors import SandboxStartError, SandboxUnavailable
from sandbox.process import (
    SandboxProcess,
    find_cpu_file,
    read_cpu_file,
    start_shielded,
    worker_args,
)

log = logging.getLogger(__name__)

LABEL_MANAGED = "rlm-py.managed"
LABEL_INSTANCE = "rlm-py.instance"
LABEL_SESSION = "rlm-py.session"
# The host process that started the container: operators (and the tests) tell whose it is.
LABEL_OWNER_PID = "rlm-py.owner-pid"
# Imported as a module (not run as a script) so its bytecode, compiled into the image, is used.
WORKER_CMD = [
    "python3", "-E", "-s", "-B", "-c",
    "import sys; sys.path.insert(0, '/opt/rlm/sandbox'); import worker; sys.exit(worker.main())",
]  # fmt: skip
_MUX_HEADER = struct.Struct(">BxxxI")

_executor = ThreadPoolExecutor(max_workers=16, thread_name_prefix="docker-sdk")


class DaemonUnreachable(docker.errors.DockerException):
    """The daemon's socket failed (stopped, restarting): the SDK raises requests' errors."""


async def run_blocking(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run a blocking Docker SDK call off the event loop.

    The one place foreign transport errors become Docker errors: with the daemon down the
    SDK raises ``requests.ConnectionError`` (not a ``DockerException``), which would
    otherwise escape every handler below as a 500.
    """
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_executor, lambda: fn(*args, **kwargs))
    except docker.errors.DockerException:
        raise  # APIError (NotFound...) is a requests.HTTPError too: the daemon did answer
    except (requests.exceptions.RequestException, OSError) as exc:
        raise DaemonUnreachable(f"Docker daemon unreachable: {exc}") from exc


_client: docker.DockerClient | None = None


def client() -> docker.DockerClient:
    """The process-wide Docker client (connection pool shared by all sandboxes)."""
    global _client
    if _client is None:
        try:
            _client = docker.from_env(timeout=60, max_pool_size=32)
        except docker.errors.DockerException as exc:
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
    return _client


def container_spec(cfg: SandboxConfig, name: str, session: str = "") -> dict[str, Any]:
    """The container's configuration: every isolation setting lives here."""
    mb = cfg.memory_mb
    return {
        "image": cfg.image,
        "command": [*WORKER_CMD, *worker_args(cfg), "--max-procs", str(max_procs(cfg))],
        "name": name,
        "stdin_open": True,
        "tty": False,
        "detach": True,
        "runtime": cfg.runtime,
        "network_mode": "none",
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,noexec,size={cfg.tmpfs_mb}m,mode=1777"},
        "user": "10001:10001",
        "working_dir": "/tmp",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "mem_limit": f"{mb}m",
        "memswap_limit": f"{mb}m",
        "nano_cpus": int(cfg.cpus * 1e9),
        "pids_limit": cfg.pids,
        # The OOM killer takes a sandbox (its session) before anything of the host's.
        "oom_score_adj": 1000,
        "ulimits": [
            Ulimit(name="nofile", soft=cfg.nofile, hard=cfg.nofile),
            Ulimit(name="fsize", soft=cfg.fsize_mb * 2**20, hard=cfg.fsize_mb * 2**20),
        ],
        # The container's environment is the image's: nothing of the service's is passed.
        "environment": {"HOME": "/tmp", "LANG": "C.UTF-8"},
        "hostname": "sandbox",
        "labels": {
            LABEL_MANAGED: "1",
            LABEL_INSTANCE: cfg.instance,
            LABEL_SESSION: session,
            LABEL_OWNER_PID: str(os.getpid()),
        },
        # Frames are not logs: the json-file driver would copy every byte to disk.
        "log_config": {"type": "none"},
        "auto_remove": False,
    }


def max_procs(cfg: SandboxConfig) -> int:
    """RLIMIT_NPROC for the worker, so fork() fails before the container's pids cap is hit.

    Under runsc the cap counts the runtime's own host threads: measured with the ptrace
    platform, about 40 of them plus 5 to 8 per sandboxed process, and hitting it kills the
    whole sandbox. The fork server (a parked spare REPL beside the live one) raises the
    baseline to about 50 idle and about 93 after many resets, so 96 are kept for it.
    """
    if cfg.gvisor:
        return max(2, (cfg.pids - 96) // 8)
    return max(2, cfg.pids - 8)


class DockerProcess(SandboxProcess):
    """One container running the worker, with its attach socket as the channel."""

    def __init__(self, container: Any, sock: socket.socket, cfg: SandboxConfig) -> None:
        self._container = container
        self._sock = sock
        self._cfg = cfg
        self.name = container.name
        self.id = container.id
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._buf = bytearray()
        self._stderr = bytearray()
        self._closed = False
        self._killed = False
        self._cpu_file: tuple[str, str] | None = None  # (path, "ns" | "stat"), once found

    def cpu_seconds(self) -> float | None:
        """The container's CPU time from its cgroup (v1 or v2, cgroupfs or systemd driver).

        Read on the host, outside the sandbox: what the code in it cannot forge or hide.
        """
        if self._cpu_file is None:
            self._cpu_file = find_cpu_file(f"docker/{self.id}", docker_scope=self.id)
            if self._cpu_file is None:
                return None
        return read_cpu_file(self._cpu_file)

    @classmethod
    async def spawn(cls, cfg: SandboxConfig, session: str = "") -> DockerProcess:
        """Create, attach and start a container; translate every Docker failure.

        Cancellation-safe: the SDK calls run in threads that finish regardless, so when the
        caller is cancelled (a pool shutting down) the start completes and is then removed.
        """
        return await start_shielded(cls._spawn(cfg, session))

    @classmethod
    async def _spawn(cls, cfg: SandboxConfig, session: str) -> DockerProcess:
        name = f"rlm-{cfg.instance}-{uuid.uuid4().hex[:12]}"
        dc = client()
        container = None
        try:
            container = await run_blocking(
                dc.containers.create, **container_spec(cfg, name, session)
            )
            raw = await run_blocking(
                dc.api.attach_socket,
                container.id,
                params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1},
            )
            sock: socket.socket = raw._sock
            await run_blocking(container.start)
        except docker.errors.ImageNotFound as exc:
            await _remove_quietly(container)
            raise SandboxStartError(
                f"sandbox image {cfg.image!r} not found: run `make image` (RLM_SANDBOX_IMAGE)"
            ) from exc
        except docker.errors.APIError as exc:
            await _remove_quietly(container)
            raise SandboxStartError(
                f"could not start a sandbox container: {exc.explanation or exc}"
            ) from exc
        except docker.errors.DockerException as exc:
            # Lost mid-request, the create may have happened: remove the name when it is back.
            await _remove_quietly(container, None if _never_sent(exc) else name)
            raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
        proc = cls(container, sock, cfg)
        sock.setblocking(False)
        proc._reader, proc._writer = await asyncio.open_connection(sock=sock, limit=2**20)
        return proc

    async def _fill(self) -> None:
        """Read one multiplexed frame; stdout goes to the channel buffer."""
        assert self._reader is not None
        try:
            header = await self._reader.readexactly(_MUX_HEADER.size)
            stream, length = _MUX_HEADER.unpack(header)
            data = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise EOFError("sandbox closed its channel") from exc
        if stream == 1:
            self._buf += data
        else:
            self._stderr = (self._stderr + data)[-8192:]

    async def read_exactly(self, n: int) -> bytes:
        while len(self._buf) < n:
            await self._fill()
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    async def write(self, *parts: bytes) -> None:
        assert self._writer is not None
        try:
            for data in parts:
                self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise EOFError("sandbox is gone") from exc

    async def interrupt(self) -> None:
        with contextlib.suppress(docker.errors.DockerException):  # gone: the reader reports it
            await run_blocking(self._container.kill, signal="SIGINT")

    async def kill(self) -> None:
        self._killed = True
        with contextlib.suppress(docker.errors.DockerException):
            await run_blocking(self._container.kill)

    async def exit_reason(self) -> str:
        try:
            result = await run_blocking(self._container.wait, timeout=10)
            await run_blocking(self._container.reload)
        except DaemonUnreachable:
            return (
                "the Docker daemon stopped answering (stopped or restarting) and the sandbox "
                "went with it"
            )
        except docker.errors.NotFound:
            return "the sandbox container was removed from outside the service"
        except Exception:  # noqa: BLE001 - the container may be gone already
            return "the sandbox container disappeared"
        state = self._container.attrs.get("State", {})
        code = result.get("StatusCode", state.get("ExitCode"))
        if code == 143 and not self._killed:
            return (
                "the sandbox was stopped from outside the service (SIGTERM, exit 143): most "
                "likely the Docker daemon shutting down"
            )
        if state.get("OOMKilled") or (code == 137 and not self._killed):
            return (
                f"the sandbox was killed (exit {code}): most likely its memory cap of "
                f"{self._cfg.memory_mb} MB (RLM_SANDBOX_MEMORY_MB)"
            )
        if self._killed:
            return f"the sandbox was killed by the host (exit {code})"
        if code == 2 and self._cfg.gvisor and not self.diagnostics().strip():
            # The worker would have said why (argparse, traceback); a silent exit 2 is
            # runsc itself failing, which under ptrace happens when its pids cap runs out.
            return (
                f"the sandbox runtime stopped (exit 2): most likely too many processes or "
                f"threads for its cap of {self._cfg.pids} pids (RLM_SANDBOX_PIDS)"
            )
        return f"the sandbox exited with code {code}"

    def diagnostics(self) -> str:
        return self._stderr.decode("utf-8", "replace")

    async def rename(self, name: str) -> None:
        """Give a pooled container its session's name, so operators can find it."""
        try:
            await run_blocking(self._container.rename, name)
            self.name = name
        except docker.errors.DockerException as exc:
            log.debug("rename of %s failed: %s", self.name, exc)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Shut the attach socket down first: the SDK keeps a reference to it, so close()
        # alone leaves it open, and a sandbox still writing into it made `rm -f` hang for
        # the SDK's whole timeout (measured: 60 s; 0.22 s with the shutdown).
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        if self._writer is not None:
            self._writer.close()
        await _remove_quietly(self._container)


# Containers (ids or names) whose removal failed, mostly because the daemon was away (a
# restart stops every sandbox, and their removal is attempted while it is down). Retried by
# ``remove_orphans``, which the pool calls until the set is empty: nothing outlives an outage.
_orphans: set[str] = set()


def _never_sent(exc: BaseException) -> bool:
    """The request failed to connect (socket missing or refusing): the daemon never saw it."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, (FileNotFoundError, ConnectionRefusedError)):
            return True
        nested = [a for a in seen.args if isinstance(a, BaseException)]
        seen = seen.__cause__ or seen.__context__ or (nested[0] if nested else None)
    return False


async def _remove_quietly(container: Any, name: str | None = None) -> None:
    ref = container.id if container is not None else name
    if ref is None:
        return
    for attempt in range(3):
        try:
            await run_blocking(client().api.remove_container, ref, force=True)
            _orphans.discard(ref)
            return
        except docker.errors.NotFound:
            _orphans.discard(ref)
            return
        except (docker.errors.DockerException, SandboxUnavailable) as exc:
            # "removal already in progress" and daemon hiccups: try again shortly; a daemon
            # that is away gets the container removed when it answers again.
            if attempt == 2 or isinstance(exc, (DaemonUnreachable, SandboxUnavailable)):
                _orphans.add(ref)
                log.warning("could not remove container %s (retried later): %s", ref[:32], exc)
                return
            await asyncio.sleep(0.2 * (attempt + 1))


def orphans() -> int:
    """How many containers wait for their removal (see ``remove_orphans``)."""
    return len(_orphans)


async def remove_orphans() -> int:
    """Remove the containers whose removal failed earlier; return how many are left."""
    for ref in list(_orphans):
        try:
            await run_blocking(client().api.remove_container, ref, force=True)
        except docker.errors.NotFound:
            pass
        except (DaemonUnreachable, SandboxUnavailable):
            break  # still away: the next round retries
        except docker.errors.DockerException as exc:  # e.g. removal in progress: next round
            log.debug("removal of container %s failed again: %s", ref[:32], exc)
            continue
        else:
            log.info("removed container %s left by a Docker daemon outage", ref[:32])
        _orphans.discard(ref)
    return len(_orphans)


async def reap(instance: str | None = None) -> int:
    """Remove containers left by earlier runs of the service (by label); return how many."""
    filters = {"label": [f"{LABEL_MANAGED}=1"]}
    if instance is not None:
        filters["label"].append(f"{LABEL_INSTANCE}={instance}")
    try:
        stale = await run_blocking(client().containers.list, all=True, filters=filters)
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
    await asyncio.gather(*(_remove_quietly(c) for c in stale))
    return len(stale)


async def ping() -> float:
    """Round trip to the Docker daemon in seconds (readiness check)."""
    t0 = time.perf_counter()
    try:
        await run_blocking(client().ping)
    except docker.errors.DockerException as exc:
        raise SandboxUnavailable(f"Docker is not reachable: {exc}") from exc
    return time.perf_counter() - t0
