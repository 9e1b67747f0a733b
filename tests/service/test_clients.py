"""What the clients people use *show* of the service: the openai SDK (chat completions and
the Responses API: plain, streamed, background), LiteLLM and LangChain's ``ChatOpenAI``, each
driving the real service over loopback HTTP against the scripted upstream (local sandboxes).

The calls are the README's "Clients" examples. ``test_api.py`` and ``test_responses.py``
check the wire protocol; here the question is what a user of each library gets to see: the
answer, the usage, the progress while the run works (and that it arrives *while* it works,
not with the answer), and the cost (``rlm.cost_usd`` priced at the shipped default prices,
``rlm.usage_by_model`` adding up to ``usage``). Where a library drops something (LangChain
drops ``reasoning_content`` and the ``rlm`` object), the test says so by asserting it.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Iterable, Iterator
from types import ModuleType
from typing import Any

import openai
import pytest

from loadtest.upstream import Reply, ScriptedUpstream
from service.rlm.pricing import DEFAULT_PRICES
from tests.service.conftest import Router, ServiceServer, haystack, service_env

# LiteLLM's own pydantic models warn about themselves on first use; not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Item '.*' on TypedDict class .*ReadOnly:UserWarning",
    "ignore:Accessing the 'model_.*' attribute on the instance is deprecated:DeprecationWarning",
)

KEY = "key-alpha"
QUESTION = "What is the magic number in the context?"
# The second root call of ``working`` waits this long upstream: progress of the first
# iteration must reach the client at least PROGRESS_LEAD_S before the answer does. (1.2 s
# left 0.4 s for delivery, and a loaded CI machine once took 0.7: progress at 0.94 s, the
# answer at 1.43 s.)
SLOW_CALL_S = 2.0
PROGRESS_LEAD_S = 0.8


@pytest.fixture(scope="module")
def server(upstream: ScriptedUpstream) -> Iterator[ServiceServer]:
    env = service_env(
        upstream, rlm_sandbox="local", rlm_sandbox_pool_size=1, rlm_instance="rlm-test-clients"
    )
    env["rlm_exec_timeout_s"] = 60  # the cancelled block sleeps until it is interrupted
    with ServiceServer(**env) as srv:
        yield srv


@pytest.fixture
def base_url(server: ServiceServer) -> str:
    return server.url + "/v1"


@pytest.fixture
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=KEY, max_retries=0)


@pytest.fixture(scope="module")
def litellm() -> Iterator[ModuleType]:
    """LiteLLM, imported offline: its bundled model price map instead of a download at
    import, nothing else fetched on its own (offline mode), its "provider list" hints
    silenced. (Its telemetry belongs to the LiteLLM proxy and is off without an operator's
    consent: the SDK sends none.)"""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        mp.setenv("LITELLM_OFFLINE_MODE", "true")
        module = importlib.import_module("litellm")
        module.suppress_debug_info = True
        yield module


@pytest.fixture(scope="module")
def chat_openai() -> Iterator[type]:
    """LangChain's ChatOpenAI, with LangSmith tracing off whatever the environment says."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LANGSMITH_TRACING", "false")
        mp.delenv("LANGCHAIN_TRACING_V2", raising=False)
        yield importlib.import_module("langchain_openai").ChatOpenAI


# ---- scripted runs and what every client must show of them ---------------------------------

WORK_CODE = (
    "parts = llm_query_batched(['a', 'b'])\nprint('lines', len(context.splitlines()), parts[0])"
)


def working(answer: str = "the answer") -> Router:
    """Two root iterations: a block with two sub-calls, then (after SLOW_CALL_S upstream)
    the answer. Iteration 1's progress exists a whole slow call before the answer."""
    return Router(
        [
            f"Let me look.\n```repl\n{WORK_CODE}\n```",
            Reply(
                text=f"Found it.\n```repl\nanswer['content'] = {answer!r}\nanswer['ready'] = True\n```",
                delay_s=SLOW_CALL_S,
            ),
        ]
    )


def assert_shows_work(thinking: str) -> None:
    """The progress text of ``working``: iteration headers, the model's text, the code, a
    head of its output and the sub-calls."""
    assert "### Iteration 1\nLet me look." in thinking and "### Iteration 2\nFound it." in thinking
    assert "llm_query_batched(['a', 'b'])" in thinking and "Output (" in thinking
    assert "Sub-calls: 2 (gpt-5-mini x2)" in thinking


