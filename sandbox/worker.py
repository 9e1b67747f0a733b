"""The REPL worker that runs inside a sandbox (standard library only, Python 3.10+).

One long-lived process per sandbox. It serves framed requests (see ``protocol.py``) on
private copies of the descriptors it was started with; fds 0, 1 and 2 are pointed at
/dev/null and a capture file, so nothing user code prints can reach the channel.

Namespaces: every run (the root and each recursive ``rlm_query`` child) gets its own
namespace; all of them share one ``state`` dict that lives until ``reset``.

Re-entrancy: while a code block waits for the reply to a model call, the worker keeps
serving requests, so the host can run a child's code block (``rlm_query``) inside the same
process. Replies that arrive for a call lower on the stack are kept until it resumes.

Soft limits live here (a timer raising ``TimeoutError`` in the code block, output caps); the
hard ones (wall deadline, memory, pids, disk) are the host's and the container runtime's.
"""

from __future__ import annotations

import ast
import builtins
import collections
import io
import itertools
import json
import linecache
import os
import reprlib
import signal
import sys
import time
from typing import Any

try:  # run as a script inside the image, or as part of the host package
    import protocol as proto  # type: ignore[import-not-found,no-redef]
except ImportError:  # pragma: no cover - exercised by the local launcher
    from sandbox import protocol as proto

_REPR = reprlib.Repr()
_REPR.maxstring = 120
_REPR.maxother = 120
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxdict = 8
_REPR.maxlevel = 3

HELPERS = frozenset(
    {
        "llm_query", "llm_query_batched", "rlm_query", "rlm_query_batched",
        "state", "state_get", "state_set", "state_del", "state_keys",
        "FINAL_VAR", "FINAL", "SHOW_VARS", "answer",
    }
)  # fmt: skip
_FINAL_KEY = "__rlm_final__"
_LINECACHE_KEEP = 64


def short_repr(value: Any, limit: int = 200) -> str:
    """A bounded repr that never raises (user objects may have hostile __repr__)."""
    try:
        text = _REPR.repr(value)
    except BaseException as exc:  # noqa: BLE001 - any failure becomes text
        text = f"<unrepresentable {type(value).__name__}: {type(exc).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe(value: Any) -> dict[str, Any]:
    """Type and size of a value, for the prompts the host builds."""
    info: dict[str, Any] = {"type": type(value).__name__}
    try:
        info["length"] = len(value)
    except TypeError:
        pass
    if isinstance(value, str):
        info["chars"] = len(value)
    elif isinstance(value, (list, tuple)):
        lens = [len(x) if isinstance(x, str) else len(short_repr(x, 10**6)) for x in value[:1000]]
        info["chars"] = sum(lens)
        info["item_chars"] = lens[:20]
    elif isinstance(value, dict):
        info["keys"] = [short_repr(k, 60) for k in itertools.islice(value, 20)]
    return info


