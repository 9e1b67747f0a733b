"""The chat-completions service: one RLM turn of a session (no HTTP types in here).

``ChatService.complete`` takes a validated request and its session, waits for a run slot and
the session's turn, makes sure the session has a live sandbox, loads this turn's context,
runs the engine under the request's budget, and returns the answer with usage and run
figures. Failures come out as ``ServiceError``s with ``code_ran`` set once code may have
run, so clients are told not to retry automatically.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandbox.errors import SandboxError, SandboxLost
from sandbox.pool import SandboxPool
from service.admission import Admission, refuse_below_memory_floor
from service.api.protocol import ChatCompletionRequest, RLMOptions
from service.budgets import DailySpend
from service.config import Settings
from service.durability import Durability, SessionElsewhere
from service.errors import (
    BadRequest,
    DeadlineExceeded,
    NotFound,
    SandboxFailure,
    ServiceError,
    SessionLost,
    UpstreamError,
)
from service.metrics import Metrics
from service.rlm import prompts
from service.rlm.budget import Budget
from service.rlm.engine import RLMEngine
from service.rlm.events import Event, EventSink
from service.rlm.pricing import CostMeter
from service.rlm.trajectory import Redactor, TrajectoryWriter
from service.sessions import RunRecord, Session

log = logging.getLogger(__name__)


@dataclass(slots=True)
class TurnResult:
    answer: str
    finish_reason: str
    usage: dict[str, int]
    rlm: dict[str, Any]
    trajectory: list[Event] | None = None


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
        durability: Durability | None = None,
    ) -> None:
        self.settings = settings
        self.durability = durability
        self.engine = engine
        self.pool = pool
        self.admission = admission
        self.metrics = metrics
        self.redact = Redactor(settings.secrets())
        # What each key spent today (RLM_KEY_DAILY_USD), in this process's memory.
        self.daily = DailySpend(settings.rlm_key_daily_usd)
        self._background: set[asyncio.Task[None]] = set()

    def check_model(self, model: str) -> None:
        if model not in self.settings.served_models:
            raise NotFound(
                f"The model `{model}` does not exist. Served models: {', '.join(self.settings.served_models)}",
                param="model",
                code="model_not_found",
            )

    def check_budget(self, owner: str) -> None:
        """429 budget_exceeded (Retry-After to the UTC midnight reset) for a key past its
        daily budget; routers call it before opening a session, ``complete`` again."""
        self.daily.check(owner)

    def cost_meter(self, opts: RLMOptions | None, owner: str) -> CostMeter:
        """This request's cost account and cap: the lowest of the request's
        ``rlm.max_cost_usd``, the operator's RLM_MAX_COST_USD and what is left of the key's
        daily budget (a client may lower the operator's cap, never raise it)."""
        self.daily.check(owner)
        cap, source = self.settings.rlm_max_cost_usd, "RLM_MAX_COST_USD"
        asked = opts.max_cost_usd if opts is not None else None
        if asked is not None and (cap is None or asked < cap):
            cap, source = asked, "rlm.max_cost_usd"
        left = self.daily.remaining(owner)
        if left is not None and (cap is None or left < cap):
            cap, source = left, "what is left of this key's daily budget, RLM_KEY_DAILY_USD"
        return CostMeter(self.engine.cfg.prices, cap, source)

    def _charge(self, owner: str, meter: CostMeter) -> None:
        """Book what a turn spent (finished, failed or cancelled alike) to its key."""
        spent = meter.known_cost_usd
        self.daily.charge(owner, spent)
        if spent > 0:
            self.metrics.observe_key_cost(owner, spent)

    async def complete(
        self,
        req: ChatCompletionRequest,
        session: Session,
        *,
        reset: bool,
        request_id: str,
        on_event: EventSink | None = None,
    ) -> TurnResult:
        """Run one turn; raise ServiceError subclasses on failure.

        The caller has checked the model (``check_model``) before opening the session.
        ``on_event`` sees every trajectory event as it happens (streaming progress).
        """
        query, context = query_and_context(req)
        opts = req.rlm
        # The session's turn first, then a run slot: requests queued behind their own
        # session hold no slot while they wait.
        async with (
            session.turn(self.settings.rlm_session_queue),
            self.admission.slot(session.owner),
        ):
            if session.closed:  # it hibernated, moved or was deleted while we waited
                raise SessionElsewhere(
                    f"session {session.id} left this process while the request waited; "
                    "retry (its state is in the session store)",
                    retry_after=1,
                )
            record = RunRecord(id=f"traj-{uuid.uuid4().hex[:16]}", query=query)
            session.runs.append(record)
            t0 = time.perf_counter()
            try:
                result = await asyncio.wait_for(
                    self._turn(req, session, query, context, reset, record, on_event),
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

    def _sandbox_failure(self, exc: SandboxError, *, code_ran: bool) -> SandboxFailure:
        """The one translation of a sandbox fault into the service's error (and its metric).

        A sandbox that could not be had (runtime down, start failed) is worth retrying soon:
        503 with ``Retry-After``. One lost while code ran is not retried automatically.
        """
        self.metrics.sandbox_faults.labels(exc.kind).inc()
        if code_ran:
            return SandboxFailure(str(exc), code=exc.kind, code_ran=True)
        return SandboxFailure(
            f"no sandbox available: {exc}", code="sandbox_unavailable", retry_after=5
        )

    async def _ensure_sandbox(self, session: Session, reset: bool) -> None:
        """A live sandbox for this turn: the session's own, a fresh one (new session, reset)
        or one restored from its snapshot (hibernated here or anywhere else). A session whose
        sandbox died is never continued on an empty one: 410 with the reason, until the
        client resets it."""
        handle = session.sandbox
        if handle is not None:
            await handle.quiesce()
        if handle is not None and not handle.alive:  # it died between turns
            session.lost_reason = str(handle.lost_error or "its sandbox stopped")
            session.sandbox = None
            await self.pool.release(handle)
            handle = None
        if session.lost_reason is not None and not reset:
            raise SessionLost(
                f"session {session.id} lost its state: {session.lost_reason}. Start it over "
                "with a reset (x-rlm-reset: true) or open a new session"
            )
        if handle is not None and reset:
            try:
                await handle.reset()
                session.turns = 0
                return
            except SandboxError:  # it died meanwhile: a fresh sandbox is a reset too
                session.sandbox = None
                await self.pool.release(handle)
                handle = None
        if handle is not None:
            return
        durability = self.durability
        if durability is not None and session.lease is None:
            session.lease = await durability.claim(
                session.owner, session.id, wait_s=durability.handover_wait_s
            )
            # A new holder serves the latest state, whoever wrote it: a snapshot to restore,
            # a tombstone (410), or nothing yet (a new session).
            stored = await durability.lookup(session.owner, session.id)
            if stored is not None and stored.lost and not reset:
                reason = stored.lost_reason
                await durability.release(session.lease)
                session.lease = None
                raise SessionLost(
                    f"session {session.id} is gone: {reason}. Start it over with a reset "
                    "(x-rlm-reset: true) or open a new session"
                )
            if stored is None and session.lease.token > 1 and not reset:
                # Held before (a later token) and nothing stored: its holder stopped without
                # a snapshot (killed, crashed). Its variables are gone: never serve the empty
                # session as if it were the old one.
                await durability.release(session.lease)
                session.lease = None
                raise SessionLost(
                    f"session {session.id} is gone: the service process that held it stopped "
                    "before saving it. Start it over with a reset (x-rlm-reset: true) or open a "
                    "new session"
                )
            if stored is not None and not stored.lost:
                session.hibernated = True
        refuse_below_memory_floor(self.settings.rlm_min_free_mb)
        try:
            handle = session.sandbox = await self.pool.acquire(session.owner)
        except SandboxError as exc:
            raise self._sandbox_failure(exc, code_ran=False) from exc
        session.turns = 0
        session.lost_reason = None
        if session.hibernated and not reset and durability is not None:
            assert session.lease is not None
            restored = await durability.load(session.lease, handle)
            if restored is not None:
                session.turns = restored.turns
                session.snapshot_at = restored.saved_at
                session.notice = prompts.restored_notice(
                    restored.unpicklable, restored.turns, restored.saved_at
                )
                session.restored = {
                    "snapshot_at": restored.saved_at,
                    "turns": restored.turns,
                    "unpicklable": list(restored.unpicklable),
                }
                self.metrics.restores.inc()
        session.hibernated = False
        # Name the container after its session so operators can find it (off the hot path).
        rename = getattr(handle.process, "rename", None)
        if rename is not None:
            task = asyncio.get_running_loop().create_task(
                rename(f"rlm-{self.settings.rlm_instance}-{session.id}"[:128])
            )
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _turn(
        self,
        req: ChatCompletionRequest,
        session: Session,
        query: str,
        context: Any,
        reset: bool,
        record: RunRecord,
        on_event: EventSink | None = None,
    ) -> TurnResult:
        s = self.settings
        opts = req.rlm
        meter = self.cost_meter(opts, session.owner)  # 429 for a key past its daily budget
        created, session.new = session.new, False
        await self._ensure_sandbox(session, reset)
        restored, session.restored = session.restored, None
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

        def emit(ev: Event) -> None:
            record.add_event(ev)
            if writer is not None:
                writer(ev)
            if on_event is not None:
                on_event(ev)

        try:
            info = await sandbox.load(context, "root", (f"context_{turn}", "context"))
            notice, session.notice = session.notice, None
            result = await self.engine.run(
                query=query, sandbox=sandbox, context_info=info, budget=budget, emit=emit,
                turn=turn, notice=notice, meter=meter,
            )  # fmt: skip
            await sandbox.load(result.answer, "root", (f"history_{turn}",))
        except SandboxError as exc:
            if isinstance(exc, SandboxLost):
                session.sandbox = None
                session.lost_reason = str(exc)
                await self.pool.release(sandbox)
            raise self._sandbox_failure(exc, code_ran=True) from exc
        except UpstreamError as exc:
            exc.code_ran = True
            raise
        finally:
            self._charge(session.owner, meter)
            cost = meter.to_wire()
            record.cost_usd, record.usage_by_model = cost["cost_usd"], cost["usage_by_model"]
            u = budget.usage
            record.usage = {
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.total_tokens,
            }
            record.sub_calls = budget.sub_calls
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
                "session_created": created,
                "restored": restored,
                "turn": turn,
                "iterations": result.iterations,
                "sub_calls": budget.sub_calls,
                "how": result.how,
                "stopped_by": result.stopped_by,
                "trajectory_id": record.id,
                "trajectory_file": str(Path(writer.path)) if writer else None,
                **meter.to_wire(),
            },
        )
