"""The REPL worker that runs inside a sandbox (standard library only, Python 3.10+).

Two kinds of process, one program:

* The **fork server** is the process the sandbox starts (PID 1 in a container). It sends the
  ``hello`` frame, then never runs user code and never reads the channel: it forks REPL
  processes and cleans up after them. It keeps one spare REPL forked ahead, parked on a
  private pipe, so a reset costs a process exit and a pipe write, not a fork.
* A **REPL** process serves framed requests (see ``protocol.py``) on the channel's
  descriptors, inherited from the server; fds 0, 1 and 2 are /dev/null and a capture file, so
  nothing user code prints can reach the channel.

A reset is a fresh interpreter: the REPL tells the server the request id on a private pipe and
exits; the server kills every process left in the sandbox (all but itself and the spare),
empties the scratch directories (/tmp, /dev/shm), releases the spare (which answers the reset)
and forks the next spare. Nothing earlier code planted (modules, builtins, threads, processes,
files) survives. Any other exit of a REPL (``os._exit``, a crash, a kill) ends the server
with the same status, so the host sees the sandbox lost, never a silently fresh REPL.

Namespaces: every run (the root and each recursive ``rlm_query`` child) gets its own
namespace; all of them share one ``state`` dict that lives until ``reset``.

Re-entrancy: while a code block waits for the reply to a model call, the worker keeps
serving requests, so the host can run a child's code block (``rlm_query``) inside the same
process. Replies that arrive for a call lower on the stack are kept until it resumes.

Between code blocks nothing of user code runs: processes a block started are killed when it
returns (each REPL is their subreaper, so daemons cannot slip away), and once user code has
threads the REPL waits on the channel in a read(2) that keeps the GIL, so those threads run only
while a block runs, on the block's host-measured time (see ``_Channel``).

Soft limits live here (a timer raising ``TimeoutError`` in the code block, output caps); the
hard ones (wall deadline, memory, pids, disk) are the host's and the container runtime's.
"""

from __future__ import annotations

