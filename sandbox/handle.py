"""``SandboxHandle``: the asyncio face of one sandbox.

It owns the channel to the worker: a reader task dispatches results to waiting futures and
model calls (``call`` frames) to the handler registered with the code block that made them;
a watchdog kills the sandbox when user code has been running past the hard deadline.
Nothing here blocks the event loop.

Lifecycle: ``STARTING -> READY -> CLOSED`` or ``-> LOST`` (died, killed or misbehaved). Once
lost, every pending and future request raises the ``SandboxLost`` that says why.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sandbox import protocol as proto
from sandbox.config import SandboxConfig
from sandbox.errors import (
    HardTimeout,
    MemoryLimit,
    ProtocolViolation,
    SandboxError,
    SandboxLost,
    SandboxStartError,
    WorkerError,
)
from sandbox.process import SandboxProcess

log = logging.getLogger(__name__)

CallHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``await handler(kind, body)`` answers a model call: a str, or a list of str for batches."""


class SandboxState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    LOST = "lost"
    CLOSED = "closed"


@dataclass(slots=True)
class ExecResult:
    """What one code block did. A failing block is data (``error``), not an exception."""

    stdout: str = ""
    stderr: str = ""
    error: dict[str, str] | None = None
    changed: list[dict[str, str]] = field(default_factory=list)
    duration_ms: float = 0.0
    answer: str | None = None  # answer["content"] when answer["ready"] was set
    final: str | None = None  # FINAL(...) / FINAL_VAR(...) called inside the code
    dropped_chars: int = 0

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> ExecResult:
        return cls(
            stdout=str(body.get("stdout", "")),
            stderr=str(body.get("stderr", "")),
            error=body.get("error") if isinstance(body.get("error"), dict) else None,
            changed=list(body.get("changed") or []),
            duration_ms=float(body.get("duration_ms") or 0.0),
            answer=body["answer"] if isinstance(body.get("answer"), str) else None,
            final=body["final"] if isinstance(body.get("final"), str) else None,
            dropped_chars=int(body.get("stdout_dropped") or 0)
            + int(body.get("stderr_dropped") or 0),
        )

    def output(self) -> str:
        """stdout and stderr as the model should see them."""
        text = self.stdout
        if self.stderr:
            text = f"{text}\n{self.stderr}" if text else self.stderr
        if self.dropped_chars:
            text += f"\n[... {self.dropped_chars} more characters of output were dropped]"
        return text


