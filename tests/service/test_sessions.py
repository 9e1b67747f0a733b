"""Sessions: ownership, the one LRU, eviction of idle sessions only, TTL, FIFO turns."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.config import SandboxConfig
from sandbox.pool import SandboxPool
from service.admission import Admission
from service.errors import NotFound, Overloaded, SessionLost
from service.sessions import SessionStore, owner_of


async def test_owner_isolation_and_lru_eviction_skips_busy(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=2, ttl_s=3600)
    a = await store.open("a", owner_of("k1"))
    b = await store.open("b", owner_of("k1"))
    with pytest.raises(NotFound):  # another key sees nothing of it
        store.get("a", owner_of("k2"))
    a.sandbox = await pool.acquire()
    handle = a.sandbox
    # "a" is the least recently used, but busy: "b" goes instead.
    async with a.turn(queue_cap=1):
        await store.open("c", owner_of("k1"))
        assert store.of_owner(owner_of("k1"))[0].id == "c"
        assert {s.id for s in store.of_owner(owner_of("k1"))} == {"a", "c"}
        # With every session busy, a new one is refused at once.
        c = store.get("c", owner_of("k1"))
        async with c.turn(queue_cap=1):
            with pytest.raises(Overloaded):
                await store.open("d", owner_of("k1"))
    await store.open("d", owner_of("k1"))  # now "a" (idle, LRU) is evicted with its sandbox
    assert not handle.alive and b.closed
    assert {s.id for s in store.of_owner(owner_of("k1"))} == {"c", "d"}
    await store.close_all()


async def test_a_session_deleted_while_a_turn_holds_it_never_keeps_its_sandbox(
    local_cfg: SandboxConfig,
) -> None:
    """RLM_SANDBOX_KEEP: a DELETE that lands while a turn runs (or one began while the close
    awaited the store) closes the sandbox: that turn's code must not run on into the key's
    next session. An idle session's sandbox is kept, reset, for the key."""
    pool = SandboxPool(local_cfg, 0, keep=2)
    store = SessionStore(pool, max_sessions=4, ttl_s=3600)
    key = owner_of("k1")
    try:
        busy = await store.open("busy", key)
        busy.sandbox = held = await pool.acquire(key)
        await held.exec("left_behind = 'by the busy session'")
        async with busy.turn(queue_cap=1):
            await store.delete("busy", key, "deleted")
        assert not held.alive
        nxt = await pool.acquire(key)
        assert nxt is not held
        await pool.release(nxt)

        idle = await store.open("idle", key)
        idle.sandbox = kept = await pool.acquire(key)
        await kept.exec("left_behind = 'by the idle session'")
        await store.delete("idle", key, "deleted")
        assert kept.alive  # reset and kept for the same key
        again = await pool.acquire(key)
        assert again is kept
        r = await again.exec("'left_behind' in globals()")
        assert r.stdout == "False\n"
        await pool.release(again)
    finally:
        await store.close_all()
        await pool.close()


async def test_ids_are_per_key_so_an_id_reveals_nothing(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=4, ttl_s=3600)
    mine = await store.open("shared-name", owner_of("k1"))
    theirs = await store.open("shared-name", owner_of("k2"))
    assert mine is not theirs and theirs.owner == owner_of("k2") and theirs.new
    await store.close("shared-name", "deleted", owner=owner_of("k1"))
    assert store.get("shared-name", owner_of("k2")) is theirs


async def test_turns_run_in_arrival_order_and_the_queue_is_capped(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=4, ttl_s=3600)
    s = await store.open(None, owner_of(None))
    assert len(s.id) == 36  # a server-made UUIDv4
    order: list[int] = []

    async def turn(n: int) -> None:
        async with s.turn(queue_cap=3):
            order.append(n)
            await asyncio.sleep(0.02)

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(turn(n)))
        await asyncio.sleep(0)
    with pytest.raises(Overloaded, match="RLM_SESSION_QUEUE"):
        async with s.turn(queue_cap=3):
            pass
    await asyncio.gather(*tasks)
    assert order == [0, 1, 2, 3]


async def test_idle_sessions_expire(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=4, ttl_s=0.2)
    s = await store.open("old", owner_of(None))
    s.sandbox = await pool.acquire()
    handle = s.sandbox
    store._reap_interval = 0.05
    store.start()
    for _ in range(100):
        if len(store) == 0:
            break
        await asyncio.sleep(0.05)
    assert len(store) == 0 and not handle.alive
    await store.close_all()


async def test_admission_refuses_at_once_past_running_and_queue() -> None:
    adm = Admission(max_running=1, max_queued=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with adm.slot():
            await release.wait()

    first = asyncio.create_task(hold())
    await asyncio.sleep(0)
    second = asyncio.create_task(hold())
    await asyncio.sleep(0)
    assert (adm.running, adm.queued) == (1, 1)
    with pytest.raises(Overloaded) as err:
        async with adm.slot():
            pass
    assert err.value.retry_after and err.value.status == 429
    release.set()
    await asyncio.gather(first, second)
    assert (adm.running, adm.queued) == (0, 0)


@pytest.mark.parametrize(
    ("how", "reason"),
    [("deleted", "deleted by its owner"), ("evicted", "evicted"), ("expired", "RLM_SESSION_TTL_S")],
)
async def test_a_closed_session_is_410_not_a_new_empty_one(
    pool: SandboxPool, how: str, reason: str
) -> None:
    store = SessionStore(pool, max_sessions=1, ttl_s=0.05)
    me = owner_of("k1")
    await store.open("s1", me)
    if how == "deleted":
        await store.close("s1", "it was deleted by its owner")
    elif how == "evicted":
        await store.open("s2", me)  # the host holds one: s1 is pushed out
    else:
        store._reap_interval = 0.01
        store.start()
        await asyncio.sleep(0.2)
        await store.close_all()
    with pytest.raises(SessionLost, match=reason) as info:
        await store.open("s1", me)
    assert info.value.status == 410 and info.value.code == "session_lost"
    # Another key learns nothing: the same id is simply a new session of its own.
    await store.close_all(snapshot=False)
    other = await store.open("s1", owner_of("k2"))
    assert other.new and other.owner == owner_of("k2")
    await store.close("s1", owner=owner_of("k2"))
    # A reset starts it over, as a new session.
    fresh = await store.open("s1", me, reset=True)
    assert fresh.new and fresh.turns == 0
    again = await store.open("s1", me)
    assert again is fresh


async def test_an_unknown_id_starts_a_session(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=4, ttl_s=3600)
    s = await store.open("never-seen", owner_of("k1"))
    assert s.new and s.id == "never-seen"
