"""Every core: ``RLM_WORKERS`` service processes on one port, with session-affine routing.

One event loop serves the HTTP API, the engine and the sandbox channels of a process, so one
process is held to one core. With ``RLM_WORKERS=N`` (0: one per core) ``python -m service``
becomes a supervisor: it binds the port once, starts N worker processes that accept on that
same socket (the kernel spreads the connections), restarts any that dies, and forwards
SIGTERM to all of them for the drain.

A session lives in one worker (its sandbox, its variables). Each worker also listens on a
Unix socket of its own, ``<run dir>/<pid>.sock``, and a request naming a session that the
shared lease directory (the sessions' durability) says a sibling holds is forwarded there,
body and streamed answer alike: the session is served where it lives, with no hand-over.
Anything else (a new session, one held by no live sibling, a sibling that does not answer)
is served where it arrived; the lease hand-over of the durable sessions still covers it.

Caps (``RLM_MAX_RUNNING``, ``RLM_MAX_SESSIONS``, budgets, the warm pool) are per worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

log = logging.getLogger(__name__)

# Set by the supervisor in each worker's environment.
ENV_FD = "RLM_WORKER_FD"
ENV_DIR = "RLM_WORKER_DIR"
ENV_INDEX = "RLM_WORKER_INDEX"
# On a forwarded request (never forwarded again) and on every answer of a worker.
ROUTED_HEADER = "x-rlm-routed"
WORKER_HEADER = "x-rlm-worker"
# Hop-by-hop and framing headers a proxy does not copy.
_HOP = frozenset({
    "connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
    "proxy-authorization", "proxy-authenticate", "content-length", "host",
})  # fmt: skip
RESPAWN_DELAY_S = 1.0


def run_dir(instance: str, port: int) -> Path:
    """Where a supervisor's workers put their sockets (one per instance and port)."""
    return Path(tempfile.gettempdir()) / f"rlm-py-{instance}-{port}"


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """What a worker process knows of its place among its siblings."""

    index: int
    fd: int
    dir: Path

    @classmethod
    def from_env(cls) -> WorkerInfo | None:
        if ENV_FD not in os.environ:
            return None
        return cls(int(os.environ[ENV_INDEX]), int(os.environ[ENV_FD]), Path(os.environ[ENV_DIR]))

    def own_socket(self) -> socket.socket:
        """This worker's Unix socket, where siblings forward the requests of its sessions."""
        path = self.dir / f"{os.getpid()}.sock"
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)
        sock.listen(256)
        return sock


