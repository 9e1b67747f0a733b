"""What the viewer reads about time and money, through the real HTTP API.

The session list and session view carry each run's ``cost_usd`` and ``usage_by_model``
(the run's own meter, set when the turn ends, failed or not; ``None``, never 0, when a
model has no price), and the events carry the host's timing on the request's clock
(``start_ms`` / ``end_ms``) and the input position of every call of a batch. Local sandbox,
real HTTP on loopback, the scripted upstream answering with token counts chosen here.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from loadtest.upstream import Reply, ScriptedUpstream, is_root_request, text_of
from service.rlm import events
from service.ui.routes import STATIC_DIR
from tests.service.conftest import ServiceServer, service_env
from tests.service.test_cost import completion, expected_cost, repl, root_turns, usd

KEY = "key-alpha"


@pytest.fixture(scope="module")
def viewer_api(upstream: ScriptedUpstream) -> Iterator[ServiceServer]:
    env = service_env(
        upstream,
        rlm_sandbox="local",
        rlm_sandbox_pool_size=1,
        rlm_instance="rlm-test-viewer-cost",
        rlm_sub_models="gpt-5-mini,gpt-5,mystery-model",
        rlm_prices='{"gpt-5": {"input": 2.0, "cached_input": 0.5, "output": 8.0}, '
        '"gpt-5-mini": {"input": 0.4, "cached_input": 0.04, "output": 1.6}}',
    )
    with ServiceServer(**env) as srv:
        yield srv


def chat(srv: ServiceServer, session: str, **rlm: Any) -> httpx.Response:
    return httpx.post(
        f"{srv.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {KEY}", "x-rlm-session-id": session},
        json={
            "model": "rlm",
            "messages": [{"role": "user", "content": "What does the context say?"}],
            "rlm": {"context": "some context", **rlm},
        },
        timeout=60,
    )


def get(srv: ServiceServer, path: str) -> Any:
    r = httpx.get(f"{srv.url}{path}", headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    r.raise_for_status()
    return r.json()


def batch_run(delays: tuple[float, ...] = (0.6, 0.3, 0.0)) -> Callable[[dict[str, Any]], Reply]:
    """Root: a batch of three (the first input answers last), an rlm_query, then FINAL."""
    code = (
        "parts = llm_query_batched(['item 0', 'item 1', 'item 2'])\n"
        "c = rlm_query('child task', context='zz')\nprint(parts, c)"
    )

    def policy(body: dict[str, Any]) -> Reply:
        prompt = text_of(body["messages"][-1])
        if not is_root_request(body):
            reply = completion(f"answer to {prompt}", prompt=50, output=10)
            reply.delay_s = delays[int(prompt[-1])] if prompt.startswith("item ") else 0.0
            return reply
        if "child task" in prompt:
            return completion("FINAL(child)", prompt=300, output=20, cached=100)
        if root_turns(body) == 0:
            return completion(repl(code), prompt=1000, output=200, cached=400)
        return completion("FINAL(ok)", prompt=1500, output=30, cached=1000)

    return policy


def test_the_session_views_carry_each_runs_cost(
    viewer_api: ServiceServer, up: ScriptedUpstream
) -> None:
    up.policy = batch_run()
    r = chat(viewer_api, "cost-view")
    r.raise_for_status()
    rlm = r.json()["rlm"]
    assert rlm["cost_usd"] > 0 and set(rlm["usage_by_model"]) == {"gpt-5", "gpt-5-mini"}

    view = get(viewer_api, "/v1/sessions/cost-view")
    (run,) = view["runs"]
    assert run["id"] == rlm["trajectory_id"] and run["status"] == "done"
    assert run["cost_usd"] == rlm["cost_usd"]
    assert run["usage_by_model"] == rlm["usage_by_model"]
    assert run["usage_by_model"]["gpt-5"]["cached_input_tokens"] == 1400
    listed = next(s for s in get(viewer_api, "/v1/sessions")["data"] if s["id"] == "cost-view")
    assert listed["runs"][0]["cost_usd"] == rlm["cost_usd"]
    one = get(viewer_api, f"/v1/sessions/cost-view/runs/{rlm['trajectory_id']}")
    assert one["cost_usd"] == rlm["cost_usd"]


def test_a_failed_run_keeps_what_it_spent(viewer_api: ServiceServer, up: ScriptedUpstream) -> None:
    def policy(body: dict[str, Any]) -> Reply:
        if root_turns(body) == 0:
            return completion(repl("x = 1"), prompt=1000, output=100)
        return Reply("the upstream refuses", status=400)  # not retried: the turn fails

    up.policy = policy
    r = chat(viewer_api, "cost-failed")
    assert r.status_code >= 400
    (run,) = get(viewer_api, "/v1/sessions/cost-failed")["runs"]
    assert run["status"] == "failed"
    spent = usd(expected_cost("gpt-5", 1000, 0, 100))
    assert run["cost_usd"] == spent > 0
    assert run["usage_by_model"]["gpt-5"]["calls"] == 1


def test_an_unpriced_model_makes_the_runs_cost_unknown_not_zero(
    viewer_api: ServiceServer, up: ScriptedUpstream
) -> None:
    def policy(body: dict[str, Any]) -> Reply:
        if not is_root_request(body):
            return completion("free?", prompt=10, output=5)
        if root_turns(body) == 0:
            return completion(repl("y = llm_query('hi', model='mystery-model')"), 100, 10)
        return completion("FINAL(done)", 100, 10)

    up.policy = policy
    chat(viewer_api, "cost-unknown").raise_for_status()
    (run,) = get(viewer_api, "/v1/sessions/cost-unknown")["runs"]
    assert run["cost_usd"] is None
    assert run["usage_by_model"]["mystery-model"]["priced"] is False
    assert run["usage_by_model"]["mystery-model"]["cost_usd"] is None
    assert run["usage_by_model"]["gpt-5"]["priced"] is True


def test_events_carry_the_hosts_timing_and_batch_positions(
    viewer_api: ServiceServer, up: ScriptedUpstream
) -> None:
    up.policy = batch_run()
    t0 = time.monotonic()
    r = chat(viewer_api, "timing", include_trajectory=True)
    wall_ms = (time.monotonic() - t0) * 1000
    evs = r.json()["rlm"]["trajectory"]
    root, child = (e for e in evs if e["event"] == "run_start")
    assert root["start_ms"] < 50 and root["depth"] == 0
    final = next(e for e in evs if e["event"] == "final" and e["run"] == root["run"])
    assert 0 < final["end_ms"] <= wall_ms
    timed = [e for e in evs if e["event"] in ("iteration", "code", "sub_call")]
    for e in timed:
        assert 0 <= e["start_ms"] <= e["end_ms"] <= final["end_ms"], e
    it0, it1 = (e for e in evs if e["event"] == "iteration" and e["run"] == root["run"])
    (code,) = (e for e in evs if e["event"] == "code" and e["run"] == root["run"])
    assert it0["end_ms"] <= code["start_ms"] and code["end_ms"] <= it1["start_ms"]

    # The batch: one number, input positions, and the first input finished last.
    batch = [e for e in evs if e["event"] == "sub_call" and "batch" in e]
    assert len(batch) == 3 and len({e["batch"] for e in batch}) == 1
    assert {e["batch_size"] for e in batch} == {3}
    assert [e["batch_index"] for e in batch] == [2, 1, 0]  # completion order
    by_index = sorted(batch, key=lambda e: e["batch_index"])
    assert [e["prompt"] for e in by_index] == ["item 0", "item 1", "item 2"]
    # They ran at once: each started before any of them ended.
    assert max(e["start_ms"] for e in batch) < min(e["end_ms"] for e in batch)
    assert by_index[0]["end_ms"] - by_index[0]["start_ms"] >= 550

    # The recursive run is on its parent's clock, inside its sub_call's span.
    rlm_call = next(e for e in evs if e["event"] == "sub_call" and e["kind"] == "rlm")
    assert rlm_call["child_run"] == child["run"] and "batch" not in rlm_call
    assert rlm_call["start_ms"] <= child["start_ms"] <= rlm_call["end_ms"]
    assert child["start_ms"] >= max(e["end_ms"] for e in batch)


def test_the_viewer_scripts_read_only_declared_event_fields() -> None:
    """tests/service/test_events.py checks trajectory.js; the timeline reads events too."""
    for path in sorted(STATIC_DIR.glob("*.js")):
        read = set(re.findall(r"\bev\.([a-z_]+)", path.read_text(encoding="utf-8")))
        assert read - events.all_fields() == set(), path.name
    timeline = (STATIC_DIR / "timeline.js").read_text(encoding="utf-8")
    assert {"start_ms", "end_ms", "batch_index", "cost_usd"} <= set(
        re.findall(r"\bev\.([a-z_]+)", timeline)
    )


def test_recursive_batches_carry_their_input_positions(
    viewer_api: ServiceServer, up: ScriptedUpstream
) -> None:
    code = "r = rlm_query_batched(['child a', 'child b'])\nprint(r)"

    def policy(body: dict[str, Any]) -> Reply:
        prompt = text_of(body["messages"][-1])
        if "child a" in prompt:  # the first input's run takes longer: it ends last
            return Reply("FINAL(a)", delay_s=0.4)
        if "child b" in prompt:
            return Reply("FINAL(b)")
        return Reply(repl(code) if root_turns(body) == 0 else "FINAL(done)")

    up.policy = policy
    evs = chat(viewer_api, "rlm-batch", include_trajectory=True).json()["rlm"]["trajectory"]
    children = {e["run"]: e for e in evs if e["event"] == "run_start" and e["depth"] == 1}
    assert sorted(e["batch_index"] for e in children.values()) == [0, 1]
    assert {e["batch_size"] for e in children.values()} == {2}
    calls = [e for e in evs if e["event"] == "sub_call" and e["kind"] == "rlm"]
    assert [e["batch_index"] for e in calls] == [1, 0]  # completion order
    for call in calls:
        child = children[call["child_run"]]
        assert child["batch_index"] == call["batch_index"] and child["batch"] == call["batch"]
        assert call["start_ms"] <= child["start_ms"] <= call["end_ms"]
