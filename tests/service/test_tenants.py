"""Hostile tenants and the host's self-protection: the model allowlist, one key's share of
sessions and running requests, the memory floor, the public surface off loopback, upstream
garbage. Runs on the local sandbox (no Docker): these are the host's decisions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.upstream import Reply, ScriptedUpstream
from sandbox.pool import SandboxPool
from service.admission import Admission, available_mb, refuse_below_memory_floor
from service.errors import Overloaded
from service.rlm.engine import EngineConfig, RLMEngine
from service.rlm.upstream import Upstream
from service.sessions import SessionStore, owner_of
from tests.service.conftest import Router, ServiceServer, make_budget, service_env

# ---- the model allowlist ----------------------------------------------------------------


def _repl(code: str) -> str:
    return f"Working.\n```repl\n{code}\n```"


@pytest.mark.parametrize(
    ("code", "expect_error"),
    [
        ("print(llm_query('q', model='gpt-evil-browsing'))", True),
        ("print(llm_query_batched(['a', 'b'], model='o3-pro'))", True),
        ("print(llm_query('q', model=['not', 'a', 'name']))", True),
        ("print(llm_query('q', model='gpt-5'))", False),  # the root model: allowed by default
        ("print(llm_query('q'))", False),
    ],
)
async def test_sandbox_code_names_only_allowed_models(
    engine: RLMEngine, sandbox: Any, up: ScriptedUpstream, code: str, expect_error: bool
) -> None:
    up.policy = Router([_repl(code), "FINAL(done)"])
    info = await sandbox.load("ctx", "root", ("context",))
    events: list[Any] = []
    await engine.run(
        query="q", sandbox=sandbox, context_info=info, budget=make_budget(), emit=events.append
    )
    (block,) = [e for e in events if e["event"] == "code"]
    models = [r["model"] for r in up.stats.requests]
    assert set(models) <= {"gpt-5", "gpt-5-mini"}
    if expect_error:
        assert "Error:" in block["stdout"] and "not allowed" in block["stdout"]
        assert "gpt-5-mini, gpt-5" in block["stdout"] and "RLM_SUB_MODELS" in block["stdout"]
        assert not [e for e in events if e["event"] == "sub_call"]
    else:
        assert "Error:" not in block["stdout"]


async def test_the_system_prompt_lists_the_allowed_models(
    client_upstream: Upstream, sandbox: Any, up: ScriptedUpstream
) -> None:
    cfg = EngineConfig(root_model="gpt-5", sub_model="gpt-5-mini", allowed_models=("small-x",))
    engine = RLMEngine(client_upstream, cfg)
    assert cfg.sub_models == ("gpt-5-mini", "small-x")
    up.policy = Router(["FINAL(x)"])
    info = await sandbox.load("ctx", "root", ("context",))
    await engine.run(
        query="q", sandbox=sandbox, context_info=info, budget=make_budget(), emit=lambda e: None
    )
    system = up.stats.requests[0]["messages"][0]["content"]
    assert "may name only these models: gpt-5-mini, small-x (default: gpt-5-mini)" in system


# ---- one key's share --------------------------------------------------------------------


async def test_a_key_at_its_share_evicts_only_its_own_sessions(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=4, ttl_s=3600, per_key=2)
    alice, mallory = owner_of("alice"), owner_of("mallory")
    await store.open("alice-1", alice)
    await store.open("alice-2", alice)
    await store.open("m-1", mallory)
    await store.open("m-2", mallory)
    # Mallory opens many more: each evicts one of Mallory's own, never Alice's.
    for i in range(3, 10):
        await store.open(f"m-{i}", mallory)
        assert {s.id for s in store.of_owner(alice)} == {"alice-1", "alice-2"}
        assert store.owned(mallory) == 2
    assert {s.id for s in store.of_owner(mallory)} == {"m-8", "m-9"}


async def test_a_full_host_refuses_rather_than_evict_a_key_within_its_share(
    pool: SandboxPool,
) -> None:
    store = SessionStore(pool, max_sessions=3, ttl_s=3600, per_key=2)
    alice, bob, carol = owner_of("alice"), owner_of("bob"), owner_of("carol")
    await store.open("a1", alice)
    await store.open("a2", alice)
    await store.open("b1", bob)
    with pytest.raises(Overloaded, match="RLM_MAX_SESSIONS") as info:
        await store.open("c1", carol)
    assert info.value.retry_after
    assert len(store) == 3 and store.owned(carol) == 0
    # On a full host a key makes room among its own idle sessions only.
    await store.open("b2", bob)
    assert {x.id for x in store.of_owner(bob)} == {"b2"}
    assert {x.id for x in store.of_owner(alice)} == {"a1", "a2"}
    # Closing frees the share.
    await store.close("a1")
    await store.open("c1", carol)
    assert store.owned(alice) == 1 and store.owned(carol) == 1


async def test_a_key_with_every_session_busy_gets_429(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=10, ttl_s=3600, per_key=1)
    s = await store.open("only", owner_of("k"))
    async with s.turn(queue_cap=1):
        with pytest.raises(Overloaded, match="RLM_MAX_SESSIONS_PER_KEY"):
            await store.open("second", owner_of("k"))


async def test_one_key_cannot_take_every_run_slot() -> None:
    adm = Admission(max_running=4, max_queued=4, per_key=2, queue_per_key=1)
    release = asyncio.Event()
    entered: list[str] = []

    async def hold(key: str) -> None:
        async with adm.slot(key):
            entered.append(key)
            await release.wait()

    tasks = [asyncio.create_task(hold("mallory")) for _ in range(3)]  # 2 run, 1 waits
    await asyncio.sleep(0.01)
    assert entered == ["mallory", "mallory"] and adm.queued == 1
    with pytest.raises(Overloaded, match="RLM_MAX_RUNNING_PER_KEY"):
        async with adm.slot("mallory"):
            pass
    other = asyncio.create_task(hold("alice"))  # a free slot: alice runs at once
    await asyncio.sleep(0.01)
    assert entered.count("alice") == 1 and adm.holding("mallory") == 3
    release.set()
    await asyncio.gather(*tasks, other)
    assert adm.holding("mallory") == 0 and adm.running == 0 and adm.queued == 0


async def test_a_freed_slot_goes_to_the_key_running_the_fewest() -> None:
    adm = Admission(max_running=2, max_queued=20, per_key=2, queue_per_key=10)
    gates = {i: asyncio.Event() for i in range(20)}
    order: list[str] = []

    async def job(key: str, i: int) -> None:
        async with adm.slot(key):
            order.append(key)
            await gates[i].wait()

    hog = [asyncio.create_task(job("hog", i)) for i in range(6)]  # 2 run, 4 wait
    await asyncio.sleep(0.01)
    polite = asyncio.create_task(job("polite", 10))  # waits behind the hog's four
    await asyncio.sleep(0.01)
    gates[0].set()  # one of the hog's runs ends: the slot goes to polite, not the hog
    await asyncio.sleep(0.01)
    assert order == ["hog", "hog", "polite"]
    for g in gates.values():
        g.set()
    await asyncio.gather(*hog, polite)
    assert adm.running == 0 and adm.queued == 0


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    adm = Admission(max_running=1, max_queued=4)
    gate = asyncio.Event()

    async def job() -> None:
        async with adm.slot("k"):
            await gate.wait()

    first = asyncio.create_task(job())
    waiter = asyncio.create_task(job())
    await asyncio.sleep(0.01)
    assert adm.queued == 1
    waiter.cancel()
    await asyncio.sleep(0.01)
    assert adm.queued == 0 and adm.holding("k") == 1
    gate.set()
    await first
    assert adm.running == 0


# ---- the memory floor -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("available_kb", "floor_mb", "refused"),
    [(100 * 1024, 512, True), (2048 * 1024, 512, False), (100 * 1024, 0, False)],
)
def test_new_sandboxes_are_refused_below_the_memory_floor(
    tmp_path: Path, available_kb: int, floor_mb: int, refused: bool
) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemTotal: 999999 kB\nMemAvailable: {available_kb} kB\n")
    assert available_mb(str(meminfo)) == available_kb / 1024
    if refused:
        with pytest.raises(Overloaded, match="RLM_MIN_FREE_MB") as info:
            refuse_below_memory_floor(floor_mb, str(meminfo))
        assert info.value.status == 429 and info.value.retry_after
    else:
        refuse_below_memory_floor(floor_mb, str(meminfo))


def test_unreadable_meminfo_refuses_nothing(tmp_path: Path) -> None:
    assert available_mb(str(tmp_path / "missing")) is None
    refuse_below_memory_floor(10**9, str(tmp_path / "missing"))


# ---- the public surface off loopback ----------------------------------------------------


@pytest.fixture(scope="module")
def public(upstream: ScriptedUpstream) -> Iterator[ServiceServer]:
    # Settings for a public bind (the test server itself still listens on loopback).
    env = service_env(
        upstream,
        rlm_sandbox="local",
        rlm_sandbox_pool_size=0,
        rlm_host="0.0.0.0",
        rlm_instance="rlm-test-public",
    )
    with ServiceServer(**env) as srv:
        yield srv


@pytest.mark.parametrize(
    ("path", "status"),
    [("/healthz", 200), ("/metrics", 401), ("/docs", 404), ("/openapi.json", 404), ("/redoc", 404)],
)
def test_off_loopback_only_the_public_surface_answers_without_a_key(
    public: ServiceServer, path: str, status: int
) -> None:
    assert httpx.get(public.url + path, timeout=10).status_code == status


def test_metrics_take_a_bearer_key_off_loopback(public: ServiceServer) -> None:
    r = httpx.get(public.url + "/metrics", headers={"authorization": "Bearer key-alpha"})
    assert r.status_code == 200 and "rlm_http_requests_total" in r.text


# ---- upstream garbage -------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        Reply(raw=b"<html><body>502 Bad Gateway</body></html>", content_type="text/html"),
        Reply(raw=b"<html>", content_type="application/json"),
        Reply(raw=b'{"choices": [{"message": {"content": "trunc', content_type="application/json"),
        Reply(raw=b'{"error": {"message": "quota exceeded"}}', content_type="application/json"),
        Reply(raw=b'{"choices": "no"}', content_type="application/json"),
    ],
    ids=["html-page", "html-as-json", "truncated", "200-error-object", "wrong-shape"],
)
def test_upstream_garbage_is_a_502_never_a_500(
    public: ServiceServer, up: ScriptedUpstream, reply: Reply
) -> None:
    up.policy = Router([reply] * 10)
    r = httpx.post(
        public.url + "/v1/chat/completions",
        headers={"authorization": "Bearer key-alpha"},
        json={"model": "rlm", "messages": [{"role": "user", "content": "q"}]},
        timeout=60,
    )
    assert r.status_code == 502, r.text
    err = r.json()["error"]
    assert err["type"] == "upstream_error" and "malformed" in err["message"]
    # Retried like a 5xx before giving up (RLM_UPSTREAM_RETRIES).
    assert up.stats.calls >= 2


def test_json_nesting_is_capped_with_a_400(public: ServiceServer) -> None:
    deep = "[" * 5000 + "]" * 5000
    body = (
        '{"model": "rlm", "messages": [{"role": "user", "content": "q"}], "rlm": {"context": %s}}'
    )
    r = httpx.post(
        public.url + "/v1/chat/completions",
        headers={"authorization": "Bearer key-alpha", "content-type": "application/json"},
        content=body % deep,
        timeout=30,
    )
    assert r.status_code == 400 and "recursion limit" in r.json()["error"]["message"]


# ---- sandbox text is valid text ---------------------------------------------------------


def test_lone_surrogates_from_a_sandbox_become_fffd_everywhere(
    public: ServiceServer, up: ScriptedUpstream
) -> None:
    up.policy = Router(
        [
            _repl(
                "print('out', chr(0xDC00))\nbad = 'v' + chr(0xD800)\n"
                "answer['content'] = 'bad ' + chr(0xD800) + ' end'\nanswer['ready'] = True"
            )
        ]
        * 2
    )
    headers = {"authorization": "Bearer key-alpha"}
    r = httpx.post(
        public.url + "/v1/chat/completions",
        headers=headers,
        json={"model": "rlm", "messages": [{"role": "user", "content": "q"}], "stream": False},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "bad \ufffd end"
    sid = r.json()["rlm"]["session_id"]
    listing = httpx.get(public.url + "/v1/sessions", headers=headers, timeout=30)
    assert listing.status_code == 200
    view = httpx.get(public.url + f"/v1/sessions/{sid}", headers=headers, timeout=30)
    assert view.status_code == 200
    bad = next(v for v in view.json()["variables"] if v["name"] == "bad")
    assert bad["repr"] == "'v\\ud800'"  # repr() spells it out: valid text
    run = view.json()["runs"][0]["id"]
    events = httpx.get(public.url + f"/v1/sessions/{sid}/runs/{run}", headers=headers, timeout=30)
    assert events.status_code == 200
    (code,) = [e for e in events.json()["events"] if e["event"] == "code"]
    assert code["stdout"] == "out \ufffd\n"
    streamed = httpx.post(
        public.url + "/v1/chat/completions",
        headers={**headers, "x-rlm-session-id": sid},
        json={"model": "rlm", "messages": [{"role": "user", "content": "q"}], "stream": True},
        timeout=60,
    )
    assert streamed.status_code == 200 and "bad \ufffd end" in streamed.text
