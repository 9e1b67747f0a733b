"""The HTTP service on loopback, driven by the real openai client and httpx, with real runsc
sandboxes behind it."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from loadtest.upstream import Reply, ScriptedUpstream
from tests.service.conftest import Router, ServiceServer, haystack, service_env

KEY = "key-alpha"
OTHER_KEY = "key-beta"


@pytest.fixture(scope="module")
def server(upstream: ScriptedUpstream, docker_ready: None) -> Iterator[ServiceServer]:
    env = service_env(
        upstream,
        rlm_sandbox="docker",
        rlm_sandbox_pool_size=2,
        rlm_sandbox_memory_mb=256,
        rlm_instance="rlm-test-api",
        rlm_max_running=4,
        rlm_max_queued=2,
        rlm_session_queue=2,
        rlm_max_body_bytes=8 * 1024 * 1024,
    )
    with ServiceServer(**env) as srv:
        yield srv


@pytest.fixture
def client(server: ServiceServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def http(server: ServiceServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {KEY}"}, timeout=60
    ) as c:
        yield c


def repl(code: str) -> str:
    return f"```repl\n{code}\n```"


def test_seed_load_test_request_is_answered(client: openai.OpenAI, up: ScriptedUpstream) -> None:
    magic = random.randint(10**5, 10**6)
    resp = client.chat.completions.with_raw_response.create(
        model="rlm",
        messages=[{"role": "user", "content": "What is the magic number in the context?"}],
        extra_body={"rlm": {"context": haystack(magic=magic), "reset": True}},
    )
    completion = resp.parse()
    assert completion.choices[0].message.content == str(magic)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == up.stats.prompt_tokens
    assert completion.usage.completion_tokens == up.stats.completion_tokens
    rlm = completion.model_extra["rlm"]
    assert rlm["iterations"] == 2 and rlm["session_id"] and rlm["trajectory_id"]
    assert resp.headers["x-rlm-session-id"] == rlm["session_id"]
    assert "rlm_session=" in resp.headers["set-cookie"] and "HttpOnly" in resp.headers["set-cookie"]
    assert "samesite=lax" in resp.headers["set-cookie"].lower()
    assert resp.headers["x-request-id"]


def test_streaming_through_the_sdk_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "magic number?"}],
        extra_body={"rlm": {"context": haystack(magic=5555)}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "5555"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert (
        chunks[-1].choices == []
        and chunks[-1].usage is not None
        and chunks[-1].usage.total_tokens > 0
    )


def _reasoning(chunks: list[Any]) -> str:
    return "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
        for c in chunks
        if c.choices
    )


def test_streaming_shows_the_work_as_reasoning_content(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            "Let me look.\n```repl\nparts = llm_query_batched(['a', 'b', 'c'])\nprint(len(context), parts[0])\n```",
            "Found it.\n```repl\nanswer['content'] = 'the answer'\nanswer['ready'] = True\n```",
        ]
    )
    stream = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "q"}],
        extra_body={"rlm": {"context": "SECRET-CONTEXT " * 1000}},
        stream=True,
    )
    chunks = list(stream)
    thinking = _reasoning(chunks)
    assert "### Iteration 1\nLet me look." in thinking and "### Iteration 2" in thinking
    assert "llm_query_batched(['a', 'b', 'c'])" in thinking  # the code block
    assert "Output (" in thinking and "15000 sub:a" in thinking  # a head of its output
    assert "Sub-calls: 3 (gpt-5-mini x3)" in thinking
    assert thinking.count("SECRET-CONTEXT") == 0  # never the context
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "the answer"
    # Progress comes before the answer, and it is off on request.
    first_content = next(
        i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content
    )
    assert all(
        not (c.choices and (c.choices[0].delta.model_extra or {}).get("reasoning_content"))
        for c in chunks[first_content:]
    )
    up.policy = Router(["FINAL(quiet)"])
    quiet = list(
        client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"rlm": {"stream_progress": False}},
            stream=True,
        )
    )
    assert _reasoning(quiet) == ""
    assert "".join(c.choices[0].delta.content or "" for c in quiet if c.choices) == "quiet"


def test_second_turn_sees_first_turns_variables(http: httpx.Client, up: ScriptedUpstream) -> None:
    up.policy = Router([
        repl("kept = 'from turn one'\nstate_set('counter', 1)\nanswer['content'] = 'stored'\nanswer['ready'] = True"),
        repl("answer['content'] = f\"{kept}|{state_get('counter')}|{history_0}|{context_0}|{context}\"\nanswer['ready'] = True"),
    ])  # fmt: skip
    body = {
        "model": "rlm",
        "messages": [{"role": "user", "content": "remember"}],
        "rlm": {"context": "c0"},
    }
    first = http.post("/v1/chat/completions", json=body)
    assert first.status_code == 200, first.text
    sid = first.headers["x-rlm-session-id"]
    assert first.json()["rlm"]["session_created"] is True
    # The cookie alone selects nothing (RLM_COOKIE_SESSIONS is off): a new session.
    body["rlm"] = {"context": "c1"}
    http.cookies.clear()
    http.cookies.set("rlm_session", sid)
    up.policy = Router(
        [repl("answer['content'] = str('kept' in globals())\nanswer['ready'] = True")]
    )
    other = http.post("/v1/chat/completions", json=body)
    assert other.status_code == 200 and other.json()["rlm"]["session_id"] != sid
    assert other.json()["choices"][0]["message"]["content"] == "False"
    assert other.json()["rlm"]["session_created"] is True
    http.cookies.clear()
    # Turn two names its session in the body (the SDK's extra_body).
    up.policy = Router([
        repl("answer['content'] = f\"{kept}|{state_get('counter')}|{history_0}|{context_0}|{context}\"\nanswer['ready'] = True"),
    ])  # fmt: skip
    body["rlm"] = {"context": "c1", "session_id": sid}
    second = http.post("/v1/chat/completions", json=body)
    assert second.status_code == 200, second.text
    assert second.json()["choices"][0]["message"]["content"] == "from turn one|1|stored|c0|c1"
    assert second.json()["rlm"]["turn"] == 1 and second.json()["rlm"]["session_created"] is False

    view = http.get(f"/v1/sessions/{sid}").json()
    assert view["turns"] == 2 and view["sandbox"]["status"] == "ready"
    assert (
        view["sandbox"]["name"] == f"rlm-rlm-test-api-{sid}"
    )  # the container bears its session's name
    names = {v["name"]: v["repr"] for v in view["variables"]}
    assert names["kept"] == "'from turn one'" and "context_1" in names
    assert view["state"] == [{"name": "counter", "type": "int", "repr": "1"}]

    # Reset by header: same session id, fresh variables.
    up.policy = Router(
        [repl("answer['content'] = str('kept' in globals())\nanswer['ready'] = True")]
    )
    third = http.post(
        "/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid, "x-rlm-reset": "true"}
    )
    assert third.json()["choices"][0]["message"]["content"] == "False"
    assert third.json()["rlm"]["turn"] == 0


def test_a_session_belongs_to_its_key(http: httpx.Client, server: ServiceServer) -> None:
    body = {
        "model": "rlm",
        "messages": [{"role": "user", "content": "magic?"}],
        "rlm": {"context": haystack(50, 7, 3)},
    }
    sid = http.post("/v1/chat/completions", json=body).headers["x-rlm-session-id"]
    other = {"authorization": f"Bearer {OTHER_KEY}", "x-rlm-session-id": sid}
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get(f"/v1/sessions/{sid}", headers=other).status_code == 404
        assert c.delete(f"/v1/sessions/{sid}", headers=other).status_code == 404
        assert (
            c.get(f"/v1/sessions/{sid}", headers={"authorization": "Bearer wrong"}).status_code
            == 401
        )
        # Ids are per key: the other key naming it gets a session of its own, never this one.
        theirs = c.post("/v1/chat/completions", json=body, headers=other)
        assert theirs.status_code == 200 and theirs.json()["rlm"]["session_created"] is True
        assert http.get(f"/v1/sessions/{sid}").json()["turns"] == 1
    assert http.delete(f"/v1/sessions/{sid}").json()["deleted"] is True
    gone = http.get(f"/v1/sessions/{sid}")
    assert gone.status_code == 410 and gone.json()["error"]["code"] == "session_lost"


def test_errors_are_openai_envelopes_with_the_right_status(
    http: httpx.Client, server: ServiceServer
) -> None:
    def post(content: bytes | str, **kw: Any) -> httpx.Response:
        return http.post(
            "/v1/chat/completions",
            content=content,
            headers={"content-type": "application/json"},
            **kw,
        )

    cases = {
        b"{not json": 400,
        b"": 400,
        b"[1, 2]": 400,
        json.dumps({"model": "rlm"}): 400,
        json.dumps({"model": "rlm", "messages": "hello"}): 400,
        json.dumps({"model": "rlm", "messages": [{"role": "user", "content": 5}]}): 400,
        json.dumps(
            {
                "model": "rlm",
                "messages": [{"role": "user", "content": "q"}],
                "rlm": {"max_depth": "deep"},
            }
        ): 400,
        json.dumps(
            {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "rlm": {"bogus": 1}}
        ): 400,
        json.dumps({"model": "rlm", "messages": [{"role": "system", "content": "no user"}]}): 400,
        json.dumps({"model": "gpt-nope", "messages": [{"role": "user", "content": "q"}]}): 404,
    }
    for body, status in cases.items():
        r = post(body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["message"]
        assert r.headers["x-request-id"]
    bad_sid = http.post("/v1/chat/completions", json={"model": "rlm", "messages": [{"role": "user", "content": "q"}]},
                        headers={"x-rlm-session-id": "../../etc"})  # fmt: skip
    assert bad_sid.status_code == 400
    too_big = post(b"x" * (8 * 1024 * 1024 + 1))
    assert too_big.status_code == 413 and too_big.json()["error"]["code"] == "request_too_large"
    assert httpx.post(server.url + "/v1/chat/completions", json={}).status_code == 401
    assert http.get("/v1/nothing").status_code == 404
    assert http.get("/v1/models").json()["data"][0]["id"] == "rlm"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(
            base_url=server.url + "/v1", api_key=KEY, max_retries=0
        ).chat.completions.create(model="nope", messages=[{"role": "user", "content": "q"}])


def test_overload_is_refused_at_once_with_retry_after(
    server: ServiceServer, up: ScriptedUpstream
) -> None:
    up.latency_s = 1.0  # every request holds its run slot for about two seconds
    body = {
        "model": "rlm",
        "messages": [{"role": "user", "content": "magic?"}],
        "rlm": {"context": "x"},
    }
    results: list[int] = []

    def fire(key: str) -> None:
        with httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {key}"}, timeout=60
        ) as c:
            results.append(c.post("/v1/chat/completions", json=body).status_code)

    # 4 running + 2 queued, from two keys (one key alone may hold only 3 running + 1 queued).
    threads = [threading.Thread(target=fire, args=(k,)) for k in [KEY, OTHER_KEY] * 3]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while (
        server.app.state.services.admission.running + server.app.state.services.admission.queued < 6
        and time.monotonic() < deadline
    ):
        time.sleep(0.02)
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {KEY}"}, timeout=60
    ) as c:
        t0 = time.perf_counter()
        refused = c.post("/v1/chat/completions", json=body)
        took = time.perf_counter() - t0
    for t in threads:
        t.join()
    assert refused.status_code == 429, refused.text
    assert refused.headers["retry-after"]
    assert took < 1.0  # refused at once, not after the queue drains
    assert results == [200] * 6


def test_per_session_queue_cap_and_fifo_order(server: ServiceServer, up: ScriptedUpstream) -> None:
    up.latency_s = 1.0
    up.policy = Router(
        lambda b: repl(
            "order = globals().get('order', []) + [context]\nanswer['content'] = ','.join(order)\nanswer['ready'] = True"
        )
    )
    sid = "fifo-session-1"
    outs: dict[str, Any] = {}

    def fire(tag: str) -> None:
        with httpx.Client(
            base_url=server.url,
            headers={"authorization": f"Bearer {KEY}", "x-rlm-session-id": sid},
            timeout=60,
        ) as c:
            r = c.post(
                "/v1/chat/completions",
                json={
                    "model": "rlm",
                    "messages": [{"role": "user", "content": "q"}],
                    "rlm": {"context": tag},
                },
            )
            outs[tag] = r

    def seen(busy: bool, queued: int) -> None:
        """Wait until the service shows the request just fired: the order is the arrival
        order, and a thread's request may reach the server late on a loaded machine."""
        deadline = time.monotonic() + 20
        with httpx.Client(
            base_url=server.url, headers={"authorization": f"Bearer {KEY}"}, timeout=20
        ) as c:
            while time.monotonic() < deadline:
                r = c.get(f"/v1/sessions/{sid}")
                if r.status_code == 200 and (r.json()["busy"], r.json()["queued"]) == (
                    busy,
                    queued,
                ):
                    return
                time.sleep(0.02)
        raise AssertionError(f"the session never showed busy={busy} queued={queued}")

    threads = []
    # One runs, two wait (the cap), the fourth is refused.
    for tag, queued in (("a", 0), ("b", 1), ("c", 2), ("d", None)):
        t = threading.Thread(target=fire, args=(tag,))
        t.start()
        threads.append(t)
        if queued is not None:
            seen(True, queued)
    for t in threads:
        t.join()
    assert (
        outs["d"].status_code == 429 and "RLM_SESSION_QUEUE" in outs["d"].json()["error"]["message"]
    )
    assert outs["c"].json()["choices"][0]["message"]["content"] == "a,b,c"