class SandboxHandle:
    """One live sandbox. Create with ``await SandboxHandle.start(process, cfg)``."""

    def __init__(self, process: SandboxProcess, cfg: SandboxConfig) -> None:
        self.process = process
        self.cfg = cfg
        self.state = SandboxState.STARTING
        self.info: dict[str, Any] = {}
        self.created = time.monotonic()
        self.lost_error: SandboxLost | None = None
        self._ids = itertools.count(1)
        self._loads = itertools.count(1)
        self._pending: dict[int, asyncio.Future[proto.Frame]] = {}
        self._handlers: dict[int, CallHandler] = {}
        self._calls: dict[int, tuple[int | None, asyncio.Task[None]]] = {}
        self._exec_timeouts: dict[int, float] = {}
        self._orphans: set[int] = set()
        self._orphans_done = asyncio.Event()
        self._orphans_done.set()
        self._busy_since: float | None = None
        self._busy_limit = cfg.hard_timeout_s
        self._hello: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read_loop(), name=f"sandbox-reader-{process.name}")
        self._watchdog = asyncio.create_task(self._watch(), name=f"sandbox-watchdog-{process.name}")

    @classmethod
    async def start(cls, process: SandboxProcess, cfg: SandboxConfig) -> SandboxHandle:
        """Wait for the worker's hello; on failure the process is closed and nothing leaks."""
        handle = cls(process, cfg)
        try:
            handle.info = await asyncio.wait_for(asyncio.shield(handle._hello), cfg.start_timeout_s)
        except TimeoutError:
            await handle.close()
            raise SandboxStartError(
                f"sandbox did not answer within {cfg.start_timeout_s:g}s (RLM_SANDBOX_START_TIMEOUT_S)"
            ) from None
        except BaseException as exc:
            await handle.close()
            if isinstance(exc, SandboxLost):
                raise SandboxStartError(f"sandbox died at start-up: {exc}") from exc
            raise
        handle.state = SandboxState.READY
        return handle

    @property
    def name(self) -> str:
        return self.process.name

    @property
    def alive(self) -> bool:
        return self.state in (SandboxState.STARTING, SandboxState.READY)

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    # ---- channel -----------------------------------------------------------------------

    async def _send(self, frame: proto.Frame) -> None:
        data = proto.encode(frame)
        async with self._write_lock:
            try:
                await self.process.write(data)
            except EOFError:
                await self._lose(None)
                raise self.lost_error or SandboxLost("sandbox is gone") from None

    async def _read_loop(self) -> None:
        try:
            while True:
                header = await self.process.read_exactly(proto.HEADER.size)
                json_len, blob_len = proto.check_header(header)
                payload = await self.process.read_exactly(json_len + blob_len)
                frame = proto.decode(header, payload, proto.WORKER_TYPES)
                self._on_frame(frame)
        except EOFError:
            await self._lose(None)
        except proto.ProtocolError as exc:
            await self._lose(ProtocolViolation(f"the sandbox broke the protocol: {exc}"))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("sandbox reader failed")
            await self._lose(ProtocolViolation(f"sandbox channel failed: {exc!r}"))

    def _on_frame(self, frame: proto.Frame) -> None:
        if frame.busy:
            if self._busy_since is None:
                self._busy_since = time.monotonic()
            self._busy_limit = self._exec_timeouts.get(frame.id, self.cfg.hard_timeout_s)
        else:
            self._busy_since = None
        if frame.type in ("result", "error"):
            self._exec_timeouts.pop(frame.id, None)
            if frame.id in self._orphans:
                self._orphans.discard(frame.id)
                if not self._orphans:
                    self._orphans_done.set()
            fut = self._pending.pop(frame.id, None)
            if fut is not None and not fut.done():
                fut.set_result(frame)
        elif frame.type == "call":
            handler = self._handlers.get(frame.parent) if frame.parent is not None else None
            task = asyncio.create_task(self._serve_call(frame, handler))
            self._calls[frame.id] = (frame.parent, task)
        elif frame.type == "hello" and not self._hello.done():
            self._hello.set_result(frame.body)
        # "state" frames only carry the busy flag, handled above.

    async def _serve_call(self, frame: proto.Frame, handler: CallHandler | None) -> None:
        body: dict[str, Any]
        try:
            if handler is None:
                raise RuntimeError("model calls are not available in this code block")
            kind = frame.body.get("kind")
            if kind not in ("llm", "llm_batched", "rlm", "rlm_batched"):
                raise ValueError(f"unknown call kind {str(kind)[:40]!r}")
            body = {"result": await handler(str(kind), frame.body)}
        except asyncio.CancelledError:
            body = {"error": "the request was cancelled"}
        except SandboxLost:
            return
        except Exception as exc:  # noqa: BLE001 - the code block sees "Error: ..."
            body = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        finally:
            self._calls.pop(frame.id, None)
        if self.alive:
            try:
                await self._send(proto.Frame("reply", frame.id, body=body))
            except (SandboxError, proto.ProtocolError) as exc:
                log.debug("reply to call %s not delivered: %s", frame.id, exc)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            since = self._busy_since
            if since is not None and time.monotonic() - since > self._busy_limit:
                await self._lose(
                    HardTimeout(
                        f"code ran past the hard deadline of {self._busy_limit:g}s without "
                        "yielding (stuck in C code or ignoring TimeoutError), so the sandbox "
                        "was killed and the session's variables are lost (RLM_EXEC_TIMEOUT_S)"
                    ),
                    kill=True,
                )
                return

    async def _lose(self, error: SandboxLost | None, kill: bool = False) -> None:
        """Mark the sandbox lost, fail everything pending and free the container."""
        if not self.alive:
            return
        self.state = SandboxState.LOST
        if kill:
            await self.process.kill()
        if error is None:
            reason = await self.process.exit_reason()
            diag = self.process.diagnostics().strip()
            msg = f"sandbox lost: {reason}; the session's variables are gone"
            if diag:
                msg += f" (last words: {diag[-300:]!r})"
            error = MemoryLimit(msg) if "memory" in reason else SandboxLost(msg)
        self.lost_error = error
        log.warning("sandbox %s lost: %s", self.name, error)
        # Free the container before waking the waiters, so no caller ever sees a leak.
        try:
            await self.process.close()
        finally:
            self._fail_all(error)
            await self._shutdown_tasks()

    def _fail_all(self, error: BaseException) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error)
                fut.exception()  # mark retrieved: nobody may be awaiting an orphan
        self._pending.clear()
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()
        for _, task in list(self._calls.values()):
            task.cancel()
        self._orphans.clear()
        self._orphans_done.set()

    async def _shutdown_tasks(self) -> None:
        current = asyncio.current_task()
        for task in (self._reader, self._watchdog):
            if task is not current and not task.done():
                task.cancel()

    # ---- requests ----------------------------------------------------------------------

    def _check(self) -> None:
        if self.state is SandboxState.LOST:
            raise self.lost_error or SandboxLost("sandbox lost")
        if self.state is SandboxState.CLOSED:
            raise SandboxLost("sandbox is closed")

    async def request(self, ftype: str, body: dict[str, Any], blob: bytes = b"") -> dict[str, Any]:
        """Send one request and wait for its answer; worker-side failures raise WorkerError."""
        self._check()
        rid = next(self._ids)
        fut: asyncio.Future[proto.Frame] = asyncio.get_running_loop().create_future()
        if ftype in ("get_var", "vars") and not self._pending and not self._calls:
            # These run user-defined __str__/__repr__: police them like a code block.
            self._busy_since = time.monotonic()
            self._busy_limit = self.cfg.hard_timeout_s
        self._pending[rid] = fut
        await self._send(proto.Frame(ftype, rid, body=body, blob=blob))
        frame = await fut
        if frame.type == "error":
            raise WorkerError(
                f"the sandbox could not {ftype}: {frame.body.get('name')}: {frame.body.get('message')}"
            )
        return frame.body

    async def exec(
        self,
        code: str,
        ns: str = "root",
        *,
        on_call: CallHandler | None = None,
        timeout_s: float | None = None,
        output_cap: int | None = None,
        fresh_answer: bool = False,
    ) -> ExecResult:
        """Run a code block in namespace ``ns``. Model calls it makes go to ``on_call``.

        ``fresh_answer`` resets the namespace's ``answer`` dict first (a new run starts).
        Cancelling this coroutine interrupts the code block (SIGINT) and answers its pending
        calls with an error; call ``quiesce`` before reusing the sandbox.
        """
        self._check()
        rid = next(self._ids)
        timeout = timeout_s or self.cfg.exec_timeout_s
        fut: asyncio.Future[proto.Frame] = asyncio.get_running_loop().create_future()
        body: dict[str, Any] = {"ns": ns, "code": code, "timeout": timeout}
        if not self._pending and not self._calls:
            # Nothing is outstanding, so the worker sits idle at its top level and starts
            # this block as soon as it reads it: start the hard-deadline clock now and
            # spare the worker its "state" frame (one write and one wake-up per exec).
            self._busy_since = time.monotonic()
            self._busy_limit = timeout + self.cfg.hard_grace_s
            body["clock_started"] = True
        self._pending[rid] = fut
        self._exec_timeouts[rid] = timeout + self.cfg.hard_grace_s
        if on_call is not None:
            self._handlers[rid] = on_call
        if output_cap:
            body["output_cap"] = output_cap
        if fresh_answer:
            body["fresh_answer"] = True
        try:
            await self._send(proto.Frame("exec", rid, body=body))
            frame = await fut
        except asyncio.CancelledError:
            if self.alive and rid in self._pending:
                self._orphans.add(rid)
                self._orphans_done.clear()
                self._cancel_calls(rid)
                asyncio.get_running_loop().create_task(self.process.interrupt())
            raise
        finally:
            self._handlers.pop(rid, None)
        if frame.type == "error":
            raise ProtocolViolation(f"worker failed to run the code block: {frame.body}")
        return ExecResult.from_body(frame.body)

    def _cancel_calls(self, parent: int) -> None:
        for p, task in list(self._calls.values()):
            if p == parent:
                task.cancel()

    async def quiesce(self, timeout_s: float = 5.0) -> None:
        """Wait until interrupted code blocks have stopped; kill the sandbox if they don't."""
        if not self._orphans:
            return
        try:
            await asyncio.wait_for(self._orphans_done.wait(), timeout_s)
        except TimeoutError:
            await self._lose(
                HardTimeout("an interrupted code block did not stop, so the sandbox was killed"),
                kill=True,
            )

    async def load(
        self, value: Any, ns: str = "root", names: tuple[str, ...] = ("context",)
    ) -> dict[str, Any]:
        """Bind ``value`` (str, or anything JSON) to ``names`` in ``ns``, streamed in chunks.

        Returns the worker's description of the value (type, length, chars).
        """
        if isinstance(value, str):
            data, encoding = value.encode("utf-8", "surrogatepass"), "text"
        elif isinstance(value, (bytes, bytearray)):
            data, encoding = bytes(value), "text"
        else:
            data, encoding = json.dumps(value, ensure_ascii=False).encode(), "json"
        lid = f"l{next(self._loads)}"
        view = memoryview(data)
        step = proto.CHUNK_BYTES
        chunks = [view[i : i + step] for i in range(0, len(data), step)] or [view[:0]]
        # Pipeline the chunks: the socket's flow control paces us, the answers come after.
        waits = []
        for i, chunk in enumerate(chunks):
            final = i == len(chunks) - 1
            body = {
                "load": lid,
                "ns": ns,
                "names": list(names),
                "encoding": encoding,
                "final": final,
            }
            waits.append(asyncio.ensure_future(self.request("load", body, bytes(chunk))))
            await asyncio.sleep(0)
        results = await asyncio.gather(*waits)
        return dict(results[-1].get("context") or {})

    async def get_var(self, name: str, ns: str = "root") -> str | None:
        """A variable's value as text, or None when it is not defined."""
        body = await self.request("get_var", {"ns": ns, "name": name})
        return str(body["text"]) if body.get("found") else None

    async def variables(self, ns: str = "root") -> dict[str, Any]:
        """User variables of ``ns`` and the shared state, with short reprs."""
        return await self.request("vars", {"ns": ns})

    async def new_namespace(
        self, ns: str, *, context_ref: str | None = None, context: Any = None
    ) -> dict[str, Any]:
        """Create a fresh namespace; its ``context`` is a handed-over value or ``context``."""
        body: dict[str, Any] = {"ns": ns}
        if context_ref is not None:
            body["context_ref"] = context_ref
        elif context is not None:
            body["context"] = context
        out = await self.request("ns_new", body)
        return dict(out.get("context") or {})

    async def drop_namespace(self, ns: str) -> None:
        if self.alive:
            await self.request("ns_drop", {"ns": ns})

    async def reset(self) -> None:
        """Drop every namespace and the shared state: a fresh REPL in the same sandbox."""
        await self.request("reset", {})

    async def ping(self) -> None:
        await self.request("ping", {})

    async def interrupt(self) -> None:
        """Interrupt the running code block (KeyboardInterrupt inside it)."""
        if self.alive:
            await self.process.interrupt()

    async def close(self) -> None:
        """Stop the worker and remove its container. Idempotent, never raises."""
        if self.state is SandboxState.CLOSED:
            return
        was_alive = self.alive
        self.state = SandboxState.CLOSED
        if was_alive:
            self._fail_all(SandboxLost("sandbox was closed"))
        await self._shutdown_tasks()
        try:
            await self.process.close()
        except Exception:
            log.exception("closing sandbox %s failed", self.name)

    async def __aenter__(self) -> SandboxHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
