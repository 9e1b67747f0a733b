"""Typed FastAPI dependencies: the routers never reach into ``app.state`` themselves.

``Services`` is everything ``create_app`` wires together; each alias (``ChatDep``,
``SessionsDep``, ...) hands a router one part of it, typed. ``Caller`` authenticates the
request and yields its owner tag (the key's hash, never the key).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import Response

from sandbox.pool import SandboxPool
from service.admission import Admission
from service.api.workers import ROUTED_HEADER, Siblings
from service.chat import ChatService
from service.config import Settings
from service.constants import SESSION_COOKIE, SESSION_HEADER
from service.errors import BadRequest, PayloadTooLarge, Unauthorized
from service.metrics import Metrics
from service.responses import ResponseStore
from service.sessions import SessionStore, owner_of, valid_session_id


@dataclass
class Services:
    """The parts of one app instance, made by ``create_app`` and kept on ``app.state``."""

    settings: Settings
    metrics: Metrics
    pool: SandboxPool
    sessions: SessionStore
    admission: Admission
    chat: ChatService
    responses: ResponseStore
    # Turns in flight, so the shutdown drain can find and cancel them.
    inflight: set[asyncio.Task[object]] = field(default_factory=set)
    # With RLM_WORKERS > 1: the sibling worker processes, to route a session to its holder.
    siblings: Siblings | None = None
    loop: asyncio.AbstractEventLoop | None = None


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


# The dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread
# pool, a thread hop per dependency per request for what is an attribute read.
async def _services(request: Request) -> Services:
    return services(request)


ServicesDep = Annotated[Services, Depends(_services)]


async def _settings(request: Request) -> Settings:
    return services(request).settings


async def _chat(request: Request) -> ChatService:
    return services(request).chat


async def _sessions(request: Request) -> SessionStore:
    return services(request).sessions


async def _pool(request: Request) -> SandboxPool:
    return services(request).pool


async def _metrics(request: Request) -> Metrics:
    return services(request).metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
ChatDep = Annotated[ChatService, Depends(_chat)]
SessionsDep = Annotated[SessionStore, Depends(_sessions)]
PoolDep = Annotated[SandboxPool, Depends(_pool)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]


def authenticate(settings: Settings, request: Request) -> str:
    """The caller's owner tag; 401 unless a configured key is presented (when keys are set)."""
    keys = settings.api_keys
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


async def caller(settings: SettingsDep, request: Request) -> str:
    return authenticate(settings, request)


Caller = Annotated[str, Depends(caller)]


# PARSING: request bodies are parsed on the event loop. pydantic's JSON parser holds the GIL
# throughout, so a thread does not free the loop (measured: 20 MB parsed in a thread stalled
# the loop 215 ms, inline 172 ms) and only adds a thread hop per request. A body stalls its
# worker's loop about 0.6 ms per MB of plain text, up to 9 ms per MB of escape-dense JSON (up
# to RLM_MAX_BODY_BYTES); with RLM_WORKERS the other workers serve meanwhile. The parser caps
# nesting depth: past it, a 400.


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, 413 past ``limit`` bytes (RLM_MAX_BODY_BYTES), declared or not."""
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


def named_session(request: Request, in_body: str | None, *, cookies: bool) -> str | None:
    """The session a request names: the header, else the body's ``rlm.session_id``; the
    cookie only when the operator allows it (RLM_COOKIE_SESSIONS). SDK clients keep cookies,
    so a cookie alone would make every call of one client share (and queue on) one REPL."""
    sid = request.headers.get(SESSION_HEADER) or in_body
    if sid is None and cookies:
        sid = request.cookies.get(SESSION_COOKIE)
    if sid is not None and not valid_session_id(sid):
        raise BadRequest(
            "invalid session id: use 1-128 characters of letters, digits, '.', '_' or '-' "
            f"({SESSION_HEADER})",
            param=SESSION_HEADER,
        )
    return sid


def with_session(response: Response, session_id: str) -> Response:
    """``response`` naming its session: the header, and the cookie that also keeps the load
    balancer's stickiness (infra/ uses the same name), so polls come back to this host."""
    response.headers[SESSION_HEADER] = session_id
    response.set_cookie(SESSION_COOKIE, session_id, httponly=True, samesite="lax", path="/")
    return response


async def forward_to_holder(
    request: Request, svc: Services, owner: str, session_id: str, body: bytes = b""
) -> Response | None:
    """RLM_WORKERS: the answer of the sibling worker that holds this session, or None when
    it is served here (one worker, live here, held by no live sibling, or already routed)."""
    siblings = svc.siblings
    if siblings is None or ROUTED_HEADER in request.headers:
        return None
    if svc.sessions.holds(session_id, owner):
        return None
    info = await svc.sessions.lease_of(session_id, owner)
    if info is None or info.expires_at <= time.time():
        return None
    path = siblings.address_of(info.holder)
    return await siblings.forward(request, body, path) if path else None
