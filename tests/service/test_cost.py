"""Cost: the price table, usage and cost by model on every response, the per-request cap,
the daily budget per key and the cost metrics. Real HTTP on loopback, the real openai
client, the scripted upstream answering with token counts the tests choose.

Runs on the local sandbox where the sandbox is not the point; the tests about sandbox code
whose model calls are refused run on Docker (runsc).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from loadtest.upstream import Reply, ScriptedUpstream, free_port, is_root_request, text_of
from service.app import create_app
from service.budgets import DailySpend, next_reset
from service.config import Settings
from service.errors import BudgetExhausted
from service.rlm.pricing import DEFAULT_PRICES, CostMeter, Price, PriceTable, PriceTableError
from service.sessions import owner_of
from tests.service.conftest import ServiceServer, service_env

ROOT = Path(__file__).resolve().parents[2]
KEYS = "key-alpha,key-beta,key-gamma,key-delta,key-eps"

# The priced service's table: gpt-5 from RLM_PRICES (over the file's), gpt-5-mini from the
# file; "mystery-model" may be called but has no price.
ENV_PRICES = {"gpt-5": {"input": 2.0, "cached_input": 0.5, "output": 8.0}}
FILE_PRICES = """\
["gpt-5"]
input = 99
output = 99

["gpt-5-mini"]
input = 0.4
cached_input = 0.04
output = 1.6
"""
PRICES = {"gpt-5": (2.0, 0.5, 8.0), "gpt-5-mini": (0.4, 0.04, 1.6)}


def completion(text: str, prompt: int, output: int, cached: int = 0) -> Reply:
    """A chat completion with the usage we choose (cached tokens included)."""
    body = {
        "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": "scripted",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
        },
    }
    return Reply(raw=json.dumps(body).encode())


def expected_cost(model: str, prompt: int, cached: int, output: int) -> Fraction:
    p_in, p_cached, p_out = (Fraction(str(x)) for x in PRICES[model])
    return ((prompt - cached) * p_in + cached * p_cached + output * p_out) / 1_000_000


def usd(x: Fraction) -> float:
    return round(float(x), 10)


def repl(code: str, lead: str = "Working on it.") -> str:
    return f"{lead}\n```repl\n{code}\n```"


def root_turns(body: dict[str, Any]) -> int:
    return sum(1 for m in body["messages"] if m["role"] == "assistant")


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def client(srv: ServiceServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0)


def ask(c: openai.OpenAI, **rlm: Any) -> Any:
    return c.chat.completions.create(
        model="rlm",
        messages=[{"role": "user", "content": "What does the context say?"}],
        extra_body={"rlm": {"context": "some context", **rlm}},
    )


# ---- the price table ----------------------------------------------------------------------


def test_defaults_price_the_default_models() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    table = PriceTable.load()
    assert table.unpriced([s.rlm_root_model, s.rlm_sub_model]) == []
    for price in DEFAULT_PRICES.values():
        assert 0 < price.cached_input < price.input < price.output


def test_file_then_environment_over_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "prices.json"
    f.write_text(json.dumps({"gpt-5": None, "local-llm": {"input": 0, "output": 0}}))
    table = PriceTable.load(str(f), json.dumps({"gpt-5-mini": {"input": 1, "output": 4}}))
    assert table.get("gpt-5") is None  # null removed the default: unpriced, not free
    assert table.get("local-llm") == Price(0.0, 0.0, 0.0)  # free on purpose
    # Without a cached-input price, cached tokens cost what other input costs.
    assert table.get("gpt-5-mini") == Price(input=1.0, cached_input=1.0, output=4.0)
    assert table.cost("gpt-5", 10, 0, 10) is None and table.cost("nope", 1, 0, 1) is None
    assert table.cost("gpt-5-mini", 1_000_000, 250_000, 500_000) == pytest.approx(3.0)


@pytest.mark.parametrize(
    ("name", "content", "env", "message"),
    [
        (
            "p.json",
            "{not json",
            None,
            r"price file .*p\.json \(RLM_PRICES_FILE\) is not valid JSON",
        ),
        ("p.toml", "[gpt-5\ninput=1", None, r"p\.toml \(RLM_PRICES_FILE\) is not valid TOML"),
        ("p.json", '["gpt-5"]', None, r"RLM_PRICES_FILE\) must map model names to prices"),
        (None, None, "{oops", r"RLM_PRICES is not valid JSON"),
        (None, None, '{"m": {"input": 1}}', r"RLM_PRICES, model 'm': output is missing"),
        (None, None, '{"m": {"input": 1, "ouput": 2}}', r"model 'm': unknown field\(s\) ouput"),
        (None, None, '{"m": {"input": -1, "output": 2}}', r"input must be a finite number >= 0"),
        (None, None, '{"m": {"input": "1", "output": 2}}', r"input must be a number, not '1'"),
        (None, None, '{"m": {"input": true, "output": 2}}', r"input must be a number"),
        (None, None, '{"m": 3}', r"model 'm': expected an object with input"),
    ],
)
def test_bad_prices_are_clear_errors(
    tmp_path: Path, name: str | None, content: str | None, env: str | None, message: str
) -> None:
    file = None
    if name is not None:
        file = tmp_path / name
        file.write_text(content or "")
    with pytest.raises(PriceTableError, match=message):
        PriceTable.load(str(file) if file else None, env)


def test_bad_prices_stop_the_service_at_start(tmp_path: Path) -> None:
    """``python -m service`` exits 2 with the reason; create_app raises ValueError."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RLM_", "OPENAI_"))} | {
        "RLM_SANDBOX": "local",
        "RLM_PORT": str(free_port()),
        "RLM_SESSION_STORE": f"file://{tmp_path}/store",
        "RLM_PRICES_FILE": str(tmp_path / "missing.toml"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "service"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "invalid configuration: cannot read the price file" in proc.stderr
    assert "missing.toml (RLM_PRICES_FILE)" in proc.stderr

    env = {**env, "RLM_PRICES_FILE": "", "RLM_PRICES": '{"gpt-5": {"input": 1}}'}
    proc = subprocess.run(
        [sys.executable, "-m", "service"], cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "RLM_PRICES, model 'gpt-5': output is missing" in proc.stderr

    # A cap or a budget needs every callable model priced.
    for setting in ({"rlm_max_cost_usd": 1.0}, {"rlm_key_daily_usd": 5.0}):
        s = Settings(_env_file=None, rlm_prices='{"gpt-5-mini": null}', **setting)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match=r"needs a price .* none for 'gpt-5-mini'"):
            create_app(s)


def test_cost_settings_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in (
        ("RLM_MAX_COST_USD", "-1"),
        ("RLM_KEY_DAILY_USD", "0"),
        ("RLM_MAX_COST_USD", "inf"),
    ):
        monkeypatch.setenv(name, value)
        with pytest.raises(ValidationError, match=name.lower()):
            Settings(_env_file=None)  # type: ignore[call-arg]
        monkeypatch.delenv(name)
    monkeypatch.setenv("RLM_MAX_COST_USD", "")
    assert Settings(_env_file=None).rlm_max_cost_usd is None  # type: ignore[call-arg]


def test_meter_refuses_past_its_cap_and_unpriced_models_under_a_cap() -> None:
    table = PriceTable({"a": Price(1.0, 0.1, 2.0)})
    meter = CostMeter(table, 0.001, "rlm.max_cost_usd")
    assert meter.refusal("a") is None
    assert "model 'b' has no price" in (meter.refusal("b") or "")
    assert meter.add("a", 1000, 0, 0) == pytest.approx(0.001)
    assert meter.spent and "cost cap of $0.001 is spent" in (meter.refusal("a") or "")
    uncapped = CostMeter(table)
    uncapped.add("b", 10, 5, 10)
    assert uncapped.refusal("b") is None  # no cap: unpriced calls run, priced as unknown
    wire = uncapped.to_wire()
    assert wire["cost_usd"] is None and wire["unpriced_models"] == ["b"]
    assert wire["usage_by_model"]["b"] == {
        "calls": 1, "input_tokens": 10, "cached_input_tokens": 5, "output_tokens": 10,
        "cost_usd": None, "priced": False,
    }  # fmt: skip


def test_daily_spend_resets_at_utc_midnight() -> None:
    now = [datetime(2026, 3, 4, 23, 59, 0, tzinfo=UTC).timestamp()]
    daily = DailySpend(1.0, clock=lambda: now[0])
    daily.charge("k1", 0.6)
    daily.check("k1")
    daily.charge("k1", 0.5)
    assert daily.remaining("k1") == 0.0 and daily.remaining("k2") == 1.0
    with pytest.raises(BudgetExhausted) as err:
        daily.check("k1")
    assert err.value.status == 429 and err.value.code == "budget_exceeded"
    assert "resets at 2026-03-05T00:00:00Z" in err.value.message
    assert err.value.retry_after == 60
    now[0] += 61  # the next UTC day
    daily.check("k1")
    assert daily.spent("k1") == 0.0
    assert DailySpend(None).remaining("k1") is None


# ---- a priced service (local sandbox) -----------------------------------------------------


@pytest.fixture(scope="module")
def priced(
    upstream: ScriptedUpstream, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceServer]:
    prices = tmp_path_factory.mktemp("prices") / "prices.toml"
    prices.write_text(FILE_PRICES)
    env = service_env(
        upstream,
        rlm_sandbox="local",
        rlm_sandbox_pool_size=1,
        rlm_instance="rlm-test-cost",
        rlm_sub_models="gpt-5-mini,gpt-5,mystery-model",
        rlm_prices_file=str(prices),
        rlm_prices=json.dumps(ENV_PRICES),
    )
    env["rlm_api_keys"] = KEYS
    with ServiceServer(**env) as srv:
        yield srv


def scripted_run() -> Callable[[dict[str, Any]], Reply]:
    """Root: code calling llm_query, llm_query_batched and rlm_query, then FINAL(ok); the
    child run answers at once; every call with usage chosen here."""
    code = "a = llm_query('one')\nb = llm_query_batched(['two', 'three'])\nc = rlm_query('child task', context='zz')"

    def policy(body: dict[str, Any]) -> Reply:
        if not is_root_request(body):
            assert body["model"] == "gpt-5-mini"
            return completion("sub answer", prompt=50, output=10)
        if "child task" in text_of(body["messages"][-1]):
            assert body["model"] == "gpt-5-mini"
            return completion("FINAL(child)", prompt=300, output=20, cached=100)
        assert body["model"] == "gpt-5"
        if root_turns(body) == 0:
            return completion(repl(code), prompt=1000, output=200, cached=400)
        return completion("FINAL(ok)", prompt=1500, output=30, cached=1000)

    return policy


def _expected_run() -> tuple[dict[str, Any], float]:
    root = [(1000, 400, 200), (1500, 1000, 30)]
    subs = [(50, 0, 10)] * 3 + [(300, 100, 20)]
    by_model: dict[str, Any] = {}
    total = Fraction(0)
    for model, calls in (("gpt-5", root), ("gpt-5-mini", subs)):
        cost = sum((expected_cost(model, *c) for c in calls), Fraction(0))
        total += cost
        by_model[model] = {
            "calls": len(calls),
            "input_tokens": sum(c[0] for c in calls),
            "cached_input_tokens": sum(c[1] for c in calls),
            "output_tokens": sum(c[2] for c in calls),
            "cost_usd": usd(cost),
            "priced": True,
        }
    return by_model, usd(total)


def test_cost_and_usage_by_model_are_exact(priced: ServiceServer, up: ScriptedUpstream) -> None:
    up.policy = scripted_run()
    resp = ask(client(priced, "key-alpha"), include_trajectory=True)
    rlm = resp.model_extra["rlm"]
    by_model, total = _expected_run()
    assert resp.choices[0].message.content == "ok"
    assert rlm["usage_by_model"] == by_model
    assert rlm["cost_usd"] == total == pytest.approx(0.004964)
    assert rlm["unpriced_models"] == [] and rlm["max_cost_usd"] is None
    assert resp.usage.prompt_tokens == 1000 + 1500 + 3 * 50 + 300
    # Each model call's cost is in the trajectory too (the viewer's cost by model).
    root = next(e["run"] for e in rlm["trajectory"] if e["event"] == "run_start")
    iterations = [e for e in rlm["trajectory"] if e["event"] == "iteration" and e["run"] == root]
    assert [e["cost_usd"] for e in iterations] == [
        usd(expected_cost("gpt-5", 1000, 400, 200)),
        usd(expected_cost("gpt-5", 1500, 1000, 30)),
    ]
    llm_calls = [e for e in rlm["trajectory"] if e["event"] == "sub_call" and e["kind"] == "llm"]
    assert [e["cost_usd"] for e in llm_calls] == [usd(expected_cost("gpt-5-mini", 50, 0, 10))] * 3


def test_the_final_streamed_chunk_carries_the_cost(
    priced: ServiceServer, up: ScriptedUpstream
) -> None:
    up.policy = scripted_run()
    chunks = list(
        client(priced, "key-alpha").chat.completions.create(
            model="rlm",
            messages=[{"role": "user", "content": "q"}],
            extra_body={"rlm": {"context": "ctx"}},
            stream=True,
        )
    )
    last = next(c for c in chunks if c.choices and c.choices[0].finish_reason)
    rlm = last.model_extra["rlm"]
    by_model, total = _expected_run()
    assert rlm["usage_by_model"] == by_model and rlm["cost_usd"] == total


def test_an_unknown_model_is_priced_as_unknown(priced: ServiceServer, up: ScriptedUpstream) -> None:
    before = httpx.get(priced.url + "/metrics").text

    def policy(body: dict[str, Any]) -> Reply:
        if not is_root_request(body):
            return completion("mystery answer", prompt=70, output=7)
        if root_turns(body) == 0:
            return completion(repl("m = llm_query('x', model='mystery-model')"), 100, 10)
        return completion("FINAL(done)", prompt=200, output=5)

    up.policy = policy
    rlm = ask(client(priced, "key-beta")).model_extra["rlm"]
    assert rlm["cost_usd"] is None  # never zero, never the priced part alone
    assert rlm["unpriced_models"] == ["mystery-model"]
    assert rlm["usage_by_model"]["mystery-model"] == {
        "calls": 1, "input_tokens": 70, "cached_input_tokens": 0, "output_tokens": 7,
        "cost_usd": None, "priced": False,
    }  # fmt: skip
    gpt5 = usd(expected_cost("gpt-5", 100, 0, 10) + expected_cost("gpt-5", 200, 0, 5))
    assert rlm["usage_by_model"]["gpt-5"]["cost_usd"] == gpt5
    after = httpx.get(priced.url + "/metrics").text
    calls = "rlm_unpriced_calls_total"
    assert (
        metric(after, calls, model="mystery-model") - metric(before, calls, model="mystery-model")
        == 1
    )
    assert 'rlm_cost_usd_total{model="mystery-model"}' not in after


def test_max_cost_usd_stops_the_run_with_a_partial_answer(
    priced: ServiceServer, up: ScriptedUpstream
) -> None:
    first = completion(repl("x = 1", lead="The context mentions a cat."), prompt=1000, output=100)
    calls: list[str] = []

    def policy(body: dict[str, Any]) -> Reply:
        calls.append(body["model"])
        return first if root_turns(body) == 0 else completion("FINAL(too late)", 10, 1)

    up.policy = policy
    # The first call costs 0.0028: past a cap of 0.001, so there is no second.
    resp = ask(client(priced, "key-gamma"), max_cost_usd=0.001)
    rlm = resp.model_extra["rlm"]
    assert rlm["stopped_by"] == "cost" and rlm["how"] == "partial"
    assert resp.choices[0].finish_reason == "length"
    assert resp.choices[0].message.content == "The context mentions a cat."
    assert calls == ["gpt-5"] and rlm["iterations"] == 1
    assert rlm["max_cost_usd"] == 0.001
    assert rlm["cost_usd"] == usd(expected_cost("gpt-5", 1000, 0, 100))


@pytest.mark.parametrize("value", ["0", "-1", "true", '"0.5"', "1e999", "[1]"])
def test_a_bad_max_cost_usd_is_a_400(priced: ServiceServer, value: str) -> None:
    body = (
        '{"model": "rlm", "messages": [{"role": "user", "content": "q"}], '
        f'"rlm": {{"max_cost_usd": {value}}}}}'
    )
    r = httpx.post(
        priced.url + "/v1/chat/completions", content=body,
        headers={"authorization": "Bearer key-alpha", "content-type": "application/json"},
    )  # fmt: skip
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == "rlm.max_cost_usd"


def test_metrics_count_cost_by_model_and_by_key_id(
    priced: ServiceServer, up: ScriptedUpstream
) -> None:
    before = httpx.get(priced.url + "/metrics").text
    up.policy = scripted_run()
    spent = ask(client(priced, "key-delta")).model_extra["rlm"]["cost_usd"]
    after = httpx.get(priced.url + "/metrics").text
    key_id = owner_of("key-delta")
    delta = metric(after, "rlm_key_cost_usd_total", key_id=key_id) - metric(
        before, "rlm_key_cost_usd_total", key_id=key_id
    )
    assert delta == pytest.approx(spent, abs=1e-12)
    by_model, _ = _expected_run()
    for model, usage in by_model.items():
        d = metric(after, "rlm_cost_usd_total", model=model) - metric(
            before, "rlm_cost_usd_total", model=model
        )
        assert d == pytest.approx(usage["cost_usd"], abs=1e-12)
        cached = metric(after, "rlm_tokens_total", kind="cached_prompt", model=model) - metric(
            before, "rlm_tokens_total", kind="cached_prompt", model=model
        )
        assert cached == usage["cached_input_tokens"]
    # Key ids only: no key in any label.
    assert not re.search(r"key-(alpha|beta|gamma|delta|eps)", after)
    assert re.search(r'rlm_key_cost_usd_total\{key_id="[0-9a-f]{32}"\}', after)


# ---- daily budgets and the operator's cap -------------------------------------------------


@pytest.fixture(scope="module")
def budgeted(upstream: ScriptedUpstream) -> Iterator[ServiceServer]:
    env = service_env(
        upstream,
        rlm_sandbox="local",
        rlm_sandbox_pool_size=1,
        rlm_instance="rlm-test-budget",
        # USD 1 per million tokens of any kind: 10,000 tokens cost a cent.
        rlm_prices=json.dumps({m: {"input": 1, "output": 1} for m in ("gpt-5", "gpt-5-mini")}),
        rlm_max_cost_usd=0.02,
        rlm_key_daily_usd=0.05,
    )
    env["rlm_api_keys"] = KEYS
    with ServiceServer(**env) as srv:
        yield srv


def _costing(usd_first: float, then: str = "FINAL(next)") -> Callable[[dict[str, Any]], Reply]:
    """Root: a first reply with code costing ``usd_first`` (at USD 1 per million tokens)."""

    def policy(body: dict[str, Any]) -> Reply:
        if root_turns(body) == 0:
            return completion(repl("y = 2", lead="Partial so far."), round(usd_first * 1e6), 0)
        return completion(then, 10, 0)

    return policy


def test_the_operator_cap_bounds_what_a_request_may_ask(
    budgeted: ServiceServer, up: ScriptedUpstream
) -> None:
    c = client(budgeted, "key-eps")
    up.policy = _costing(0.001)
    assert ask(c, max_cost_usd=0.5).model_extra["rlm"]["max_cost_usd"] == 0.02
    up.policy = _costing(0.001)
    assert ask(c, max_cost_usd=0.005).model_extra["rlm"]["max_cost_usd"] == 0.005
    up.policy = _costing(0.025)  # past the operator's cap of 0.02 in one call
    rlm = ask(c).model_extra["rlm"]
    assert rlm["stopped_by"] == "cost" and rlm["max_cost_usd"] == 0.02


def test_a_key_past_its_daily_budget_gets_429_until_midnight_utc(
    budgeted: ServiceServer, up: ScriptedUpstream
) -> None:
    alpha, beta = client(budgeted, "key-alpha"), client(budgeted, "key-beta")
    up.policy = lambda body: completion("FINAL(first)", 60_000, 0)  # $0.06: past $0.05
    assert ask(alpha).choices[0].message.content == "first"  # allowed: spent 0 before it

    up.reset_stats()
    with pytest.raises(openai.RateLimitError) as err:
        ask(alpha)
    assert err.value.status_code == 429 and err.value.code == "budget_exceeded"
    reset = next_reset(time.time())
    assert f"resets at {reset.strftime('%Y-%m-%dT%H:%M:%SZ')}" in err.value.message
    assert "RLM_KEY_DAILY_USD" in err.value.message
    retry_after = int(err.value.response.headers["retry-after"])
    assert abs(retry_after - (reset.timestamp() - time.time())) < 5
    assert up.stats.calls == 0  # refused before any model call

    # Streaming is refused the same way, before the stream opens.
    r = httpx.post(
        budgeted.url + "/v1/chat/completions",
        json={"model": "rlm", "messages": [{"role": "user", "content": "q"}], "stream": True},
        headers={"authorization": "Bearer key-alpha"},
    )
    assert r.status_code == 429 and r.json()["error"]["code"] == "budget_exceeded"

    # Another key is another tenant.
    up.policy = lambda body: completion("FINAL(beta)", 100, 0)
    assert ask(beta).choices[0].message.content == "beta"


def test_a_run_is_capped_at_what_its_key_has_left_today(
    budgeted: ServiceServer, up: ScriptedUpstream
) -> None:
    c = client(budgeted, "key-gamma")
    up.policy = lambda body: completion("FINAL(spend)", 40_000, 0)  # $0.04 of $0.05
    ask(c)
    up.policy = _costing(0.015)  # one call past the $0.01 left
    rlm = ask(c, max_cost_usd=0.02).model_extra["rlm"]
    assert rlm["max_cost_usd"] == 0.01
    assert rlm["stopped_by"] == "cost" and rlm["cost_usd"] == 0.015
    with pytest.raises(openai.RateLimitError, match="daily budget of"):
        ask(c)


# ---- sandbox code whose model calls are refused (Docker) ----------------------------------


@pytest.fixture(scope="module")
def boxed(upstream: ScriptedUpstream, docker_ready: None) -> Iterator[ServiceServer]:
    env = service_env(
        upstream,
        rlm_sandbox="docker",
        rlm_sandbox_pool_size=1,
        rlm_sandbox_memory_mb=256,
        rlm_instance="rlm-test-cost-docker",
        rlm_sub_models="gpt-5-mini,mystery-model",
        rlm_prices=json.dumps(ENV_PRICES),
    )
    with ServiceServer(**env) as srv:
        yield srv


def test_a_sub_call_past_the_cap_is_an_error_string_in_the_sandbox(
    boxed: ServiceServer, up: ScriptedUpstream
) -> None:
    code = (
        "r = llm_query('summarise')\nrs = llm_query_batched(['a', 'b'])\n"
        "print('ONE:', r)\nprint('MANY:', rs)"
    )
    sub_calls: list[dict[str, Any]] = []

    def policy(body: dict[str, Any]) -> Reply:
        if not is_root_request(body):
            sub_calls.append(body)
            return completion("should not happen", 10, 1)
        if root_turns(body) == 0:  # $0.0028: past the cap before the block runs
            return completion(repl(code, lead="Asking a helper."), 1000, 100)
        return completion("FINAL(never)", 10, 1)

    up.policy = policy
    resp = ask(client(boxed, "key-alpha"), max_cost_usd=0.001, include_trajectory=True)
    rlm = resp.model_extra["rlm"]
    assert sub_calls == []  # nothing reached the upstream
    out = next(e for e in rlm["trajectory"] if e["event"] == "code")["stdout"]
    assert "ONE: Error: BudgetExceeded: the request's cost cap of $0.001 is spent" in out
    assert "rlm.max_cost_usd" in out
    # The single call and both batch items, each told the cap and the setting.
    assert out.count("Error: BudgetExceeded: the request's cost cap of $0.001 is spent") == 3
    assert rlm["stopped_by"] == "cost" and resp.choices[0].message.content == "Asking a helper."


def test_an_unpriced_model_is_refused_under_a_cap_but_the_run_goes_on(
    boxed: ServiceServer, up: ScriptedUpstream
) -> None:
    code = "r = llm_query('x', model='mystery-model')\nprint('GOT:', r)"
    seen: list[str] = []

    def policy(body: dict[str, Any]) -> Reply:
        seen.append(body["model"])
        if root_turns(body) == 0:
            return completion(repl(code), 100, 10)
        return completion("FINAL(fine)", 100, 10)

    up.policy = policy
    resp = ask(client(boxed, "key-alpha"), max_cost_usd=1.0, include_trajectory=True)
    rlm = resp.model_extra["rlm"]
    out = next(e for e in rlm["trajectory"] if e["event"] == "code")["stdout"]
    assert "GOT: Error: BudgetExceeded: model 'mystery-model' has no price" in out
    assert seen == ["gpt-5", "gpt-5"] and "mystery-model" not in rlm["usage_by_model"]
    assert resp.choices[0].message.content == "fine" and rlm["stopped_by"] is None
    assert rlm["cost_usd"] == usd(2 * expected_cost("gpt-5", 100, 0, 10))
