"""The thin HTTP router: auth, body limits, sessions by header or cookie, SSE framing.

All work is in ``service.chat``; everything here turns HTTP into calls and results back
into HTTP.
"""

from __future__ import annotations

import asyncio
import hmac
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import ValidationError

from service.api.protocol import ChatCompletionRequest, chunk_body, completion_body
from service.chat import ChatService, TurnResult, sse
from service.config import Settings
from service.constants import RESET_HEADER, SESSION_COOKIE, SESSION_HEADER
from service.errors import (
    BadRequest,
    Conflict,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    ServiceError,
    ShuttingDown,
    Unauthorized,
)
from service.sessions import Session, SessionStore, owner_of, valid_session_id

router = APIRouter()
KEEPALIVE_S = 15.0
STREAM_PIECE_CHARS = 2000


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


def caller(request: Request) -> str:
    """The caller's owner tag; 401 unless a configured key is presented (when keys are set)."""
    keys = _settings(request).api_keys
    if not keys:
        return owner_of(None)
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    ok = False
    if scheme.lower() == "bearer" and token:
        # Compare against every key, without stopping early: time says nothing about keys.
        for key in keys:
            ok |= hmac.compare_digest(token.encode(), key.encode())
    if not ok:
        raise Unauthorized(
            "a valid API key is required: Authorization: Bearer <key> (RLM_API_KEYS)"
        )
    return owner_of(token)


Caller = Annotated[str, Depends(caller)]


def _sessions(request: Request) -> SessionStore:
    return request.app.state.sessions  # type: ignore[no-any-return]


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(
            f"request body of {declared} bytes exceeds {limit} (RLM_MAX_BODY_BYTES)"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body exceeds {limit} bytes (RLM_MAX_BODY_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


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


def _session_id(request: Request) -> str | None:
    sid = request.headers.get(SESSION_HEADER) or request.cookies.get(SESSION_COOKIE)
    if sid is not None and not valid_session_id(sid):
        raise BadRequest(
            f"invalid session id: use 1-128 characters of letters, digits, '.', '_' or '-' ({SESSION_HEADER})",
            param=SESSION_HEADER,
        )
    return sid


def _session_headers(response: Response, session: Session) -> None:
    response.headers[SESSION_HEADER] = session.id
    response.set_cookie(SESSION_COOKIE, session.id, httponly=True, samesite="lax", path="/")


def _track(app: Any, coro: Any) -> asyncio.Task[TurnResult]:
    """Run a turn as a task the shutdown drain can find and cancel."""
    task = asyncio.ensure_future(coro)
    app.state.inflight.add(task)
    task.add_done_callback(app.state.inflight.discard)
    return task


def _result(app: Any, work: asyncio.Task[TurnResult]) -> TurnResult:
    if work.cancelled():
        if app.state.admission.draining:
            raise ShuttingDown(
                "the service shut down before this request finished (RLM_SHUTDOWN_GRACE_S)",
                retry_after=5, code_ran=True,
            )  # fmt: skip
        raise asyncio.CancelledError
    return work.result()


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request, owner: Caller) -> Response:
    app = request.app
    settings: Settings = app.state.settings
    chat: ChatService = app.state.chat
    if app.state.admission.draining:
        raise ShuttingDown("the service is shutting down; retry on another instance", retry_after=5)
    req = _parse(await _read_body(request, settings.rlm_max_body_bytes))
    chat.check_model(req.model)
    reset = request.headers.get(RESET_HEADER, "").lower() in ("1", "true", "yes") or bool(
        req.rlm and req.rlm.reset
    )
    session = await _sessions(request).open(_session_id(request), owner)
    request.scope["state"]["session_id"] = session.id
    rid = request.scope["state"]["request_id"]
    completion_id = f"chatcmpl-{uuid.uuid4().hex}"

    if req.stream:
        admission = app.state.admission
        if admission.running >= admission.max_running and admission.queued >= admission.max_queued:
            raise Overloaded(
                "the service is at capacity (RLM_MAX_RUNNING / RLM_MAX_QUEUED)", retry_after=2
            )
        response = StreamingResponse(
            _stream(app, req, session, reset, rid, completion_id),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )
        _session_headers(response, session)
        return response

    work = _track(app, chat.complete(req, session, reset=reset, request_id=rid))
    watcher = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not work.done():  # the client went away (or we are cancelled): stop the run
            work.cancel()
    if watcher.done() and not work.done():
        return Response(status_code=499)
    result = _result(app, work)
    request.scope["state"]["tokens"] = result.usage.get("total_tokens")
    body = completion_body(
        completion_id=completion_id, model=req.model, answer=result.answer,
        finish_reason=result.finish_reason, usage=result.usage, rlm=result.rlm,
    )  # fmt: skip
    if result.trajectory is not None:
        body["rlm"]["trajectory"] = result.trajectory
    reply = JSONResponse(body)
    _session_headers(reply, session)
    return reply


async def _stream(
    app: Any, req: ChatCompletionRequest, session: Session, reset: bool, rid: str, cid: str
) -> AsyncIterator[bytes]:
    chat: ChatService = app.state.chat
    created = int(time.time())
    yield sse(chunk_body(cid, req.model, created, {"role": "assistant", "content": ""}))
    work = _track(app, chat.complete(req, session, reset=reset, request_id=rid))
    try:
        while True:
            done, _ = await asyncio.wait({work}, timeout=KEEPALIVE_S)
            if done:
                break
            yield b": keep-alive\n\n"
        try:
            result = _result(app, work)
        except ServiceError as exc:
            yield sse(exc.to_envelope())
            yield sse("[DONE]")
            return
        text = result.answer
        for i in range(0, len(text), STREAM_PIECE_CHARS):
            yield sse(
                chunk_body(cid, req.model, created, {"content": text[i : i + STREAM_PIECE_CHARS]})
            )
        last = chunk_body(cid, req.model, created, {}, finish_reason=result.finish_reason)
        last["rlm"] = result.rlm
        yield sse(last)
        if req.stream_options is not None and req.stream_options.include_usage:
            yield sse(chunk_body(cid, req.model, created, None, usage=result.usage))
        yield sse("[DONE]")
    finally:
        if not work.done():
            work.cancel()


@router.get("/v1/models")
async def models(request: Request, owner: Caller) -> dict[str, Any]:
    created = int(time.time())
    return {
        "object": "list",
        "data": [
            {"id": m, "object": "model", "created": created, "owned_by": "rlm-py"}
            for m in _settings(request).served_models
        ],
    }


async def _session_view(session: Session) -> dict[str, Any]:
    variables: dict[str, Any] = {"vars": [], "state": []}
    if session.sandbox is not None and session.sandbox.alive and not session.running:
        try:
            variables = await asyncio.wait_for(session.sandbox.variables("root"), 5)
        except Exception:  # noqa: BLE001 - a view must not fail because the sandbox is busy
            pass
    return {
        "id": session.id,
        "object": "rlm.session",
        "created": int(session.created),
        "turns": session.turns,
        "busy": session.busy,
        "queued": session.waiting,
        "sandbox": {
            "status": session.sandbox_status(),
            "name": session.sandbox.name if session.sandbox else None,
            "lost_reason": session.lost_reason,
        },
        "variables": variables.get("vars", []),
        "state": variables.get("state", []),
        "runs": [r.summary() for r in session.runs],
    }


@router.get("/v1/sessions")
async def list_sessions(request: Request, owner: Caller) -> dict[str, Any]:
    out = []
    for s in _sessions(request).list(owner):
        out.append({"id": s.id, "turns": s.turns, "busy": s.busy, "created": int(s.created),
                    "sandbox": s.sandbox_status(), "runs": [r.summary() for r in s.runs]})  # fmt: skip
    return {"object": "list", "data": out}


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, request: Request, owner: Caller) -> dict[str, Any]:
    return await _session_view(_sessions(request).get(session_id, owner))


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: str, request: Request, owner: Caller) -> dict[str, Any]:
    store = _sessions(request)
    session = store.get(session_id, owner)
    if session.busy:
        raise Conflict(f"session {session_id} is running a request; delete it when it is done")
    await store.close(session_id)
    return {"id": session_id, "object": "rlm.session.deleted", "deleted": True}


