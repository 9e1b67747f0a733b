"""RLM_WORKERS=2: ``python -m service`` as a supervisor of two worker processes on one port.

A session is served by the worker that holds it, whichever worker the request reaches (each
worker's own Unix socket stands in for the kernel's choice of accepting worker); a killed
worker is restarted; SIGTERM drains both. Real processes, real HTTP, runsc sandboxes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.upstream import ScriptedUpstream, free_port, wait_until_up
from service.api.workers import run_dir
from tests.service.conftest import Router, terminate

ROOT = Path(__file__).resolve().parents[2]
KEY = "key-workers"
INSTANCE = "rlm-test-workers"


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def answer(expr: str) -> str:
    return repl(f"answer['content'] = str({expr})\nanswer['ready'] = True")


class Supervised:
    def __init__(self, up: ScriptedUpstream, store: str) -> None:
        self.port = free_port()
        env = {
            **os.environ,
            "OPENAI_BASE_URL": up.base_url,
            "OPENAI_API_KEY": "sk-upstream-workers",
            "RLM_PORT": str(self.port),
            "RLM_WORKERS": "2",
            "RLM_SANDBOX": "runsc",
            "RLM_SANDBOX_POOL_SIZE": "1",
            "RLM_SANDBOX_MEMORY_MB": "256",
            "RLM_INSTANCE": INSTANCE,
            "RLM_API_KEYS": KEY,
            "RLM_SESSION_STORE": store,
            "RLM_SHUTDOWN_GRACE_S": "2",
        }
        self.log = tempfile.NamedTemporaryFile(prefix="rlm-workers-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.dir = run_dir(INSTANCE, self.port)
        wait_until_up(f"http://127.0.0.1:{self.port}/readyz", timeout_s=90, proc=self.proc)
        self.wait_workers(2)

    def sockets(self) -> list[Path]:
        return sorted(self.dir.glob("*.sock"))

    def wait_workers(self, n: int, timeout_s: float = 60) -> list[Path]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            socks = self.sockets()
            if len(socks) == n and all(self.ready(s) for s in socks):
                return socks
            time.sleep(0.2)
        raise AssertionError(f"not {n} ready workers: {self.sockets()}\n{self.logs()[-3000:]}")

    @staticmethod
    def client(sock: Path) -> httpx.Client:
        return httpx.Client(
            transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://worker", timeout=120,
            headers={"authorization": f"Bearer {KEY}"},
        )  # fmt: skip

    def ready(self, sock: Path) -> bool:
        try:
            with self.client(sock) as c:
                return c.get("/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        return terminate(self.proc)


@pytest.fixture
def supervised(up: ScriptedUpstream, docker_ready: None) -> Iterator[Supervised]:
    with tempfile.TemporaryDirectory(prefix="rlm-workers-store-") as store:
        svc = Supervised(up, f"file://{store}")
        try:
            yield svc
        finally:
            svc.stop()


def post(c: httpx.Client, content: str, session: str | None = None, **rlm: Any) -> httpx.Response:
    headers = {"x-rlm-session-id": session} if session else {}
    body = {"model": "rlm", "messages": [{"role": "user", "content": content}], "rlm": rlm}
    return c.post("/v1/chat/completions", json=body, headers=headers)


def test_a_session_is_served_by_its_worker_whichever_receives_it(
    supervised: Supervised, up: ScriptedUpstream
) -> None:
    first, second = supervised.sockets()
    up.policy = Router([
        repl("kept = 41"), answer("kept"),
        answer("kept + 1"),
        answer("kept + 2"),
    ])  # fmt: skip
    with supervised.client(first) as a, supervised.client(second) as b:
        r1 = post(a, "remember", context="c")
        assert r1.status_code == 200, r1.text
        home = r1.headers["x-rlm-worker"]
        sid = r1.headers["x-rlm-session-id"]
        # Reaching the other worker: forwarded to the holder (no hand-over, no restore).
        r2 = post(b, "again", session=sid)
        assert r2.status_code == 200, r2.text
        assert r2.json()["choices"][0]["message"]["content"] == "42"
        assert r2.headers["x-rlm-worker"] == home
        assert r2.json()["rlm"]["restored"] is None
        # Streamed answers come through the forwarding too.
        with b.stream(
            "POST", "/v1/chat/completions", headers={"x-rlm-session-id": sid},
            json={"model": "rlm", "messages": [{"role": "user", "content": "s"}], "stream": True},
        ) as streamed:  # fmt: skip
            text = "".join(streamed.iter_text())
        assert streamed.headers["x-rlm-worker"] == home and '"43"' in text and "[DONE]" in text
        # The session's other routes, the caller's list and the metrics span both workers.
        assert [s["id"] for s in b.get("/v1/sessions").json()["data"]] == [sid]
        view = b.get(f"/v1/sessions/{sid}")
        assert view.status_code == 200 and view.headers["x-rlm-worker"] == home
        metrics = b.get("/metrics").text
        assert 'worker="0"' in metrics and 'worker="1"' in metrics
        assert metrics.count("# TYPE rlm_sessions_active gauge") == 1  # one family, two samples
        assert metrics.count("rlm_sessions_active{") == 2


def test_a_killed_worker_is_restarted_and_its_sessions_move(
    supervised: Supervised, up: ScriptedUpstream
) -> None:
    up.policy = Router([repl("kept = 7"), answer("kept"), answer("kept * 2")])
    first, second = supervised.sockets()
    with supervised.client(first) as a:
        r1 = post(a, "remember")
        sid, home = r1.headers["x-rlm-session-id"], r1.headers["x-rlm-worker"]
    victim = first if home == "0" else second
    # The socket is named after the worker's pid.
    os.kill(int(victim.stem), signal.SIGKILL)
    socks = supervised.wait_workers(2)
    assert victim not in socks  # a new process, a new socket
    # The killed worker's session was never saved: once its lease runs out, it is gone (410),
    # never served empty as if it were the old one; a reset starts it over.
    with supervised.client(socks[0]) as c:
        deadline = time.monotonic() + 60
        while True:
            r = post(c, "again", session=sid)
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert r.status_code == 410, r.text
        assert "stopped before saving it" in r.json()["error"]["message"]
        up.policy = Router([answer("'kept' in globals()")])
        again = post(c, "over", session=sid, reset=True)
        assert (
            again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "False"
        )
    assert supervised.proc.poll() is None


def test_sigterm_stops_every_worker(supervised: Supervised) -> None:
    pids = [int(s.stem) for s in supervised.sockets()]
    assert supervised.stop() == 0
    for pid in pids:
        assert (
            not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
        )
    assert not supervised.dir.exists()