def test_sandbox_loss_is_reported_and_never_continued_from_an_empty_repl(
    http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            repl(
                "x = 1\nimport collections, itertools\ncollections.deque(itertools.count(), maxlen=0)"
            )
        ]
    )
    sid = "lost-session"
    body = {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "rlm": {"context": "c"}}
    r = http.post("/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid})
    assert r.status_code == 503, r.text
    assert (
        r.json()["error"]["code"] == "hard_timeout"
        and "hard deadline" in r.json()["error"]["message"]
    )
    assert r.headers["x-should-retry"] == "false" and r.headers["x-rlm-session-id"] == sid
    view = http.get(f"/v1/sessions/{sid}").json()
    assert view["sandbox"]["status"] == "lost" and "killed" in view["sandbox"]["lost_reason"]
    up.policy = Router([repl("answer['content'] = str('x' in globals())\nanswer['ready'] = True")])
    # The next turn is not served from an empty REPL as if nothing happened: 410 with why.
    gone = http.post("/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid})
    assert gone.status_code == 410, gone.text
    err = gone.json()["error"]
    assert err["code"] == "session_lost" and "hard deadline" in err["message"]
    assert "reset" in err["message"] and up.stats.calls == 1
    # A reset starts it over on purpose: a fresh REPL, turn 0.
    again = http.post(
        "/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid, "x-rlm-reset": "true"}
    )
    assert again.status_code == 200 and again.json()["choices"][0]["message"]["content"] == "False"
    assert again.json()["rlm"]["turn"] == 0


def test_client_disconnect_cancels_the_run_and_the_session_stays_usable(
    server: ServiceServer, http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            repl("import time\ntime.sleep(30)"),
            repl("answer['content'] = 'alive'\nanswer['ready'] = True"),
        ]
    )
    sid = "disconnect-session"
    body = {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "rlm": {"context": "c"}}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/chat/completions", json=body, timeout=1.5,
                   headers={"authorization": f"Bearer {KEY}", "x-rlm-session-id": sid})  # fmt: skip
    t0 = time.perf_counter()
    r = http.post("/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "alive"
    assert time.perf_counter() - t0 < 10  # the sleeping block was interrupted, not waited out
    runs = http.get(f"/v1/sessions/{sid}").json()["runs"]
    assert [x["status"] for x in runs] == ["cancelled", "done"]


def test_health_readiness_and_metrics(http: httpx.Client) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    text = http.get("/metrics").text
    for name in ("rlm_http_requests_total", "rlm_http_request_duration_seconds_bucket", "rlm_sessions_active",
                 'rlm_sandboxes{state="idle"}', "rlm_queue_depth", "rlm_tokens_total", "rlm_upstream_calls_total",
                 "rlm_sandbox_faults_total"):  # fmt: skip
        assert name in text, name
    assert 'route="/v1/chat/completions"' in text


def test_refuses_to_serve_off_loopback_without_keys() -> None:
    from pydantic import ValidationError

    from service.config import Settings

    with pytest.raises(ValidationError, match="without authentication"):
        Settings(_env_file=None, rlm_host="0.0.0.0", rlm_api_keys="")  # type: ignore[call-arg]
    assert (
        Settings(_env_file=None, rlm_host="0.0.0.0", rlm_allow_unauthenticated=True).rlm_host
        == "0.0.0.0"
    )  # type: ignore[call-arg]


async def test_async_client_concurrent_sessions(
    server: ServiceServer, up: ScriptedUpstream
) -> None:
    client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    magics = [random.randint(10**5, 10**6) for _ in range(4)]
    outs = await asyncio.gather(*(
        client.chat.completions.create(
            model="rlm", messages=[{"role": "user", "content": "magic?"}],
            extra_body={"rlm": {"context": haystack(magic=m), "reset": True}},
        ) for m in magics
    ))  # fmt: skip
    assert [o.choices[0].message.content for o in outs] == [str(m) for m in magics]
    await client.close()


def test_parallel_calls_through_one_sdk_client_get_parallel_sessions(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    # The first answer sets the rlm_session cookie, which the SDK's client keeps and sends
    # with every later call: it must not put them all in one session.
    first = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "magic?"}],
        extra_body={"rlm": {"context": haystack(magic=111111)}},
    )
    up.latency_s = 0.3
    magics = [random.randint(10**5, 10**6) for _ in range(4)]

    def ask(m: int) -> tuple[str | None, str]:
        r = client.chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "magic?"}],
            extra_body={"rlm": {"context": haystack(magic=m)}},
        )
        return r.choices[0].message.content, r.model_extra["rlm"]["session_id"]  # type: ignore[index]

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(ask, magics))
    assert [o[0] for o in outs] == [str(m) for m in magics]
    sids = {o[1] for o in outs} | {first.model_extra["rlm"]["session_id"]}  # type: ignore[index]
    assert len(sids) == 5