class CappedText(io.TextIOBase):
    """A text sink that keeps the first ``cap`` characters and counts the rest."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.parts: list[str] = []
        self.kept = 0
        self.dropped = 0

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        room = self.cap - self.kept
        if room > 0:
            piece = s[:room]
            self.parts.append(piece)
            self.kept += len(piece)
        self.dropped += max(0, len(s) - max(room, 0))
        return len(s)

    def getvalue(self) -> str:
        return "".join(self.parts)


class Worker:
    """Serves the protocol on (rfd, wfd) until the host closes the channel."""

    def __init__(self, rfd: int, wfd: int, *, output_cap: int, timeout_s: float) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.output_cap = output_cap
        self.default_timeout = timeout_s
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] = {}
        self.handoff: dict[str, Any] = {}
        self.loads: dict[str, bytearray] = {}
        self.stash: dict[int, proto.Frame] = {}
        self.waits: list[int] = []
        self.exec_stack: list[int] = []
        self.call_ids = itertools.count(1)
        self.handoff_ids = itertools.count(1)
        self.exec_serial = itertools.count(1)
        self.user_depth = 0
        self.in_io = False
        self.pending_signal: BaseException | None = None
        self.timeout_for_message = timeout_s
        self.fd_capture = _capture_file()
        self.rbuf = bytearray()
        self.repl_files: collections.deque[str] = collections.deque()
        self.forked = False
        # A process forked by user code must never touch the channel: it would answer
        # requests meant for us or steal their bytes. Its copies of the fds are closed.
        os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self.forked = True
        for fd in (self.rfd, self.wfd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _leave_if_forked(self) -> None:
        """A forked child that returns into the worker ends here, silently."""
        if self.forked:
            os._exit(0)

    # ---- channel ---------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes:
        """n bytes of the channel; small frames usually cost one read(2) for header and body."""
        have = len(self.rbuf)
        if have >= n:
            out = bytes(self.rbuf[:n])
            del self.rbuf[:n]
            return out
        if n - have < 65536:
            while len(self.rbuf) < n:
                chunk = os.read(self.rfd, 65536)
                if not chunk:
                    raise EOFError("host closed the channel")
                self.rbuf += chunk
            return self._read_exact(n)
        buf = bytearray(n)  # a large blob: read it in place, no buffer copies
        buf[:have] = self.rbuf
        self.rbuf.clear()
        view = memoryview(buf)
        got = have
        while got < n:
            count = os.readv(self.rfd, [view[got:]])
            if count == 0:
                raise EOFError("host closed the channel")
            got += count
        return bytes(buf)

    def read_frame(self) -> proto.Frame:
        self._leave_if_forked()
        self.in_io = True
        try:
            header = self._read_exact(proto.HEADER.size)
            json_len, blob_len = proto.check_header(header)
            payload = self._read_exact(json_len + blob_len)
            return proto.decode(header, payload, proto.HOST_TYPES)
        finally:
            self.in_io = False

    def send(self, frame: proto.Frame) -> None:
        self._leave_if_forked()
        data = proto.encode(frame)
        self.in_io = True
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self.wfd, view) :]
        finally:
            self.in_io = False
        self._raise_pending()

    def _raise_pending(self) -> None:
        exc, self.pending_signal = self.pending_signal, None
        if exc is not None and self.user_depth > 0:
            raise exc

    # ---- signals -----------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: Any) -> None:
        if self.user_depth <= 0:
            if signum == signal.SIGALRM:  # a top-level block's timer, left running: stop it
                signal.setitimer(signal.ITIMER_REAL, 0)
            return
        if signum == signal.SIGALRM:
            exc: BaseException = TimeoutError(
                f"code block exceeded the soft time limit of {self.timeout_for_message:g}s "
                "(RLM_EXEC_TIMEOUT_S)"
            )
        else:
            exc = KeyboardInterrupt("interrupted by the host")
        if self.in_io:  # never tear a frame in half: raise once the frame is done
            self.pending_signal = exc
            return
        raise exc

    # ---- main loop ---------------------------------------------------------------------

    def serve(self, until: int | None = None) -> proto.Frame | None:
        """Handle requests; with ``until``, return when the reply to that call arrives."""
        while True:
            if until is not None and until in self.stash:
                return self.stash.pop(until)
            frame = self.read_frame()
            if frame.type == "reply":
                if frame.id == until:
                    self._raise_pending()
                    return frame
                elif frame.id in self.waits:  # a lower call's answer: keep it for later
                    self.stash[frame.id] = frame
                # else: a reply nobody waits for any more (an interrupted call): drop it
            else:
                self.handle(frame)
            self._raise_pending()

    def handle(self, frame: proto.Frame) -> None:
        """Answer one request; every request gets exactly one result or error frame."""
        op = getattr(self, "op_" + frame.type, None)
        try:
            if op is None:
                raise ValueError(f"unknown request type {frame.type!r}")
            body = op(frame)
        except EOFError:
            raise
        except BaseException as exc:
            error = {"name": type(exc).__name__, "message": str(exc)[:2000]}
            self.send(proto.Frame("error", frame.id, body=error))
            if not isinstance(exc, Exception) or isinstance(exc, TimeoutError):
                raise  # an interrupt or timeout meant for the code block below us
            return
        self.send(proto.Frame("result", frame.id, body=body))

    # ---- namespaces --------------------------------------------------------------------

    def namespace(self, name: str) -> dict[str, Any]:
        ns = self.namespaces.get(name)
        if ns is None:
            ns = self._new_namespace(name)
        return ns

    def _new_namespace(self, name: str) -> dict[str, Any]:
        ns: dict[str, Any] = {"__name__": "__main__", "__builtins__": builtins}
        state = self.state

        def state_get(key: str, default: Any = None) -> Any:
            """Read a value of the session's shared state."""
            return state.get(key, default)

        def state_set(key: str, value: Any) -> None:
            """Store a value in the session's shared state (seen by all runs and turns)."""
            state[key] = value

        def state_del(key: str) -> None:
            """Remove a key from the shared state (no error when missing)."""
            state.pop(key, None)

        def state_keys() -> list[str]:
            """Keys of the shared state."""
            return list(state)

        def FINAL_VAR(name_or_value: Any) -> str:  # noqa: N802 - the RLM protocol's name
            """Give the variable named (or the value passed) as the final answer."""
            if isinstance(name_or_value, str):
                key = name_or_value.strip().strip("'\"")
                if key not in ns:
                    msg = f"Error: variable {key!r} is not defined, so FINAL_VAR has no answer"
                    print(msg)
                    return msg
                value = ns[key]
            else:
                value = name_or_value
            text = value if isinstance(value, str) else str(value)
            ns[_FINAL_KEY] = text
            return text

        def FINAL(value: Any) -> str:  # noqa: N802
            """Give ``value`` (as text) as the final answer."""
            text = value if isinstance(value, str) else str(value)
            ns[_FINAL_KEY] = text
            return text

        def SHOW_VARS() -> dict[str, str]:  # noqa: N802
            """Names defined in this namespace with their types."""
            return {k: type(v).__name__ for k, v in ns.items() if _user_name(k)}

        ns.update(
            state=state, state_get=state_get, state_set=state_set, state_del=state_del,
            state_keys=state_keys, FINAL_VAR=FINAL_VAR, FINAL=FINAL, SHOW_VARS=SHOW_VARS,
            answer={"content": None, "ready": False},
            llm_query=self._llm_query, llm_query_batched=self._llm_query_batched,
            rlm_query=self._rlm_query, rlm_query_batched=self._rlm_query_batched,
        )  # fmt: skip
        self.namespaces[name] = ns
        return ns

    # ---- calls out to the host -------------------------------------------------------

    def _call(self, kind: str, body: dict[str, Any]) -> Any:
        cid = next(self.call_ids)
        parent = self.exec_stack[-1] if self.exec_stack else None
        remaining = signal.setitimer(signal.ITIMER_REAL, 0)[0]  # waiting is not running
        self.waits.append(cid)
        try:
            self.send(proto.Frame("call", cid, parent, {"kind": kind, **body}, busy=False))
            reply = self.serve(until=cid)
            self.send(proto.Frame("state", parent or 0, busy=True))
        finally:
            self.waits.remove(cid)
            self.stash.pop(cid, None)
            if remaining > 0:
                signal.setitimer(signal.ITIMER_REAL, remaining, 1.0)
        assert reply is not None
        if "error" in reply.body:
            return {"error": str(reply.body["error"])}
        return {"result": reply.body.get("result")}

    @staticmethod
    def _as_text(out: dict[str, Any]) -> str:
        if "error" in out:
            return "Error: " + out["error"]
        result = out["result"]
        return result if isinstance(result, str) else str(result)

    def _as_list(self, out: dict[str, Any], n: int) -> list[str]:
        if "error" in out:
            return ["Error: " + out["error"]] * n
        result = out["result"]
        if not isinstance(result, list) or len(result) != n:
            return ["Error: the host answered a batch of the wrong size"] * n
        return [r if isinstance(r, str) else str(r) for r in result]

    def _llm_query(self, prompt: Any, model: str | None = None) -> str:
        """Ask a sub-model one question; returns its answer, or "Error: ..."."""
        return self._as_text(self._call("llm", {"prompt": _text(prompt), "model": model}))

    def _llm_query_batched(self, prompts: Any, model: str | None = None) -> list[str]:
        """Ask many questions concurrently; answers come back in input order."""
        items = [_text(p) for p in prompts]
        if not items:
            return []
        return self._as_list(
            self._call("llm_batched", {"prompts": items, "model": model}), len(items)
        )

    def _handoff(self, context: Any) -> str | None:
        if context is None:
            return None
        ref = f"h{next(self.handoff_ids)}"
        self.handoff[ref] = context
        return ref

    def _rlm_query(self, query: Any, context: Any = None) -> str:
        """Run a recursive RLM on ``context`` (default: the query itself) to answer ``query``."""
        ref = self._handoff(context)
        out = self._call("rlm", {"query": _text(query), "context_ref": ref})
        self.handoff.pop(ref or "", None)
        return self._as_text(out)

    def _rlm_query_batched(self, items: Any) -> list[str]:
        """Run recursive RLMs concurrently; items are queries, (query, context) pairs or dicts."""
        reqs, refs = [], []
        for item in items:
            if isinstance(item, dict):
                query, context = item.get("query", ""), item.get("context")
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                query, context = item
            else:
                query, context = item, None
            ref = self._handoff(context)
            refs.append(ref)
            reqs.append({"query": _text(query), "context_ref": ref})
        if not reqs:
            return []
        out = self._call("rlm_batched", {"items": reqs})
        for ref in refs:
            self.handoff.pop(ref or "", None)
        return self._as_list(out, len(reqs))

    # ---- requests ----------------------------------------------------------------------

    def op_ping(self, frame: proto.Frame) -> dict[str, Any]:
        return {"pong": True}

    def op_reset(self, frame: proto.Frame) -> dict[str, Any]:
        self.namespaces.clear()
        self.state = {}
        self.handoff.clear()
        self.loads.clear()
        return {"reset": True}

    def op_ns_new(self, frame: proto.Frame) -> dict[str, Any]:
        name = str(frame.body["ns"])
        ns = self._new_namespace(name)
        ref = frame.body.get("context_ref")
        if ref is not None:
            if ref not in self.handoff:
                raise KeyError(f"no value handed over as {ref!r}")
            ns["context"] = self.handoff.pop(ref)
        elif "context" in frame.body:
            ns["context"] = frame.body["context"]
        return {"context": describe(ns["context"])} if "context" in ns else {}

    def op_ns_drop(self, frame: proto.Frame) -> dict[str, Any]:
        return {"dropped": self.namespaces.pop(str(frame.body["ns"]), None) is not None}

    def op_load(self, frame: proto.Frame) -> dict[str, Any]:
        """Receive a value in chunks; on the last one decode it and bind it to ``names``."""
        load_id = str(frame.body["load"])
        buf = self.loads.setdefault(load_id, bytearray())
        buf += frame.blob
        if not frame.body.get("final"):
            return {"received": len(buf)}
        data = self.loads.pop(load_id)
        encoding = frame.body.get("encoding", "text")
        if encoding == "text":
            value: Any = data.decode("utf-8", "replace")
        elif encoding == "json":
            value = json.loads(data)
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        del data
        ns = self.namespace(str(frame.body["ns"]))
        for name in frame.body.get("names", ["context"]):
            ns[str(name)] = value
        return {"context": describe(value)}

    def _guarded(self, fn: Any) -> Any:
        """Run user-defined __str__/__repr__ code under the soft time limit, like a block."""
        self.user_depth += 1
        signal.setitimer(signal.ITIMER_REAL, self.default_timeout, 1.0)
        try:
            return fn()
        finally:
            self.user_depth -= 1
            signal.setitimer(signal.ITIMER_REAL, 0)

    def op_get_var(self, frame: proto.Frame) -> dict[str, Any]:
        ns = self.namespace(str(frame.body["ns"]))
        name = str(frame.body["name"]).strip().strip("'\"")
        if name not in ns or not _user_name(name):
            return {"found": False}
        value = ns[name]
        if isinstance(value, str):
            text = value
        else:
            try:
                text = self._guarded(lambda: str(value))
            except BaseException as exc:  # noqa: BLE001 - hostile __str__, or its timeout
                text = f"<str() failed: {type(exc).__name__}>"
            if not isinstance(text, str):
                text = f"<str() returned {type(text).__name__}>"
        return {
            "found": True,
            "text": text[: proto.MAX_JSON_BYTES // 8],
            "type": type(value).__name__,
        }

    def op_vars(self, frame: proto.Frame) -> dict[str, Any]:
        ns = self.namespaces.get(str(frame.body["ns"]), {})

        def listing() -> dict[str, Any]:
            out = [
                {"name": k, "type": type(v).__name__, "repr": short_repr(v)}
                for k, v in list(ns.items())
                if _user_name(k)
            ]
            state = [
                {"name": k, "type": type(v).__name__, "repr": short_repr(v)}
                for k, v in list(self.state.items())
            ]
            return {"vars": out[:200], "state": state[:200]}

        return self._guarded(listing)

    def op_exec(self, frame: proto.Frame) -> dict[str, Any]:
        ns = self.namespace(str(frame.body.get("ns", "root")))
        if frame.body.get("fresh_answer"):  # a new run: last turn's answer is not this one's
            ns["answer"] = {"content": None, "ready": False}
        code = str(frame.body.get("code", ""))
        timeout = float(frame.body.get("timeout") or self.default_timeout)
        cap = int(frame.body.get("output_cap") or self.output_cap)
        fname = f"<repl-{next(self.exec_serial)}>"
        linecache.cache[fname] = (len(code), None, code.splitlines(True), fname)
        self.repl_files.append(fname)
        if len(self.repl_files) > _LINECACHE_KEEP:
            linecache.cache.pop(self.repl_files.popleft(), None)

        out, err = CappedText(cap), CappedText(cap)
        before = {k: id(v) for k, v in ns.items() if _user_name(k)}
        ns.pop(_FINAL_KEY, None)
        saved = sys.stdout, sys.stderr
        # Only a nested block (run while its parent waits on a call) can find a timer set.
        nested = bool(self.exec_stack)
        prev_timer = signal.getitimer(signal.ITIMER_REAL) if nested else (0.0, 0.0)
        prev_message = self.timeout_for_message
        error: dict[str, str] | None = None
        changed: list[dict[str, str]] = []
        answer_text: str | None = None
        self.exec_stack.append(frame.id)
        self.timeout_for_message = timeout
        sys.stdout, sys.stderr = out, err
        t0 = time.perf_counter()
        duration = 0.0
        try:
            # The host starts the hard-deadline clock itself when it knows we are idle with
            # nothing queued; otherwise it learns here that this block starts now.
            if not frame.body.get("clock_started"):
                self.send(proto.Frame("state", frame.id, body={"timeout": timeout}, busy=True))
            self.user_depth += 1
            try:
                signal.setitimer(signal.ITIMER_REAL, timeout, 1.0)
                try:
                    _run(code, fname, ns)
                except BaseException as exc:  # noqa: BLE001 - user code's failure is data
                    error = {"type": type(exc).__name__, "message": ""}
                    error["message"] = _safe_str(exc)[:2000]
                    err.write(_format_exc(exc))
                duration = time.perf_counter() - t0
                # Reprs of the block's values run user code (__repr__) too: still timed.
                changed = [
                    {"name": k, "type": type(v).__name__, "repr": short_repr(v)}
                    for k, v in list(ns.items())
                    if _user_name(k) and before.get(k) != id(v)
                ]
                answer = ns.get("answer")
                if isinstance(answer, dict) and answer.get("ready"):
                    content = answer.get("content")
                    answer_text = "" if content is None else _safe_str(content)
            finally:
                self.user_depth -= 1
                if nested:  # a top-level block leaves its timer running: see _on_signal
                    signal.setitimer(signal.ITIMER_REAL, 0)
        except BaseException as exc:  # noqa: BLE001 - a timeout or interrupt in the bookkeeping
            error = error or {"type": type(exc).__name__, "message": _safe_str(exc)[:2000]}
        finally:
            duration = duration or time.perf_counter() - t0
            sys.stdout, sys.stderr = saved
            self.exec_stack.pop()
            self.timeout_for_message = prev_message
            if prev_timer[0] > 0:
                signal.setitimer(signal.ITIMER_REAL, *prev_timer)
        if not self.exec_stack:  # values handed to children that never started
            self.handoff.clear()
        stdout = out.getvalue() + self._drain_fd_capture(cap)
        body: dict[str, Any] = {
            "stdout": stdout,
            "stderr": err.getvalue(),
            "stdout_dropped": out.dropped,
            "stderr_dropped": err.dropped,
            "error": error,
            "changed": changed[:100],
            "duration_ms": round(duration * 1000, 3),
        }
        if answer_text is not None:
            body["answer"] = answer_text
        if _FINAL_KEY in ns:
            body["final"] = ns.pop(_FINAL_KEY)
        return body

    def _drain_fd_capture(self, cap: int) -> str:
        """Output written straight to fds 1/2 (os.write, subprocesses) since the last exec."""
        fd = self.fd_capture.fileno()
        end = os.lseek(fd, 0, os.SEEK_END)
        if end == 0:
            return ""
        data = os.pread(fd, min(end, cap), 0)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        text = data.decode("utf-8", "replace")
        if end > cap:
            text += f"\n[... {end - cap} more bytes written to fd 1/2 were dropped]"
        return text


def _safe_str(value: Any) -> str:
    try:
        return str(value)
    except BaseException:  # noqa: BLE001 - hostile __str__
        return f"<{type(value).__name__}>"


def _user_name(name: str) -> bool:
    return not name.startswith("_") and name not in HELPERS


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _run(code: str, fname: str, ns: dict[str, Any]) -> None:
    """Execute ``code``; if its last statement is an expression, print that value's repr."""
    tree = ast.parse(code, fname, "exec")
    last: ast.Expression | None = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body[-1].value)
        tree.body.pop()
    exec(compile(tree, fname, "exec"), ns)  # noqa: S102 - running code is the point
    if last is not None:
        value = eval(compile(last, fname, "eval"), ns)  # noqa: S307
        if value is not None:
            print(repr(value))


