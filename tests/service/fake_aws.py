"""A moto server on a loopback port for the session store's S3 and DynamoDB backends."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from typing import Any

import pytest

REGION = "us-east-1"


class _Serialized:
    """DynamoDB (and S3) apply a conditional write atomically; moto, under its threaded
    server, evaluates the condition and writes without a lock. One lock around each request
    gives the fake the guarantee the real service gives, so the race below tests our
    read-decide-compare-and-swap, not moto's thread safety (the lease race)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> Any:
        with self.lock:
            return self.app(environ, start_response)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
            mp.delenv(name, raising=False)
        # Set in os.environ, so the race's spawned processes inherit them too.
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        port = free_port()
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        server.start()
        wsgi = server._server
        assert wsgi is not None
        wsgi.app = _Serialized(wsgi.app)
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
