"""The Responses API (``/v1/responses``) on loopback, driven by the real openai client and
httpx against the scripted upstream: plain, chained by ``previous_response_id``, streamed,
in the background (poll, cancel, resume), per key, expiring, malformed, drained. Local
sandboxes, except one end-to-end run on docker/runsc."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from loadtest.upstream import Reply, ScriptedUpstream
from service.app import begin_drain
from tests.service.conftest import Router, ServiceServer, haystack, service_env

KEY = "key-alpha"
OTHER_KEY = "key-beta"


def repl(code: str) -> str:
    return f"Working.\n```repl\n{code}\n```"


def answer(text: str) -> str:
    return repl(f"answer['content'] = {text}\nanswer['ready'] = True")


def _env(up: ScriptedUpstream, instance: str, **extra: Any) -> dict[str, Any]:
    env = service_env(up, rlm_sandbox="local", rlm_sandbox_pool_size=0, rlm_instance=instance)
    env["rlm_exec_timeout_s"] = 60  # long blocks run until cancelled, not cut by the soft limit
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def server(upstream: ScriptedUpstream) -> Iterator[ServiceServer]:
    with ServiceServer(**_env(upstream, "rlm-test-responses")) as srv:
        yield srv


@pytest.fixture
def client(server: ServiceServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture
def other(server: ServiceServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=OTHER_KEY, max_retries=0)


@pytest.fixture
def http(server: ServiceServer) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"authorization": f"Bearer {KEY}"}, timeout=60
    ) as c:
        yield c


def wait_status(
    client: openai.OpenAI, rid: str, statuses: set[str], timeout: float = 30
) -> openai.types.responses.Response:
    deadline = time.monotonic() + timeout
    while True:
        resp = client.responses.retrieve(rid)
        if resp.status in statuses:
            return resp
        assert time.monotonic() < deadline, f"{rid} stayed {resp.status}"
        time.sleep(0.05)


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of a Server-Sent Events body, checking each ``event:`` name."""
    name = None
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            event = json.loads(line.removeprefix("data: "))
            assert event["type"] == name
            yield event


# ---- plain --------------------------------------------------------------------------------


def test_plain_response_through_the_sdk(client: openai.OpenAI, up: ScriptedUpstream) -> None:
    magic = random.randint(10**5, 10**6)
    raw = client.responses.with_raw_response.create(
        model="rlm",
        input="What is the magic number in the context?",
        instructions="Answer with the number only.",
        metadata={"ticket": "T-1"},
        extra_body={"rlm": {"context": haystack(magic=magic)}},
    )
    resp = raw.parse()
    assert resp.output_text == str(magic)
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.error is None and resp.incomplete_details is None
    assert resp.model == "rlm" and resp.created_at > 0 and resp.background is False
    assert resp.instructions == "Answer with the number only." and resp.metadata == {
        "ticket": "T-1"
    }
    (message,) = resp.output  # no progress item on a plain response
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.content[0].type == "output_text"
    assert resp.usage is not None
    assert resp.usage.input_tokens == up.stats.prompt_tokens
    assert resp.usage.output_tokens == up.stats.completion_tokens
    assert resp.usage.total_tokens == resp.usage.input_tokens + resp.usage.output_tokens
    rlm = resp.model_extra["rlm"]
    assert rlm["iterations"] == 2 and rlm["session_created"] is True
    assert raw.headers["x-rlm-session-id"] == rlm["session_id"]
    # Stored: retrieve gives the same object.
    again = client.responses.retrieve(resp.id)
    assert again.output_text == str(magic) and again.model_extra["rlm"] == rlm


def test_previous_response_id_continues_the_session(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [repl("x = 41\nprint('set')"), "FINAL(set)", answer("str(x + 1) + '|' + history_0")]
    )
    first = client.responses.create(model="rlm", input="remember x")
    assert first.output_text == "set"
    second = client.responses.create(
        model="rlm", input="what is x + 1?", previous_response_id=first.id
    )
    assert second.output_text == "42|set"  # the variable and the last turn's answer
    assert second.previous_response_id == first.id
    r1, r2 = first.model_extra["rlm"], second.model_extra["rlm"]
    assert r2["session_id"] == r1["session_id"] and (r1["turn"], r2["turn"]) == (0, 1)
    assert r2["session_created"] is False


def test_a_response_that_is_not_stored_is_neither_kept_nor_chained(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router(["FINAL(volatile)"])
    resp = client.responses.create(model="rlm", input="q", store=False)
    assert resp.output_text == "volatile"
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError, match="previous response"):
        client.responses.create(model="rlm", input="q", previous_response_id=resp.id)