import _thread
import ast
import builtins
import collections
import errno
import gc
import io
import itertools
import json
import linecache
import os
import reprlib
import resource
import select
import signal
import struct
import sys
import time
from collections.abc import Callable
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
_CLASS_BLOCKS_KEEP = 256  # older blocks kept for their class statements (snapshots)


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

    def __init__(
        self, rfd: int, wfd: int, *, output_cap: int, timeout_s: float, notify_fd: int = -1
    ) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.notify_fd = notify_fd  # to the fork server: "serving" and "reset me" (see start)
        self.output_cap = output_cap
        self.default_timeout = timeout_s
        self.namespaces: dict[str, dict[str, Any]] = {}
        self.state: dict[str, Any] = {}
        self.handoff: dict[str, Any] = {}
        self.loads: dict[str, bytearray] = {}
        self.snap: bytes | None = None  # a snapshot taken and not yet read by the host
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
        self.fd_capture: io.FileIO | None = None  # made by start(), never while parked
        self.stdio: io.TextIOWrapper | None = None  # sys.stdout/stderr on fd 1, once started
        self.rbuf = bytearray()
        self.repl_files: collections.deque[str] = collections.deque()
        self.class_files: list[str] = []
        self.forked = False
        self.libc: Any = None  # the fork server's ctypes handle (None: plain os.read/write)
        self.contained = False  # PID 1's REPL in a container (see _stop_processes)
        self.proc_links = 0  # /proc's link count with no process of user code (contained)
        # A process forked by user code must never touch the channel: it would answer
        # requests meant for us or steal their bytes. Its copies of the fds are closed.
        if rfd >= 0:  # (not for the throwaway worker of warm_up)
            os.register_at_fork(after_in_child=self._after_fork_in_child)

    def _after_fork_in_child(self) -> None:
        self.forked = True
        for fd in (self.rfd, self.wfd, self.notify_fd):
            try:
                os.close(fd)
            except OSError:
                pass

    def _leave_if_forked(self) -> None:
        """A forked child that returns into the worker ends here, silently."""
        if self.forked:
            os._exit(0)

    def start(self, reset_id: int | None) -> None:
        """Become the sandbox's REPL: stdio, the fork server's "serving" note, the reset answer.

        ``reset_id`` is the id of the reset request this fresh interpreter answers (None for
        the first REPL). The server released us only after every process of the previous REPL
        was dead, so whatever is still unread on the channel was not written by the host
        (which sends nothing while a reset is outstanding) but by earlier code through a
        reopened descriptor: it is discarded, never served.
        """
        self.fd_capture = _capture_file()
        cap_fd = self.fd_capture.fileno()
        os.dup2(cap_fd, 1)
        os.dup2(cap_fd, 2)
        sys.stdout = sys.stderr = self.stdio or _stdio()
        if self.contained:
            # Our own session: processes of user code are in it or in sessions of their own,
            # never in the server's (session 1), where the parked spare is. See _stop_processes.
            os.setsid()
        os.write(self.notify_fd, _SERVING)
        if reset_id is not None:
            _discard_unread(self.rfd)
            self.send(proto.Frame("result", reset_id, body={"reset": True}))

    def warm_up(self) -> None:
        """Run, on throwaway values, the code a fresh REPL runs first.

        A forked process shares its pages with the server copy-on-write, and under gVisor's
        ptrace platform every first write to one is a trap costing tens of microseconds:
        taken here, while parked, they are not taken while answering a reset.
        """
        self.stdio = _stdio()  # over fd 1, whatever start() points it at
        # A throwaway worker serves a load and a code block, off the channel.
        scratch = Worker(-1, -1, output_cap=1000, timeout_s=self.default_timeout)
        try:  # best effort: nothing here may cost the spare its life
            scratch.fd_capture = _capture_file()
            data = proto.encode(proto.Frame("ping", 1))
            proto.decode(data[: proto.HEADER.size], data[proto.HEADER.size :], proto.HOST_TYPES)
            body = {"load": "w", "ns": "w", "final": True, "encoding": "text"}
            proto.encode(
                proto.Frame(
                    "result",
                    1,
                    body=scratch.op_load(proto.Frame("load", 1, body=body, blob=b"a\nb")),
                )
            )
            code = "lines = context.splitlines()\nn = len(lines)\nn"
            body = {"ns": "w", "code": code, "clock_started": True, "timeout": 5}
            proto.encode(
                proto.Frame("result", 2, body=scratch.op_exec(proto.Frame("exec", 2, body=body)))
            )
            scratch.op_get_var(proto.Frame("get_var", 3, body={"ns": "w", "name": "lines"}))
        except Exception:  # noqa: BLE001
            pass
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for name in scratch.repl_files:
                linecache.cache.pop(name, None)
            if scratch.fd_capture is not None:
                scratch.fd_capture.close()

    # ---- channel ---------------------------------------------------------------------

    def _read_exact(self, n: int) -> bytes | bytearray:
        """n bytes of the channel; small frames usually cost one read(2) for header and body.
        A large frame is read into a buffer of its own and handed over as it is."""
        have = len(self.rbuf)
        if have >= n:
            out = bytes(self.rbuf[:n])
            del self.rbuf[:n]
            return out
        if n - have < 65536:
            while len(self.rbuf) < n:
                if self.libc is None or not _thread._count():
                    chunk: bytes | bytearray = os.read(self.rfd, 65536)
                else:
                    chunk = bytearray(65536)
                    del chunk[self._readinto(chunk, 0) :]
                if not chunk:
                    raise EOFError("host closed the channel")
                self.rbuf += chunk
            return self._read_exact(n)
        buf = bytearray(n)  # a large blob: read it in place, no buffer copies
        buf[:have] = self.rbuf
        self.rbuf.clear()
        got = have
        while got < n:
            count = self._readinto(buf, got)
            if count == 0:
                raise EOFError("host closed the channel")
            got += count
        return buf

    def _readinto(self, buf: bytearray, offset: int) -> int:
        """read(2) of the channel into ``buf[offset:]``.

        While threads of user code exist, the read keeps the GIL (a ctypes.PyDLL call), so
        they cannot run while we wait for the host: between blocks, and while the host serves
        a block's model calls (time it does not count as the block's).
        """
        if self.libc is None or not _thread._count():
            return os.readv(self.rfd, [memoryview(buf)[offset:]])
        import ctypes

        window = (ctypes.c_char * (len(buf) - offset)).from_buffer(buf, offset)
        while True:
            count = int(self.libc.read(self.rfd, window, len(buf) - offset))
            if count >= 0:
                return count
            err = ctypes.get_errno()
            if err != errno.EINTR:  # (on EINTR Python runs the signal's handler, then we retry)
                raise OSError(err, os.strerror(err))

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
                view = view[self._write(view) :]
        finally:
            self.in_io = False
        self._raise_pending()

    def _write(self, view: memoryview) -> int:
        """write(2) to the channel; like ``_readinto`` it keeps the GIL while threads exist."""
        if self.libc is None or not _thread._count():
            return os.write(self.wfd, view)
        import ctypes

        chunk = bytes(view[: 1 << 20])
        while True:
            count = int(self.libc.write(self.wfd, chunk, len(chunk)))
            if count >= 0:
                return count
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, os.strerror(err))

    def _stop_processes(self) -> int:
        """Kill every process user code started; how many were still running.

        Called when a top-level block returns: nothing of it may burn CPU until the next.
        On a host we are the subreaper of our processes, so they are our descendants. In a
        container gVisor does not hand orphans to a subreaper (measured: a double-forked
        grandchild went to PID 1): there they are every process outside session 1, the
        server's (a session cannot be joined, and the REPL left session 1 at its start).
        """
        self._leave_if_forked()  # a child of user code's fork must not kill its parent
        me = os.getpid()
        if not self.contained:
            try:
                os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return 0  # no child, so no descendant: the usual case, one system call
        else:
            # Listing the processes costs ~3 ms under runsc; /proc's link count (one per
            # process in gVisor) ~0.05 ms: look only when there are more than last time.
            if os.stat("/proc").st_nlink <= self.proc_links:
                return 0
        stopped: set[int] = set()
        for _ in range(1000):
            found = _user_processes(me) if self.contained else _children(me)
            kids = [(pid, state) for pid, state in found if state not in ("Z", "X")]
            if not kids:
                break
            for pid, state in kids:
                if state != "Z":
                    stopped.add(pid)
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if self.contained:  # some are PID 1's children (orphans): it reaps those
                _reap_all(block=False)
                time.sleep(0.001)
            else:
                _reap_all(block=True)
        _reap_all(block=False)
        return len(stopped)

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
        return self._as_text(self._call("llm", {"prompt": _text(prompt), "model": _name(model)}))

    def _llm_query_batched(self, prompts: Any, model: str | None = None) -> list[str]:
        """Ask many questions concurrently; answers come back in input order."""
        items = [_text(p) for p in prompts]
        if not items:
            return []
        return self._as_list(
            self._call("llm_batched", {"prompts": items, "model": _name(model)}), len(items)
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
        """Hand the reset to the fork server and exit: the answer comes from a fresh REPL.

        User code can forge this (write the note, or call this method) and so replace its own
        interpreter mid-turn; that only hurts its own session, like ``os._exit`` does.
        """
        if self.exec_stack:
            raise RuntimeError("a reset cannot run while a code block runs")
        if not -(2**63) <= frame.id < 2**63:
            raise ValueError("reset request id out of range")
        # Nonblocking: user code that filled this pipe gets an error frame, not a hang.
        os.write(self.notify_fd, _RESET + _RESET_NOTE.pack(frame.id))
        # Stopped, every thread of this process is still: the server kills it then, without
        # waiting for its memory to be torn down (about 10 ms under gVisor).
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)  # continued by someone else: exiting does the same, only later

    # ---- snapshots -----------------------------------------------------------------------
    # The session's REPL as one blob: the root namespace's user variables and ``state``,
    # each value pickled on its own, so one that cannot be (a socket, a lock, a generator)
    # loses only itself and is named. Modules are kept by name and imported again. Written
    # and read only here, in sandboxes of the same session: the host moves opaque bytes.

    def _class_sources(self, names: set[str]) -> dict[str, tuple[int, str]]:
        """The source of the latest top-level ``class <name>`` statement, decorators
        included, among the REPL blocks still in the line cache; (block order, source)."""
        found: dict[str, tuple[int, str]] = {}
        for order, fname in enumerate([*self.class_files, *self.repl_files]):
            entry = linecache.cache.get(fname)
            if entry is None or len(entry) != 4 or not names:
                continue
            lines = list(entry[2])
            try:
                tree = ast.parse("".join(lines))
            except (SyntaxError, ValueError):
                continue
            for node in tree.body:
                if isinstance(node, ast.ClassDef) and node.name in names:
                    start = min([d.lineno for d in node.decorator_list] + [node.lineno]) - 1
                    end = node.end_lineno or node.lineno
                    found[node.name] = (order, "".join(lines[start:end]))
        return found

    def op_snapshot(self, frame: proto.Frame) -> dict[str, Any]:
        import pickle  # only when a session hibernates: imports cost start-up time

        cap = int(frame.body.get("max_bytes") or 0)
        lost: list[str] = []
        mod_type = type(os)
        func_type = type(_text)
        root = self.namespaces.get("root", {})
        # Classes and functions defined in the REPL cannot be pickled by name (pickle looks
        # for them in the real __main__): inside values they are references to the name the
        # namespace binds them to, and they travel themselves as source (classes: the class
        # statement, re-run at restore) or code (functions).
        classes = {
            k for k, v in root.items()
            if isinstance(v, type) and v.__module__ == "__main__" and v.__name__ == k
        }  # fmt: skip
        sources = self._class_sources(classes)

        class Pickler(pickle.Pickler):
            refers = False

            def persistent_id(self, obj: Any) -> Any:
                if isinstance(obj, type | func_type) and obj.__module__ == "__main__":
                    name = obj.__name__
                    if root.get(name) is obj and (name in sources or isinstance(obj, func_type)):
                        self.refers = True
                        return ("ns", name)
                return None

        def dumps(value: Any) -> tuple[bytes, bool]:
            buf = io.BytesIO()
            pickler = Pickler(buf, pickle.HIGHEST_PROTOCOL)
            pickler.dump(value)
            return buf.getvalue(), pickler.refers

        def pack(key: Any, value: Any, label: str) -> tuple[bytes, Any] | None:
            try:
                if isinstance(value, mod_type):
                    return pickle.dumps(key), ("module", value.__name__)
                if isinstance(value, type) and key in sources:
                    order, source = sources[key]
                    return pickle.dumps(key), ("class", order, source)
                if (
                    isinstance(value, func_type)
                    and value.__module__ == "__main__"
                    and value.__closure__ is None
                ):  # a function defined in the REPL: pickle can only name it, so keep its code
                    import marshal

                    extra = (value.__defaults__, value.__kwdefaults__)
                    return pickle.dumps(key), (
                        "function",
                        marshal.dumps(value.__code__),
                        value.__name__,
                        dumps(extra)[0],
                    )
                data, refers = dumps(value)
                return pickle.dumps(key), (("refers", data) if refers else data)
            except (KeyboardInterrupt, TimeoutError):
                raise
            except BaseException:  # noqa: BLE001 - hostile __reduce__ included: it is lost
                lost.append(label[:200])
                return None

        def take() -> bytes:
            names: list[tuple[bytes, Any]] = []
            # One value bound to several names (context and context_N) is kept once: the
            # other names are aliases of the first.
            first: dict[int, str] = {}
            for k, v in list(root.items()):
                if not (isinstance(k, str) and _user_name(k)):
                    continue
                if id(v) in first:
                    names.append((pickle.dumps(k), ("alias", first[id(v)])))
                    continue
                packed = pack(k, v, k)
                if packed is not None:
                    first[id(v)] = k
                    names.append(packed)
            state = [
                p for k, v in list(self.state.items()) for p in [pack(k, v, f"state[{k!r}]")] if p
            ]
            return pickle.dumps({"v": 1, "root": names, "state": state}, pickle.HIGHEST_PROTOCOL)

        self.snap = None
        blob = self._guarded(take)
        out: dict[str, Any] = {"size": len(blob), "unpicklable": lost[: proto.MAX_UNKEPT]}
        if cap and len(blob) > cap:
            out["over"] = True
        else:
            self.snap = blob
        return out

    def op_snapshot_read(self, frame: proto.Frame) -> dict[str, Any]:
        import base64

        if self.snap is None:
            raise ValueError("no snapshot was taken")
        start = int(frame.body.get("offset") or 0)
        piece = self.snap[start : start + proto.SNAPSHOT_CHUNK_BYTES]
        final = start + len(piece) >= len(self.snap)
        if final:
            self.snap = None
        return {"data": base64.b64encode(piece).decode("ascii"), "final": final}

    def op_restore(self, frame: proto.Frame) -> dict[str, Any]:
        """Receive a snapshot in pieces; on the last one put its values back."""
        import importlib
        import pickle

        load_id = "restore:" + str(frame.body["restore"])
        buf = self.loads.setdefault(load_id, bytearray())
        buf += frame.blob
        if not frame.body.get("final"):
            return {"received": len(buf)}
        data = pickle.loads(bytes(self.loads.pop(load_id)))  # noqa: S301 - this session's own
        if not isinstance(data, dict) or data.get("v") != 1:
            raise ValueError("not a snapshot of this worker's format")
        failed: list[str] = []
        root = self.namespace("root")

        class Unpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                if isinstance(pid, tuple) and len(pid) == 2 and pid[0] == "ns" and pid[1] in root:
                    return root[pid[1]]
                raise pickle.UnpicklingError(f"{pid!r} is not in the namespace")

        def loads(blob: bytes) -> Any:
            return Unpickler(io.BytesIO(blob)).load()

        def unpack(key_blob: bytes, value: Any) -> tuple[Any, Any] | None:
            key: Any = "<a key>"
            try:
                key = pickle.loads(key_blob)  # noqa: S301
                if isinstance(value, tuple) and value[:1] == ("module",):
                    return key, importlib.import_module(value[1])
                if isinstance(value, tuple) and value[:1] == ("class",):
                    # Its class statement, re-run where it first ran: in the namespace.
                    exec(compile(value[2], f"<restored class {key}>", "exec"), root)  # noqa: S102
                    return key, root[key]
                if isinstance(value, tuple) and value[:1] == ("function",):
                    import marshal

                    defaults, kwdefaults = loads(value[3])
                    make: Any = type(_text)  # types.FunctionType, without importing types
                    fn = make(marshal.loads(value[1]), root, value[2], defaults)  # noqa: S302
                    fn.__kwdefaults__ = kwdefaults
                    return key, fn
                if isinstance(value, tuple) and value[:1] == ("refers",):
                    return key, loads(value[1])
                return key, pickle.loads(value)  # noqa: S301
            except (KeyboardInterrupt, TimeoutError):
                raise
            except BaseException:  # noqa: BLE001 - e.g. a class its code no longer defines
                failed.append((key if isinstance(key, str) else _safe_str(key))[:200])
                return None

        def phase(value: Any) -> int:
            """Restore order: plain values (what class statements may use), classes in the
            order they were defined, functions, then values that refer to either."""
            kind = value[0] if isinstance(value, tuple) and value else None
            if kind == "class":
                return 1
            if kind == "function":
                return 2
            if kind == "refers":
                return 3
            return 0

        def put() -> int:
            n = 0
            aliases = []
            entries = []
            for key_blob, value in data.get("root", []):
                if isinstance(value, tuple) and value[:1] == ("alias",):
                    aliases.append((key_blob, value[1]))
                    continue
                entries.append((key_blob, value))
            entries.sort(
                key=lambda e: (phase(e[1]), e[1][1] if phase(e[1]) == 1 else 0)
            )  # a stable sort: the snapshot's order within each phase
            for key_blob, value in entries:
                item = unpack(key_blob, value)
                if item is not None:
                    root[item[0]] = item[1]
                    n += 1
            for key_blob, target in aliases:
                name = pickle.loads(key_blob)  # noqa: S301
                if target in root:
                    root[name] = root[target]
                    n += 1
                else:
                    failed.append(str(name)[:200])
            for key_blob, value in data.get("state", []):
                item = unpack(key_blob, value)
                if item is not None:
                    self.state[item[0]] = item[1]
                    n += 1
            return n

        restored = self._guarded(put)
        return {"restored": restored, "failed": failed[: proto.MAX_UNKEPT]}

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
        final = bool(frame.body.get("final"))
        data: bytes | bytearray | memoryview
        if final and load_id not in self.loads:  # one chunk: decoded where it was read
            data = frame.blob
        else:
            buf = self.loads.setdefault(load_id, bytearray())
            buf += frame.blob
            if not final:
                return {"received": len(buf)}
            data = self.loads.pop(load_id)
        encoding = frame.body.get("encoding", "text")
        if encoding == "text":
            value: Any = str(data, "utf-8", "replace")
        elif encoding == "json":
            value = json.loads(bytes(data) if isinstance(data, memoryview) else data)
        else:
            raise ValueError(f"unknown encoding {encoding!r}")
        del data
        ns = self.namespace(str(frame.body["ns"]))
        names = [str(name) for name in frame.body.get("names", ["context"])]
        if type(value) is str:
            # A client that resends its context every turn binds equal strings: keep the one
            # already bound (``context``, last turn's) instead of a copy per turn. A str cannot
            # change, so sharing it shows only to ``is``; lists and dicts are never shared.
            for name in names:
                bound = ns.get(name)
                if type(bound) is str and bound == value:
                    value = bound
                    break
        for name in names:
            ns[name] = value
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
            old = self.repl_files.popleft()
            entry = linecache.cache.get(old)
            text = "".join(entry[2]) if entry is not None and len(entry) == 4 else ""
            if "class " in text and len(self.class_files) < _CLASS_BLOCKS_KEEP:
                self.class_files.append(old)  # a snapshot may need its class statements
            else:
                linecache.cache.pop(old, None)

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
            stopped = self._stop_processes()
            if stopped:
                err.write(
                    f"[rlm] {stopped} process(es) this block started were stopped: "
                    "processes do not outlive the code block that starts them\n"
                )
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
        assert self.fd_capture is not None
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


