"""``make smoke`` against a real service on loopback (the scripted upstream answers needles)."""

from __future__ import annotations

import pytest

from loadtest.smoke import Smoke, main
from loadtest.upstream import ScriptedUpstream, needle_policy
from tests.service.conftest import ServiceServer, service_env


@pytest.fixture
def service() -> ServiceServer:
    with ScriptedUpstream(needle_policy) as up:
        env = service_env(up, rlm_sandbox="local", rlm_sandbox_pool_size=1)
        with ServiceServer(**env) as svc:
            yield svc  # type: ignore[misc]


def test_every_check_passes_against_a_working_service(service: ServiceServer) -> None:
    checks = Smoke(service.url, "key-alpha", allow_http=True).run()
    assert [(c.name, c.ok) for c in checks] == [
        ("tls", True), ("healthz", True), ("readyz", True), ("models", True),
        ("needle", True), ("session", True), ("stickiness", True),
    ], [c.detail for c in checks if not c.ok]  # fmt: skip
    assert "(no ALB cookie)" in checks[-1].detail  # reported, not required, off an ALB


def test_what_fails_is_named_and_the_exit_code_says_so(
    service: ServiceServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["--host", service.url, "--key", "not-a-key", "--allow-http"]) == 1
    out = capsys.readouterr().out
    assert "| tls | ok |" in out and "| healthz | ok |" in out
    assert "| models | FAIL |" in out and "answered 401" in out
    # Plain http is refused unless allowed; an ALB cookie is required when asked for.
    checks = {c.name: c for c in Smoke(service.url, "key-alpha", expect_alb=True).run()}
    assert not checks["tls"].ok and "not https" in checks["tls"].detail
    assert not checks["stickiness"].ok and "AWSALBAPP" in checks["stickiness"].detail
    assert checks["needle"].ok and checks["session"].ok
