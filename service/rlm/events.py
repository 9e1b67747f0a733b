"""Trajectory events: the one definition of what a run reports while it works.

The engine emits these (``run_start``, ``iteration``, ``code``, ``sub_call``, ``final``), the
session keeps them for ``GET /v1/sessions/{id}/runs/{run}``, the events stream ends with
``run_end``, the JSONL writer turns them into the official library's shape and the viewer
(``service/ui/static/trajectory.js``) draws them; a test checks the viewer reads only fields
declared here. Every event is a JSON object with ``event`` (its kind), ``run`` (the run's id;
child runs of ``rlm_query`` have their own) and ``t`` (Unix seconds, set when emitted).

Timing for the viewer's timeline is measured by the host on one clock per request:
``start_ms`` and ``end_ms`` are milliseconds since the request's root run started (child
runs share their root's clock), never a figure the sandbox reports. Sub-calls made by one
``llm_query_batched`` / ``rlm_query_batched`` carry ``batch`` (its number, unique within the
request), ``batch_index`` (the prompt's position in the input) and ``batch_size``, so they
can be listed in input order whatever order they finished in.

Sandbox output inside events (code output, answers) is untrusted text: the viewer renders it
as text, never as markup.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NotRequired, TypedDict, get_type_hints


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int


class _Base(TypedDict, total=False):
    t: float  # set by the emitter


class RunStart(_Base):
    event: Literal["run_start"]
    run: str
    depth: int
    ns: str  # the sandbox namespace ("root", "root/1", ...)
    model: str
    query: str  # a preview
    context: dict[str, Any]  # the worker's description of the context (type, length, ...)
    max_depth: int
    max_iterations: int
    parent: str | None  # the parent run of a recursive run
    parent_iteration: int | None
    parent_block: int | None
    start_ms: NotRequired[float]  # 0 for the root run
    batch: NotRequired[int]  # a child run started by rlm_query_batched: see the docstring
    batch_index: NotRequired[int]
    batch_size: NotRequired[int]


class Iteration(_Base, total=False):
    event: Literal["iteration"]
    run: str
    iteration: int
    response: str
    finish_reason: str | None
    ms: float
    usage: Usage
    cost_usd: float | None  # None: the model has no price (RLM_PRICES)
    forced: bool  # the forced final-answer call after the iteration budget
    start_ms: float  # the model call, on the request's clock
    end_ms: float


class Code(_Base):
    event: Literal["code"]
    run: str
    iteration: int
    block: int
    code: str
    stdout: str
    stderr: str
    error: dict[str, str] | None
    changed: list[dict[str, str]]
    ms: float  # the worker's own figure of the block's run time
    start_ms: NotRequired[float]  # the host's: the exec round trip, on the request's clock
    end_ms: NotRequired[float]


class SubCall(_Base, total=False):
    event: Literal["sub_call"]
    run: str
    kind: Literal["llm", "rlm", "rlm_as_llm"]
    depth: int
    iteration: int
    block: int
    model: str
    prompt: str  # a preview
    answer: str  # a preview
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None  # llm calls; None: the model has no price
    child_run: str  # rlm: the child run's id
    iterations: int  # rlm: the child run's iterations
    ms: float
    start_ms: float
    end_ms: float
    batch: int  # made by a batched call: see the docstring
    batch_index: int
    batch_size: int


class Final(_Base):
    event: Literal["final"]
    run: str
    depth: int
    answer: str
    how: str  # answer | final | final_var | forced | partial
    stopped_by: str | None
    iterations: int
    ms: float
    end_ms: NotRequired[float]


class RunEnd(_Base):
    """The last event of ``GET .../runs/{run}/events``: the request's outcome."""

    event: Literal["run_end"]
    status: str
    summary: dict[str, Any]


Event = RunStart | Iteration | Code | SubCall | Final | RunEnd
EventSink = Callable[[Event], None]

TYPES: dict[str, type] = {
    "run_start": RunStart,
    "iteration": Iteration,
    "code": Code,
    "sub_call": SubCall,
    "final": Final,
    "run_end": RunEnd,
}


def fields(kind: str) -> frozenset[str]:
    """The field names an event of ``kind`` may carry."""
    return frozenset(get_type_hints(TYPES[kind]))


def all_fields() -> frozenset[str]:
    return frozenset().union(*(fields(k) for k in TYPES))
