"""Router of the operational endpoints: liveness, readiness and metrics.

``HEALTH_PATH`` and ``READY_PATH`` are the constants the load balancer's health check uses
(infra/), so the route and the check cannot drift apart.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.api.deps import MetricsDep, ServicesDep, SettingsDep, authenticate, services
from service.api.workers import ROUTED_HEADER, merge_metrics
from service.constants import HEALTH_PATH, READY_PATH

router = APIRouter()


@router.get(HEALTH_PATH)
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get(READY_PATH)
async def readyz(svc: ServicesDep) -> JSONResponse:
    """Ready to serve new sessions: not draining, the sandbox runtime answers, warm pool."""
    pool = svc.pool
    problems = ["shutting down"] if svc.admission.draining else []
    problems += await pool.problems()
    return JSONResponse(
        {
            "status": "unavailable" if problems else "ready",
            "problems": problems,
            "pool": {
                "idle": pool.idle,
                "starting": pool.starting,
                "in_use": pool.in_use,
                "size": pool.size,
            },
        },
        status_code=503 if problems else 200,
    )


@router.get("/metrics")
async def metrics(m: MetricsDep, settings: SettingsDep, request: Request) -> PlainTextResponse:
    """Prometheus text. Off loopback it takes a key like the API (Prometheus sends bearer
    tokens: ``authorization.credentials``): its labels name models and error kinds."""
    if settings.public_bind:
        authenticate(settings, request)
    own = generate_latest(m.registry)
    siblings = services(request).siblings
    if siblings is None or ROUTED_HEADER in request.headers:
        return PlainTextResponse(own, media_type=CONTENT_TYPE_LATEST)
    # RLM_WORKERS: every worker's metrics in one scrape, labelled by worker.
    texts = {str(siblings.info.index): own.decode()}
    for index, body in await siblings.ask_all(request, "/metrics"):
        texts[index] = body.decode("utf-8", "replace")
    return PlainTextResponse(merge_metrics(texts), media_type=CONTENT_TYPE_LATEST)