def _format_exc(exc: BaseException) -> str:
    """A traceback without the worker's own frames; never raises (hostile __str__)."""
    try:
        return _format_exc_unsafe(exc)
    except BaseException:  # noqa: BLE001
        return f"{type(exc).__name__} (its traceback could not be formatted)\n"


def _format_exc_unsafe(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        import traceback  # only on the error path: it is slow to import in a sandbox

        return "".join(traceback.format_exception_only(type(exc), exc))
    import traceback

    te = traceback.TracebackException.from_exception(exc)
    te.stack = traceback.StackSummary.from_list([f for f in te.stack if f.filename != __file__])
    return "".join(te.format())


def _private_channel() -> tuple[int, int]:
    """Move the protocol off fds 0/1 and point 0, 1 and 2 at /dev/null and a capture file."""
    rfd, wfd = os.dup(0), os.dup(1)  # new fds are non-inheritable: children never see them
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    return rfd, wfd


def _capture_file() -> io.FileIO:
    """An unlinked scratch file in the sandbox's tmpfs for output written to fds 1/2.

    (``tempfile`` would cost ~40 ms of imports at every sandbox start under gVisor.)
    """
    base = os.environ.get("TMPDIR") or "/tmp"
    for attempt in range(100):
        path = os.path.join(base, f".rlm-capture-{os.getpid()}-{attempt}")
        try:
            fd = os.open(
                path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600
            )
        except FileExistsError:
            continue
        os.unlink(path)
        return io.FileIO(fd, "r+")
    raise OSError(f"cannot create a capture file in {base}")


def _parse_args(argv: list[str]) -> dict[str, float]:
    """``--name value`` pairs (argparse would cost ~35 ms of imports at every start)."""
    opts = {"output-cap": 1_000_000.0, "timeout": 30.0, "memory-bytes": 0.0, "max-procs": 0.0}
    it = iter(argv)
    for flag in it:
        name = flag.removeprefix("--")
        if name not in opts:
            raise SystemExit(f"worker: unknown option {flag!r}")
        try:
            opts[name] = float(next(it))
        except (StopIteration, ValueError):
            raise SystemExit(f"worker: {flag} needs a number") from None
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = _parse_args(sys.argv[1:] if argv is None else argv)
    memory_bytes, max_procs = int(opts["memory-bytes"]), int(opts["max-procs"])

    rfd, wfd = _private_channel()
    worker = Worker(rfd, wfd, output_cap=int(opts["output-cap"]), timeout_s=opts["timeout"])
    cap_fd = worker.fd_capture.fileno()
    os.dup2(cap_fd, 1)
    os.dup2(cap_fd, 2)
    sys.stdin = open(os.devnull)  # noqa: SIM115
    sys.stdout = sys.stderr = io.TextIOWrapper(
        os.fdopen(1, "wb", closefd=False), write_through=True
    )
    if memory_bytes > 0:
        import resource

        # A MemoryError in the code block beats the runtime killing the whole sandbox.
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if max_procs > 0:
        import resource

        # fork() fails with EAGAIN here, well before the container's pids cap, where the
        # runtime itself could no longer start threads and the whole sandbox would die.
        resource.setrlimit(resource.RLIMIT_NPROC, (max_procs, max_procs))
    signal.signal(signal.SIGALRM, worker._on_signal)
    signal.signal(signal.SIGINT, worker._on_signal)
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    worker.send(
        proto.Frame(
            "hello",
            0,
            body={"python": sys.version.split()[0], "pid": os.getpid(), "uid": os.getuid()},
        )
    )
    try:
        worker.serve()
    except EOFError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
