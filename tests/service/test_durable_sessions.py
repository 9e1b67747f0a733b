"""Sessions that outlive their sandbox and their process, on real runsc sandboxes.

Two ``python -m service`` processes share one session store (as every process of a machine
shares the default one): a session started on the first, which is then stopped with SIGTERM,
continues on the second with every variable and ``state``; an idle session hibernates (its
container closes) and its next turn restores it; a session live in one process is not
served by another; a deleted session is 410 everywhere.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import httpx
import pytest

from loadtest.upstream import ScriptedUpstream, free_port, wait_until_up
from tests.service.conftest import Router, terminate

ROOT = Path(__file__).resolve().parents[2]
KEY = "key-durable"


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


class Service:
    """``python -m service`` as a subprocess on a loopback port."""

    def __init__(self, up: ScriptedUpstream, store: str, instance: str, **env: str) -> None:
        self.port = free_port()
        self.instance = instance
        self.url = f"http://127.0.0.1:{self.port}"
        full = {
            **os.environ,
            "OPENAI_BASE_URL": up.base_url,
            "OPENAI_API_KEY": "sk-upstream-durable",
            "RLM_PORT": str(self.port),
            "RLM_SANDBOX": "docker",
            "RLM_SANDBOX_POOL_SIZE": "1",
            "RLM_SANDBOX_MEMORY_MB": "256",
            "RLM_INSTANCE": instance,
            "RLM_API_KEYS": KEY,
            "RLM_SESSION_STORE": store,
            "RLM_SHUTDOWN_GRACE_S": "2",
            **env,
        }
        self.log = tempfile.NamedTemporaryFile(prefix=f"{instance}-", suffix=".log", delete=False)  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=ROOT,
            env=full,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_until_up(self.url + "/readyz", timeout_s=90, proc=self.proc, name=instance)

    def post(
        self, body: dict[str, Any], session: str | None = None, **headers: str
    ) -> httpx.Response:
        h = {"authorization": f"Bearer {KEY}", **headers}
        if session:
            h["x-rlm-session-id"] = session
        return httpx.post(self.url + "/v1/chat/completions", json=body, headers=h, timeout=120)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"authorization": f"Bearer {KEY}"}, timeout=30)

    def stop(self) -> int:
        return terminate(self.proc)

    def logs(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

    def container_names(self) -> list[str]:
        """Names of this instance's containers (sparse: a container removed while it is
        listed must not fail the listing)."""
        found = docker.from_env().containers.list(
            all=True, sparse=True, filters={"label": f"rlm-py.instance={self.instance}"}
        )
        return [n.lstrip("/") for c in found for n in c.attrs.get("Names", [])]


@pytest.fixture
def store_url() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="rlm-durable-store-") as d:
        yield f"file://{d}"


@pytest.fixture
def services(up: ScriptedUpstream, store_url: str, docker_ready: None) -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for svc in started:
        svc.stop()
        with contextlib.suppress(OSError):
            os.unlink(svc.log.name)


def _turn_one(svc: Service, up: ScriptedUpstream) -> str:
    up.policy = Router(
        [
            repl(
                "kept = {'numbers': list(range(1000)), 'word': 'durable'}\n"
                "state_set('counter', 41)\n"
                "import threading\nlock = threading.Lock()\n"  # cannot be pickled
                "answer['content'] = 'stored'\nanswer['ready'] = True"
            )
        ]
    )
    r = svc.post(
        {
            "model": "rlm",
            "messages": [{"role": "user", "content": "keep"}],
            "rlm": {"context": "c0"},
        }
    )
    assert r.status_code == 200, r.text
    assert r.json()["rlm"]["session_created"] is True
    return str(r.json()["rlm"]["session_id"])


def _turn_two(svc: Service, up: ScriptedUpstream, sid: str) -> httpx.Response:
    up.policy = Router(
        [
            repl(
                "answer['content'] = f\"{kept['word']}|{sum(kept['numbers'])}|"
                "{state_get('counter') + 1}|{history_0}|{context_0}|{context}|"
                "{'lock' in globals()}\"\nanswer['ready'] = True"
            )
        ]
    )
    return svc.post(
        {
            "model": "rlm",
            "messages": [{"role": "user", "content": "recall"}],
            "rlm": {"context": "c1"},
        },
        session=sid,
    )


def test_a_session_continues_on_another_process_after_sigterm(
    up: ScriptedUpstream, store_url: str, services: list[Service]
) -> None:
    first = Service(up, store_url, "rlm-test-durable-a")
    services.append(first)
    second = Service(up, store_url, "rlm-test-durable-b")
    services.append(second)
    sid = _turn_one(first, up)
    # The drain snapshots every live session; uvicorn re-raises the SIGTERM it handled.
    assert first.stop() in (0, -signal.SIGTERM), first.logs()
    assert "hibernated" in first.logs()
    assert first.container_names() == []
    up.reset_stats()
    r = _turn_two(second, up, sid)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "durable|499500|42|stored|c0|c1|False"
    assert r.json()["rlm"]["turn"] == 1 and r.json()["rlm"]["session_created"] is False
    # The model was told the session came back, and what could not be kept.
    system = up.stats.requests[0]["messages"][0]["content"]
    assert "restored from a snapshot" in system and "lock" in system


def test_an_idle_session_hibernates_and_its_next_turn_restores_it(
    up: ScriptedUpstream, store_url: str, services: list[Service]
) -> None:
    svc = Service(up, store_url, "rlm-test-durable-idle", RLM_SESSION_IDLE_S="1")
    services.append(svc)
    sid = _turn_one(svc, up)
    deadline = time.monotonic() + 30
    while svc.get(f"/v1/sessions/{sid}").json()["sandbox"]["status"] != "hibernated":
        assert time.monotonic() < deadline, "the session did not hibernate"
        time.sleep(0.5)
    view = svc.get(f"/v1/sessions/{sid}").json()
    assert view["turns"] == 1 and view["snapshot"]["size"] > 0
    assert view["snapshot"]["unpicklable"] == ["lock"]
    # Its container is gone (removed just after the snapshot): only the warm pool's remain.
    deadline = time.monotonic() + 20
    while any(sid in name for name in svc.container_names()):
        assert time.monotonic() < deadline, "the hibernated session's container was not removed"
        time.sleep(0.2)
    r = _turn_two(svc, up, sid)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "durable|499500|42|stored|c0|c1|False"


def test_a_session_live_in_one_process_moves_to_another_that_is_asked_for_it(
    up: ScriptedUpstream, store_url: str, services: list[Service]
) -> None:
    """Issue 13 item 6: a request landing where the session is not live (stickiness lost,
    a header-only client) asks the holder for it; the holder snapshots it at its next lease
    renewal and lets go, and the request continues it there. Live in one place at a time."""
    first = Service(up, store_url, "rlm-test-durable-c")
    services.append(first)
    second = Service(up, store_url, "rlm-test-durable-d")
    services.append(second)
    sid = _turn_one(first, up)
    r = _turn_two(second, up, sid)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "durable|499500|42|stored|c0|c1|False"
    assert r.json()["rlm"]["restored"]["turns"] == 1
    assert "handing it over" in first.logs()
    assert "handed over to this process" in second.logs()
    assert first.get(f"/v1/sessions/{sid}").json()["sandbox"]["status"] == "hibernated"
    # And back: the first asks the second now.
    back = _turn_two(first, up, sid)
    assert back.status_code == 200, back.text
    assert back.json()["choices"][0]["message"]["content"].startswith("durable|499500|42|")
    assert back.json()["rlm"]["restored"]["turns"] == 2
    # Deleted through the process that does not hold it: it is asked for, then deleted.
    d = httpx.delete(
        second.url + f"/v1/sessions/{sid}", headers={"authorization": f"Bearer {KEY}"}, timeout=60
    )
    assert d.status_code == 200, d.text
    for svc in (first, second):
        gone = _turn_two(svc, up, sid)
        assert gone.status_code == 410 and "deleted" in gone.json()["error"]["message"]


def _one_block(svc: Service, up: ScriptedUpstream, code: str, sid: str | None = None) -> str:
    up.policy = Router([repl(code + "\nanswer['content'] = 'ok'\nanswer['ready'] = True")])
    r = svc.post({"model": "rlm", "messages": [{"role": "user", "content": "go"}]}, session=sid)
    assert r.status_code == 200, r.text
    return str(r.json()["rlm"]["session_id"])


def test_an_idle_session_whose_code_keeps_running_is_hibernated_at_once(
    up: ScriptedUpstream, store_url: str, services: list[Service]
) -> None:
    """Issue 12: CPU left burning after a block. The worker keeps threads from running
    between blocks, but code in the REPL can undo that; the host's own accounting of the
    container's CPU cannot be: an idle session that burns CPU is hibernated (the burn stops
    with its sandbox, its variables stay), long before its idle time is up."""
    svc = Service(up, store_url, "rlm-test-durable-burn", RLM_SESSION_IDLE_S="24")  # reaper: 6 s
    services.append(svc)
    burner = _one_block(
        svc,
        up,
        "llm_query.__self__.libc = None  # undo the worker's GIL hold\n"
        "import threading\n"
        "def spin():\n    while True:\n        pass\n"
        "threading.Thread(target=spin, daemon=True).start()\n"
        "kept = 41",
    )
    quiet = _one_block(svc, up, "kept = 1")
    started = time.monotonic()
    while svc.get(f"/v1/sessions/{burner}").json()["sandbox"]["status"] != "hibernated":
        assert time.monotonic() - started < 20, "the burning session was not stopped"
        time.sleep(0.5)
    # The honest session idles on: its idle time (24 s) is not up.
    assert svc.get(f"/v1/sessions/{quiet}").json()["sandbox"]["status"] != "hibernated"
    assert "kept running between requests" in svc.logs()
    metrics = httpx.get(svc.url + "/metrics", timeout=10).text
    assert 'rlm_sandbox_faults_total{kind="idle_cpu"} 1.0' in metrics
    # Its variables were kept: the next turn restores them (the thread is gone).
    up.policy = Router(
        [
            repl(
                "import threading\n"
                "answer['content'] = f'{kept + 1}|{threading.active_count()}'\n"
                "answer['ready'] = True"
            )
        ]
    )
    r = svc.post({"model": "rlm", "messages": [{"role": "user", "content": "again"}]}, burner)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "42|1"