def _name(model: Any) -> str | None:
    """A model name as the host's schema takes it (a short string), whatever code passed:
    the host then refuses a name it does not allow, as an error the code block sees."""
    return None if model is None else _text(model)[:200]


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


def _stdio() -> io.TextIOWrapper:
    return io.TextIOWrapper(os.fdopen(1, "wb", closefd=False), write_through=True)


def _discard_unread(fd: int) -> None:
    """Read and drop whatever is readable on ``fd`` now, without waiting."""
    if not select.select([fd], [], [], 0)[0]:
        return
    os.set_blocking(fd, False)
    try:
        while os.read(fd, 65536):
            pass
    except BlockingIOError:
        pass
    finally:
        os.set_blocking(fd, True)


def _private_channel() -> tuple[int, int]:
    """Move the protocol off fds 0/1 and point 0 and 1 at /dev/null.

    fd 2 stays the sandbox's stderr in the fork server, so its last words reach the host; each
    REPL points 1 and 2 at its own capture file.
    """
    rfd, wfd = os.dup(0), os.dup(1)  # new fds are non-inheritable: exec'd programs never see them
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    os.close(devnull)
    return rfd, wfd


def _capture_file() -> io.FileIO:
    """An anonymous file for output written straight to fds 1/2.

    A memfd has no name in the scratch directories the fork server empties at every reset.
    Without memfd: an unlinked file in TMPDIR (``tempfile`` would cost ~40 ms of imports at
    every sandbox start under gVisor).
    """
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            return io.FileIO(memfd_create("rlm-capture"), "r+")
        except OSError:
            pass
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