class Siblings:
    """Forwards a request to the sibling worker that holds its session."""

    def __init__(self, info: WorkerInfo) -> None:
        self.info = info
        self.host = socket.gethostname()
        self._clients: dict[str, httpx.AsyncClient] = {}
        self.forwarded = 0

    def address_of(self, holder: str) -> str | None:
        """The socket of a live sibling named by a lease holder, else None.

        Holders read ``<instance>@<hostname>:<pid>:<tag>`` (``durability.holder_name``).
        """
        _, _, where = holder.partition("@")
        parts = where.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != self.host or not parts[1].isdigit():
            return None
        if int(parts[1]) == os.getpid():
            return None
        path = self.info.dir / f"{parts[1]}.sock"
        return str(path) if path.exists() else None

    async def forward(self, request: Request, body: bytes, path: str) -> Response | None:
        """The sibling's answer, streamed through; None when it cannot be reached."""
        client = self._client(path)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        headers.append((ROUTED_HEADER, "1"))
        url = httpx.URL("http://worker" + request.url.path, query=request.url.query.encode())
        outgoing = client.build_request(request.method, url, headers=headers, content=body)
        try:
            answer = await client.send(outgoing, stream=True)
        except httpx.TransportError as exc:  # gone (restarting): serve it here instead
            log.info("sibling worker at %s did not answer (%s): serving here", path, exc)
            await self._drop(path)
            return None
        self.forwarded += 1
        kept = {k: v for k, v in answer.headers.items() if k.lower() not in _HOP}
        return StreamingResponse(
            answer.aiter_raw(),
            status_code=answer.status_code,
            headers=kept,
            background=BackgroundTask(answer.aclose),
        )

    def others(self) -> list[str]:
        """The sockets of every other live worker."""
        mine = f"{os.getpid()}.sock"
        return sorted(str(p) for p in self.info.dir.glob("*.sock") if p.name != mine)

    async def ask_all(self, request: Request, path: str) -> list[tuple[str, bytes]]:
        """``GET path`` of every other worker (with the caller's key): (its index, the body)
        of the answers that were 200; a worker that does not answer is left out."""
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        headers.append((ROUTED_HEADER, "1"))

        async def one(sock: str) -> tuple[str, bytes] | None:
            client = self._client(sock)
            try:
                r = await client.get("http://worker" + path, headers=headers, timeout=10)
            except httpx.HTTPError:
                await self._drop(sock)
                return None
            if r.status_code != 200:
                return None
            return r.headers.get(WORKER_HEADER, "?"), r.content

        got = await asyncio.gather(*(one(s) for s in self.others()))
        return [g for g in got if g is not None]

    def _client(self, path: str) -> httpx.AsyncClient:
        client = self._clients.get(path)
        if client is None:
            transport = httpx.AsyncHTTPTransport(uds=path)
            client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(None))
            self._clients[path] = client
        return client

    async def _drop(self, path: str) -> None:
        client = self._clients.pop(path, None)
        if client is not None:
            await client.aclose()

    async def close(self) -> None:
        for path in list(self._clients):
            await self._drop(path)


def merge_metrics(texts: dict[str, str]) -> bytes:
    """One Prometheus text of every worker's, each sample labelled with its worker."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    families: dict[str, Any] = {}
    for worker, text in texts.items():
        for fam in text_string_to_metric_families(text):
            into = families.setdefault(fam.name, fam)
            samples = [s._replace(labels={**s.labels, "worker": worker}) for s in fam.samples]
            if into is fam:
                fam.samples = samples
            else:
                into.samples.extend(samples)

    class _Merged:
        def collect(self) -> Any:
            yield from families.values()

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged())  # type: ignore[arg-type]
    return generate_latest(registry)


# ---- the supervisor -----------------------------------------------------------------------


def worker_count(setting: int) -> int:
    return setting if setting > 0 else max(1, os.cpu_count() or 1)


def supervise(host: str, port: int, count: int, instance: str) -> int:
    """Bind, start ``count`` workers, keep them running until SIGTERM/SIGINT; exit code."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.create_server((host, port), family=family, backlog=2048)
    listener.set_inheritable(True)
    directory = run_dir(instance, port)
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(mode=0o700, parents=True)
    stopping = False
    procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(index: int) -> None:
        env = {
            **os.environ,
            ENV_FD: str(listener.fileno()),
            ENV_DIR: str(directory),
            ENV_INDEX: str(index),
        }
        procs[index] = subprocess.Popen(
            [sys.executable, "-m", "service"], env=env, pass_fds=(listener.fileno(),)
        )

    def stop(signum: int, _frame: Any) -> None:
        nonlocal stopping
        if stopping:  # once: a second SIGTERM would make uvicorn skip the drain
            return
        stopping = True
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for i in range(count):
        spawn(i)
    log.info("supervising %d service workers on %s:%d", count, host, port)
    try:
        while procs:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries
                continue
            index = next((i for i, p in procs.items() if p.pid == pid), None)
            if index is None:
                continue
            del procs[index]
            # A worker killed outright leaves its socket: siblings must not forward there.
            (directory / f"{pid}.sock").unlink(missing_ok=True)
            if not stopping:
                code = os.waitstatus_to_exitcode(status)
                log.error("service worker %d (pid %d) exited (%d): restarting it", index, pid, code)
                time.sleep(RESPAWN_DELAY_S)
                if not stopping:
                    spawn(index)
    finally:
        listener.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0
