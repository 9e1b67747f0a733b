"""Session leases: one contract suite run on FileLeases and on DynamoLeases (against a moto
server on loopback): acquire, renew, release, expiry, fencing tokens, and the race, two OS
processes asking for the same session at the same instant, round after round."""

from __future__ import annotations

import asyncio
import multiprocessing
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest

from service.store import (
    DynamoLeases,
    FileLeases,
    FileStore,
    InvalidKey,
    LeaseDirectory,
    S3Store,
    SnapshotMeta,
    SnapshotStore,
    StaleToken,
    StoreUnavailable,
)
from tests.service.fake_aws import REGION

OWNER = "0123456789abcdef" * 4
OTHER_OWNER = "fedcba9876543210" * 4
TTL = 30.0
RACE_ROUNDS = 50


# -- a moto server on loopback ------------------------------------------------------------


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION)


def _create_table(endpoint: str) -> str:
    name = f"rlm-leases-{uuid.uuid4().hex[:10]}"
    _client("dynamodb", endpoint).create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


# -- the backends under one interface -----------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    make: Callable[..., LeaseDirectory]  # a directory over the same records (another process)
    spec: tuple[str, ...]  # how a spawned process builds one: see _build


def _build(spec: tuple[str, ...]) -> LeaseDirectory:
    kind, where, *rest = spec
    if kind == "file":
        return FileLeases(Path(where))
    return DynamoLeases(rest[0], client=_client("dynamodb", where))