# ---- the fork server ---------------------------------------------------------------------

# Notes from a REPL to the server, on a private pipe, in this order:
_SERVING = b"A"  # it serves the channel (written before a reset answer goes out)
_ANSWERED = b"S"  # a released spare sent its reset answer and its limits are intact
_TAMPERED = b"T"  # ...sent it, but its limits were changed while parked: replace it, silently
_RESET = b"R"  # then the reset request's id, just before it stops itself
_RESET_NOTE = struct.Struct(">q")
_TOKEN_BYTES = 16
_EXIT_INTERNAL = 70  # a REPL that failed in the worker's own code
_PR_SET_PDEATHSIG, _PR_SET_DUMPABLE, _PR_SET_CHILD_SUBREAPER = 1, 4, 36
_PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS, _SECCOMP_MODE_FILTER = 22, 38, 2
# POSIX message queues outlive their processes and, with no /dev/mqueue mounted, cannot be
# listed to be removed at a reset: a REPL may not make or open one (mq_open fails with
# ENOSYS). Per architecture: the audit arch seccomp reports, and mq_open's number.
_MQ_OPEN = {"x86_64": (0xC000003E, 240), "aarch64": (0xC00000B7, 180)}
# What same-uid code can change about *another* process of the sandbox without privileges
# (prlimit, setpriority, sched_setscheduler, sched_setaffinity: all measured to work under
# gVisor). A released spare compares these with the server's start-up values. The limits are
# those a later code block would feel (memory, files, processes, CPU time, stack, queued
# signals for its timer); each costs a system call, which is tens of microseconds under gVisor.
_LIMITS = tuple(
    getattr(resource, name)
    for name in (
        "RLIMIT_AS", "RLIMIT_DATA", "RLIMIT_STACK", "RLIMIT_NOFILE", "RLIMIT_NPROC",
        "RLIMIT_FSIZE", "RLIMIT_CPU", "RLIMIT_SIGPENDING",
    )
    if hasattr(resource, name)
)  # fmt: skip


