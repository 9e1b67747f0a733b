"""Sessions: ownership, the one LRU, eviction of idle sessions only, TTL, FIFO turns."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.config import SandboxConfig
from sandbox.pool import SandboxPool
from service.errors import NotFound, Overloaded
from service.sessions import Admission, SessionStore, owner_of


@pytest.fixture
async def pool(local_cfg: SandboxConfig):
    p = SandboxPool(local_cfg, 0)
    yield p
    await p.close()


async def test_owner_isolation_and_lru_eviction_skips_busy(pool: SandboxPool) -> None:
    store = SessionStore(pool, max_sessions=2, ttl_s=3600)
    a = await store.open("a", owner_of("k1"))
    b = await store.open("b", owner_of("k1"))
    with pytest.raises(NotFound):
        await store.open("a", owner_of("k2"))
    a.sandbox = await pool.acquire()
    handle = a.sandbox
    # "a" is the least recently used, but busy: "b" goes instead.
    async with a.turn(queue_cap=1):
        await store.open("c", owner_of("k1"))
        assert store.list(owner_of("k1"))[0].id == "c"
        assert {s.id for s in store.list(owner_of("k1"))} == {"a", "c"}
        # With every session busy, a new one is refused at once.
        c = store.get("c", owner_of("k1"))
        async with c.turn(queue_cap=1):
            with pytest.raises(Overloaded):
                await store.open("d", owner_of("k1"))
    await store.open("d", owner_of("k1"))  # now "a" (idle, LRU) is evicted with its sandbox
    assert not handle.alive and b.closed
    assert {s.id for s in store.list(owner_of("k1"))} == {"c", "d"}
    await store.close_all()


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
