"""The chat-completions service: one RLM turn of a session (no HTTP types in here).

``ChatService.complete`` takes a validated request and its session, waits for a run slot and
the session's turn, makes sure the session has a live sandbox, loads this turn's context,
runs the engine under the request's budget, and returns the answer with usage and run
figures. Failures come out as ``ServiceError``s with ``code_ran`` set once code may have
run, so clients are told not to retry automatically.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError, SandboxLost
from sandbox.pool import SandboxPool
from service.api.protocol import ChatCompletionRequest
from service.config import Settings
from service.errors import (
    BadRequest,
    DeadlineExceeded,
    NotFound,
    SandboxFailure,
    ServiceError,
    UpstreamError,
)
from service.metrics import Metrics
from service.rlm.budget import Budget
from service.rlm.engine import RLMEngine
from service.rlm.trajectory import Redactor, TrajectoryWriter
from service.sessions import Admission, RunRecord, Session

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TurnResult:
    answer: str
    finish_reason: str
    usage: dict[str, int]
    rlm: dict[str, Any]
    trajectory: list[dict[str, Any]] | None = None


def query_and_context(req: ChatCompletionRequest) -> tuple[str, Any]:
    """The query is the last user message; the context is ``rlm.context`` or the messages."""
    users = [m for m in req.messages if m.role == "user"]
    if not users:
        raise BadRequest("messages must contain a user message (the query)", param="messages")
    query = users[-1].text()
    if not query.strip():
        raise BadRequest("the last user message has no text", param="messages")
    if req.rlm is not None and req.rlm.context is not None:
        return query, req.rlm.context
    if len(req.messages) == 1:
        return query, query
    return query, [{"role": m.role, "content": m.text()} for m in req.messages]


class ChatService:
    def __init__(
        self,
        settings: Settings,
        engine: RLMEngine,
        pool: SandboxPool,
        admission: Admission,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.pool = pool
        self.admission = admission
        self.metrics = metrics
        self.redact = Redactor(settings.secrets())
        self._background: set[asyncio.Task[None]] = set()

    def check_model(self, model: str) -> None:
        if model not in self.settings.served_models:
            raise NotFound(
                f"The model `{model}` does not exist. Served models: {', '.join(self.settings.served_models)}",
                param="model",
                code="model_not_found",
            )

    async def complete(
        self, req: ChatCompletionRequest, session: Session, *, reset: bool, request_id: str
    ) -> TurnResult:
        """Run one turn; raise ServiceError subclasses on failure."""
        self.check_model(req.model)
        query, context = query_and_context(req)
        opts = req.rlm
        async with self.admission.slot(), session.turn(self.settings.rlm_session_queue):
            record = RunRecord(id=f"traj-{uuid.uuid4().hex[:16]}", query=query)
            session.runs.append(record)
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(
                    self._turn(req, session, query, context, reset, record),
                    self.settings.rlm_request_timeout_s + 5,
                )
            except TimeoutError:
                record.error = "deadline"
                record.finish("failed")
                self.metrics.errors.labels("timeout").inc()
                raise DeadlineExceeded(
                    f"the request ran past its deadline of {self.settings.rlm_request_timeout_s:g}s "
                    "(RLM_REQUEST_TIMEOUT_S)",
                    code_ran=True,
                ) from None
            except asyncio.CancelledError:
                record.finish("cancelled")
                raise
            except ServiceError as exc:
                record.error = exc.message
                record.finish("failed")
                self.metrics.errors.labels(exc.type).inc()
                raise
            record.elapsed_ms = round((time.perf_counter() - t0) * 1000, 1)
            result.rlm["elapsed_ms"] = record.elapsed_ms
            if opts is not None and opts.include_trajectory:
                result.trajectory = record.events
            record.finish("done")
            return result

    async def _ensure_sandbox(self, session: Session, reset: bool) -> None:
        handle = session.sandbox
        if handle is not None:
            await handle.quiesce()
        if handle is not None and not handle.alive:
            session.sandbox = None
            session.turns = 0
            handle = None
        if handle is None:
            try:
                session.sandbox = await self.pool.acquire()
            except SandboxError as exc:
                self.metrics.sandbox_faults.labels(exc.kind).inc()
                raise SandboxFailure(f"no sandbox available: {exc}", code=exc.kind) from exc
            session.turns = 0
            session.lost_reason = None
            # Name the container after its session so operators can find it (off the hot path).
            rename = getattr(session.sandbox.process, "rename", None)
            if rename is not None:
                task = asyncio.get_running_loop().create_task(
                    rename(f"rlm-{self.settings.rlm_instance}-{session.id}"[:128])
                )
                self._background.add(task)
                task.add_done_callback(self._background.discard)
        elif reset:
            try:
                await handle.reset()
            except SandboxError:  # it died meanwhile: a fresh sandbox is a reset too
                session.sandbox = None
                await self.pool.release(handle)
                await self._ensure_sandbox(session, reset=False)
            session.turns = 0

    async def _turn(
        self,
        req: ChatCompletionRequest,
        session: Session,
        query: str,
        context: Any,
        reset: bool,
        record: RunRecord,
    ) -> TurnResult:
        s = self.settings
        opts = req.rlm
        await self._ensure_sandbox(session, reset)
        sandbox = session.sandbox
        assert sandbox is not None
        turn = session.turns
        budget = Budget(
            # A client may lower the operator's limits, never raise them.
            max_iterations=min(opts.max_iterations or s.rlm_max_iterations, s.rlm_max_iterations)
            if opts
            else s.rlm_max_iterations,
            max_depth=min(
                s.rlm_max_depth if opts is None or opts.max_depth is None else opts.max_depth,
                s.rlm_max_depth,
            ),
            max_sub_calls=s.rlm_max_sub_calls,
            max_total_tokens=s.rlm_max_total_tokens,
            deadline=time.monotonic() + s.rlm_request_timeout_s,
        )
        writer = (
            TrajectoryWriter(s.rlm_trajectory_dir, record.id, self.redact)
            if s.rlm_trajectory_dir
            else None
        )

        def emit(ev: dict[str, Any]) -> None:
            record.add_event(ev)
            if writer is not None:
                writer(ev)

        try:
            info = await sandbox.load(context, "root", (f"context_{turn}", "context"))
            result = await self.engine.run(
                query=query, sandbox=sandbox, context_info=info, budget=budget, emit=emit, turn=turn,
            )  # fmt: skip
            await sandbox.load(result.answer, "root", (f"history_{turn}",))
        except SandboxLost as exc:
            session.sandbox = None
            session.lost_reason = str(exc)
            self.metrics.sandbox_faults.labels(exc.kind).inc()
            await self.pool.release(sandbox)
            raise SandboxFailure(str(exc), code=exc.kind, code_ran=True) from exc
        except SandboxError as exc:
            self.metrics.sandbox_faults.labels(exc.kind).inc()
            raise SandboxFailure(str(exc), code=exc.kind, code_ran=True) from exc
        except UpstreamError as exc:
            exc.code_ran = True
            raise
        finally:
            u = budget.usage
            record.usage = {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            }
            record.sub_calls = budget.sub_calls
            self.metrics.upstream_calls.labels("all").inc(u.calls)
            self.metrics.tokens.labels("prompt").inc(u.prompt_tokens)
            self.metrics.tokens.labels("completion").inc(u.completion_tokens)
            if writer is not None:
                await asyncio.to_thread(writer.write)
        session.turns = turn + 1
        record.answer = result.answer
        record.iterations = result.iterations
        self.metrics.runs.labels(result.how).inc()
        self.metrics.iterations.observe(result.iterations)
        return TurnResult(
            answer=result.answer,
            finish_reason="length" if result.how == "partial" else "stop",
            usage=dict(record.usage),
            rlm={
                "session_id": session.id,
                "turn": turn,
                "iterations": result.iterations,
                "sub_calls": budget.sub_calls,
                "how": result.how,
                "stopped_by": result.stopped_by,
                "trajectory_id": record.id,
                "trajectory_file": str(Path(writer.path)) if writer else None,
            },
        )


def sse(data: dict[str, Any] | str) -> bytes:
    """One Server-Sent Event ``data:`` line."""
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()