_IPC_PRIVATE, _IPC_CREAT, _IPC_RMID = 0, 0o1000, 0
_IPC_KINDS = ("shm", "msg", "sem")
# Ids of System V IPC objects (shared memory, message queues, semaphore sets) a reset checks
# at most: gVisor numbers each kind's objects one after another and has no /proc/sysvipc to
# list them, so a reset removes the ids made since the last one. A REPL that made more than
# this many ends its sandbox at the reset rather than stall it.
_IPC_SCAN_MAX = 1 << 16


class _Ipc:
    """System V IPC objects outlive the processes that make them: a reset removes those the
    last REPL made, so nothing it stored there reaches the next one.

    Linux lists them in /proc/sysvipc. gVisor does not, but gives out each kind's ids in
    order (measured: 1, 2, 3... and a removed id is not reused until they wrap), so the ids
    made since the last reset lie between the last reset's probe and this one's (a private
    object made and removed at once). Only in a container (our own IPC namespace).
    """

    def __init__(self, libc: Any) -> None:
        self.libc = libc
        self.listing = os.path.isdir("/proc/sysvipc")  # once: a reset spends no open on it
        self.mark = {kind: self._probe(kind) for kind in _IPC_KINDS}

    def _make(self, kind: str) -> int:
        if kind == "shm":
            return int(self.libc.shmget(_IPC_PRIVATE, 1, _IPC_CREAT | 0o600))
        if kind == "msg":
            return int(self.libc.msgget(_IPC_PRIVATE, _IPC_CREAT | 0o600))
        return int(self.libc.semget(_IPC_PRIVATE, 1, _IPC_CREAT | 0o600))

    def _remove(self, kind: str, ident: int) -> None:
        if kind == "shm":
            self.libc.shmctl(ident, _IPC_RMID, None)
        elif kind == "msg":
            self.libc.msgctl(ident, _IPC_RMID, None)
        else:
            self.libc.semctl(ident, 0, _IPC_RMID, 0)

    def _probe(self, kind: str) -> int:
        """The next id of ``kind`` (-1 when its table is full)."""
        ident = self._make(kind)
        if ident >= 0:
            self._remove(kind, ident)
        return ident

    def _listed(self, kind: str) -> list[int] | None:
        if not self.listing:
            return None
        try:
            with open(f"/proc/sysvipc/{kind}", "rb") as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            return None
        return [int(line.split()[1]) for line in lines if len(line.split()) > 1]

    def clear(self, settle: Callable[[], None]) -> bool:
        """Remove every object made since the last call; False when that cannot be done.

        A removed shared-memory segment lives on, attachable by its id, while a process
        still has it attached: ``settle`` (waiting for the killed REPL's exit) runs first
        whenever there are segments to remove."""
        for kind in _IPC_KINDS:
            listed = self._listed(kind)
            if listed is not None:
                if listed and kind == "shm":
                    settle()
                for ident in listed:
                    self._remove(kind, ident)
                continue
            start = self.mark[kind]  # the last probe's own id too (it was removed at once)
            probe = self._probe(kind)
            if kind == "shm" and probe != start + 1:
                settle()
            if probe < 0:  # the table is full: what fills it was made since the mark
                for ident in range(start, start + _IPC_SCAN_MAX):
                    self._remove(kind, ident)
                probe = self._probe(kind)
            if probe < start or probe - start > _IPC_SCAN_MAX:
                return False
            for ident in range(start, probe):
                self._remove(kind, ident)
            self.mark[kind] = probe
        return True


def _no_mq_filter() -> Any:
    """A seccomp program (``struct sock_fprog``) failing mq_open with ENOSYS, and every
    system call of another architecture (or x86_64's x32) with EPERM; None on an
    architecture not listed."""
    import ctypes  # loaded by ``harden`` already

    arch_nr = _MQ_OPEN.get(os.uname().machine)
    if arch_nr is None:
        return None
    arch, nr = arch_nr
    # BPF_LD|BPF_W|BPF_ABS, BPF_JMP|BPF_JEQ|BPF_K, BPF_JMP|BPF_JGE|BPF_K, BPF_RET|BPF_K
    ld_abs, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    allow, errno_ret = 0x7FFF0000, 0x00050000  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]  # fmt: skip

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    # (Jump offsets count from the next instruction.)
    insns = (Insn * 8)(
        Insn(ld_abs, 0, 0, 4),  # 0: seccomp_data.arch
        Insn(jeq, 0, 5, arch),  # 1: another architecture -> 7
        Insn(ld_abs, 0, 0, 0),  # 2: seccomp_data.nr
        Insn(jge, 3, 0, 0x40000000),  # 3: x32's numbers (same audit arch on x86_64) -> 7
        Insn(jeq, 0, 1, nr),  # 4: mq_open -> 5, else -> 6
        Insn(ret, 0, 0, errno_ret | errno.ENOSYS),  # 5
        Insn(ret, 0, 0, allow),  # 6
        Insn(ret, 0, 0, errno_ret | errno.EPERM),  # 7
    )
    return Prog(len(insns), insns)  # (the structure keeps the array alive)


def _fingerprint() -> tuple[Any, ...]:
    return (
        [resource.getrlimit(r) for r in _LIMITS],
        os.getpriority(os.PRIO_PROCESS, 0),
        os.sched_getscheduler(0),
        os.sched_getaffinity(0),
    )


def _read_available(fd: int, limit: int = 1 << 20) -> bytes:
    """What is readable on a nonblocking ``fd`` now (at most about ``limit`` bytes)."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _empty_dir(root: str) -> bool:
    """Remove everything under ``root`` (symlinks as links, never followed); True when done."""
    ok = True
    stack, dirs = [root], []
    while stack:
        path = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = list(it)
        except OSError:
            ok = False
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    os.chmod(entry.path, 0o700)  # earlier code may have locked it: list it
                    stack.append(entry.path)
                    dirs.append(entry.path)
                else:
                    os.unlink(entry.path)
            except OSError:
                ok = False
    for path in reversed(dirs):
        try:
            os.rmdir(path)
        except OSError:
            ok = False
    return ok


def _yama_scope() -> int:
    try:
        with open("/proc/sys/kernel/yama/ptrace_scope", "rb") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _children(parent: int) -> list[tuple[int, str]]:
    """The children of ``parent`` with their state letter ("Z": exited, not yet reaped)."""
    kids = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(parent).encode():
            kids.append((int(name), fields[0].decode("ascii", "replace")))
    return kids


def _user_processes(me: int) -> list[tuple[int, str]]:
    """Every process but PID 1, ``me`` and those in session 1, with its state letter."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) in (1, me):
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 3 and fields[3] != b"1":
            found.append((int(name), fields[0].decode("ascii", "replace")))
    return found


