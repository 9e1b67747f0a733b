"""``SandboxHandle``: the asyncio face of one sandbox.

It owns the channel to the worker, and trusts nothing that comes out of it.

Frames. A reader task takes one frame at a time and checks it before anything is kept or
acted on: its header against what the host is waiting for (only the answer to a request
that asked for a big value, or a model call from a running code block, may be large), its
envelope, and its body against the schema of its type (``sandbox/protocol.py``). A
``result`` or ``error`` must answer a pending request, a ``call`` must come from a running
code block that has no other call outstanding, ``hello`` comes once. Any breach is a
``ProtocolViolation``: this sandbox is lost, its requests fail with that error, nothing else
notices. The reader holds at most one frame (``MAX_JSON_BYTES``) at a time, yields to the
event loop while it reads and decodes a large one, and never parses more than a
``MAX_ENVELOPE_BYTES`` envelope as JSON. Small frames it takes back to back, but only a
bounded number can be valid at once (one result per pending request, one call per running
block, state frames at a trickle) and the first invalid one ends the reader, so a flood
cannot stall the loop either.

Running time. The hard deadline is the host's own measurement; ``busy`` flags and ``state``
frames are accepted and ignored. The worker runs one request at a time: while a code block
waits for a model call's reply the worker reads on, and what it reads then (a nested exec
for ``rlm_query``, a get_var, ...) runs on top of it; the block resumes when everything
above it has answered. The host mirrors that from what it alone knows, what it wrote and
when, and which calls it is serving: requests it wrote and the worker has not started
(a queue, in order) and requests started (a stack). The running request is the top of the
stack unless that waits on a call the host is serving; then the worker is reading, so the
oldest queued request starts. Time is charged to the running request only; a request whose
charged time passes its limit (an exec: its soft timeout plus ``hard_grace_s``;
get_var/vars: ``hard_timeout_s``; others: at least ``CHORE_LIMIT_S``) gets the sandbox
killed, ``HardTimeout``. So a code block's running time is the time since it was written,
less the time the host spent serving its model calls, less the time nested and earlier
requests ran. Sandbox code can stop a clock only by answering the request (then the host
waits on nothing) or by making a call (one at a time per code block, served within the
request's budget and deadline); no other frame changes any clock. Work a sandbox does while
no request is pending (a thread left running) is bounded by its CPU share and the session's
lifetime, not by this deadline.

Lifecycle: ``STARTING -> READY -> CLOSED`` or ``-> LOST`` (died, killed or misbehaved). Once
lost, every pending and future request raises the ``SandboxLost`` that says why.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import contextlib
import enum
import itertools
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from sandbox import protocol as proto
from sandbox.config import SandboxConfig
from sandbox.errors import (
    HardTimeout,
    MemoryLimit,
    ProtocolViolation,
    SandboxError,
    SandboxLost,
    SandboxStartError,
    SnapshotOverCap,
    WorkerError,
)
from sandbox.process import SandboxProcess

_T = TypeVar("_T")

log = logging.getLogger(__name__)

CallHandler = Callable[[str, dict[str, Any]], Awaitable[Any]]
"""``await handler(kind, body)`` answers a model call: a str, or a list of str for batches.