def assert_priced(rlm: dict[str, Any], input_tokens: int, output_tokens: int, up: ScriptedUpstream) -> None:  # fmt: skip
    """What a client sees of cost adds up: ``usage`` is every upstream call the scripted
    upstream counted, ``usage_by_model`` splits it, and ``cost_usd`` is those tokens at the
    shipped default prices (never zero, no unpriced model)."""
    by_model = rlm["usage_by_model"]
    assert set(by_model) <= set(DEFAULT_PRICES) and by_model
    assert input_tokens == up.stats.prompt_tokens == sum(u["input_tokens"] for u in by_model.values())  # fmt: skip
    assert output_tokens == up.stats.completion_tokens == sum(u["output_tokens"] for u in by_model.values())  # fmt: skip
    expected = sum(
        DEFAULT_PRICES[m].cost(u["input_tokens"], u["cached_input_tokens"], u["output_tokens"])
        for m, u in by_model.items()
    )
    assert rlm["cost_usd"] == pytest.approx(expected, abs=1e-9) and rlm["cost_usd"] > 0
    assert rlm["unpriced_models"] == []


def arrivals(stream: Iterable[Any]) -> list[tuple[float, Any]]:
    """Each item of a stream with the time it arrived (seconds since reading began)."""
    t0 = time.perf_counter()
    return [(time.perf_counter() - t0, item) for item in stream]


def assert_progress_leads(times: list[tuple[float, bool, bool]]) -> None:
    """(time, is progress, is answer) per chunk: progress came first, and the first of it
    arrived while the run still worked (a slow model call before the answer)."""
    first_progress = next(t for t, progress, _ in times if progress)
    first_answer = next(t for t, _, answer in times if answer)
    last_progress = max(t for t, progress, _ in times if progress)
    assert last_progress <= first_answer
    assert first_answer - first_progress >= PROGRESS_LEAD_S, times


# ---- the openai SDK: chat completions -------------------------------------------------------


def test_openai_chat_plain_shows_answer_usage_and_cost(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    magic = random.randint(10**5, 10**6)
    book = haystack(magic=magic)
    r = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"rlm": {"context": book}},
    )
    rlm = r.model_extra["rlm"]
    assert r.choices[0].message.content == str(magic)
    assert r.usage is not None and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens  # fmt: skip
    assert_priced(rlm, r.usage.prompt_tokens, r.usage.completion_tokens, up)
    assert rlm["iterations"] == 2 and rlm["usage_by_model"]["gpt-5"]["calls"] == 2
    # No progress on a plain completion: the message has only the answer.
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})