def _reap_all(*, block: bool) -> list[int]:
    """Collect exited children: wait for one first when ``block``; the pids collected."""
    flags = 0 if block else os.WNOHANG
    reaped: list[int] = []
    while True:
        try:
            pid, _status = os.waitpid(-1, flags)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append(pid)
        flags = os.WNOHANG


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class _Repl:
    """The fork server's record of one REPL process."""

    __slots__ = ("fresh", "note", "notify", "pid", "release", "reset_id", "token")

    def __init__(
        self, pid: int, notify: int, release: int, token: bytes, reset_id: int | None, fresh: bool
    ) -> None:
        self.pid = pid
        self.notify = notify  # read end of the REPL's notes (nonblocking)
        self.note = b""  # the notes read so far (bounded)
        self.release = release  # write end of a parked spare's release pipe, or -1
        self.token = token  # a parked spare's release token
        self.reset_id = reset_id  # the reset this REPL answers (None: it answers none)
        self.fresh = fresh  # forked when no user code could run: no fallback if it fails

    def notes(self) -> bytes:
        if self.notify >= 0:
            self.note += _read_available(self.notify)
            if len(self.note) > 4096:  # junk from user code: keep the ends that matter
                self.note = self.note[:2] + self.note[-64:]
        return self.note

    def reset_request(self) -> int | None:
        """The id of the reset this REPL asked for, if its notes end with one."""
        note = self.notes()
        if note[:1] == _SERVING and len(note) >= 2 + _RESET_NOTE.size and note[-9:-8] == _RESET:
            return int(_RESET_NOTE.unpack(note[-8:])[0])
        return None