``kind`` is one of ``protocol.CALL_KINDS``; ``body`` has passed ``protocol.CHECK_CALL``."""

MAX_CONCURRENT_CALLS = 64
"""Model calls one sandbox may have outstanding. A worker makes one at a time per code block
it runs, so this only binds a forger (rlm_batched children run 16 at a time by default)."""
MAX_CALL_BYTES_HELD = 4 * proto.MAX_JSON_BYTES
"""Bytes of call frames (prompts) one sandbox may have outstanding."""
CHORE_LIMIT_S = 60.0
"""Least running time of a request that runs no user code (load, ns_new, reset, ping): a
worker that needs more is wedged (e.g. by a thread user code left spinning)."""
UNSOLICITED_STATE_PER_S = 20.0
UNSOLICITED_STATE_BURST = 50
"""``state`` frames beyond one per reply the host wrote change nothing and are tolerated at
this rate; a faster stream is a violation (each costs the host a frame's parsing)."""
DECODE_STEP_BYTES = 256 * 1024
"""The reader yields to the event loop after decoding this many bytes of long strings..."""
READ_STEP_BYTES = 1024 * 1024
"""...and after reading this many bytes of a large frame."""

_exec_checks: dict[int, proto.Check] = {}


def _exec_check(output_cap: int) -> proto.Check:
    check = _exec_checks.get(output_cap)
    if check is None:
        if len(_exec_checks) > 64:
            _exec_checks.clear()
        check = _exec_checks[output_cap] = proto.exec_result_check(output_cap)
    return check


class SandboxState(enum.Enum):
    STARTING = "starting"
    READY = "ready"
    LOST = "lost"
    CLOSED = "closed"


@dataclass(slots=True)
class SnapshotResult:
    """A session's REPL as opaque bytes, and the names that could not be pickled."""

    blob: bytes
    unpicklable: list[str]


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
        """From a result body that passed ``protocol.exec_result_check``."""
        return cls(
            stdout=body["stdout"],
            stderr=body["stderr"],
            error=body["error"],
            changed=body["changed"],
            duration_ms=float(body["duration_ms"]),
            answer=body.get("answer"),
            final=body.get("final"),
            dropped_chars=body["stdout_dropped"] + body["stderr_dropped"],
        )

    def output(self) -> str:
        """stdout and stderr as the model should see them."""
        text = self.stdout
        if self.stderr:
            text = f"{text}\n{self.stderr}" if text else self.stderr
        if self.dropped_chars:
            text += f"\n[... {self.dropped_chars} more characters of output were dropped]"
        return text


class _Request:
    """A request the host wrote, as the reader and the running-time clock see it."""

    __slots__ = ("calls", "charged", "check", "future", "id", "limit", "max_json", "orphan", "type")

    def __init__(
        self, rid: int, ftype: str, limit: float, check: proto.Check, max_json: int
    ) -> None:
        self.id = rid
        self.type = ftype
        self.limit = limit  # seconds of running time before the sandbox is killed
        self.check = check  # the schema of its result
        self.max_json = max_json  # the most JSON bytes its result may take on the wire
        self.future: asyncio.Future[proto.Frame] = asyncio.get_running_loop().create_future()
        self.charged = 0.0  # running time so far
        self.calls = 0  # model calls outstanding (the host is serving them)
        self.orphan = False  # its caller was cancelled; it runs on until it answers


class _Call:
    __slots__ = ("nbytes", "parent", "task")

    def __init__(self, parent: _Request, nbytes: int) -> None:
        self.parent = parent
        self.nbytes = nbytes
        self.task: asyncio.Task[None] | None = None


class SandboxHandle:
    """One live sandbox. Create with ``await SandboxHandle.start(process, cfg)``."""

    def __init__(self, process: SandboxProcess, cfg: SandboxConfig) -> None:
        self.process = process
        self.cfg = cfg
        self.state = SandboxState.STARTING
        self.info: dict[str, Any] = {}
        self.created = time.monotonic()
        self.lost_error: SandboxLost | None = None
        self._loop = asyncio.get_running_loop()
        self._ids = itertools.count(1)
        self._loads = itertools.count(1)
        self._pending: dict[int, _Request] = {}
        self._handlers: dict[int, CallHandler] = {}
        self._calls: dict[int, _Call] = {}
        self._call_bytes = 0
        self._orphans: set[int] = set()
        self._orphans_done = asyncio.Event()
        self._orphans_done.set()
        # The running-time clock (see the module docstring).
        self._queue: collections.deque[_Request] = collections.deque()
        self._stack: list[_Request] = []
        self._running: _Request | None = None
        self._running_since = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._killer: asyncio.Task[None] | None = None
        # State frames: one allowed per reply written, more at a trickle.
        self._state_credit = 0
        self._state_tokens = float(UNSOLICITED_STATE_BURST)
        self._state_at = time.monotonic()
        self._hello: asyncio.Future[dict[str, Any]] = self._loop.create_future()
        self._write_lock = asyncio.Lock()
        self._reader = asyncio.create_task(self._read_loop(), name=f"sandbox-reader-{process.name}")

    @classmethod
    async def start(cls, process: SandboxProcess, cfg: SandboxConfig) -> SandboxHandle:
        """Wait for the worker's hello; on failure the process is closed and nothing leaks."""
        handle = cls(process, cfg)
        handle.info = await handle._first_answer(asyncio.shield(handle._hello), "sandbox")
        return handle

    @classmethod
    async def resume(
        cls, process: SandboxProcess, cfg: SandboxConfig, info: dict[str, Any]
    ) -> SandboxHandle:
        """A worker restored from a checkpoint of a started one: its hello went to the host
        that checkpointed it, so ``info`` is that hello (another hello from this copy is a
        protocol error) and a ping proves the copy answers. On failure the process is closed
        and nothing leaks."""
        handle = cls(process, cfg)
        handle._hello.set_result(info)
        handle.info = info
        handle.state = SandboxState.READY  # a ping is a request
        await handle._first_answer(handle.ping(), "restored sandbox")
        return handle

    async def _first_answer(self, answer: Awaitable[_T], who: str) -> _T:
        """The start's end: ``answer`` within the start timeout, else the process closed
        and a start error."""
        try:
            got = await asyncio.wait_for(answer, self.cfg.start_timeout_s)
        except TimeoutError:
            await self.close()
            raise SandboxStartError(
                f"{who} did not answer within {self.cfg.start_timeout_s:g}s "
                "(RLM_SANDBOX_START_TIMEOUT_S)"
            ) from None
        except BaseException as exc:
            await self.close()
            if isinstance(exc, SandboxLost):
                raise SandboxStartError(f"{who} died at start-up: {exc}") from exc
            raise
        self.state = SandboxState.READY
        return got

    @property
    def name(self) -> str:
        return self.process.name

    def cpu_seconds(self) -> float | None:
        """The sandbox's CPU time so far, read by the host (None where it cannot be)."""
        return self.process.cpu_seconds()

    @property
    def alive(self) -> bool:
        return self.state in (SandboxState.STARTING, SandboxState.READY)

    @property
    def busy(self) -> bool:
        return bool(self._pending)

    # ---- channel: writing ----------------------------------------------------------------

    async def _send(
        self, frame: proto.Frame | bytes, before: Callable[[], None] | None = None
    ) -> None:
        """Write one frame; ``before`` runs at the moment it is written (in write order)."""
        parts = (frame,) if isinstance(frame, bytes) else proto.encode_parts(frame)
        async with self._write_lock:
            self._check()
            if before is not None:
                before()
            try:
                await self.process.write(*parts)
            except EOFError:
                await self._lose(None)
                raise self.lost_error or SandboxLost("sandbox is gone") from None

    # ---- channel: reading ----------------------------------------------------------------

    async def _read_loop(self) -> None:
        try:
            while True:
                frame, size = await self._read_frame()
                self._on_frame(frame, size)
        except EOFError:
            await self._lose(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, proto.ProtocolError):
                violation = ProtocolViolation(f"the sandbox broke the protocol: {exc}")
            else:
                log.exception("sandbox reader failed")
                violation = ProtocolViolation(f"sandbox channel failed: {exc!r}")
            drain = asyncio.create_task(self._drain())
            try:
                await self._lose(violation, kill=True)
            finally:
                drain.cancel()

    async def _drain(self) -> None:
        """Read and drop what a misbehaving sandbox still writes until it is gone.

        Docker cannot stop a container whose output nobody consumes: with the channel left
        full, ``kill`` and ``remove`` each hung for the SDK's 60 s timeout (measured); drained,
        the violating sandbox is gone in under a second.
        """
        with contextlib.suppress(Exception):  # gone (EOF) or closed under us: done
            while True:
                await self.process.read_exactly(65536)

    async def _read_frame(self) -> tuple[proto.Frame, int]:
        """Read and check one frame: header, envelope, what it answers, then its body."""
        header = await self.process.read_exactly(proto.HEADER.size)
        json_len, blob_len = proto.check_header(header)
        if blob_len:
            raise proto.ProtocolError(
                f"the frame header announces a {blob_len:,}-byte blob; workers send none"
            )
        allowed = self._json_allowance()
        if json_len > allowed:
            raise proto.ProtocolError(
                f"the frame header announces {json_len:,} bytes of JSON, but nothing the host "
                f"is waiting for may take more than {allowed:,}"
            )
        # The envelope first: what the frame is and answers is checked before the rest of it
        # (its long strings) is read.
        head = await self.process.read_exactly(min(json_len, proto.MAX_ENVELOPE_BYTES + 1))
        env = proto.parse_envelope(head, json_len, proto.WORKER_TYPES, proto.MAX_ENVELOPE_BYTES)
        check = self._admit(env)
        env.check_string_bytes(proto.longest(check), f"a {env.type} frame")
        if len(head) < json_len:
            env.attach(await self._read_rest(head, json_len))
        for _ in env.decode_strings(DECODE_STEP_BYTES):
            await asyncio.sleep(0)
        frame = env.frame()
        check(frame.body, frame.type)
        return frame, json_len

    async def _read_rest(self, head: bytes, json_len: int) -> bytearray:
        """The whole JSON part, read in steps into one buffer (no step copies much at once)."""
        buf = bytearray(json_len)
        buf[: len(head)] = head
        view, pos = memoryview(buf), len(head)
        while pos < json_len:
            chunk = await self.process.read_exactly(min(READ_STEP_BYTES, json_len - pos))
            view[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
            await asyncio.sleep(0)
        return buf

    def _json_allowance(self) -> int:
        """The most JSON bytes the next frame may announce, given what the host waits for."""
        allowed = proto.SMALL_JSON_BYTES
        for req in self._pending.values():
            allowed = max(allowed, req.max_json)
            if req.type == "exec":
                allowed = max(allowed, proto.CALL_JSON_BYTES)
        return allowed

    def _admit(self, env: proto.Envelope) -> proto.Check:
        """Check a frame against what the host asked for; return its body's schema."""
        ftype = env.type
        if ftype in ("result", "error"):
            req = self._pending.get(env.id)
            if req is None:
                raise proto.ProtocolError(f"a {ftype} for request {env.id}, which is not pending")
            return req.check if ftype == "result" else proto.CHECK_ERROR
        if ftype == "call":
            parent = self._pending.get(env.parent) if env.parent is not None else None
            if parent is None or parent.type != "exec":
                raise proto.ProtocolError(
                    f"a call from request {env.parent}, which is not a running code block"
                )
            if env.id in self._calls:
                raise proto.ProtocolError(f"a second call with id {env.id}")
            if parent.calls and not parent.orphan:
                raise proto.ProtocolError(
                    f"code block {parent.id} made a call before its previous one was answered"
                )
            if len(self._calls) >= MAX_CONCURRENT_CALLS:
                raise proto.ProtocolError(f"more than {MAX_CONCURRENT_CALLS} calls at once")
            if self._call_bytes + env.json_len > MAX_CALL_BYTES_HELD:
                raise proto.ProtocolError(
                    f"calls outstanding would hold more than {MAX_CALL_BYTES_HELD:,} bytes"
                )
            return proto.CHECK_CALL
        if ftype == "hello":
            if self._hello.done():
                raise proto.ProtocolError("a second hello")
            return proto.CHECK_HELLO
        # "state": the worker's own account of when it runs code; the host keeps its own.
        if not any(req.type == "exec" for req in self._pending.values()):
            raise proto.ProtocolError("a state frame while no code block runs")
        self._take_state_credit()
        return proto.CHECK_STATE

    def _take_state_credit(self) -> None:
        if self._state_credit > 0:
            self._state_credit -= 1
            return
        now = time.monotonic()
        self._state_tokens = min(
            float(UNSOLICITED_STATE_BURST),
            self._state_tokens + (now - self._state_at) * UNSOLICITED_STATE_PER_S,
        )
        self._state_at = now
        if self._state_tokens < 1:
            raise proto.ProtocolError("a flood of state frames the host did not ask for")
        self._state_tokens -= 1

    def _on_frame(self, frame: proto.Frame, size: int) -> None:
        """Act on a frame that passed ``_read_frame``'s checks."""
        if not self.alive:  # lost while the frame was decoded: nobody may see it
            return
        if frame.type in ("result", "error"):
            req = self._pending.pop(frame.id)
            self._forget(req)
            if frame.id in self._orphans:
                self._orphans.discard(frame.id)
                if not self._orphans:
                    self._orphans_done.set()
            if not req.future.done():
                req.future.set_result(frame)
        elif frame.type == "call":
            assert frame.parent is not None
            parent = self._pending[frame.parent]
            call = _Call(parent, size)
            self._calls[frame.id] = call
            self._call_bytes += size
            parent.calls += 1
            if parent in self._queue:  # it runs: the worker started it already
                self._queue.remove(parent)
                self._stack.append(parent)
            self._settle()
            handler = self._handlers.get(parent.id)
            call.task = asyncio.create_task(self._serve_call(frame, handler))
        elif frame.type == "hello":
            self._hello.set_result(frame.body)
        # "state" changes nothing.

    async def _serve_call(self, frame: proto.Frame, handler: CallHandler | None) -> None:
        body: dict[str, Any]
        try:
            if handler is None:
                raise RuntimeError("model calls are not available in this code block")
            body = {"result": await handler(frame.body["kind"], frame.body)}
        except asyncio.CancelledError:
            body = {"error": "the request was cancelled"}
        except SandboxLost:
            self._call_done(frame.id)
            return
        except Exception as exc:  # noqa: BLE001 - the code block sees "Error: ..."
            body = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        frame.body = {}
        try:
            reply = proto.encode(proto.Frame("reply", frame.id, body=body))
        except (proto.ProtocolError, ValueError, TypeError) as exc:
            body = {"error": f"the answer could not be sent: {exc}"[:2000]}
            reply = proto.encode(proto.Frame("reply", frame.id, body=body))
        try:
            if self.alive:
                await self._send(reply, before=lambda: self._call_done(frame.id))
        except (SandboxError, proto.ProtocolError) as exc:
            log.debug("reply to call %s not delivered: %s", frame.id, exc)
        finally:
            self._call_done(frame.id)

    def _call_done(self, cid: int) -> None:
        """The reply to call ``cid`` is being written: its code block runs again."""
        call = self._calls.pop(cid, None)
        if call is None:
            return
        self._call_bytes -= call.nbytes
        call.parent.calls -= 1
        self._state_credit += 1  # the worker says "running again" once per reply
        self._settle()

    # ---- running time ----------------------------------------------------------------------

    def _enqueue(self, req: _Request) -> None:
        """``req`` is being written: it waits for the worker to read it."""
        self._pending[req.id] = req
        self._queue.append(req)
        self._settle()

    def _forget(self, req: _Request) -> None:
        if req in self._queue:
            self._queue.remove(req)
        elif req in self._stack:
            self._stack.remove(req)
        self._settle()

    def _settle(self) -> None:
        """Charge the time since the last event, then find which request runs now."""
        now = time.monotonic()
        if self._running is not None:
            self._running.charged += now - self._running_since
        current = None
        while True:
            if self._stack and not self._stack[-1].calls:
                current = self._stack[-1]
                break
            if not self._queue:
                break
            self._stack.append(self._queue.popleft())  # the worker is reading: it starts
        self._running, self._running_since = current, now
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if current is not None and self.alive:
            self._deadline = self._loop.call_later(
                max(0.0, current.limit - current.charged), self._on_deadline
            )

    def _on_deadline(self) -> None:
        self._deadline = None
        req = self._running
        if req is None or not self.alive or self._killer is not None:
            return
        used = req.charged + time.monotonic() - self._running_since
        if used < req.limit:
            self._deadline = self._loop.call_later(req.limit - used, self._on_deadline)
            return
        self._killer = self._loop.create_task(self._lose(self._hard_timeout(req), kill=True))

    def _hard_timeout(self, req: _Request) -> HardTimeout:
        if req.type == "exec":
            return HardTimeout(
                f"code ran past the hard deadline of {req.limit:g}s of running time (time "
                "spent waiting on model calls does not count) without yielding: stuck in C "
                "code, or ignoring TimeoutError and signals. The sandbox was killed and the "
                "session's variables are lost (RLM_EXEC_TIMEOUT_S)"
            )
        if req.type in ("get_var", "vars"):
            return HardTimeout(
                f"reading variables ({req.type}) ran past the hard deadline of {req.limit:g}s "
                "(a __str__ or __repr__ stuck or ignoring TimeoutError), so the sandbox was "
                "killed and the session's variables are lost (RLM_EXEC_TIMEOUT_S)"
            )
        return HardTimeout(
            f"the sandbox spent more than {req.limit:g}s on a {req.type} request (something "
            "left running in it hogs the worker), so it was killed and the session's "
            "variables are lost"
        )

    # ---- losing it ---------------------------------------------------------------------------

    async def _lose(self, error: SandboxLost | None, kill: bool = False) -> None:
        """Mark the sandbox lost, fail everything pending and free the container."""
        if not self.alive:
            return
        self.state = SandboxState.LOST
        self.lost_error = error
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
        for req in self._pending.values():
            if not req.future.done():
                req.future.set_exception(error)
                req.future.exception()  # mark retrieved: nobody may be awaiting an orphan
        self._pending.clear()
        self._queue.clear()
        self._stack.clear()
        self._running = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if not self._hello.done():
            self._hello.set_exception(error)
            self._hello.exception()
        for call in list(self._calls.values()):
            if call.task is not None:
                call.task.cancel()
        self._orphans.clear()
        self._orphans_done.set()

    async def _shutdown_tasks(self) -> None:
        current = asyncio.current_task()
        if self._reader is not current and not self._reader.done():
            self._reader.cancel()

    # ---- requests ----------------------------------------------------------------------

    def _check(self) -> None:
        if self.state is SandboxState.LOST:
            raise self.lost_error or SandboxLost("sandbox lost")
        if self.state is SandboxState.CLOSED:
            raise SandboxLost("sandbox is closed")

    def _new_request(self, ftype: str, *, limit: float, output_cap: int = 0) -> _Request:
        if ftype == "exec":
            check = _exec_check(output_cap)
        else:
            check = proto.RESULT_CHECKS.get(ftype) or proto.RESULT_CHECKS["ping"]
        return _Request(
            next(self._ids), ftype, limit, check, proto.result_json_bytes(ftype, output_cap)
        )

    async def request(self, ftype: str, body: dict[str, Any], blob: bytes = b"") -> dict[str, Any]:
        """Send one request and wait for its answer; worker-side failures raise WorkerError."""
        self._check()
        if ftype in ("get_var", "vars"):  # they run user-defined __str__/__repr__
            limit = self.cfg.hard_timeout_s
        else:
            limit = max(self.cfg.hard_timeout_s, CHORE_LIMIT_S)
        req = self._new_request(ftype, limit=limit)
        await self._send(
            proto.Frame(ftype, req.id, body=body, blob=blob), before=lambda: self._enqueue(req)
        )
        frame = await req.future
        if frame.type == "error":
            raise WorkerError(
                f"the sandbox could not {ftype}: {frame.body['name']}: {frame.body['message']}"
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
        timeout = timeout_s or self.cfg.exec_timeout_s
        # The host keeps the running-time clock of every block itself, so the worker never
        # needs to announce a start ("clock_started").
        body: dict[str, Any] = {"ns": ns, "code": code, "timeout": timeout, "clock_started": True}
        if output_cap:
            body["output_cap"] = output_cap
        if fresh_answer:
            body["fresh_answer"] = True
        req = self._new_request(
            "exec",
            limit=timeout + self.cfg.hard_grace_s,
            output_cap=output_cap or self.cfg.output_cap_chars,
        )
        if on_call is not None:
            self._handlers[req.id] = on_call
        try:
            await self._send(
                proto.Frame("exec", req.id, body=body), before=lambda: self._enqueue(req)
            )
            frame = await req.future
        except asyncio.CancelledError:
            if self.alive and req.id in self._pending:
                req.orphan = True
                self._orphans.add(req.id)
                self._orphans_done.clear()
                self._cancel_calls(req)
                self._loop.create_task(self.process.interrupt())
            raise
        finally:
            self._handlers.pop(req.id, None)
        if frame.type == "error":
            raise ProtocolViolation(f"worker failed to run the code block: {frame.body}")
        return ExecResult.from_body(frame.body)

    def _cancel_calls(self, parent: _Request) -> None:
        for call in list(self._calls.values()):
            if call.parent is parent and call.task is not None:
                call.task.cancel()

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
        step = proto.CHUNK_BYTES
        view = memoryview(data)
        # One chunk (the common case) goes as it is; more are copied out one at a time.
        chunks: list[bytes | memoryview] = (
            [data] if len(data) <= step else [view[i : i + step] for i in range(0, len(data), step)]
        )
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
            blob = chunk if isinstance(chunk, bytes) else bytes(chunk)
            waits.append(asyncio.ensure_future(self.request("load", body, blob)))
            await asyncio.sleep(0)
        results = await asyncio.gather(*waits)
        return dict(results[-1].get("context") or {})

    async def snapshot(self, max_bytes: int = 0) -> SnapshotResult:
        """The REPL (root namespace and ``state``) as one opaque blob, pickled inside the
        sandbox one value at a time; raises SnapshotOverCap past ``max_bytes``."""
        head = await self.request("snapshot", {"max_bytes": max_bytes})
        size = int(head["size"])
        if head.get("over"):
            raise SnapshotOverCap(
                f"the session's state takes {size:,} bytes, over the snapshot cap of {max_bytes:,}",
                size=size,
            )
        parts: list[bytes] = []
        got = 0
        while got < size:
            body = await self.request("snapshot_read", {"offset": got})
            data = body["data"]
            piece = (
                await asyncio.to_thread(base64.b64decode, data, validate=True)
                if len(data) > 256 * 1024
                else base64.b64decode(data, validate=True)
            )
            if not piece:
                raise WorkerError("the sandbox's snapshot ended early")
            parts.append(piece)
            got += len(piece)
            if body.get("final"):
                break
        blob = b"".join(parts)
        if len(blob) != size:
            raise WorkerError(f"the sandbox sent {len(blob):,} snapshot bytes, not {size:,}")
        return SnapshotResult(blob=blob, unpicklable=list(head.get("unpicklable") or []))

    async def restore(self, blob: bytes) -> list[str]:
        """Put a snapshot back into this (fresh) sandbox; the names it could not restore."""
        rid = f"r{next(self._loads)}"
        view = memoryview(blob)
        step = proto.CHUNK_BYTES
        chunks = [view[i : i + step] for i in range(0, len(blob), step)] or [view[:0]]
        out: dict[str, Any] = {}
        for i, chunk in enumerate(chunks):
            body = {"restore": rid, "final": i == len(chunks) - 1}
            out = await self.request("restore", body, bytes(chunk))
        return list(out.get("failed") or [])

    async def get_var(self, name: str, ns: str = "root") -> str | None:
        """A variable's value as text, or None when it is not defined."""
        body = await self.request("get_var", {"ns": ns, "name": name})
        return str(body.get("text", "")) if body["found"] else None

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