@pytest.fixture(params=["file", "dynamo"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "file":
        root = tmp_path / "leases"
        return Backend(lambda **kw: FileLeases(root, **kw), ("file", str(root)))
    endpoint = request.getfixturevalue("moto_endpoint")
    table = _create_table(endpoint)
    client = _client("dynamodb", endpoint)
    return Backend(
        lambda **kw: DynamoLeases(table, **{"client": client, **kw}), ("dynamo", endpoint, table)
    )


# -- the contract -------------------------------------------------------------------------


async def test_acquire_renew_release(backend: Backend) -> None:
    clock = FakeClock()
    leases = backend.make(clock=clock)
    assert await leases.current(OWNER, "s") is None

    a = await leases.acquire(OWNER, "s", "host-a", TTL)
    assert a is not None
    assert (a.owner, a.session_id, a.holder, a.token) == (OWNER, "s", "host-a", 1)
    assert a.expires_at == clock.now + TTL and a.remaining_s(clock.now) == TTL
    info = await leases.current(OWNER, "s")
    assert info is not None and info.holder == "host-a" and info.token == 1
    assert info.held(clock.now)

    # Held: nobody else gets it; the holder asking again extends it under the same token.
    clock.advance(10)
    assert await leases.acquire(OWNER, "s", "host-b", TTL) is None
    again = await leases.acquire(OWNER, "s", "host-a", TTL)
    assert again is not None and again.token == 1 and again.expires_at == clock.now + TTL

    clock.advance(10)
    renewed = await leases.renew(again)
    assert renewed is not None and renewed.token == 1 and renewed.expires_at == clock.now + TTL

    await leases.release(renewed)
    info = await leases.current(OWNER, "s")
    assert info is not None and not info.held(clock.now) and info.token == 1
    assert await leases.renew(renewed) is None  # released is released
    b = await leases.acquire(OWNER, "s", "host-b", TTL)
    assert b is not None and b.token == 2
    await leases.release(renewed)  # an old lease's release leaves the new holder alone
    info = await leases.current(OWNER, "s")
    assert info is not None and info.holder == "host-b" and info.held(clock.now)


async def test_a_holder_is_asked_to_hand_over(backend: Backend) -> None:
    """``want`` marks the live holder's record; the holder's renewals see it until it lets
    go; the next holder starts with no request pending."""
    clock = FakeClock()
    leases = backend.make(clock=clock)
    assert not await leases.want(OWNER, "s")  # nobody holds it: nothing to ask
    a = await leases.acquire(OWNER, "s", "host-a", TTL)
    assert a is not None and a.wanted == 0
    clock.advance(1)
    assert await leases.want(OWNER, "s")
    asked_at = clock.now
    clock.advance(1)
    assert await leases.want(OWNER, "s")  # asked again: the first request's time stays
    info = await leases.current(OWNER, "s")
    assert info is not None and info.holder == "host-a" and info.token == 1
    assert info.wanted == asked_at and info.held(clock.now)  # asking takes nothing
    assert await leases.acquire(OWNER, "s", "host-b", TTL) is None
    renewed = await leases.renew(a)
    assert renewed is not None and renewed.wanted == asked_at
    again = await leases.acquire(OWNER, "s", "host-a", TTL)  # the holder re-acquiring
    assert again is not None and again.wanted == asked_at
    await leases.release(renewed)
    b = await leases.acquire(OWNER, "s", "host-b", TTL)
    assert b is not None and b.token == 2 and b.wanted == 0
    clock.advance(TTL + 1)  # an expired holder is not asked: its lease can be taken
    assert not await leases.want(OWNER, "s")


async def test_expiry_hands_the_session_over_with_a_higher_token(backend: Backend) -> None:
    clock = FakeClock()
    leases = backend.make(clock=clock)
    a = await leases.acquire(OWNER, "s", "host-a", 5)
    assert a is not None
    clock.advance(4.9)
    assert await leases.acquire(OWNER, "s", "host-b", 5) is None
    clock.advance(0.1)  # expires_at is exclusive: at that instant the lease is free
    b = await leases.acquire(OWNER, "s", "host-b", 5)
    assert b is not None and b.token == a.token + 1
    assert await leases.renew(a) is None  # host-a was paused past its lease: it lost it
    await leases.release(a)
    info = await leases.current(OWNER, "s")
    assert info is not None and (info.holder, info.token) == ("host-b", b.token)


async def test_renewing_an_expired_lease_nobody_took(backend: Backend) -> None:
    clock = FakeClock()
    leases = backend.make(clock=clock)
    a = await leases.acquire(OWNER, "s", "host-a", 5)
    assert a is not None
    clock.advance(60)
    renewed = await leases.renew(a)  # no newer token exists, so nothing it wrote is stale
    assert renewed is not None and renewed.token == a.token
    assert renewed.expires_at == clock.now + 5


async def test_tokens_only_grow(backend: Backend) -> None:
    clock = FakeClock()
    leases = backend.make(clock=clock)
    tokens = []
    for holder in ["a", "b", "a", "a", "c", "b"]:
        lease = await leases.acquire(OWNER, "s", holder, TTL)
        assert lease is not None
        tokens.append(lease.token)
        await leases.release(lease)
    assert tokens == [1, 2, 3, 4, 5, 6]  # the same holder after a release is a new holding
    lease = await leases.acquire(OWNER, "s", "a", 1)
    assert lease is not None and lease.token == 7
    clock.advance(2)
    lease = await leases.acquire(OWNER, "s", "a", 1)  # its own lease, expired
    assert lease is not None and lease.token == 8
    # Another directory object (another process) continues the same series.
    other = backend.make(clock=clock)
    clock.advance(2)
    lease = await other.acquire(OWNER, "s", "z", 1)
    assert lease is not None and lease.token == 9


async def test_sessions_and_owners_are_independent(backend: Backend) -> None:
    leases = backend.make()
    a = await leases.acquire(OWNER, "s", "host-a", TTL)
    b = await leases.acquire(OTHER_OWNER, "s", "host-b", TTL)
    c = await leases.acquire(OWNER, "t", "host-b", TTL)
    assert a is not None and b is not None and c is not None
    assert a.token == b.token == c.token == 1


async def test_bad_arguments_are_refused(backend: Backend) -> None:
    leases = backend.make()
    for owner, sid in [("../x", "s"), ("ABC", "s"), (OWNER, "../s"), (OWNER, "a/b"), (OWNER, "")]:
        with pytest.raises(InvalidKey):
            await leases.acquire(owner, sid, "h", TTL)
        with pytest.raises(InvalidKey):
            await leases.current(owner, sid)
    for holder in ["", "has space", "x" * 257, "tab\t"]:
        with pytest.raises(InvalidKey):
            await leases.acquire(OWNER, "s", holder, TTL)
    for ttl in [0, -1, 86401]:
        with pytest.raises(ValueError, match="ttl_s"):
            await leases.acquire(OWNER, "s", "h", ttl)


async def test_concurrent_acquires_in_one_process(backend: Backend) -> None:
    """Many tasks (each its own holder) ask at once: exactly one gets each session."""
    leases = backend.make()
    for round_ in range(5):
        sid = f"crowd-{round_}"
        results = await asyncio.gather(
            *(leases.acquire(OWNER, sid, f"task-{i}", TTL) for i in range(12))
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1 and winners[0].token == 1
        info = await leases.current(OWNER, sid)
        assert info is not None and info.holder == winners[0].holder


def _race_worker(spec: tuple[str, ...], name: str, rounds: int, barrier: Any, out: Any) -> None:
    """One contender, in its own OS process: at each round's barrier, acquire."""
    leases = _build(spec)
    with asyncio.Runner() as runner:
        for r in range(rounds):
            barrier.wait(timeout=60)
            lease = runner.run(leases.acquire(OWNER, f"race-{r}", name, TTL))
            out.put((r, name, None if lease is None else lease.token))


async def test_two_processes_race_for_the_same_session(backend: Backend) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    out = ctx.Queue()
    names = ["proc-a", "proc-b"]
    procs = [
        ctx.Process(target=_race_worker, args=(backend.spec, n, RACE_ROUNDS, barrier, out))
        for n in names
    ]
    for p in procs:
        p.start()
    try:
        results = [await asyncio.to_thread(out.get, timeout=60) for _ in range(2 * RACE_ROUNDS)]
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs)

    leases = backend.make()
    wins = dict.fromkeys(names, 0)
    for r in range(RACE_ROUNDS):
        this_round = [(name, token) for rr, name, token in results if rr == r]
        winners = [(name, token) for name, token in this_round if token is not None]
        assert len(this_round) == 2 and len(winners) == 1, (r, this_round)
        name, token = winners[0]
        assert token == 1
        wins[name] += 1
        info = await leases.current(OWNER, f"race-{r}")
        assert info is not None and (info.holder, info.token) == (name, 1)
    assert sum(wins.values()) == RACE_ROUNDS


# -- leases and snapshots together: the fencing story -------------------------------------


@pytest.fixture(params=["file", "aws"])
def pair(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Callable[[FakeClock], tuple[SnapshotStore, LeaseDirectory]]:
    if request.param == "file":
        return lambda clock: (
            FileStore(tmp_path / "snapshots", clock=clock),
            FileLeases(tmp_path / "leases", clock=clock),
        )
    endpoint = request.getfixturevalue("moto_endpoint")
    table = _create_table(endpoint)
    s3 = _client("s3", endpoint)
    bucket = f"rlm-test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    dynamo = _client("dynamodb", endpoint)
    return lambda clock: (
        S3Store(bucket, "p", client=s3, clock=clock),
        DynamoLeases(table, client=dynamo, clock=clock),
    )


async def test_a_paused_holder_cannot_overwrite_its_successor(
    pair: Callable[[FakeClock], tuple[SnapshotStore, LeaseDirectory]],
) -> None:
    clock = FakeClock()
    store, leases = pair(clock)
    a = await leases.acquire(OWNER, "s", "host-a", 10)
    assert a is not None
    await store.put(OWNER, "s", b"turn 1", SnapshotMeta(token=a.token, turns=1))
    clock.advance(11)  # host-a stalls (a GC pause, a partition) past its lease
    b = await leases.acquire(OWNER, "s", "host-b", 10)
    assert b is not None and b.token > a.token
    snap = await store.get(OWNER, "s")  # host-b continues from the latest state
    assert snap is not None and snap.blob == b"turn 1"
    await store.put(OWNER, "s", b"turn 2", SnapshotMeta(token=b.token, turns=2))
    # host-a wakes up and, not knowing, tries to save: refused, and told why.
    with pytest.raises(StaleToken):
        await store.put(OWNER, "s", b"diverged turn 2", SnapshotMeta(token=a.token, turns=2))
    with pytest.raises(StaleToken):
        await store.mark_lost(OWNER, "s", "host-a's sandbox died", token=a.token)
    assert await leases.renew(a) is None
    snap = await store.get(OWNER, "s")
    assert snap is not None and snap.blob == b"turn 2" and snap.meta.token == b.token


# -- backend failures ---------------------------------------------------------------------


async def test_a_missing_table_is_store_unavailable_naming_the_setting(
    moto_endpoint: str,
) -> None:
    leases = DynamoLeases("no-such-table", client=_client("dynamodb", moto_endpoint))
    with pytest.raises(StoreUnavailable, match="RLM_SESSION_LEASE_TABLE"):
        await leases.acquire(OWNER, "s", "h", TTL)


async def test_an_unusable_lease_directory_is_store_unavailable(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreUnavailable):
        await FileLeases(blocker).acquire(OWNER, "s", "h", TTL)