class ForkServer:
    """The sandbox's first process: forks one REPL per reset and never runs user code.

    Nothing of it is reachable from user code that could change what a later REPL runs:
    REPLs are its children, its memory is off limits (Yama, or non-dumpable: see
    ``harden``), it reads no channel byte and no file user code wrote, and it releases a
    REPL only when no process of the previous one can run any more. What user code *can*
    do to it (signals, lowering its limits) ends the sandbox or is caught before a fork.
    """

    def __init__(self, rfd: int, wfd: int, *, output_cap: int, timeout_s: float) -> None:
        self.rfd, self.wfd = rfd, wfd
        self.output_cap, self.timeout_s = output_cap, timeout_s
        self.pid = os.getpid()
        # PID 1 of a container: every other process in the sandbox descends from us and may
        # be killed. Anywhere else (the local backend runs us as a host process) only our own
        # descendants may, found as our children (we are their subreaper).
        self.contained = self.pid == 1
        self.private_dir: str | None = None
        self.scratch = self._scratch_dirs()
        self.workdir = os.getcwd()
        self.active: _Repl | None = None
        self.spare: _Repl | None = None
        self.fds: set[int] = set()  # descriptors a REPL must not inherit
        self.prctl: Any = None
        self.held_libc: Any = None
        self.proc_links = 0
        self.ipc: _Ipc | None = None
        self.no_mq: Any = None  # the seccomp program every REPL installs (see _no_mq_filter)
        self.baseline = _fingerprint()

    def _scratch_dirs(self) -> list[str]:
        if self.contained:  # the container's tmpfs mounts: empty at start, ours to empty
            dirs: list[str] = []
            for path in (os.environ.get("TMPDIR") or "/tmp", "/dev/shm"):
                if path not in dirs and os.path.isdir(path) and os.access(path, os.W_OK):
                    dirs.append(path)
            return dirs
        # A host process: never touch the host's /tmp. A private directory becomes TMPDIR
        # and the working directory; those of dead local workers are removed on the way.
        base = os.environ.get("TMPDIR") or "/tmp"
        try:
            for name in os.listdir(base):
                parts = name.split("-")
                if (
                    name.startswith("rlm-worker-")
                    and len(parts) == 4
                    and parts[2].isdigit()
                    and not _pid_alive(int(parts[2]))
                ):
                    _empty_dir(os.path.join(base, name))
                    os.rmdir(os.path.join(base, name))
        except OSError:
            pass
        self.private_dir = os.path.join(base, f"rlm-worker-{self.pid}-{os.urandom(4).hex()}")
        os.mkdir(self.private_dir, 0o700)
        os.environ["TMPDIR"] = self.private_dir
        os.chdir(self.private_dir)
        return [self.private_dir]

    def harden(self) -> None:
        """Keep REPLs from tracing or writing the server and the parked spare.

        Same-uid processes may ptrace each other and write /proc/<pid>/mem unless Yama's
        ptrace scope forbids it or the target is non-dumpable. gVisor enforces Yama scope 1
        (measured with runsc 2022-12-19: ptrace attach EPERM, /proc/<pid>/mem EACCES for the
        parent and a sibling, dumpable or not, and /proc/sys is not writable) and ignores
        dumpability for /proc/<pid>/fd and environ, so in such a container PR_SET_DUMPABLE
        would add nothing. Elsewhere it is set; and a server that is not PID 1 becomes a child
        subreaper, so orphans of user code come back to it to be killed.

        It also loads ctypes (~20-40 ms once per sandbox under runsc, shared by every REPL it
        forks): each REPL is the subreaper of its own processes, and keeps the GIL while it
        waits on the channel once user code has threads.
        """
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        self.prctl = libc.prctl
        held = ctypes.PyDLL(None, use_errno=True)  # calls through it keep the GIL
        for name in ("read", "write"):
            fn = getattr(held, name)
            fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t)
            fn.restype = ctypes.c_ssize_t
        self.held_libc = held
        # /proc's link count is a constant plus one per process (gVisor and Linux alike):
        # with the server, one REPL and the spare, a REPL expects this many.
        names = os.listdir("/proc")
        self.proc_links = os.stat("/proc").st_nlink - sum(n.isdigit() for n in names) + 3
        if self.contained:  # a host's IPC objects are not ours to remove
            self.ipc = _Ipc(libc)
            self.no_mq = _no_mq_filter()
        if not (self.contained and _yama_scope() >= 1):
            libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)
        if not self.contained:
            libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def forward(self, signum: int, _frame: Any = None) -> None:
        """The host interrupts the sandbox (SIGINT to its first process): pass it on."""
        if self.active is not None:
            try:
                os.kill(self.active.pid, signum)
            except OSError:
                pass

    def stop(self, _signum: int = 0, _frame: Any = None) -> None:
        self._terminate()
        os._exit(0)

    # ---- REPL processes ----------------------------------------------------------------

    def fork(self, reset_id: int | None, *, park: bool, fresh: bool = False) -> _Repl:
        """Fork a REPL: serving now (answering ``reset_id``), or parked until released."""
        notify_r, notify_w = os.pipe()
        release_r = release_w = -1
        token = b""
        if park:
            release_r, release_w = os.pipe()
            token = os.urandom(_TOKEN_BYTES)
        try:
            pid = os.fork()
        except OSError:
            for fd in (notify_r, notify_w, release_r, release_w):
                if fd >= 0:
                    os.close(fd)
            raise
        if pid == 0:  # the REPL: it never returns into the server's code
            code = _EXIT_INTERNAL
            try:
                code = self._repl(notify_r, notify_w, release_r, release_w, token, reset_id)
            except BaseException:  # noqa: BLE001 - a bug of ours: say it where it can be read
                import traceback

                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(notify_w)
        os.set_blocking(notify_r, False)
        self.fds.add(notify_r)
        if park:
            os.close(release_r)
            self.fds.add(release_w)
        return _Repl(pid, notify_r, release_w, token, reset_id, fresh)

    def fork_spare(self) -> _Repl | None:
        """A parked spare, or None when the process budget (RLIMIT_NPROC) has no room."""
        try:
            return self.fork(None, park=True)
        except OSError:
            return None

    def _repl(
        self,
        notify_r: int,
        notify_w: int,
        release_r: int,
        release_w: int,
        token: bytes,
        reset_id: int | None,
    ) -> int:
        worker = Worker(
            self.rfd,
            self.wfd,
            output_cap=self.output_cap,
            timeout_s=self.timeout_s,
            notify_fd=notify_w,
        )
        signal.signal(signal.SIGALRM, worker._on_signal)
        signal.signal(signal.SIGINT, worker._on_signal)
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        for fd in (*self.fds, notify_r, release_w):
            if fd >= 0:
                os.close(fd)
        os.set_blocking(notify_w, False)
        worker.libc, worker.contained = self.held_libc, self.contained
        worker.proc_links = self.proc_links
        if self.no_mq is not None:  # before any user code; its processes inherit it
            import ctypes

            if (
                self.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                or self.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(self.no_mq), 0, 0)
                != 0
            ):
                os._exit(_EXIT_INTERNAL)  # never serve user code without it
        if self.prctl is not None:
            # Processes of user code stay ours to kill when their block returns.
            self.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            if not self.contained:  # a host process: die with the server
                self.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != self.pid:
                    return 0
        if release_r < 0:
            worker.start(reset_id)
        else:
            worker.warm_up()
            reset_id = self._park(release_r, token)
            if reset_id is None:
                return 0  # not to be trusted: the server forks a fresh REPL instead
            worker.start(reset_id)
            # Checked after answering, to keep it off the reset's path: nothing was read
            # from the channel yet, so a fresh REPL can still take over silently.
            intact = _fingerprint() == self.baseline
            os.write(notify_w, _ANSWERED if intact else _TAMPERED)
            if not intact:
                return 0
        try:
            worker.serve()
        except EOFError:
            pass
        return 0

    def _park(self, release_r: int, token: bytes) -> int | None:
        """Wait (as the spare) to be released; the reset id, or None when unusable.

        User code that runs meanwhile can open our pipes through /proc/<pid>/fd (gVisor
        allows it), stop us or change our limits: a forged release or a closed pipe make
        this spare exit unserved (the server forks a fresh REPL), changed limits make it
        hand over to a fresh REPL right after answering.
        """
        try:
            note = os.read(release_r, 64)
        finally:
            os.close(release_r)
        if len(note) != len(token) + _RESET_NOTE.size or note[: len(token)] != token:
            return None
        if not self.contained:
            os.chdir(self.workdir)  # the private directory may have been replaced meanwhile
        return int(_RESET_NOTE.unpack(note[len(token) :])[0])

    def _forget(self, repl: _Repl) -> None:
        for fd in (repl.notify, repl.release):
            if fd >= 0:
                self.fds.discard(fd)
                os.close(fd)
        repl.notify = repl.release = -1

    def _release(self, spare: _Repl, reset_id: int) -> bool:
        """Wake the parked spare to answer ``reset_id``; False when it cannot be."""
        spare.notes()
        spare.note = b""  # whatever earlier code wrote there is not a note
        try:
            os.kill(spare.pid, signal.SIGCONT)  # earlier code may have stopped it
            os.write(spare.release, spare.token + _RESET_NOTE.pack(reset_id))
        except OSError:
            return False
        finally:
            self.fds.discard(spare.release)
            os.close(spare.release)
            spare.release = -1
        spare.reset_id = reset_id
        return True

    def _await_answer(self, repl: _Repl, timeout_s: float = 2.0) -> None:
        """Let a released spare answer before we fork (a fork takes the sandbox's CPU)."""
        deadline = time.monotonic() + timeout_s
        while repl.notes()[1:2] not in (_ANSWERED, _TAMPERED):
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([repl.notify], [], [], left)[0]:
                return
            try:
                chunk = os.read(repl.notify, 4096)
            except BlockingIOError:
                continue
            if not chunk:
                return  # it closed its end: it is gone
            repl.note += chunk

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> int:
        self.active = self.fork(None, park=False, fresh=True)
        self.spare = self.fork_spare()
        while True:
            try:
                pid, status = os.waitpid(-1, os.WUNTRACED)
            except ChildProcessError:  # pragma: no cover - the active REPL is our child
                return _EXIT_INTERNAL
            code = None
            if os.WIFSTOPPED(status):
                # The active REPL stops itself to hand over a reset; any other stop (of it,
                # the spare or a process of user code) is not ours to act on.
                if self.active is not None and pid == self.active.pid:
                    reset_id = self.active.reset_request()
                    if reset_id is not None:
                        code = self._reset(reset_id, old=self.active)
            else:
                self._reaped(pid)
                if self.active is not None and pid == self.active.pid:
                    code = self._after_repl(status)
            if code is not None:
                return code

    def _reaped(self, pid: int) -> None:
        if self.spare is not None and pid == self.spare.pid:
            self._forget(self.spare)
            self.spare = None

    def _after_repl(self, status: int) -> int | None:
        """The active REPL exited: a reset, or the sandbox is lost (exit code returned)."""
        repl = self.active
        assert repl is not None
        note = repl.notes()
        reset_id = repl.reset_request()
        self._forget(repl)
        self.active = None
        if note[:1] != _SERVING:
            # Released but never served: a spare that user code killed, stopped for good or
            # forged a release to. No user code ran since the release.
            if repl.reset_id is not None and not repl.fresh:
                return self._reset(repl.reset_id, fallback=True)
            return self._lose(status)
        if reset_id is not None:  # it asked for a reset, then went on to exit
            return self._reset(reset_id)
        if note[1:2] == _TAMPERED:  # it answered its reset, then found its limits changed
            return self._replace(None)
        # (User code can forge any note: it then loses its own REPL, nothing more.)
        return self._lose(status)

    def _reset(
        self, reset_id: int, *, old: _Repl | None = None, fallback: bool = False
    ) -> int | None:
        dying: set[int] = set()
        if old is not None:
            try:
                os.kill(old.pid, signal.SIGKILL)  # stopped: it dies without running again
            except OSError:
                pass
            if self.contained:  # the listing below shows its children anyway
                dying.add(old.pid)
            self._forget(old)
            self.active = None
        if not self._kill_others(dying):
            return self._fail("processes of the previous REPL could not be killed")
        if not all(_empty_dir(path) for path in self.scratch):
            return self._fail("files of the previous REPL could not be removed")

        def settle() -> None:  # the old REPL gone: nothing of it holds a segment attached
            for pid in dying:
                try:
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
            dying.clear()

        if self.ipc is not None and not self.ipc.clear(settle):
            return self._fail("System V IPC objects of the previous REPL could not be removed")
        spare, self.spare = (None, self.spare) if fallback else (self.spare, None)
        if spare is not None:
            if self._release(spare, reset_id):
                self.active = spare
                self._await_answer(spare)
            else:
                self._discard(spare)
        # The answer is out: now let the old REPL's memory go before we fork, so its
        # address space is reused for the next spare (under gVisor's ptrace platform every
        # address space alive at once keeps host threads against the pids cap).
        for pid in dying:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        if self.active is None:
            return self._replace(reset_id)
        return self._refill()

    def _replace(self, reset_id: int | None) -> int | None:
        """A fresh REPL forked now (answering ``reset_id``), then a new spare."""
        if _fingerprint() != self.baseline:  # every REPL we fork would inherit it
            return self._fail("sandbox code changed the limits or scheduling of the worker")
        try:
            self.active = self.fork(reset_id, park=False, fresh=True)
        except OSError as exc:
            return self._fail(f"no fresh REPL could be forked ({exc})")
        return self._refill()

    def _refill(self) -> int | None:
        # No check of our own limits here: a spare inherits them, and checks them (with any
        # change made to it while parked) before it serves. If they were changed, it says so,
        # and _replace finds the change here.
        if self.spare is None:
            self.spare = self.fork_spare()
        return None

    def _discard(self, repl: _Repl) -> None:
        try:
            os.kill(repl.pid, signal.SIGKILL)
        except OSError:
            pass
        self._forget(repl)

    # ---- cleaning up -------------------------------------------------------------------

    def _others(self, keep: set[int]) -> list[int]:
        if self.contained:
            return [int(n) for n in os.listdir("/proc") if n.isdigit() and int(n) not in keep]
        return [pid for pid, _state in _children(self.pid) if pid not in keep]

    def _kill_others(self, dying: set[int] | None = None, *, keep_spare: bool = True) -> bool:
        """SIGKILL every process but us (and the parked spare) until none is left, reaping.

        In a container that is every other process. On a host it is our children: killing
        one hands its own children to us (the subreaper), so the loop reaches them next.
        ``dying`` were killed while stopped: they run no more and are reaped later.
        """
        for _ in range(10_000):
            keep = {self.pid, *(dying or ())}
            if keep_spare and self.spare is not None:
                keep.add(self.spare.pid)
            others = self._others(keep)
            if not others:
                return True
            for pid in others:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            self._reap()
        return False

    def _reap(self) -> None:
        """Wait for one child to exit, then collect every other already gone."""
        for pid in _reap_all(block=True):
            self._reaped(pid)

    def _terminate(self) -> None:
        """Kill every process we answer for; remove the local private directory."""
        self.active = None
        try:
            self._kill_others(keep_spare=False)
        finally:
            if self.private_dir is not None:
                _empty_dir(self.private_dir)
                try:
                    os.rmdir(self.private_dir)
                except OSError:
                    pass

    def _lose(self, status: int) -> int:
        """The REPL died (not a reset): end the sandbox the way the REPL ended."""
        self._terminate()
        code = os.waitstatus_to_exitcode(status)
        if code >= 0:
            return code
        if not self.contained:  # a host process: die of the same signal, as the REPL did
            if -code not in (signal.SIGKILL, signal.SIGSTOP):
                signal.signal(-code, signal.SIG_DFL)
            os.kill(self.pid, -code)
        return 128 - code

    def _fail(self, why: str) -> int:
        try:
            os.write(2, f"worker: {why}; the sandbox cannot be reset safely\n".encode())
        except OSError:
            pass
        self._terminate()
        return _EXIT_INTERNAL


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
    sys.stdin = open(os.devnull)  # noqa: SIM115
    if memory_bytes > 0:
        # A MemoryError in the code block beats the runtime killing the whole sandbox.
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if max_procs > 0:
        # fork() fails with EAGAIN here, well before the container's pids cap, where the
        # runtime itself could no longer start threads and the whole sandbox would die. It
        # counts threads and processes of the user: ``max_procs`` is what the REPL may have,
        # as before; the fork server and the parked spare come on top.
        nproc = max_procs + 2
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    server = ForkServer(rfd, wfd, output_cap=int(opts["output-cap"]), timeout_s=opts["timeout"])
    signal.signal(signal.SIGINT, server.forward)
    signal.signal(signal.SIGTERM, server.stop)
    hello = proto.encode(
        proto.Frame(
            "hello",
            0,
            body={"python": sys.version.split()[0], "pid": os.getpid(), "uid": os.getuid()},
        )
    )
    view = memoryview(hello)
    while view:
        view = view[os.write(wfd, view) :]
    server.harden()
    gc.freeze()  # the REPLs share these objects copy-on-write: keep their GC off them
    return server.run()


if __name__ == "__main__":
    sys.exit(main())