def test_upstream_failure_is_a_502(http: httpx.Client, up: ScriptedUpstream) -> None:
    up.policy = Router([Reply(status=401, text="bad upstream key")])
    r = http.post(
        "/v1/chat/completions",
        json={"model": "rlm", "messages": [{"role": "user", "content": "q"}]},
    )
    assert r.status_code == 502 and r.json()["error"]["type"] == "upstream_error"
    assert "sk-upstream-secret-value" not in r.text


def test_a_request_may_lower_the_depth_budget_but_not_raise_it(
    http: httpx.Client, up: ScriptedUpstream
) -> None:
    def root(body: dict[str, Any]) -> str:
        q = body["messages"][-1]["content"]
        if "Query: deeper" in q:
            return repl(
                "answer['content'] = rlm_query('deepest', context='z')\nanswer['ready'] = True"
            )
        return repl("answer['content'] = rlm_query('deeper', context='y')\nanswer['ready'] = True")

    up.policy = Router(root, sub=lambda b: "plain")
    body = {"model": "rlm", "messages": [{"role": "user", "content": "q"}],
            "rlm": {"context": "x", "max_depth": 5, "include_trajectory": True}}  # fmt: skip
    r = http.post("/v1/chat/completions", json=body).json()
    depths = [e["depth"] for e in r["rlm"]["trajectory"] if e["event"] == "run_start"]
    assert sorted(depths) == [0, 1]  # the server's RLM_MAX_DEPTH=1 holds
    assert any(
        e["event"] == "sub_call" and e["kind"] == "rlm_as_llm" for e in r["rlm"]["trajectory"]
    )
    body["rlm"]["max_depth"] = 0
    r = http.post("/v1/chat/completions", json=body).json()
    assert [e["depth"] for e in r["rlm"]["trajectory"] if e["event"] == "run_start"] == [0]


