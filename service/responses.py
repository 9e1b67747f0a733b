"""The Responses API's runs: one RLM turn seen as an OpenAI Response (no HTTP types in here).

A ``ResponseRun`` drives one turn through ``ChatService.complete`` (the same run logic as chat
completions) and keeps what OpenAI's Responses API shows of it: the response object (status,
output, usage, error, plus the ``rlm`` extension) and, for streams and background runs, the
numbered event log (``response.created`` ... ``response.completed``) that followers read from
any ``sequence_number`` on. Progress travels as a reasoning item's summary text.

``ResponseStore`` is the registry: responses by id, each belonging to the key that made it
(another key sees 404), a finished one kept ``RLM_RESPONSE_TTL_S``, at most
``RLM_MAX_RESPONSES`` kept (``RLM_MAX_RESPONSES_PER_KEY`` per key; the oldest finished go
first, 429 when all are running), and the link from a response id to its session, kept as
long as sessions are (``previous_response_id``). Everything is in this process's memory:
behind a load balancer the ``rlm_session`` cookie brings polls back to the same host.

Life cycle of a run (``status``)::

    queued ──> in_progress ──> completed | incomplete (a partial answer) | failed
       └──────────┴──> cancelled (POST .../cancel, or a client that left a foreground run)

A run cancelled by the shutdown drain ends ``failed`` with a ``shutting_down`` error, never
left ``in_progress``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from service.admission import Admission
from service.api.protocol import ChatCompletionRequest, ResponsesRequest
from service.chat import ChatService, TurnResult
from service.errors import BadRequest, NotFound, Overloaded, ServiceError, ShuttingDown
from service.rlm.events import Event
from service.sessions import Session

log = logging.getLogger(__name__)

# Answer text goes out in pieces of this size (more for huge answers: at most ~500 deltas).
ANSWER_PIECE_CHARS = 2000
ANSWER_MAX_PIECES = 500
# Progress kept per response (the reasoning item): past it, pieces are dropped with a note.
REASONING_MAX_CHARS = 64 * 1024
# Links from a response id to its session (previous_response_id), about 200 bytes each.
MAX_LINKS = 100_000
# How often expired responses are swept (a lookup checks its own expiry exactly).
SWEEP_S = 1.0
# How long a cancel waits for the interrupted run to unwind before it answers.
CANCEL_WAIT_S = 10.0

ProgressText = Callable[[Event], "str | None"]


def new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(24)}"


def _error_object(exc: ServiceError) -> dict[str, Any]:
    """OpenAI's ``response.error``: its code is one of a fixed list, so ours goes in ``type``
    and the ``rlm`` extension."""
    return {
        "code": "rate_limit_exceeded" if exc.status == 429 else "server_error",
        "message": exc.message,
        "param": exc.param,
        "type": exc.type,
    }


class ResponseRun:
    """One response: its object, its event log, and the task running its turn."""

    def __init__(
        self,
        *,
        owner: str,
        req: ResponsesRequest,
        session_id: str,
        progress: ProgressText | None,
        log_events: bool,
    ) -> None:
        self.id = new_id("resp")
        self.owner = owner
        self.model = req.model
        self.session_id = session_id
        self.background = req.background
        self.store = req.store
        self.created_at = int(time.time())
        self.completed_at: int | None = None
        self.status = "queued" if req.background else "in_progress"
        self._echo = {
            "instructions": req.instructions,
            "metadata": req.metadata or {},
            "previous_response_id": req.previous_response_id,
            "user": req.user,
        }
        self.include_trajectory = bool(req.rlm and req.rlm.include_trajectory)
        self.rlm: dict[str, Any] = {"session_id": session_id}
        self.answer: str | None = None
        self.usage: dict[str, Any] | None = None
        self.error: ServiceError | None = None
        self.incomplete = False
        self.finished_mono: float | None = None  # monotonic time it reached a final status
        self.task: asyncio.Task[None] | None = None
        self.cancel_requested = False
        self._progress = progress
        self._reasoning_id = new_id("rs")
        self._reasoning: list[str] = []
        self._reasoning_chars = 0
        self._reasoning_open = False
        self._message_id = new_id("msg")
        self._events: list[dict[str, Any]] | None = [] if log_events else None
        self._changed = asyncio.Event()
        self._emit("response.created", response=self.body(output=[]))
        if not req.background:
            self._emit("response.in_progress", response=self.body(output=[]))

    # ---- the object ------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.finished_mono is not None

    @property
    def resumable(self) -> bool:
        return self._events is not None and self.background

    def _reasoning_item(self) -> dict[str, Any]:
        text = "".join(self._reasoning)
        return {
            "id": self._reasoning_id,
            "type": "reasoning",
            "summary": [{"type": "summary_text", "text": text}] if text else [],
            "status": "in_progress" if self._reasoning_open else "completed",
        }

    def _message_item(self, text: str, status: str) -> dict[str, Any]:
        content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
        return {
            "id": self._message_id,
            "type": "message",
            "role": "assistant",
            "status": status,
            "content": content,
        }

    def output(self) -> list[dict[str, Any]]:
        items = [self._reasoning_item()] if self._reasoning else []
        if self.answer is not None:
            status = "incomplete" if self.incomplete else "completed"
            items.append(self._message_item(self.answer, status))
        return items

    def body(self, output: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """The response object in OpenAI's shape (the SDK's ``Response``) plus ``rlm``."""
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "completed_at": self.completed_at,
            "status": self.status,
            "background": self.background,
            "store": self.store,
            "model": self.model,
            "output": self.output() if output is None else output,
            "usage": self._usage(),
            "error": None if self.error is None else _error_object(self.error),
            "incomplete_details": {"reason": "max_output_tokens"} if self.incomplete else None,
            **self._echo,
            "parallel_tool_calls": False,
            "tool_choice": "none",
            "tools": [],
            "temperature": None,
            "top_p": None,
            "max_output_tokens": None,
            "reasoning": None,
            "text": {"format": {"type": "text"}},
            "truncation": "disabled",
            "rlm": self.rlm,
        }

    def _usage(self) -> dict[str, Any] | None:
        u = self.usage
        if u is None:
            return None
        details = u.get("prompt_tokens_details") or {}
        return {
            "input_tokens": u.get("prompt_tokens", 0),
            "input_tokens_details": {"cached_tokens": details.get("cached_tokens", 0)},
            "output_tokens": u.get("completion_tokens", 0),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.get("total_tokens", 0),
        }

    # ---- the event log ---------------------------------------------------------------

    def _emit(self, kind: str, **fields: Any) -> None:
        if self._events is None:
            return
        self._events.append({"type": kind, "sequence_number": len(self._events), **fields})
        self._changed.set()
        self._changed = asyncio.Event()

    async def follow(self, after: int, silence_s: float) -> AsyncIterator[dict[str, Any] | None]:
        """The events after sequence number ``after`` as they come; ``None`` after each
        ``silence_s`` without one (time for a keep-alive); ends after the final event."""
        events = self._events
        if events is None:
            return
        i = max(after + 1, 0)
        while True:
            while i < len(events):
                yield events[i]
                i += 1
            if self.done:
                return
            changed = self._changed
            try:
                await asyncio.wait_for(changed.wait(), silence_s)
            except TimeoutError:
                yield None

    # ---- progress and the end of the turn --------------------------------------------

    def on_event(self, ev: Event) -> None:
        """The turn's trajectory events: the start of the run, and progress text."""
        if self.status == "queued" and ev["event"] == "run_start":
            self.status = "in_progress"
            self._emit("response.in_progress", response=self.body(output=[]))
        if self._progress is None:
            return
        text = self._progress(ev)
        if not text:
            return
        if self._reasoning_chars + len(text) > REASONING_MAX_CHARS:
            if self._reasoning_chars <= REASONING_MAX_CHARS:
                text = "\n[further progress omitted]\n"
                self._reasoning_chars = REASONING_MAX_CHARS + 1
            else:
                return
        else:
            self._reasoning_chars += len(text)
        if not self._reasoning_open and not self._reasoning:
            self._reasoning_open = True
            item = {"id": self._reasoning_id, "type": "reasoning", "summary": []}
            self._emit("response.output_item.added", output_index=0, item=item)
            self._emit(
                "response.reasoning_summary_part.added",
                item_id=self._reasoning_id,
                output_index=0,
                summary_index=0,
                part={"type": "summary_text", "text": ""},
            )
        self._reasoning.append(text)
        self._emit(
            "response.reasoning_summary_text.delta",
            item_id=self._reasoning_id,
            output_index=0,
            summary_index=0,
            delta=text,
        )

    def _close_reasoning(self) -> None:
        if not self._reasoning_open:
            return
        self._reasoning_open = False
        text = "".join(self._reasoning)
        ids = {"item_id": self._reasoning_id, "output_index": 0, "summary_index": 0}
        self._emit("response.reasoning_summary_text.done", **ids, text=text)
        part = {"type": "summary_text", "text": text}
        self._emit("response.reasoning_summary_part.done", **ids, part=part)
        self._emit("response.output_item.done", output_index=0, item=self._reasoning_item())

    def _finish(self, status: str) -> None:
        self.status = status
        self.finished_mono = time.monotonic()
        self._changed.set()

    def release_log(self) -> None:
        """Drop a foreground stream's log once its one follower is done with it (only
        background responses can be streamed again)."""
        if not self.background:
            self._events = None

    def complete(self, result: TurnResult) -> None:
        self._close_reasoning()
        self.incomplete = result.finish_reason == "length"
        self.usage = result.usage
        self.rlm = dict(result.rlm)
        if self.include_trajectory and result.trajectory is not None:
            self.rlm["trajectory"] = result.trajectory
        text = result.answer
        index = 1 if self._reasoning else 0
        ids = {"item_id": self._message_id, "output_index": index, "content_index": 0}
        self._emit(
            "response.output_item.added",
            output_index=index,
            item={**self._message_item("", "in_progress"), "content": []},
        )
        empty = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        self._emit("response.content_part.added", **ids, part=empty)
        size = max(ANSWER_PIECE_CHARS, -(-len(text) // ANSWER_MAX_PIECES))
        for i in range(0, len(text), size):
            self._emit("response.output_text.delta", **ids, delta=text[i : i + size], logprobs=[])
        self._emit("response.output_text.done", **ids, text=text, logprobs=[])
        self._emit("response.content_part.done", **ids, part={**empty, "text": text})
        self.answer = text
        status = "incomplete" if self.incomplete else "completed"
        self._emit(
            "response.output_item.done",
            output_index=index,
            item=self._message_item(text, status),
        )
        self.status = status
        if status == "completed":
            self.completed_at = int(time.time())
        self._emit(f"response.{status}", response=self.body())
        self._finish(status)

    def fail(self, exc: ServiceError) -> None:
        self._close_reasoning()
        self.error = exc
        self.rlm = {
            **self.rlm,
            "error": {"status": exc.status, "code": exc.code, "code_ran": exc.code_ran},
        }
        self.status = "failed"
        self._emit("response.failed", response=self.body())
        self._finish("failed")

    def cancelled(self) -> None:
        self._close_reasoning()
        self.status = "cancelled"
        # No event of OpenAI's stream union says "cancelled"; this one is named like its
        # webhook event and carries the final object, so followers see why the stream ended.
        self._emit("response.cancelled", response=self.body())
        self._finish("cancelled")

    async def drive(
        self,
        chat: ChatService,
        req: ChatCompletionRequest,
        session: Session,
        *,
        reset: bool,
        request_id: str,
        admission: Admission,
    ) -> None:
        """Run the turn to a final status; never raises (the status says how it ended)."""
        try:
            result = await chat.complete(
                req, session, reset=reset, request_id=request_id, on_event=self.on_event
            )
        except asyncio.CancelledError:
            if admission.draining and not self.cancel_requested:
                self.fail(
                    ShuttingDown(
                        "the service shut down before this response finished "
                        "(RLM_SHUTDOWN_GRACE_S); create it again",
                        retry_after=5,
                        code_ran=True,
                    )
                )
            else:
                self.cancelled()
            return
        except ServiceError as exc:
            self.fail(exc)
            return
        except Exception as exc:  # a bug: the run fails with a clear error, the log has it
            log.exception("response run failed", extra={"request_id": request_id})
            self.fail(ServiceError(f"internal error ({type(exc).__name__}); see the service log"))
            return
        self.complete(result)


@dataclass(frozen=True, slots=True)
class Link:
    owner: str
    session_id: str
    at: float


class ResponseStore:
    """This process's responses by id, their expiry, caps, and their links to sessions."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_kept: int,
        per_key: int,
        link_ttl_s: float,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_kept = max_kept
        self.per_key = per_key
        self.link_ttl_s = link_ttl_s
        self._runs: OrderedDict[str, ResponseRun] = OrderedDict()  # oldest first
        self._owned: dict[str, int] = {}
        self._links: OrderedDict[str, Link] = OrderedDict()
        self._swept = 0.0
        self.tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._runs)

    # ---- lookups ---------------------------------------------------------------------

    def _expired(self, run: ResponseRun, now: float) -> bool:
        return run.finished_mono is not None and now - run.finished_mono > self.ttl_s

    def get(self, response_id: str, owner: str) -> ResponseRun:
        """The caller's response; 404 for an unknown, expired or other key's one."""
        self._sweep()
        run = self._runs.get(response_id)
        if run is None or run.owner != owner:
            raise NotFound(
                f"no response {response_id} for this key (finished responses are kept "
                f"{self.ttl_s:g} s, RLM_RESPONSE_TTL_S)",
                param="response_id",
                code="response_not_found",
            )
        if self._expired(run, time.monotonic()):
            self._drop(response_id)
            raise NotFound(
                f"response {response_id} expired (finished responses are kept {self.ttl_s:g} s, "
                "RLM_RESPONSE_TTL_S)",
                param="response_id",
                code="response_not_found",
            )
        return run

    def session_of(self, response_id: str, owner: str) -> str:
        """The session a ``previous_response_id`` continues; 404 unless it is the caller's."""
        link = self._links.get(response_id)
        if link is None or link.owner != owner or time.monotonic() - link.at > self.link_ttl_s:
            raise NotFound(
                f"previous response {response_id} not found for this key (stored responses "
                "only; their sessions are kept RLM_SESSION_TTL_S)",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return link.session_id

    def running_background(self, owner: str) -> int:
        return sum(
            1 for r in self._runs.values() if r.owner == owner and r.background and not r.done
        )

    # ---- admission of a new response -------------------------------------------------

    def refuse_background(self, owner: str, admission: Admission) -> None:
        """429 when a new background run of this key could not be admitted: past the
        admission's caps (shared with chat requests), or past what it holds for one key
        (RLM_MAX_RUNNING_PER_KEY running plus its queue share)."""
        admission.refuse_if_full()
        admission.refuse_key_if_full(owner)
        limit = admission.per_key + admission.queue_per_key
        running = self.running_background(owner)
        if running >= limit:
            raise Overloaded(
                f"this key has {running} background responses queued or running, its limit "
                "(RLM_MAX_RUNNING_PER_KEY plus its queue share); poll or cancel one first",
                retry_after=5,
            )

    def make_room(self, owner: str) -> None:
        """Room for one more stored response of ``owner``: past a cap the oldest finished
        response goes (the key's own first); 429 when all of them still run."""
        self._sweep()
        if self._owned.get(owner, 0) >= self.per_key:
            self._evict(owner, "RLM_MAX_RESPONSES_PER_KEY")
        if len(self._runs) >= self.max_kept:
            self._evict(None, "RLM_MAX_RESPONSES")

    def add(self, run: ResponseRun) -> None:
        """Keep a stored response (``store: true``) and its link to its session."""
        if not run.store:
            return
        self.make_room(run.owner)
        self._runs[run.id] = run
        self._owned[run.owner] = self._owned.get(run.owner, 0) + 1
        self._links[run.id] = Link(run.owner, run.session_id, time.monotonic())
        while len(self._links) > MAX_LINKS:
            self._links.popitem(last=False)

    def _evict(self, owner: str | None, setting: str) -> None:
        for rid, run in self._runs.items():
            if run.done and (owner is None or run.owner == owner):
                self._drop(rid)
                return
        raise Overloaded(
            f"too many responses still running to keep another ({setting}); retry later",
            retry_after=5,
        )

    def _drop(self, response_id: str) -> None:
        run = self._runs.pop(response_id, None)
        if run is None:
            return
        left = self._owned.get(run.owner, 1) - 1
        if left:
            self._owned[run.owner] = left
        else:
            self._owned.pop(run.owner, None)

    def delete(self, response_id: str, owner: str) -> ResponseRun:
        run = self.get(response_id, owner)
        if not run.done:
            raise BadRequest(
                f"response {response_id} is still {run.status}; cancel it first",
                param="response_id",
            )
        self._drop(response_id)
        self._links.pop(response_id, None)
        return run

    def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept < SWEEP_S:
            return
        self._swept = now
        for rid in [rid for rid, run in self._runs.items() if self._expired(run, now)]:
            self._drop(rid)
        while self._links:
            rid, link = next(iter(self._links.items()))
            if now - link.at <= self.link_ttl_s:
                break
            del self._links[rid]

    # ---- tasks: start, cancel, shutdown ----------------------------------------------

    def start(self, run: ResponseRun, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(work)
        run.task = task
        self.tasks.add(task)

        def settle(task: asyncio.Task[None]) -> None:
            self.tasks.discard(task)
            if not run.done:  # cancelled before its first step: ``drive`` never ran
                if run.cancel_requested:
                    run.cancelled()
                else:
                    run.fail(ShuttingDown("the service stopped this response before it started"))

        task.add_done_callback(settle)
        return task

    async def cancel(self, run: ResponseRun) -> None:
        """Stop a background run (its code block is interrupted like a disconnected
        client's) and wait briefly for it to reach ``cancelled``."""
        if not run.background:
            raise BadRequest(
                "only background responses can be cancelled (background: true)",
                param="response_id",
            )
        if run.done:
            if run.status == "cancelled":
                return
            raise BadRequest(
                f"response {run.id} already ended ({run.status}); it cannot be cancelled",
                param="response_id",
            )
        run.cancel_requested = True
        task = run.task
        if task is None:
            run.cancelled()
            return
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_WAIT_S)

    async def close(self) -> None:
        """At shutdown: cancel the runs still going (they end ``failed``, saying so) and
        wait for them to unwind."""
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=CANCEL_WAIT_S)
        for run in self._runs.values():  # a run whose task was never made
            if not run.done and run.task is None:
                run.fail(ShuttingDown("the service shut down before this response started"))