# ---- streaming ----------------------------------------------------------------------------

MESSAGE_TAIL = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def _collapse(types: list[str]) -> list[str]:
    """Event types with runs of one kind (deltas) collapsed to one."""
    return [t for i, t in enumerate(types) if i == 0 or t != types[i - 1]]


def test_streaming_event_order_sequence_numbers_and_progress(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            "Let me look.\n```repl\nparts = llm_query_batched(['a', 'b'])\nprint(len(context), parts[0])\n```",
            answer("'the answer'"),
        ]
    )
    events = list(
        client.responses.create(
            model="rlm",
            input="q",
            stream=True,
            extra_body={"rlm": {"context": "SECRET-CONTEXT " * 1000}},
        )
    )
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert _collapse(types) == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",  # the reasoning item: progress
        "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done",
        "response.reasoning_summary_part.done",
        "response.output_item.done",
        *MESSAGE_TAIL,
    ]
    assert events[0].response.status == "in_progress" and events[0].response.output == []
    thinking = "".join(e.delta for e in events if e.type == "response.reasoning_summary_text.delta")
    assert "### Iteration 1\nLet me look." in thinking and "### Iteration 2" in thinking
    assert (
        "llm_query_batched(['a', 'b'])" in thinking and "Sub-calls: 2 (gpt-5-mini x2)" in thinking
    )
    assert "SECRET-CONTEXT" not in thinking  # never the context
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == "the answer"
    final = events[-1].response
    assert final.status == "completed" and final.output_text == "the answer"
    assert [item.type for item in final.output] == ["reasoning", "message"]
    assert final.output[0].summary[0].text == thinking
    assert final.usage is not None and final.usage.total_tokens > 0
    # The SDK's stream helper accepts the same stream (it checks items and order).
    up.policy = Router([answer("'helped'")])
    with client.responses.stream(model="rlm", input="q") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        done = stream.get_final_response()
    assert "".join(deltas) == "helped" and done.output_text == "helped"
    # Progress is off on request: no reasoning item at all.
    up.policy = Router(["FINAL(quiet)"])
    quiet = list(
        client.responses.create(
            model="rlm", input="q", stream=True, extra_body={"rlm": {"stream_progress": False}}
        )
    )
    assert _collapse([e.type for e in quiet]) == [
        "response.created",
        "response.in_progress",
        *MESSAGE_TAIL,
    ]


def test_a_failed_stream_ends_with_response_failed(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router([Reply(status=400, text="upstream refuses")])
    events = list(client.responses.create(model="rlm", input="q", stream=True))
    assert events[-1].type == "response.failed"
    failed = events[-1].response
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code == "server_error" and "upstream" in failed.error.message.lower()
    # The same failure without a stream is an HTTP error in OpenAI's shape.
    up.policy = Router([Reply(status=400, text="upstream refuses")])
    with pytest.raises(openai.APIStatusError) as err:
        client.responses.create(model="rlm", input="q")
    assert err.value.status_code == 502 and err.value.response.headers["x-should-retry"] == "false"


# ---- background -------------------------------------------------------------------------


def test_background_returns_at_once_and_is_polled_to_completion(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            Reply(text=repl("print('looked')"), delay_s=1.0),
            Reply(text=answer("'late answer'"), delay_s=0.5),
        ]
    )
    t0 = time.perf_counter()
    created = client.responses.create(model="rlm", input="q", background=True)
    assert time.perf_counter() - t0 < 0.9  # before the first model call returned
    assert created.status in ("queued", "in_progress") and created.background is True
    assert created.output == [] and created.usage is None
    seen = {created.status}
    deadline = time.monotonic() + 30
    while True:
        polled = client.responses.retrieve(created.id)
        seen.add(polled.status)
        if polled.status == "completed":
            break
        assert polled.status in ("queued", "in_progress")
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert "in_progress" in seen
    assert polled.output_text == "late answer" and polled.completed_at is not None
    assert (
        polled.output[0].type == "reasoning"
        and "print('looked')" in polled.output[0].summary[0].text
    )
    assert polled.usage is not None and polled.usage.input_tokens == up.stats.prompt_tokens


