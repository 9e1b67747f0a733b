"""The RLM loop: a root model programs against ``context`` in a sandbox until it answers.

``RLMEngine.run`` drives one run (the root, or a recursive child in its own namespace of
the same sandbox). Model calls made by sandbox code arrive through the handler it passes to
``SandboxHandle.exec``: ``llm_query`` / ``llm_query_batched`` become upstream calls,
``rlm_query`` / ``rlm_query_batched`` become child runs one level deeper (or a plain
sub-model call at the depth limit). All runs of a request share one ``Budget``, so usage
and limits are request-wide, and one ``CostMeter``: usage and cost by model, and the
request's cost cap, checked before every upstream call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from sandbox.handle import ExecResult, SandboxHandle
from service.rlm import events, prompts
from service.rlm.budget import Budget, BudgetExceeded
from service.rlm.events import EventSink
from service.rlm.parsing import code_blocks, final_in_text, has_unclosed_block, strip_code
from service.rlm.pricing import COST_DECIMALS, CostMeter, PriceTable
from service.rlm.trajectory import preview
from service.rlm.upstream import Completion, Upstream

log = logging.getLogger(__name__)
_E = TypeVar("_E", events.RunStart, events.SubCall)


class ModelNotAllowed(Exception):
    """Sandbox code named a model outside RLM_SUB_MODELS; it sees "Error: ..."."""


# How much of a handed-over context a depth-limited rlm_query passes to its single call.
DEPTH_LIMIT_CONTEXT_CHARS = 400_000


@dataclass(frozen=True, slots=True)
class EngineConfig:
    root_model: str
    sub_model: str
    output_max_chars: int = 20_000
    batch_concurrency: int = 16
    # Models sandbox code may name with ``model=`` (RLM_SUB_MODELS); empty: the sub model and
    # the root model. Any other name never reaches the upstream (it could be the priciest
    # model the operator's key allows, or one that browses and carries data out).
    allowed_models: tuple[str, ...] = ()
    # What calls cost (RLM_PRICES_FILE / RLM_PRICES over the shipped defaults).
    prices: PriceTable = field(default_factory=PriceTable.defaults)

    @property
    def sub_models(self) -> tuple[str, ...]:
        """The allowed names, the default (the sub model) first."""
        names = self.allowed_models or (self.sub_model, self.root_model)
        return (self.sub_model, *(m for m in dict.fromkeys(names) if m != self.sub_model))


@dataclass(slots=True)
class RunResult:
    answer: str
    iterations: int
    how: str  # answer | final | final_var | forced | partial
    stopped_by: str | None  # None when the model answered by itself
    run_id: str = ""


@dataclass(slots=True)
class _Run:
    id: str
    ns: str
    depth: int
    budget: Budget
    sandbox: SandboxHandle
    emit: EventSink
    iteration: int = 0  # where the run is: lets events name the block that made a sub-call
    block: int = -1
    executed: bool = False  # has a block run yet (the first one resets ``answer``)
    meter: CostMeter | None = None  # the request's, shared by its recursive runs
    # perf_counter() when the request's root run started: events' start_ms / end_ms
    origin: float = field(default_factory=time.perf_counter)


class RLMEngine:
    def __init__(self, upstream: Upstream, cfg: EngineConfig) -> None:
        self.upstream = upstream
        self.cfg = cfg
        self._child_ids = itertools.count(1)
        self._batch_ids = itertools.count(1)

    async def run(
        self,
        *,
        query: str,
        sandbox: SandboxHandle,
        context_info: dict[str, Any],
        budget: Budget,
        emit: EventSink,
        ns: str = "root",
        depth: int = 0,
        model: str | None = None,
        turn: int = 0,
        parent: _Run | None = None,
        notice: str | None = None,
        meter: CostMeter | None = None,
        slot: _Slot | None = None,
    ) -> RunResult:
        """Run the loop until an answer, the iteration limit (forced answer) or a budget.

        ``meter`` accounts usage and cost by model (and holds the cost cap); a root run
        without one gets an uncapped meter of its own. ``slot`` places a child run started by
        ``rlm_query_batched`` in its batch (its events say which input it answers).
        """
        run = _Run(uuid.uuid4().hex[:10], ns, depth, budget, sandbox, _safe(emit))
        run.meter = meter or (parent.meter if parent else None) or CostMeter(self.cfg.prices)
        if parent is not None:
            run.origin = parent.origin
        model = model or self.cfg.root_model
        start = events.RunStart(
            event="run_start", run=run.id, depth=depth, ns=ns, model=model,
            query=preview(query, 2000), context=context_info,
            max_depth=budget.max_depth, max_iterations=budget.max_iterations,
            parent=parent.id if parent else None,
            parent_iteration=parent.iteration if parent else None,
            parent_block=parent.block if parent else None, start_ms=_clock(run),
        )  # fmt: skip
        run.emit(_with_slot(start, slot))
        system = prompts.system_prompt(
            context_info, depth, budget.max_depth, turn, models=self.cfg.sub_models
        )
        if notice:  # e.g. the session was restored and some values could not be kept
            system += f"\n\n{notice}"
        messages: list[dict[str, str]] = [{"role": "system", "content": system}]
        handler = self._handler(run)
        answer: str | None = None
        how = "partial"
        stopped_by: str | None = None
        last_text = ""
        iterations = 0
        t_run = time.perf_counter()

        for i in range(budget.max_iterations):
            template = prompts.FIRST_TURN if i == 0 else prompts.NEXT_TURN
            user = {"role": "user", "content": template.format(query=query)}
            try:
                budget.check()
                started = _clock(run)
                comp = await self._complete(run, model, [*messages, user])
            except BudgetExceeded as exc:
                stopped_by = exc.name
                break
            iterations = i + 1
            run.iteration, run.block = i, -1
            text = comp.text
            run.emit(events.Iteration(
                event="iteration", run=run.id, iteration=i, response=text,
                finish_reason=comp.finish_reason, ms=round(comp.latency_s * 1000, 1),
                usage=_usage(comp), cost_usd=self._cost(comp), start_ms=started,
                end_ms=_clock(run),
            ))  # fmt: skip
            messages.append({"role": "assistant", "content": text or "(empty response)"})
            if not text.strip():
                messages.append({"role": "user", "content": prompts.EMPTY_RESPONSE})
                continue
            last_text = text
            feedback: list[str] = []
            blocks = code_blocks(text)
            for b, code in enumerate(blocks):
                run.block = b
                # The soft time limit is the sandbox's own (SandboxConfig.exec_timeout_s).
                started = _clock(run)
                result = await sandbox.exec(
                    code, ns, on_call=handler, fresh_answer=not run.executed
                )
                run.executed = True
                feedback.append(self._format_output(b, len(blocks), result))
                run.emit(events.Code(
                    event="code", run=run.id, iteration=i, block=b, code=code,
                    stdout=result.stdout, stderr=result.stderr, error=result.error,
                    changed=result.changed, ms=result.duration_ms, start_ms=started,
                    end_ms=_clock(run),
                ))  # fmt: skip
                if result.answer is not None:
                    answer, how = result.answer, "answer"
                    break
                if result.final is not None:
                    answer, how = result.final, "final_var"
                    break
                if budget.exhausted:
                    break
            if answer is None and budget.exhausted:
                stopped_by = budget.exhausted
                break
            if answer is None:
                found = final_in_text(text)
                if found is not None and found.kind == "final":
                    answer, how = found.value, "final"
                elif found is not None:
                    value = await sandbox.get_var(found.value, ns)
                    if value is None:
                        feedback.append(prompts.MISSING_VAR.format(name=found.value))
                    else:
                        answer, how = value, "final_var"
            if answer is not None:
                break
            if has_unclosed_block(text):
                feedback.append(prompts.CUT_OFF)
            elif not blocks and not feedback:
                feedback.append(prompts.NO_CODE_NO_ANSWER)
            messages.append({"role": "user", "content": "\n\n".join(feedback)})
        else:
            stopped_by = "max_iterations"
            answer, how = await self._force_final(run, model, messages)
            if answer is None:
                stopped_by = budget.exhausted or stopped_by

        if answer is None:
            answer, how = strip_code(last_text), "partial"
        run.emit(events.Final(
            event="final", run=run.id, depth=depth, answer=answer, how=how,
            stopped_by=stopped_by, iterations=iterations,
            ms=round((time.perf_counter() - t_run) * 1000, 1), end_ms=_clock(run),
        ))  # fmt: skip
        return RunResult(
            answer=answer, iterations=iterations, how=how, stopped_by=stopped_by, run_id=run.id
        )

    async def _force_final(
        self, run: _Run, model: str, messages: list[dict[str, str]]
    ) -> tuple[str | None, str]:
        try:
            run.budget.check()
            started = _clock(run)
            comp = await self._complete(
                run, model, [*messages, {"role": "user", "content": prompts.FORCE_FINAL}]
            )
        except BudgetExceeded:
            return None, "partial"
        run.emit(events.Iteration(
            event="iteration", run=run.id, iteration=run.iteration + 1, forced=True,
            response=comp.text, finish_reason=comp.finish_reason,
            ms=round(comp.latency_s * 1000, 1), usage=_usage(comp), cost_usd=self._cost(comp),
            start_ms=started, end_ms=_clock(run),
        ))  # fmt: skip
        found = final_in_text(comp.text)
        if found is not None and found.kind == "final_var":
            value = await run.sandbox.get_var(found.value, run.ns)
            if value is not None:
                return value, "forced"
        if found is not None and found.kind == "final":
            return found.value, "forced"
        return strip_code(comp.text) or comp.text, "forced"

    def _format_output(self, index: int, total: int, result: ExecResult) -> str:
        limit = self.cfg.output_max_chars
        text = result.output() or "(no output)"
        if len(text) > limit:
            text = (
                text[:limit] + f"\n[... {len(text) - limit} characters cut: print less at a time]"
            )
        head = f"REPL output (block {index + 1} of {total}):" if total > 1 else "REPL output:"
        if result.changed:
            names = ", ".join(f"{c['name']} ({c['type']})" for c in result.changed[:30])
            text += f"\n[variables set: {names}]"
        return f"{head}\n{text}"

    # ---- model calls -------------------------------------------------------------------

    async def _complete(self, run: _Run, model: str, messages: list[dict[str, str]]) -> Completion:
        remaining = run.budget.remaining_s()
        if remaining <= 0:
            run.budget.check()
        meter = run.meter
        assert meter is not None
        refused = meter.refusal(model)
        if refused is not None:
            if meter.spent:  # the cap is reached: the whole request stops at its next check
                run.budget.exhausted = run.budget.exhausted or "cost"
            raise BudgetExceeded("cost", refused)
        comp = await self.upstream.complete(model, messages, timeout_s=max(remaining, 1.0))
        run.budget.usage.add(comp.prompt_tokens, comp.completion_tokens)
        meter.add(model, comp.prompt_tokens, comp.cached_tokens, comp.completion_tokens)
        return comp

    def _cost(self, comp: Completion) -> float | None:
        cost = self.cfg.prices.cost(
            comp.model, comp.prompt_tokens, comp.cached_tokens, comp.completion_tokens
        )
        return None if cost is None else round(cost, COST_DECIMALS)

    def _allowed_model(self, model: Any) -> str:
        """The model a sandbox call names, or ModelNotAllowed before any budget is spent."""
        if model is None or model == "":
            return self.cfg.sub_model
        name = str(model)
        if name not in self.cfg.sub_models:
            raise ModelNotAllowed(
                f"model {name[:100]!r} is not allowed here; use one of: "
                f"{', '.join(self.cfg.sub_models)} (RLM_SUB_MODELS)"
            )
        return name

    def _handler(self, run: _Run):  # type: ignore[no-untyped-def]
        async def on_call(kind: str, body: dict[str, Any]) -> Any:
            meter = run.meter
            if meter is not None and meter.spent:  # every call of the block hears why
                run.budget.exhausted = run.budget.exhausted or "cost"
                raise BudgetExceeded("cost", meter.refusal(self.cfg.sub_model) or "cost cap")
            if kind == "llm":
                model = self._allowed_model(body.get("model"))
                run.budget.take_sub_call()
                return await self._sub_llm(run, str(body.get("prompt", "")), model)
            if kind == "llm_batched":
                model = self._allowed_model(body.get("model"))
                items = [str(p) for p in body.get("prompts") or []]
                run.budget.take_sub_call(len(items))
                batch = next(self._batch_ids)
                return await self._bounded(
                    [
                        self._sub_llm(run, p, model, slot=_Slot(batch, i, len(items)))
                        for i, p in enumerate(items)
                    ]
                )
            if kind == "rlm":
                run.budget.take_sub_call()
                return await self._child(run, str(body.get("query", "")), body.get("context_ref"))
            if kind == "rlm_batched":
                reqs = [r for r in body.get("items") or [] if isinstance(r, dict)]
                run.budget.take_sub_call(len(reqs))
                batch = next(self._batch_ids)
                return await self._bounded(
                    [
                        self._child(
                            run, str(r.get("query", "")), r.get("context_ref"),
                            slot=_Slot(batch, i, len(reqs)),
                        )
                        for i, r in enumerate(reqs)
                    ]
                )  # fmt: skip
            raise ValueError(f"unknown call kind {kind!r}")

        return on_call

    async def _bounded(self, coros: list[Any]) -> list[str]:
        """Run concurrently (at most batch_concurrency at once); failures become "Error: ..."."""
        gate = asyncio.Semaphore(self.cfg.batch_concurrency)

        async def one(coro: Any) -> str:
            async with gate:
                try:
                    return str(await coro)
                except (BudgetExceeded, Exception) as exc:  # noqa: BLE001
                    return f"Error: {exc}"

        return list(await asyncio.gather(*(one(c) for c in coros)))

    async def _sub_llm(
        self,
        run: _Run,
        prompt: str,
        model: str | None,
        kind: Literal["llm", "rlm_as_llm"] = "llm",
        slot: _Slot | None = None,
        started: float | None = None,
    ) -> str:
        model_name = model or self.cfg.sub_model
        t0 = time.perf_counter()
        started = _clock(run) if started is None else started
        comp = await self._complete(run, model_name, [{"role": "user", "content": prompt}])
        call = events.SubCall(
            event="sub_call", run=run.id, kind=kind, depth=run.depth + 1,
            iteration=run.iteration, block=run.block, model=model_name,
            prompt=preview(prompt), answer=preview(comp.text),
            prompt_tokens=comp.prompt_tokens, completion_tokens=comp.completion_tokens,
            cost_usd=self._cost(comp), ms=round((time.perf_counter() - t0) * 1000, 1),
            start_ms=started, end_ms=_clock(run),
        )  # fmt: skip
        run.emit(_with_slot(call, slot))
        return comp.text

    async def _child(
        self, parent: _Run, query: str, context_ref: str | None, slot: _Slot | None = None
    ) -> str:
        """A recursive run one level down, or a single sub-model call at the depth limit."""
        started = _clock(parent)
        child_ns = f"{parent.ns}/{next(self._child_ids)}"
        sandbox = parent.sandbox
        if parent.depth + 1 > parent.budget.max_depth:
            prompt = query
            if context_ref is not None:
                await sandbox.new_namespace(child_ns, context_ref=context_ref)
                try:
                    text = await sandbox.get_var("context", child_ns) or ""
                finally:
                    await sandbox.drop_namespace(child_ns)
                if len(text) > DEPTH_LIMIT_CONTEXT_CHARS:
                    text = text[:DEPTH_LIMIT_CONTEXT_CHARS] + "\n[... context cut]"
                prompt = f"{query}\n\nContext:\n{text}"
            return await self._sub_llm(
                parent, prompt, None, kind="rlm_as_llm", slot=slot, started=started
            )
        info = await sandbox.new_namespace(
            child_ns, context_ref=context_ref, context=query if context_ref is None else None
        )
        t0 = time.perf_counter()
        try:
            result = await self.run(
                query=query, sandbox=sandbox, context_info=info, budget=parent.budget,
                emit=parent.emit, ns=child_ns, depth=parent.depth + 1, model=self.cfg.sub_model,
                parent=parent, slot=slot,
            )  # fmt: skip
        finally:
            if sandbox.alive:
                try:
                    await sandbox.drop_namespace(child_ns)
                except Exception:  # noqa: BLE001 - the child's namespace is garbage either way
                    log.debug("dropping namespace %s failed", child_ns)
        call = events.SubCall(
            event="sub_call", run=parent.id, kind="rlm", depth=parent.depth + 1,
            iteration=parent.iteration, block=parent.block, child_run=result.run_id,
            model=self.cfg.sub_model, prompt=preview(query), answer=preview(result.answer),
            iterations=result.iterations, ms=round((time.perf_counter() - t0) * 1000, 1),
            start_ms=started, end_ms=_clock(parent),
        )  # fmt: skip
        parent.emit(_with_slot(call, slot))
        return result.answer


@dataclass(frozen=True, slots=True)
class _Slot:
    """Where a call stands in a batched call: the batch's number, its index, the size."""

    batch: int
    index: int
    size: int


def _with_slot(ev: _E, slot: _Slot | None) -> _E:
    if slot is not None:
        ev["batch"], ev["batch_index"], ev["batch_size"] = slot.batch, slot.index, slot.size
    return ev


def _clock(run: _Run) -> float:
    """Milliseconds since the request's root run started (events' start_ms / end_ms)."""
    return round((time.perf_counter() - run.origin) * 1000, 1)


def _usage(comp: Completion) -> events.Usage:
    return events.Usage(prompt_tokens=comp.prompt_tokens, completion_tokens=comp.completion_tokens)


def _safe(emit: EventSink) -> EventSink:
    def wrapped(ev: events.Event) -> None:
        if "t" not in ev:
            ev["t"] = time.time()
        try:
            emit(ev)
        except Exception:
            log.exception("trajectory listener failed")

    return wrapped