def test_openai_chat_stream_shows_progress_while_it_works_then_cost(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = working()
    book = "chapter one\n" * 100
    stream = client.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"rlm": {"context": book}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = arrivals(stream)
    thinking, answer, rlm, usage = "", "", None, None
    times = []
    for t, chunk in chunks:
        if chunk.usage:
            usage = chunk.usage
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = (delta.model_extra or {}).get("reasoning_content") or ""
        thinking += piece
        answer += delta.content or ""
        times.append((t, bool(piece), bool(delta.content)))
        if chunk.choices[0].finish_reason:
            rlm = chunk.model_extra["rlm"]
    assert chunks[0][1].choices[0].delta.role == "assistant"
    assert answer == "the answer"
    assert_shows_work(thinking)
    assert "lines 100 sub:a" in thinking  # a head of the block's output
    assert_progress_leads(times)
    # The chunk with finish_reason carries the cost; the usage chunk comes after it.
    assert rlm is not None and usage is not None and chunks[-1][1].usage == usage
    assert_priced(rlm, usage.prompt_tokens, usage.completion_tokens, up)
    assert rlm["usage_by_model"]["gpt-5-mini"]["calls"] == 2  # the two sub-calls


# ---- the openai SDK: Responses API ----------------------------------------------------------


def test_openai_responses_plain_and_streamed_show_answer_usage_and_cost(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    magic = random.randint(10**5, 10**6)
    book = haystack(magic=magic)
    r = client.responses.create(model="rlm", input=QUESTION, extra_body={"rlm": {"context": book}})
    assert r.output_text == str(magic) and r.status == "completed"
    assert r.usage is not None
    assert_priced(r.model_extra["rlm"], r.usage.input_tokens, r.usage.output_tokens, up)

    up.reset_stats()
    up.policy = working("streamed answer")
    times = []
    thinking = ""
    with client.responses.stream(
        model="rlm", input=QUESTION, extra_body={"rlm": {"context": book}}
    ) as stream:
        for t, event in arrivals(stream):
            progress = event.type == "response.reasoning_summary_text.delta"
            if progress:
                thinking += event.delta
            times.append((t, progress, event.type == "response.output_text.delta"))
        final = stream.get_final_response()
    assert_shows_work(thinking)
    assert_progress_leads(times)
    assert final.output_text == "streamed answer"
    assert final.output[0].type == "reasoning" and final.output[0].summary[0].text == thinking
    assert final.usage is not None
    assert_priced(final.model_extra["rlm"], final.usage.input_tokens, final.usage.output_tokens, up)


def test_openai_background_is_polled_with_progress_so_far_and_cancelled(
    client: openai.OpenAI, up: ScriptedUpstream
) -> None:
    up.policy = working("background answer")
    book = "chapter one\n" * 100
    t0 = time.perf_counter()
    job = client.responses.create(
        model="rlm", input=QUESTION, background=True, extra_body={"rlm": {"context": book}}
    )
    assert time.perf_counter() - t0 < SLOW_CALL_S  # it did not wait for the run
    assert job.status in ("queued", "in_progress") and job.output == [] and job.usage is None
    progress_before_the_end = ""
    deadline = time.monotonic() + 30
    while (job := client.responses.retrieve(job.id)).status in ("queued", "in_progress"):
        # The first progress seen: later polls may fall between iteration 2's progress and
        # the end (a few ms, more on a loaded machine), which says nothing of the slow call.
        if job.output and job.output[0].type == "reasoning" and job.output[0].summary:
            progress_before_the_end = progress_before_the_end or job.output[0].summary[0].text
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # A poll during the slow second call already showed the first iteration's work.
    assert "### Iteration 1\nLet me look." in progress_before_the_end
    assert "### Iteration 2" not in progress_before_the_end
    assert job.status == "completed" and job.output_text == "background answer"
    assert_shows_work(job.output[0].summary[0].text)
    assert job.usage is not None
    assert_priced(job.model_extra["rlm"], job.usage.input_tokens, job.usage.output_tokens, up)

    # Cancel: a block that would sleep a minute is interrupted; the response says so.
    up.policy = Router(["Waiting.\n```repl\nimport time\ntime.sleep(60)\n```", "FINAL(never)"])
    job = client.responses.create(model="rlm", input=QUESTION, background=True)
    deadline = time.monotonic() + 30
    while not (job := client.responses.retrieve(job.id)).output:  # iteration 1's progress
        assert time.monotonic() < deadline
        time.sleep(0.05)
    t0 = time.perf_counter()
    cancelled = client.responses.cancel(job.id)
    assert cancelled.status == "cancelled" and time.perf_counter() - t0 < 8
    assert client.responses.retrieve(job.id).status == "cancelled"
    assert "### Iteration 1\nWaiting." in cancelled.output[0].summary[0].text


# ---- LiteLLM --------------------------------------------------------------------------------


def test_litellm_plain_shows_answer_usage_and_the_services_cost(
    litellm: ModuleType, base_url: str, up: ScriptedUpstream
) -> None:
    magic = random.randint(10**5, 10**6)
    book = haystack(magic=magic)
    r = litellm.completion(
        model="openai/rlm",
        api_base=base_url,
        api_key=KEY,
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"rlm": {"context": book}},
    )
    assert r.choices[0].message.content == str(magic)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    # LiteLLM passes the service's `rlm` object through as an attribute of its response.
    assert_priced(r.rlm, r.usage.prompt_tokens, r.usage.completion_tokens, up)
    # Its own cost field stays empty: "rlm" is not in LiteLLM's price map.
    assert r._hidden_params["response_cost"] is None


def test_litellm_stream_shows_progress_as_reasoning_content(
    litellm: ModuleType, base_url: str, up: ScriptedUpstream
) -> None:
    up.policy = working()
    book = "chapter one\n" * 100
    stream = litellm.completion(
        model="openai/rlm",
        api_base=base_url,
        api_key=KEY,
        messages=[{"role": "user", "content": QUESTION}],
        extra_body={"rlm": {"context": book}},
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = arrivals(stream)
    thinking, answer, rlm = "", "", None
    times = []
    for t, chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        piece = getattr(delta, "reasoning_content", None) or ""
        thinking += piece
        answer += delta.content or ""
        times.append((t, bool(piece), bool(delta.content)))
        if chunk.choices[0].finish_reason:
            rlm = getattr(chunk, "rlm", None)
    assert answer == "the answer"
    assert_shows_work(thinking)
    assert_progress_leads(times)
    usage = chunks[-1][1].usage
    assert rlm is not None and usage is not None
    assert_priced(rlm, usage.prompt_tokens, usage.completion_tokens, up)
    # LiteLLM's own assembly of a stream keeps the progress as the message's reasoning.
    built = litellm.stream_chunk_builder([c for _, c in chunks])
    assert built.choices[0].message.content == "the answer"
    assert built.choices[0].message.reasoning_content == thinking
    assert built.usage.total_tokens == usage.total_tokens


# ---- LangChain's ChatOpenAI -----------------------------------------------------------------


def test_langchain_shows_answer_and_usage_but_drops_progress_and_cost(
    chat_openai: type, base_url: str, up: ScriptedUpstream
) -> None:
    up.policy = working()
    book = "chapter one\n" * 100
    llm = chat_openai(
        base_url=base_url,
        api_key=KEY,
        model="rlm",
        extra_body={"rlm": {"context": book}},
        stream_usage=True,
    )
    m = llm.invoke(QUESTION)
    assert m.content == "the answer"
    assert m.usage_metadata["input_tokens"] == up.stats.prompt_tokens
    assert m.usage_metadata["output_tokens"] == up.stats.completion_tokens
    # ChatOpenAI keeps OpenAI's documented fields only: the `rlm` object (cost) is gone.
    assert "rlm" not in m.response_metadata and "rlm" not in m.additional_kwargs

    up.reset_stats()
    up.policy = working()
    chunks = list(llm.stream(QUESTION))
    total = chunks[0]
    for c in chunks[1:]:
        total += c
    assert total.content == "the answer"
    assert total.usage_metadata is not None
    assert total.usage_metadata["total_tokens"] == up.stats.prompt_tokens + up.stats.completion_tokens  # fmt: skip
    # The progress chunks arrive (one empty chunk each, so a UI can tell the run lives) but
    # their reasoning_content is dropped (langchain-openai documents this for chat completions).
    assert len([c for c in chunks if c.content == "" and not c.usage_metadata]) >= 4
    assert all(b["type"] != "reasoning" for b in total.content_blocks)
    assert not total.additional_kwargs.get("reasoning_content")


def test_langchain_sees_the_cost_in_the_response_headers(
    chat_openai: type, client: openai.OpenAI, base_url: str, up: ScriptedUpstream
) -> None:
    """ChatOpenAI drops the body's `rlm`, but hands on the headers when asked: a
    non-streamed answer's cost travels as x-rlm-cost-usd too."""
    up.policy = working()
    llm = chat_openai(
        base_url=base_url, api_key=KEY, model="rlm", include_response_headers=True,
        extra_body={"rlm": {"context": "chapter one\n" * 100}},
    )  # fmt: skip
    m = llm.invoke(QUESTION)
    headers = {k.lower(): v for k, v in m.response_metadata["headers"].items()}
    sid = headers["x-rlm-session-id"]
    session = client.get(f"/sessions/{sid}", cast_to=object)
    recorded = session["runs"][-1]["cost_usd"]  # type: ignore[index]
    assert recorded > 0
    assert float(headers["x-rlm-cost-usd"]) == pytest.approx(recorded, abs=1e-6)


def test_langchain_on_the_responses_api_shows_progress_as_reasoning_blocks(
    chat_openai: type, base_url: str, up: ScriptedUpstream
) -> None:
    up.policy = working()
    book = "chapter one\n" * 100
    llm = chat_openai(
        base_url=base_url,
        api_key=KEY,
        model="rlm",
        extra_body={"rlm": {"context": book}},
        use_responses_api=True,
    )
    thinking, answer, times = "", "", []
    chunks = arrivals(llm.stream(QUESTION))
    for t, chunk in chunks:
        for block in chunk.content_blocks:
            if block["type"] == "reasoning":
                thinking += block.get("reasoning", "")
            elif block["type"] == "text":
                answer += block["text"]
        kinds = {b["type"] for b in chunk.content_blocks}
        times.append((t, "reasoning" in kinds and bool(thinking), "text" in kinds and bool(answer)))
    assert answer == "the answer"
    assert_shows_work(thinking)
    assert_progress_leads(times)
    last = chunks[-1][1]
    assert last.usage_metadata["input_tokens"] == up.stats.prompt_tokens
    assert last.usage_metadata["output_tokens"] == up.stats.completion_tokens
    assert "rlm" not in last.response_metadata  # the cost is dropped here too
