"""Router of the OpenAI surface: ``POST /v1/chat/completions`` and ``GET /v1/models``.

All work is in ``service.chat``; this turns HTTP into a call (body limits, parsing, the
session by header or cookie, reset) and the result back into JSON or Server-Sent Events.
A client that disconnects cancels its run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError

from service.api import sse as sse_
from service.api.deps import (
    Caller,
    Services,
    ServicesDep,
    forward_to_holder,
    named_session,
    read_body,
    with_session,
)
from service.api.progress import Progress
from service.api.protocol import ChatCompletionRequest, chunk_body, completion_body
from service.chat import TurnResult
from service.constants import COST_HEADER, RESET_HEADER
from service.errors import BadRequest, ServiceError, ShuttingDown
from service.rlm.events import Event
from service.sessions import Session

router = APIRouter()
STREAM_PIECE_CHARS = 2000


def _parse(body: bytes) -> ChatCompletionRequest:
    if not body:
        raise BadRequest("the request body is empty; send a JSON chat completion request")
    try:
        return ChatCompletionRequest.model_validate_json(body)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        if err.get("type") == "json_invalid":
            raise BadRequest(f"malformed JSON body: {err.get('msg')}") from None
        if err.get("type") == "model_type" and not loc:
            raise BadRequest("the request body must be a JSON object") from None
        raise BadRequest(f"{loc or 'body'}: {err.get('msg')}", param=loc or None) from None


def _track(svc: Services, coro: Coroutine[Any, Any, TurnResult]) -> asyncio.Task[TurnResult]:
    """Run a turn as a task the shutdown drain can find and cancel."""
    task = asyncio.ensure_future(coro)
    svc.inflight.add(task)  # type: ignore[arg-type]
    task.add_done_callback(svc.inflight.discard)  # type: ignore[arg-type]
    return task


def _result(svc: Services, work: asyncio.Task[TurnResult]) -> TurnResult:
    if work.cancelled():
        if svc.admission.draining:
            raise ShuttingDown(
                "the service shut down before this request finished (RLM_SHUTDOWN_GRACE_S)",
                retry_after=5,
                code_ran=True,
            )
        raise asyncio.CancelledError
    return work.result()


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request, owner: Caller, svc: ServicesDep) -> Response:
    settings, chat = svc.settings, svc.chat
    if svc.admission.draining:
        raise ShuttingDown("the service is shutting down; retry on another instance", retry_after=5)
    raw = await read_body(request, settings.rlm_max_body_bytes)
    svc.admission.refuse_if_full()  # a refused request costs no parsing
    req = _parse(raw)  # on the loop: see PARSING in service/api/deps.py
    in_body = req.rlm.session_id if req.rlm else None
    sid = named_session(request, in_body, cookies=settings.rlm_cookie_sessions)
    if sid is not None and svc.siblings is not None:
        # RLM_WORKERS: a session live in a sibling worker is served there, where it lives.
        forwarded = await forward_to_holder(request, svc, owner, sid, raw)
        if forwarded is not None:
            return forwarded
    del raw
    chat.check_model(req.model)
    chat.check_budget(owner)  # 429 budget_exceeded before any session or stream opens
    reset = request.headers.get(RESET_HEADER, "").lower() in ("1", "true", "yes") or bool(
        req.rlm and req.rlm.reset
    )
    session = await svc.sessions.open(sid, owner, reset=reset)
    request.scope["state"]["session_id"] = session.id
    rid = request.scope["state"]["request_id"]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"

    if req.stream:
        svc.admission.refuse_if_full()
        response = StreamingResponse(
            _stream(svc, req, session, reset, rid, completion_id),
            media_type=sse_.MEDIA_TYPE,
            headers=sse_.HEADERS,
        )
        with_session(response, session.id)
        return response

    work = _track(svc, chat.complete(req, session, reset=reset, request_id=rid))
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():  # the client went away (or we are cancelled): stop the run
            work.cancel()
    if watcher.done() and not work.done():
        return Response(status_code=499)
    result = _result(svc, work)
    request.scope["state"]["tokens"] = result.usage.get("total_tokens")
    body = completion_body(
        completion_id=completion_id,
        model=req.model,
        answer=result.answer,
        finish_reason=result.finish_reason,
        usage=result.usage,
        rlm=result.rlm,
    )
    if result.trajectory is not None:
        body["rlm"]["trajectory"] = result.trajectory
    reply = JSONResponse(body)
    with_session(reply, session.id)
    cost = result.rlm.get("cost_usd")
    # For clients that drop the body's extensions (LangChain's ChatOpenAI reads headers with
    # include_response_headers=True); "unknown" when a model had no price.
    reply.headers[COST_HEADER] = f"{cost:.6f}" if isinstance(cost, int | float) else "unknown"
    return reply


async def _stream(
    svc: Services, req: ChatCompletionRequest, session: Session, reset: bool, rid: str, cid: str
) -> AsyncIterator[bytes]:
    created = int(time.time())
    yield sse_.sse(chunk_body(cid, req.model, created, {"role": "assistant", "content": ""}))
    pieces: asyncio.Queue[str] = asyncio.Queue()
    on_event = None
    if req.rlm is None or req.rlm.stream_progress:
        progress = Progress()

        def on_event(ev: Event) -> None:
            text = progress.text(ev)
            if text:
                pieces.put_nowait(text)

    work = _track(
        svc, svc.chat.complete(req, session, reset=reset, request_id=rid, on_event=on_event)
    )
    try:
        while not work.done():
            getter = asyncio.ensure_future(pieces.get())
            done, _ = await asyncio.wait(
                {work, getter}, timeout=sse_.KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
            )
            if getter in done:
                delta = {"reasoning_content": getter.result()}
                yield sse_.sse(chunk_body(cid, req.model, created, delta))
            else:
                getter.cancel()
                if not done:
                    yield sse_.KEEPALIVE
        while not pieces.empty():  # what the last events said before the turn ended
            delta = {"reasoning_content": pieces.get_nowait()}
            yield sse_.sse(chunk_body(cid, req.model, created, delta))
        try:
            result = _result(svc, work)
        except ServiceError as exc:
            yield sse_.sse(exc.to_envelope())
            yield sse_.sse("[DONE]")
            return
        text = result.answer
        for i in range(0, len(text), STREAM_PIECE_CHARS):
            piece = {"content": text[i : i + STREAM_PIECE_CHARS]}
            yield sse_.sse(chunk_body(cid, req.model, created, piece))
        last = chunk_body(cid, req.model, created, {}, finish_reason=result.finish_reason)
        last["rlm"] = result.rlm
        yield sse_.sse(last)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield sse_.sse(chunk_body(cid, req.model, created, None, usage=result.usage))
        yield sse_.sse("[DONE]")
    finally:
        if not work.done():
            work.cancel()


@router.get("/v1/models")
async def models(owner: Caller, svc: ServicesDep) -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "rlm-py"}
            for m in svc.settings.served_models
        ],
    }