@router.get("/v1/sessions/{session_id}/runs/{run_id}")
async def get_run(session_id: str, run_id: str, request: Request, owner: Caller) -> dict[str, Any]:
    session = _sessions(request).get(session_id, owner)
    for run in session.runs:
        if run.id == run_id:
            return {**run.summary(), "events": run.events}
    raise NotFound(
        f"no run {run_id!r} in session {session_id}", param="run_id", code="run_not_found"
    )


@router.get("/v1/sessions/{session_id}/runs/{run_id}/events")
async def run_events(
    session_id: str, run_id: str, request: Request, owner: Caller
) -> StreamingResponse:
    """Server-Sent Events of a run: everything so far, then live events until it ends."""
    session = _sessions(request).get(session_id, owner)
    run = next((r for r in session.runs if r.id == run_id), None)
    if run is None:
        raise NotFound(
            f"no run {run_id!r} in session {session_id}", param="run_id", code="run_not_found"
        )
    queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=10_000)
    past = list(run.events)
    if run.status == "running":
        run.listeners.add(queue)

    async def gen() -> AsyncIterator[bytes]:
        try:
            for ev in past:
                yield sse(ev)
            while run.status == "running" or not queue.empty():
                try:
                    item = await asyncio.wait_for(queue.get(), KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    break
                yield sse(item)
            yield sse({"event": "run_end", "status": run.status, "summary": run.summary()})
        finally:
            run.listeners.discard(queue)

    return StreamingResponse(
        gen(), media_type="text/event-stream", headers={"cache-control": "no-cache"}
    )


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    app = request.app
    pool = app.state.pool
    problems = []
    if app.state.admission.draining:
        problems.append("shutting down")
    if pool.cfg.backend == "docker":
        from sandbox.docker_backend import ping

        try:
            await asyncio.wait_for(ping(), 2)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"sandbox runtime unreachable: {exc}")
    if not pool.ready:
        problems.append(f"sandbox pool not ready: {pool.last_error or 'warming up'}")
    status = 503 if problems else 200
    return JSONResponse(
        {"status": "unavailable" if problems else "ready", "problems": problems,
         "pool": {"idle": pool.idle, "starting": pool.starting, "in_use": pool.in_use, "size": pool.size}},
        status_code=status,
    )  # fmt: skip


@router.get("/metrics")
async def metrics(request: Request) -> PlainTextResponse:
    return PlainTextResponse(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
