"""Router of sessions and their runs: ``/v1/sessions`` and ``/v1/sessions/{id}/runs``.

Every route is scoped to the caller's key: another key's session is a 404, as if it did not
exist. Run events stream as Server-Sent Events while the run goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from service.api import sse as sse_
from service.api.deps import Caller, ServicesDep, forward_to_holder
from service.api.workers import ROUTED_HEADER
from service.errors import Conflict, NotFound
from service.rlm.events import Event, RunEnd
from service.sessions import RunRecord, Session, session_summary, session_view, stored_view

router = APIRouter()


def _run(session: Session, run_id: str) -> RunRecord:
    for run in session.runs:
        if run.id == run_id:
            return run
    raise NotFound(
        f"no run {run_id!r} in session {session.id}", param="run_id", code="run_not_found"
    )


@router.get("/v1/sessions")
async def list_sessions(request: Request, owner: Caller, svc: ServicesDep) -> dict[str, Any]:
    data = [session_summary(s) for s in svc.sessions.of_owner(owner)]
    if svc.siblings is not None and ROUTED_HEADER not in request.headers:
        for _, body in await svc.siblings.ask_all(request, "/v1/sessions"):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                data += json.loads(body)["data"]
    return {"object": "list", "data": data}


@router.get("/v1/sessions/{session_id}", response_model=None)
async def get_session(
    request: Request, session_id: str, owner: Caller, svc: ServicesDep
) -> dict[str, Any] | Response:
    if (there := await forward_to_holder(request, svc, owner, session_id)) is not None:
        return there
    store = svc.sessions
    found = await store.find(session_id, owner)
    if isinstance(found, Session):
        return await session_view(found)
    return stored_view(session_id, found)


@router.delete("/v1/sessions/{session_id}", response_model=None)
async def delete_session(
    request: Request, session_id: str, owner: Caller, svc: ServicesDep
) -> dict[str, Any] | Response:
    if (there := await forward_to_holder(request, svc, owner, session_id)) is not None:
        return there
    store = svc.sessions
    found = await store.find(session_id, owner)
    if isinstance(found, Session) and found.busy:
        raise Conflict(f"session {session_id} is running a request; delete it when it is done")
    await store.delete(session_id, owner, "it was deleted by its owner")
    return {"id": session_id, "object": "rlm.session.deleted", "deleted": True}


@router.get("/v1/sessions/{session_id}/runs/{run_id}", response_model=None)
async def get_run(
    request: Request, session_id: str, run_id: str, owner: Caller, svc: ServicesDep
) -> dict[str, Any] | Response:
    if (there := await forward_to_holder(request, svc, owner, session_id)) is not None:
        return there
    run = _run(svc.sessions.get(session_id, owner), run_id)
    return {**run.summary(), "events": run.events}


@router.get("/v1/sessions/{session_id}/runs/{run_id}/events", response_model=None)
async def run_events(
    request: Request, session_id: str, run_id: str, owner: Caller, svc: ServicesDep
) -> Response:
    """Server-Sent Events of a run: everything so far, then live events until it ends."""
    if (there := await forward_to_holder(request, svc, owner, session_id)) is not None:
        return there
    run = _run(svc.sessions.get(session_id, owner), run_id)
    queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize=10_000)
    past = list(run.events)
    if run.status == "running":
        run.listeners.add(queue)

    async def gen() -> AsyncIterator[bytes]:
        try:
            for ev in past:
                yield sse_.sse(ev)
            while run.status == "running" or not queue.empty():
                try:
                    item = await asyncio.wait_for(queue.get(), sse_.KEEPALIVE_S)
                except TimeoutError:
                    yield sse_.KEEPALIVE
                    continue
                if item is None:
                    break
                yield sse_.sse(item)
            yield sse_.sse(RunEnd(event="run_end", status=run.status, summary=run.summary()))
        finally:
            run.listeners.discard(queue)

    return StreamingResponse(
        gen(), media_type=sse_.MEDIA_TYPE, headers={"cache-control": "no-cache"}
    )
