"""The service with RLM_SANDBOX=runsc: the real openai client over loopback HTTP, sandboxes
run by runsc directly. A session keeps its variables across turns, a reset empties them,
readiness sees runsc, and a stopped service leaves no sandbox."""

from __future__ import annotations

import random
import subprocess

import openai

from loadtest.upstream import ScriptedUpstream, wait_until_up
from sandbox.runsc_backend import state_paths
from tests.service.conftest import Router, ServiceServer, haystack, service_env

KEY = "key-alpha"
INSTANCE = "rlm-test-runsc-svc"


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def runsc_sandboxes(server: ServiceServer) -> list[str]:
    root = state_paths(server.settings.sandbox_config())[0]
    out = subprocess.run(
        ["runsc", "--root", str(root), "list", "--quiet"], capture_output=True, text=True
    ).stdout.split()
    return [n for n in out if n.startswith(f"rlm-{INSTANCE}-")]


def answer(expr: str) -> str:
    return repl(f"answer['content'] = str({expr})\nanswer['ready'] = True")


def ask(client: openai.OpenAI, text: str, **rlm: object) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model="rlm", messages=[{"role": "user", "content": text}], extra_body={"rlm": rlm}
    )
    return raw.parse().choices[0].message.content or "", raw.headers["x-rlm-session-id"]


def test_turns_resets_and_shutdown_on_runsc(up: ScriptedUpstream, docker_ready: None) -> None:
    env = service_env(up, rlm_sandbox="runsc", rlm_sandbox_pool_size=1, rlm_instance=INSTANCE)
    env["rlm_sandbox_memory_mb"] = 256
    with ServiceServer(**env) as srv:
        wait_until_up(srv.url + "/readyz", timeout_s=60, name="the service on runsc")
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        magic = random.randint(10**5, 10**6)
        up.policy = Router([
            repl("hits = [l for l in context.splitlines() if 'magic' in l]\nkept = int(hits[0].split()[-1])"),
            answer("kept"),
            answer("kept + 1"),
            answer("'kept' in globals()"),
        ])  # fmt: skip
        content, session = ask(client, "What is the magic number?", context=haystack(magic=magic))
        assert content == str(magic)
        assert len(runsc_sandboxes(srv)) >= 1  # its sandbox (and the pool's)
        # The next turn sees the variables of the first; a reset then loses them.
        assert ask(client, "And one more?", session_id=session)[0] == str(magic + 1)
        assert ask(client, "Fresh start", session_id=session, reset=True)[0] == "False"
    assert runsc_sandboxes(srv) == []


def test_a_deleted_sessions_sandbox_serves_the_same_keys_next_session_reset(
    up: ScriptedUpstream, docker_ready: None
) -> None:
    """RLM_SANDBOX_KEEP: DELETE resets the sandbox and keeps it for the key's next new
    session (no start); another key's session never gets it."""
    import httpx

    env = service_env(
        up, rlm_sandbox="runsc", rlm_sandbox_pool_size=0, rlm_sandbox_keep=2,
        rlm_instance=INSTANCE, rlm_sandbox_memory_mb=256,
    )  # fmt: skip
    with ServiceServer(**env) as srv:
        wait_until_up(srv.url + "/readyz", timeout_s=60, name="the service on runsc")
        alpha = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        beta = openai.OpenAI(base_url=srv.url + "/v1", api_key="key-beta", max_retries=0)

        def sandbox_of(session: str, key: str) -> str:
            r = httpx.get(
                f"{srv.url}/v1/sessions/{session}", headers={"authorization": f"Bearer {key}"}
            )
            assert r.status_code == 200, r.text
            return str(r.json()["sandbox"]["name"])

        def metric(line: str) -> float:
            text = httpx.get(srv.url + "/metrics").text
            return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])

        up.policy = Router([
            answer("(globals().setdefault('secret', 'of alpha'), 'ok')[1]"),
            answer("'secret' in globals()"),
            answer("'secret' in globals()"),
        ])  # fmt: skip
        content, first = ask(alpha, "Remember a secret")
        assert content == "ok"
        box = sandbox_of(first, KEY)
        auth = {"authorization": f"Bearer {KEY}"}
        assert httpx.delete(f"{srv.url}/v1/sessions/{first}", headers=auth).status_code == 200
        assert metric('rlm_sandboxes{state="kept"}') == 1
        content, other = ask(beta, "Another tenant")
        assert content == "False" and sandbox_of(other, "key-beta") != box
        content, second = ask(alpha, "A new session of the same key")
        assert content == "False"  # a fresh interpreter in the same sandbox
        assert second != first and sandbox_of(second, KEY) == box
        assert metric("rlm_sandbox_reused_total") == 1
        assert metric('rlm_sandboxes{state="kept"}') == 0
    assert runsc_sandboxes(srv) == []