def test_cancel_stops_a_long_background_run(
    client: openai.OpenAI, http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router([repl("import time\ntime.sleep(60)"), answer("'alive'"), "FINAL(done)"])
    created = client.responses.create(model="rlm", input="q", background=True)
    wait_status(client, created.id, {"in_progress"})
    while up.stats.calls < 1:
        time.sleep(0.05)
    time.sleep(0.5)  # the sleeping block is running in the sandbox now
    t0 = time.perf_counter()
    cancelled = client.responses.cancel(created.id)
    assert cancelled.status == "cancelled" and time.perf_counter() - t0 < 8
    assert client.responses.retrieve(created.id).status == "cancelled"
    assert client.responses.cancel(created.id).status == "cancelled"  # idempotent
    # Its stream ends with an event the SDK passes through untyped (its union has none).
    replay = list(client.responses.retrieve(created.id, stream=True))
    assert replay[0].type == "response.created" and replay[-1].type == "response.cancelled"
    assert replay[-1].response["status"] == "cancelled"
    # The block was interrupted, not waited out: the session's next turn runs at once.
    t0 = time.perf_counter()
    after = client.responses.create(model="rlm", input="q", previous_response_id=created.id)
    assert after.output_text == "alive" and time.perf_counter() - t0 < 10
    sid = after.model_extra["rlm"]["session_id"]
    runs = http.get(f"/v1/sessions/{sid}").json()["runs"]
    assert [x["status"] for x in runs] == ["cancelled", "done"]
    # A finished background response cannot be cancelled.
    finished = client.responses.create(model="rlm", input="q", background=True)
    wait_status(client, finished.id, {"completed"})
    with pytest.raises(openai.BadRequestError, match="already ended"):
        client.responses.cancel(finished.id)


def test_a_background_stream_resumes_after_a_dropped_connection(
    client: openai.OpenAI, http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            repl("print('step one')"),
            Reply(text=answer("'resumed ' * 3"), delay_s=1.5),
        ]
    )
    body = {"model": "rlm", "input": "q", "background": True, "stream": True}
    before: list[dict[str, Any]] = []
    with http.stream("POST", "/v1/responses", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for event in sse_events(r.iter_lines()):
            before.append(event)
            if event["type"] == "response.reasoning_summary_text.delta":
                break  # the connection drops here, mid-run
    rid = before[0]["response"]["id"]
    assert before[0]["type"] == "response.created" and before[0]["response"]["status"] == "queued"
    last = before[-1]["sequence_number"]
    assert [e["sequence_number"] for e in before] == list(range(last + 1))
    # The run goes on without its client; the SDK resumes after the last event it saw.
    rest = list(client.responses.retrieve(rid, stream=True, starting_after=last))
    assert [e.sequence_number for e in rest] == list(range(last + 1, last + 1 + len(rest)))
    assert rest[-1].type == "response.completed"
    assert rest[-1].response.output_text == "resumed resumed resumed "
    # From the start, or from any point, the same log: the SDK's helper replays it too.
    with client.responses.stream(response_id=rid, starting_after=2) as stream:
        replayed = list(stream)
        final = stream.get_final_response()
    assert replayed[0].sequence_number == 3 and final.output_text == "resumed resumed resumed "
    with http.stream("GET", f"/v1/responses/{rid}", params={"stream": "true"}) as r:
        full = list(sse_events(r.iter_lines()))
    assert full[: len(before)] == before and full[-1]["sequence_number"] == rest[-1].sequence_number
    # After the end: nothing more to send.
    with http.stream(
        "GET", f"/v1/responses/{rid}", params={"stream": "true", "starting_after": 10_000}
    ) as r:
        assert list(sse_events(r.iter_lines())) == []


def test_a_foreground_stream_whose_client_leaves_is_cancelled(
    client: openai.OpenAI, http: httpx.Client, up: ScriptedUpstream
) -> None:
    up.policy = Router([repl("import time\ntime.sleep(60)"), "FINAL(never)"])
    body = {"model": "rlm", "input": "q", "stream": True}
    with http.stream("POST", "/v1/responses", json=body) as r:
        events = sse_events(r.iter_lines())
        rid = next(events)["response"]["id"]
        for event in events:
            if event["type"] == "response.reasoning_summary_text.delta":
                break  # the sleeping block is about to run; the client leaves
    t0 = time.perf_counter()
    gone = wait_status(client, rid, {"cancelled", "completed", "failed"}, timeout=15)
    assert gone.status == "cancelled" and time.perf_counter() - t0 < 10
    assert up.stats.calls == 1  # no second iteration ran
    with pytest.raises(openai.BadRequestError, match="only background"):
        client.responses.retrieve(rid, stream=True)  # a foreground stream is not kept


# ---- keys, expiry, limits, malformed input ------------------------------------------------


def test_responses_belong_to_their_key(
    client: openai.OpenAI, other: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = Router(["FINAL(mine)"])
    resp = client.responses.create(model="rlm", input="q")
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.cancel(resp.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.create(model="rlm", input="q", previous_response_id=resp.id)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url=str(client.base_url), api_key="wrong", max_retries=0
        ).responses.retrieve(resp.id)
    assert client.responses.retrieve(resp.id).output_text == "mine"


@pytest.mark.parametrize(
    ("body", "param", "fragment"),
    [
        ({"model": "rlm"}, "input", "Field required"),
        ({"model": "rlm", "input": "   "}, "input", "empty"),
        ({"model": "rlm", "input": []}, "input", "user message"),
        ({"model": "rlm", "input": [{"role": "assistant", "content": "hi"}]}, "input", "user message"),
        ({"model": "rlm", "input": [{"role": "robot", "content": "q"}]}, "input.0.role", "Input should be"),
        ({"model": "rlm", "input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]}, "input.0.type", "message"),
        ({"model": "rlm", "input": 42}, "input", "valid"),
        ({"model": "rlm", "input": "q", "tools": [{"type": "web_search"}]}, "tools", "tools"),
        ({"model": "rlm", "input": "q", "background": True, "store": False}, "background", "stored"),
        ({"model": "rlm", "input": "q", "metadata": {f"k{i}": "v" for i in range(17)}}, "metadata", "16"),
        ({"model": "rlm", "input": "q", "rlm": {"contxt": "typo"}}, "rlm.contxt", "Extra inputs"),
        ({"model": "rlm", "input": "q", "rlm": {"max_iterations": 0}}, "rlm.max_iterations", "greater"),
        ({"model": "", "input": "q"}, "model", "at least 1"),
    ],
)  # fmt: skip
def test_malformed_requests_are_400_in_openai_shape(
    http: httpx.Client, body: dict[str, Any], param: str, fragment: str
) -> None:
    r = http.post("/v1/responses", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param
    assert fragment in err["message"]


def test_other_bad_requests(
    http: httpx.Client, client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    for raw, fragment in [
        (b"", "empty"),
        (b"{not json", "malformed JSON"),
        (b"[1]", "JSON object"),
    ]:
        r = http.post("/v1/responses", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 400 and fragment in r.json()["error"]["message"]
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.responses.create(model="gpt-unknown", input="q")
    with pytest.raises(openai.NotFoundError, match="previous response"):
        client.responses.create(model="rlm", input="q", previous_response_id="resp_nope")
    assert http.get("/v1/responses/resp_nope").status_code == 404
    up.policy = Router(["FINAL(plain)"])
    plain = client.responses.create(model="rlm", input="q")
    r = http.get(f"/v1/responses/{plain.id}", params={"stream": "true"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stream"
    r = http.get(f"/v1/responses/{plain.id}", params={"stream": "true", "starting_after": -5})
    assert r.status_code == 400
    with pytest.raises(openai.BadRequestError, match="only background"):
        client.responses.cancel(plain.id)
    # A session named by header and another by previous_response_id: which one? 400.
    r = http.post(
        "/v1/responses",
        json={"model": "rlm", "input": "q", "previous_response_id": plain.id},
        headers={"x-rlm-session-id": "some-other-session"},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"


@pytest.fixture
def small(up: ScriptedUpstream) -> Iterator[ServiceServer]:
    """A service whose finished responses live 1.5 s, one request running per key."""
    env = _env(
        up,
        "rlm-test-responses-small",
        rlm_response_ttl_s=1.5,
        rlm_max_running_per_key=1,
        rlm_max_queued=2,  # one waiting per key
        rlm_shutdown_grace_s=0.5,
    )
    with ServiceServer(**env) as srv:
        yield srv


def test_a_finished_response_expires_after_its_ttl(
    small: ServiceServer, up: ScriptedUpstream
) -> None:
    client = openai.OpenAI(base_url=small.url + "/v1", api_key=KEY, max_retries=0)
    up.policy = Router(["FINAL(brief)"])
    resp = client.responses.create(model="rlm", input="q", background=True)
    done = wait_status(client, resp.id, {"completed"})
    assert done.output_text == "brief"
    time.sleep(1.7)
    with pytest.raises(openai.NotFoundError, match="RLM_RESPONSE_TTL_S"):
        client.responses.retrieve(resp.id)
    # Its session is kept as long as sessions are: the chain goes on.
    up.policy = Router(["FINAL(chained)"])
    more = client.responses.create(model="rlm", input="q", previous_response_id=resp.id)
    assert more.model_extra["rlm"]["session_id"] == done.model_extra["rlm"]["session_id"]


def test_a_key_with_too_many_background_runs_gets_429(
    small: ServiceServer, up: ScriptedUpstream
) -> None:
    client = openai.OpenAI(base_url=small.url + "/v1", api_key=KEY, max_retries=0)
    other = openai.OpenAI(base_url=small.url + "/v1", api_key=OTHER_KEY, max_retries=0)
    up.policy = lambda body: Reply(text="FINAL(slow)", delay_s=30)
    first = client.responses.create(model="rlm", input="q", background=True)
    second = client.responses.create(model="rlm", input="q", background=True)
    wait_status(client, first.id, {"in_progress"})
    with pytest.raises(openai.RateLimitError) as err:
        client.responses.create(model="rlm", input="q", background=True)
    assert int(err.value.response.headers["retry-after"]) > 0
    assert client.responses.retrieve(second.id).status == "queued"  # waiting for its slot
    theirs = other.responses.create(model="rlm", input="q", background=True)  # not starved
    for c, r in ((client, first), (client, second), (other, theirs)):
        assert c.responses.cancel(r.id).status == "cancelled"


def test_kept_responses_are_capped_oldest_finished_first(up: ScriptedUpstream) -> None:
    env = _env(up, "rlm-test-responses-capped", rlm_max_responses=3, rlm_max_responses_per_key=2)
    up.policy = lambda body: (
        Reply(text="FINAL(slow)", delay_s=30)
        if "slow-query" in json.dumps(body)
        else "FINAL(quick)"
    )
    with ServiceServer(**env) as srv:
        a = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        b = openai.OpenAI(base_url=srv.url + "/v1", api_key=OTHER_KEY, max_retries=0)
        r1, r2, r3 = (a.responses.create(model="rlm", input="q") for _ in range(3))
        with pytest.raises(openai.NotFoundError):  # the key's share is 2: its oldest went
            a.responses.retrieve(r1.id)
        assert a.responses.retrieve(r2.id).output_text == "quick"
        b1 = b.responses.create(model="rlm", input="slow-query", background=True)
        b2 = b.responses.create(model="rlm", input="slow-query", background=True)
        with pytest.raises(openai.NotFoundError):  # the host's cap is 3: the oldest finished
            a.responses.retrieve(r2.id)
        assert a.responses.retrieve(r3.id).output_text == "quick"
        with pytest.raises(openai.RateLimitError, match="still running") as err:
            b.responses.create(model="rlm", input="slow-query", background=True)
        assert err.value.response.headers["retry-after"]
        for r in (b1, b2):
            assert b.responses.cancel(r.id).status == "cancelled"


def test_the_drain_fails_background_runs_with_a_clear_error(
    small: ServiceServer, up: ScriptedUpstream
) -> None:
    client = openai.OpenAI(base_url=small.url + "/v1", api_key=KEY, max_retries=0)
    up.policy = Router([repl("import time\ntime.sleep(60)"), "FINAL(never)"])
    resp = client.responses.create(model="rlm", input="q", background=True)
    wait_status(client, resp.id, {"in_progress"})
    begin_drain(small.app)  # what SIGTERM does; RLM_SHUTDOWN_GRACE_S is 0.5 here
    with pytest.raises(openai.InternalServerError, match="shutting down"):
        client.responses.create(model="rlm", input="q", background=True)
    failed = wait_status(client, resp.id, {"failed", "completed", "cancelled"}, timeout=15)
    assert failed.status == "failed" and failed.error is not None
    assert "shut down" in failed.error.message and "RLM_SHUTDOWN_GRACE_S" in failed.error.message


# ---- end to end on docker/runsc ---------------------------------------------------------


def test_background_and_chained_turns_on_runsc(up: ScriptedUpstream, docker_ready: None) -> None:
    env = service_env(
        up,
        rlm_sandbox="docker",
        rlm_sandbox_pool_size=1,
        rlm_sandbox_memory_mb=256,
        rlm_instance="rlm-test-responses-runsc",
    )
    with ServiceServer(**env) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key=KEY, max_retries=0)
        magic = random.randint(10**5, 10**6)
        created = client.responses.create(
            model="rlm",
            input="What is the magic number in the context?",
            background=True,
            extra_body={"rlm": {"context": haystack(magic=magic)}},
        )
        done = wait_status(client, created.id, {"completed", "failed"}, timeout=120)
        assert done.status == "completed" and done.output_text == str(magic)
        up.policy = Router([answer("str(len(context_0)) + '|' + history_0")])
        chained = client.responses.create(
            model="rlm", input="how long was the first context?", previous_response_id=done.id
        )
        assert chained.output_text == f"{len(haystack(magic=magic))}|{magic}"
