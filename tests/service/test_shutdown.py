"""Graceful shutdown of ``python -m service``: SIGTERM with a request in flight."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import httpx

from loadtest.upstream import ScriptedUpstream, free_port
from tests.service.conftest import Router

ROOT = Path(__file__).resolve().parents[2]
INSTANCE = "rlm-test-shutdown"


def _containers() -> list[object]:
    return docker.from_env().containers.list(
        all=True, filters={"label": f"rlm-py.instance={INSTANCE}"}
    )


def test_sigterm_with_a_request_in_flight_leaves_no_container(
    up: ScriptedUpstream, docker_ready: None
) -> None:
    up.policy = Router([
        "```repl\nimport time\ntime.sleep(20)\n```", "FINAL(never)",
    ])  # fmt: skip
    port = free_port()
    env = {
        **os.environ,
        "OPENAI_BASE_URL": up.base_url, "OPENAI_API_KEY": "sk-x", "RLM_PORT": str(port),
        "RLM_SANDBOX": "docker", "RLM_SANDBOX_POOL_SIZE": "2", "RLM_INSTANCE": INSTANCE,
        "RLM_SHUTDOWN_GRACE_S": "2", "RLM_EXEC_TIMEOUT_S": "30", "RLM_API_KEYS": "",
    }  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(base + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "service did not become ready"
            time.sleep(0.1)
        while len(_containers()) < 2:  # the warm pool fills in the background
            assert time.monotonic() < deadline, "the warm pool did not fill"
            time.sleep(0.1)

        result: dict[str, object] = {}

        def in_flight() -> None:
            try:
                r = httpx.post(base + "/v1/chat/completions", timeout=60,
                               json={"model": "rlm", "messages": [{"role": "user", "content": "q"}]})  # fmt: skip
                result["status"] = r.status_code
            except httpx.HTTPError as exc:
                result["error"] = repr(exc)

        t = threading.Thread(target=in_flight)
        t.start()
        while up.stats.calls < 1:
            time.sleep(0.05)
        time.sleep(0.5)  # the sleeping block is running in a sandbox now
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        with contextlib.suppress(httpx.TransportError):  # a closed listener: also not ready
            assert httpx.get(base + "/readyz", timeout=5).status_code == 503
        code = proc.wait(timeout=60)
        t.join(timeout=60)
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean shutdown
        assert result.get("status") == 503, result  # told the service shut down, not cut off
        assert _containers() == []
    finally:
        if proc.poll() is None:
            proc.kill()
        out = proc.stdout.read() if proc.stdout else ""
        for c in _containers():
            c.remove(force=True)
    assert "Traceback" not in out, out[-3000:]