def test_streaming_client_that_disconnects_cancels_its_run(
    server: ServiceServer, http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            repl("import time\ntime.sleep(30)"),
            repl("answer['content'] = 'still here'\nanswer['ready'] = True"),
        ]
    )
    sid = "stream-disconnect"
    body = {
        "model": "rlm",
        "stream": True,
        "messages": [{"role": "user", "content": "q"}],
        "rlm": {"context": "c"},
    }
    headers = {"authorization": f"Bearer {KEY}", "x-rlm-session-id": sid}
    with httpx.stream(
        "POST", server.url + "/v1/chat/completions", json=body, headers=headers, timeout=30
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = r.iter_lines()  # kept: a dropped iterator closes the response (a disconnect)
        first = next(lines)
        assert (
            json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        )
        deadline = time.monotonic() + 20
        while up.stats.calls < 1:
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.05)
        time.sleep(0.5)  # the sleeping block is running now; hang up
    t0 = time.perf_counter()
    r2 = http.post(
        "/v1/chat/completions", json={**body, "stream": False}, headers={"x-rlm-session-id": sid}
    )
    assert r2.status_code == 200 and r2.json()["choices"][0]["message"]["content"] == "still here"
    assert time.perf_counter() - t0 < 10
    assert [x["status"] for x in http.get(f"/v1/sessions/{sid}").json()["runs"]] == [
        "cancelled",
        "done",
    ]


