"""``python -m service``: run the HTTP service with graceful shutdown.

On SIGTERM/SIGINT ``/readyz`` turns 503 and new chat requests get 503 at once; requests in
flight get ``RLM_SHUTDOWN_GRACE_S`` to finish, then are cancelled; every sandbox container
is removed before the process exits.
"""

from __future__ import annotations

import logging
import math
import socket
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from service import logs
from service.api import workers
from service.api.workers import WorkerInfo
from service.app import begin_drain, create_app
from service.config import Settings

# The kernel's OOM killer picks the highest score first: the service (which holds every
# session) last, its sandboxes (oom_score_adj 1000 in their container spec) first.
SERVICE_OOM_SCORE_ADJ = -500


def _last_for_the_oom_killer() -> None:
    try:
        with open("/proc/self/oom_score_adj", "w", encoding="ascii") as f:
            f.write(str(SERVICE_OOM_SCORE_ADJ))
    except OSError as exc:  # lowering needs CAP_SYS_RESOURCE: not fatal, but say so
        logging.getLogger("service").warning("could not lower the OOM score: %s", exc)


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"rlm-py: invalid configuration:\n{exc}", file=sys.stderr)
        return 2
    logs.setup(settings.rlm_log_level)
    _last_for_the_oom_killer()
    worker = WorkerInfo.from_env()
    count = workers.worker_count(settings.rlm_workers)
    if worker is None and count > 1:
        return workers.supervise(settings.rlm_host, settings.rlm_port, count, settings.rlm_instance)
    if worker is not None:
        # Its own sandboxes (reaped at its start without touching its siblings') and holder.
        settings = settings.model_copy(
            update={"rlm_instance": f"{settings.rlm_instance}-w{worker.index}"}
        )
    try:
        app = create_app(settings, worker=worker)
    except ValueError as exc:  # e.g. an unusable RLM_SESSION_STORE
        print(f"rlm-py: invalid configuration: {exc}", file=sys.stderr)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.rlm_host,
        port=settings.rlm_port,
        log_config=None,
        access_log=False,
        # Our own drain cancels what is left after the grace period; uvicorn's is a backstop.
        timeout_graceful_shutdown=int(settings.rlm_shutdown_grace_s) + 10,
        # Longer than the load balancer's idle timeout: else it may reuse a connection we
        # just closed and answer 502 (infra sets RLM_KEEPALIVE_S from the ALB's).
        timeout_keep_alive=max(1, math.ceil(settings.rlm_keepalive_s)),
        backlog=2048,
        h11_max_incomplete_event_size=64 * 1024,
    )
    server = uvicorn.Server(config)
    original = server.handle_exit

    def handle_exit(sig: int, frame: Any) -> None:
        begin_drain(app)
        original(sig, frame)

    server.handle_exit = handle_exit  # type: ignore[method-assign]
    if worker is None:
        server.run()
    else:  # the supervisor's port, and this worker's own socket for its siblings
        server.run(sockets=[socket.socket(fileno=worker.fd), worker.own_socket()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
