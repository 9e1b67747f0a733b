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