def test_a_100_mb_context_end_to_end(
    upstream: ScriptedUpstream, up: ScriptedUpstream, docker_ready: None
) -> None:
    lines = [f"filler line with some words {i}" for i in range(3_000_000)]
    lines[2_500_000] = "the magic number is 777"
    context = "\n".join(lines)
    assert len(context) > 100_000_000
    env = service_env(
        upstream, rlm_sandbox="docker", rlm_sandbox_pool_size=1, rlm_instance="rlm-test-big"
    )
    with ServiceServer(**env) as srv:  # the default RLM_MAX_BODY_BYTES takes it
        r = httpx.post(srv.url + "/v1/chat/completions", timeout=120, headers={"authorization": f"Bearer {KEY}"},
                       json={"model": "rlm", "messages": [{"role": "user", "content": "magic?"}], "rlm": {"context": context}})  # fmt: skip
    assert r.status_code == 200, r.text[:500]
    assert r.json()["choices"][0]["message"]["content"] == "777"


def test_last_turns_answer_does_not_end_the_next_turn(
    http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router([
        repl("answer['content'] = 'turn one'\nanswer['ready'] = True"),
        repl("x = 2"),  # turn two's first block sets no answer: the run must go on
        "FINAL(turn two)",
    ])  # fmt: skip
    body = {"model": "rlm", "messages": [{"role": "user", "content": "q"}], "rlm": {"context": "c"}}
    sid = "answer-per-turn"
    one = http.post("/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid}).json()
    two = http.post("/v1/chat/completions", json=body, headers={"x-rlm-session-id": sid}).json()
    assert one["choices"][0]["message"]["content"] == "turn one"
    assert two["choices"][0]["message"]["content"] == "turn two" and two["rlm"]["iterations"] == 2


def test_one_json_log_line_per_request_without_keys_or_contexts(
    http: httpx.Client, up: ScriptedUpstream, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from service.logs import JsonFormatter

    secret_context = "TOP-SECRET-CONTEXT-" + "x" * 5000
    with caplog.at_level(logging.INFO):
        r = http.post("/v1/chat/completions", headers={"x-request-id": "req-log-1"},
                      json={"model": "rlm", "messages": [{"role": "user", "content": "magic?"}],
                            "rlm": {"context": secret_context}})  # fmt: skip
    assert r.status_code == 200 and r.headers["x-request-id"] == "req-log-1"
    fmt = JsonFormatter()
    lines = [fmt.format(rec) for rec in caplog.records]
    mine = [json.loads(line) for line in lines if "req-log-1" in line]
    assert len(mine) == 1
    assert mine[0]["status"] == 200 and mine[0]["session_id"] and mine[0]["tokens"] > 0
    text = "\n".join(lines)
    assert (
        KEY not in text
        and "TOP-SECRET-CONTEXT" not in text
        and "sk-upstream-secret-value" not in text
    )
