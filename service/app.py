"""Application factory: wires settings, sandbox pool, upstream, engine, sessions and routes.

The request-id/metrics/log middleware is plain ASGI (no BaseHTTPMiddleware) so streaming
responses pass straight through. Every error becomes OpenAI's envelope here, in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sandbox.pool import SandboxPool
from service.admission import Admission
from service.api import chat as chat_routes
from service.api import ops as ops_routes
from service.api import responses as response_routes
from service.api import sessions as session_routes
from service.api.deps import Services
from service.api.workers import WORKER_HEADER, Siblings, WorkerInfo
from service.chat import ChatService
from service.cloudwatch import CloudWatchPublisher, Readings
from service.config import Settings
from service.constants import (
    HEALTH_PATH,
    READY_PATH,
    REQUEST_ID_HEADER,
    SESSION_HEADER,
    SHOULD_RETRY_HEADER,
)
from service.durability import Durability, holder_name
from service.errors import BadRequest, NotFound, ServiceError
from service.metrics import Metrics
from service.responses import ResponseStore
from service.rlm.engine import EngineConfig, RLMEngine
from service.rlm.pricing import PriceTable
from service.rlm.upstream import Upstream
from service.sessions import SessionStore
from service.store import open_store

log = logging.getLogger("service")
_RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def error_response(exc: ServiceError, request_id: str | None = None) -> JSONResponse:
    headers: dict[str, str] = {}
    if exc.retry_after is not None:
        headers["retry-after"] = str(exc.retry_after)
    if exc.code_ran:
        headers[SHOULD_RETRY_HEADER] = "false"
    if request_id:
        headers[REQUEST_ID_HEADER] = request_id
    return JSONResponse(exc.to_envelope(), status_code=exc.status, headers=headers)


class RequestContext:
    """Pure ASGI middleware: request id, metrics and one JSON log line per request."""

    def __init__(self, app: ASGIApp, metrics: Metrics, worker: int | None = None) -> None:
        self.app = app
        self.metrics = metrics
        # With RLM_WORKERS: which worker answered, for operators (x-rlm-worker).
        self.worker = None if worker is None else (WORKER_HEADER.encode(), str(worker).encode())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        rid = incoming if _RID_RE.match(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        t0 = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.encode(), rid.encode()))
                if self.worker is not None and not any(
                    k.lower() == self.worker[0] for k, _ in headers
                ):
                    headers.append(self.worker)
                sid = scope["state"].get("session_id")
                if sid and not any(k.lower() == SESSION_HEADER.encode() for k, _ in headers):
                    headers.append((SESSION_HEADER.encode(), sid.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - t0
            route = scope.get("route")
            path = getattr(route, "path", None) or (
                "/ui" if scope["path"].startswith("/ui") else "other"
            )
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path, str(status)).observe(elapsed)
            if path not in ("/metrics", HEALTH_PATH, READY_PATH):
                state = scope.get("state", {})
                log.info(
                    "request",
                    extra={
                        "request_id": rid, "method": scope["method"], "path": path, "status": status,
                        "ms": round(elapsed * 1000, 2), "session_id": state.get("session_id"),
                        "tokens": state.get("tokens"),
                    },
                )  # fmt: skip


def begin_drain(app: FastAPI) -> None:
    """Stop taking work (``/readyz`` 503, new requests 503); after ``RLM_SHUTDOWN_GRACE_S``
    cancel the requests still running, so each ends with a clear 503 before the server stops.

    Safe to call from a signal handler.
    """
    svc: Services = app.state.services
    if svc.admission.draining:
        return
    svc.admission.draining = True
    loop = svc.loop
    if loop is None:
        return

    def cancel_inflight() -> None:
        for task in list(svc.inflight):
            task.cancel()

    grace = svc.settings.rlm_shutdown_grace_s
    loop.call_soon_threadsafe(loop.call_later, grace, cancel_inflight)


def create_app(settings: Settings, worker: WorkerInfo | None = None) -> FastAPI:
    # Bad prices are a configuration error (ValueError), before anything is started.
    prices = PriceTable.load(settings.rlm_prices_file, settings.rlm_prices)
    if settings.rlm_max_cost_usd is not None or settings.rlm_key_daily_usd is not None:
        prices.require(
            (settings.rlm_root_model, settings.rlm_sub_model, *settings.sub_models),
            "a cost cap or daily budget (RLM_MAX_COST_USD / RLM_KEY_DAILY_USD)",
        )
    metrics = Metrics()
    pool = SandboxPool(
        settings.sandbox_config(),
        settings.rlm_sandbox_pool_size,
        keep=settings.rlm_sandbox_keep,
        on_started=metrics.sandbox_start.observe,
        on_reused=metrics.sandbox_reused.inc,
    )
    upstream = Upstream(
        api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else None,
        base_url=settings.openai_base_url,
        timeout_s=settings.rlm_upstream_timeout_s,
        retries=settings.rlm_upstream_retries,
        concurrency=settings.rlm_upstream_concurrency,
        organization=settings.openai_org_id,
        project=settings.openai_project_id,
    )
    upstream.on_completion = lambda c: metrics.observe_completion(
        c.model, c.prompt_tokens, c.completion_tokens, cached_tokens=c.cached_tokens,
        cost_usd=prices.cost(c.model, c.prompt_tokens, c.cached_tokens, c.completion_tokens),
    )  # fmt: skip
    engine = RLMEngine(
        upstream,
        EngineConfig(
            root_model=settings.rlm_root_model,
            sub_model=settings.rlm_sub_model,
            output_max_chars=settings.rlm_output_max_chars,
            batch_concurrency=settings.rlm_batch_concurrency,
            allowed_models=settings.sub_models,
            prices=prices,
        ),
    )
    admission = Admission(
        settings.rlm_max_running, settings.rlm_max_queued, per_key=settings.running_per_key
    )
    store, leases = open_store(
        settings.rlm_session_store,
        lease_table=settings.rlm_session_lease_table,
        max_blob_bytes=settings.rlm_snapshot_max_mb * 2**20,
    )
    durability = Durability(
        store,
        leases,
        holder=holder_name(settings.rlm_instance),
        max_snapshot_bytes=settings.rlm_snapshot_max_mb * 2**20,
        session_ttl_s=settings.rlm_session_ttl_s,
    )
    sessions = SessionStore(
        pool,
        max_sessions=settings.rlm_max_sessions,
        ttl_s=settings.rlm_session_ttl_s,
        per_key=settings.sessions_per_key,
        durability=durability,
        idle_s=settings.rlm_session_idle_s,
    )
    sessions.on_sandbox_fault = lambda kind: metrics.sandbox_faults.labels(kind).inc()
    chat = ChatService(settings, engine, pool, admission, metrics, durability)
    svc = Services(
        settings=settings,
        metrics=metrics,
        pool=pool,
        sessions=sessions,
        admission=admission,
        chat=chat,
        responses=ResponseStore(
            ttl_s=settings.rlm_response_ttl_s,
            max_kept=settings.rlm_max_responses,
            per_key=settings.responses_per_key,
            link_ttl_s=settings.rlm_session_ttl_s,
        ),
        siblings=Siblings(worker) if worker is not None else None,
    )
    metrics.bind_gauges(
        sessions=lambda: len(sessions),
        idle=lambda: pool.idle,
        busy=lambda: pool.in_use,
        starting=lambda: pool.starting,
        kept=lambda: pool.kept,
        queued=lambda: admission.queued,
        running=lambda: admission.running,
        upstream_in_flight=lambda: upstream.in_flight,
    )
    publisher = (
        CloudWatchPublisher(
            settings.rlm_cloudwatch_namespace,
            Readings(
                live_sessions=lambda: len(sessions),
                running_requests=lambda: admission.running,
                sandbox_faults_total=metrics.sandbox_faults_total,
                upstream_errors_total=metrics.upstream_errors_total,
            ),
            group=settings.rlm_asg_name,
            interval_s=settings.rlm_cloudwatch_interval_s,
        )
        if settings.rlm_cloudwatch_namespace
        else None
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.loop = asyncio.get_running_loop()
        await pool.start()
        sessions.start()
        if publisher is not None:
            publisher.start()
        try:
            yield
        finally:
            admission.draining = True
            if publisher is not None:
                await publisher.close()
            await svc.responses.close()  # background runs end failed, never left in_progress
            await sessions.close_all()
            await pool.close()
            await upstream.close()
            if svc.siblings is not None:
                await svc.siblings.close()

    app = FastAPI(
        title="rlm-py",
        version="0.1.0",
        description="Recursive Language Models behind an OpenAI-compatible API",
        lifespan=lifespan,
        # Off loopback only the public surface answers without a key: no schema browsing.
        docs_url=None if settings.public_bind else "/docs",
        redoc_url=None if settings.public_bind else "/redoc",
        openapi_url=None if settings.public_bind else "/openapi.json",
    )
    app.state.services = svc

    @app.exception_handler(ServiceError)
    async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return error_response(exc, request.scope.get("state", {}).get("request_id"))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error_response(
            BadRequest(f"{loc}: {first.get('msg', 'invalid request')}", param=loc or None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            err: ServiceError = NotFound(f"no route {request.url.path}")
        else:
            err = ServiceError(str(exc.detail))
            err.status = exc.status_code
            err.type = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled error", exc_info=exc)
        return error_response(
            ServiceError("internal error; see the service log for the request id")
        )

    for router in (
        chat_routes.router,
        response_routes.router,
        session_routes.router,
        ops_routes.router,
    ):
        app.include_router(router)
    with contextlib.suppress(ImportError):
        from service.ui import routes as ui_routes

        app.include_router(ui_routes.router)
    app.add_middleware(
        RequestContext, metrics=metrics, worker=None if worker is None else worker.index
    )
    return app
