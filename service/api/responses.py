"""Router of OpenAI's Responses API: ``POST /v1/responses``, ``GET|DELETE /v1/responses/{id}``
and ``POST /v1/responses/{id}/cancel``.

The turn runs in ``service.chat`` (as for chat completions); its Responses shape, the event
log and the registry are in ``service.responses``. This turns HTTP into a run (body limits,
parsing, the session by ``previous_response_id``, header or body, reset) and the run back
into JSON or the Responses event stream. A foreground run stops when its client leaves; a
background one (``background: true``) runs on, for ``GET`` to poll or to stream again from
any ``starting_after``, and for ``cancel`` to stop.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from service.api import sse as sse_
from service.api.deps import Caller, Services, ServicesDep, named_session, read_body, with_session
from service.api.progress import Progress
from service.api.protocol import ResponsesRequest
from service.constants import RESET_HEADER, SESSION_HEADER
from service.errors import BadRequest, ShuttingDown
from service.responses import ResponseRun

router = APIRouter()


def _parse(body: bytes) -> ResponsesRequest:
    if not body:
        raise BadRequest("the request body is empty; send a JSON Responses API request")
    try:
        return ResponsesRequest.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors()
        kind = errors[0].get("type")
        if kind == "json_invalid":
            raise BadRequest(f"malformed JSON body: {errors[0].get('msg')}") from None
        if kind == "model_type" and not errors[0].get("loc"):
            raise BadRequest("the request body must be a JSON object") from None
        # ``input`` is a string or a list: report the deepest complaint (the list item's),
        # with pydantic's union tags (``str``, ``list[InputMessage]``) left out of its path.
        err = max(errors, key=lambda e: len(e.get("loc", ())))
        parts = [str(p) for p in err.get("loc", ()) if "[" not in str(p) and p != "str"]
        loc = ".".join(parts)
        msg = str(err.get("msg", "invalid request")).removeprefix("Value error, ")
        if not loc:  # the request's own checks name their field first ("input: ...")
            field, _, _ = msg.partition(":")
            raise BadRequest(msg, param=field if field.isidentifier() else None) from None
        raise BadRequest(f"{loc}: {msg}", param=loc) from None


def _session_id(request: Request, req: ResponsesRequest, svc: Services, owner: str) -> str | None:
    """The session this turn runs in: ``previous_response_id``'s (OpenAI's way to chain
    turns), else the header or ``rlm.session_id``, else (RLM_COOKIE_SESSIONS) the cookie."""
    # A chained turn's session is its previous response's: a cookie does not override it.
    cookies = svc.settings.rlm_cookie_sessions and req.previous_response_id is None
    named = named_session(request, req.rlm.session_id if req.rlm else None, cookies=cookies)
    if req.previous_response_id is not None:
        linked = svc.responses.session_of(req.previous_response_id, owner)
        if named is not None and named != linked:
            raise BadRequest(
                f"previous_response_id continues session {linked}, but the request names "
                f"session {named} ({SESSION_HEADER} or rlm.session_id); send one of them",
                param="previous_response_id",
            )
        return linked
    return named


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _stream(run: ResponseRun, after: int, *, foreground: bool) -> AsyncIterator[bytes]:
    """The run's events after ``after`` as Server-Sent Events. A foreground run ends with
    its stream (the client left); a background one runs on and can be followed again."""
    try:
        async for event in run.follow(after, sse_.KEEPALIVE_S):
            yield sse_.KEEPALIVE if event is None else sse_.named(event["type"], event)
    finally:
        if foreground:
            if run.task is not None and not run.task.done():
                run.task.cancel()
            run.release_log()


def _event_stream(body: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(body, media_type=sse_.MEDIA_TYPE, headers=sse_.HEADERS)


@router.post("/v1/responses", response_model=None)
async def create_response(request: Request, owner: Caller, svc: ServicesDep) -> Response:
    settings = svc.settings
    if svc.admission.draining:
        raise ShuttingDown("the service is shutting down; retry on another instance", retry_after=5)
    raw = await read_body(request, settings.rlm_max_body_bytes)
    svc.admission.refuse_if_full()  # a refused request costs no parsing
    req = _parse(raw)  # on the loop: see PARSING in service/api/deps.py
    del raw
    svc.chat.check_model(req.model)
    svc.chat.check_budget(owner)  # 429 budget_exceeded before any session or run starts
    reset = request.headers.get(RESET_HEADER, "").lower() in ("1", "true", "yes") or bool(
        req.rlm and req.rlm.reset
    )
    sid = _session_id(request, req, svc, owner)
    # Refusals first, before a session is opened for a run that would not start.
    if req.background:
        svc.responses.refuse_background(owner, svc.admission)
    elif req.stream:
        svc.admission.refuse_if_full()
    if req.store:
        svc.responses.make_room(owner)
    session = await svc.sessions.open(sid, owner, reset=reset)
    request.scope["state"]["session_id"] = session.id
    show_progress = (req.stream or req.background) and (req.rlm is None or req.rlm.stream_progress)
    run = ResponseRun(
        owner=owner,
        req=req,
        session_id=session.id,
        progress=Progress().text if show_progress else None,
        log_events=req.stream or req.background,
    )
    svc.responses.add(run)
    work = run.drive(
        svc.chat,
        req.to_chat(),
        session,
        reset=reset,
        request_id=request.scope["state"]["request_id"],
        admission=svc.admission,
    )
    task = svc.responses.start(run, work)
    svc.inflight.add(task)  # type: ignore[arg-type]  # the shutdown drain cancels it
    task.add_done_callback(svc.inflight.discard)  # type: ignore[arg-type]

    if req.stream:
        return with_session(
            _event_stream(_stream(run, -1, foreground=not req.background)), session.id
        )
    if req.background:
        return with_session(JSONResponse(run.body()), session.id)
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():  # the client went away (or we are cancelled): stop the run
            task.cancel()
    if not run.done:
        await asyncio.wait({task})
        return Response(status_code=499)
    if run.error is not None:
        raise run.error
    request.scope["state"]["tokens"] = (run.usage or {}).get("total_tokens")
    return with_session(JSONResponse(run.body()), session.id)


@router.get("/v1/responses/{response_id}", response_model=None)
async def retrieve_response(
    response_id: str,
    owner: Caller,
    svc: ServicesDep,
    stream: bool = False,
    starting_after: Annotated[int | None, Query(ge=-1)] = None,
) -> Response:
    run = svc.responses.get(response_id, owner)
    if not stream:
        return JSONResponse(run.body())
    if not run.resumable:
        raise BadRequest(
            "only background responses can be streamed again (background: true)", param="stream"
        )
    after = -1 if starting_after is None else starting_after
    return _event_stream(_stream(run, after, foreground=False))


@router.post("/v1/responses/{response_id}/cancel", response_model=None)
async def cancel_response(response_id: str, owner: Caller, svc: ServicesDep) -> dict[str, Any]:
    run = svc.responses.get(response_id, owner)
    await svc.responses.cancel(run)
    return run.body()


@router.delete("/v1/responses/{response_id}", response_model=None)
async def delete_response(response_id: str, owner: Caller, svc: ServicesDep) -> dict[str, Any]:
    run = svc.responses.delete(response_id, owner)
    return {"id": run.id, "object": "response.deleted", "deleted": True}
