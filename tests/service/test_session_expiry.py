"""Stored sessions expire like live ones (RLM_SESSION_TTL_S), and the file store is swept.

A snapshot unused for longer than the TTL answers 410 ``session_lost`` (never a restore of
stale state, never a fresh session under the old id); the sweep drops its blob and keeps a
tombstone, and removes tombstones after the week the service remembers ids for.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loadtest.upstream import ScriptedUpstream
from service.durability import Durability
from service.errors import SessionLost
from service.sessions import owner_of
from service.store import FileLeases, FileStore, SnapshotMeta
from tests.service.conftest import Router, ServiceServer, service_env

TTL = 100.0
WEEK = 7 * 86400.0


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(tmp_path: Path, clock: Clock) -> Durability:
    return Durability(
        FileStore(tmp_path / "snapshots", clock=clock),
        FileLeases(tmp_path / "leases", clock=clock),
        holder="test@host:1",
        max_snapshot_bytes=2**20,
        session_ttl_s=TTL,
        clock=clock,
    )


async def test_a_snapshot_older_than_the_ttl_reads_as_lost(tmp_path: Path) -> None:
    clock = Clock()
    d = make(tmp_path, clock)
    await d.store.put("a1", "s1", b"blob", SnapshotMeta(token=1, turns=2))
    clock.now += TTL - 1
    meta = await d.lookup("a1", "s1")
    assert meta is not None and not meta.lost
    clock.now += 2
    meta = await d.lookup("a1", "s1")
    assert meta is not None and meta.lost
    assert "idle past RLM_SESSION_TTL_S (100s)" in (meta.lost_reason or "")
    lease = await d.claim("a1", "s1")
    with pytest.raises(SessionLost, match="RLM_SESSION_TTL_S"):
        await d.load(lease, handle=None)  # type: ignore[arg-type]  # refused before any use


async def test_the_sweep_drops_expired_blobs_keeps_tombstones_then_forgets_them(
    tmp_path: Path,
) -> None:
    clock = Clock()
    d = make(tmp_path, clock)
    await d.store.put("a1", "old", b"x" * 1000, SnapshotMeta(token=3))
    await d.store.put("a1", "held", b"y" * 1000, SnapshotMeta(token=1))
    await d.store.put("b2", "gone", b"", SnapshotMeta(token=1))
    await d.store.mark_lost("b2", "gone", "deleted by its owner", token=1)
    clock.now += TTL / 2
    await d.store.put("b2", "fresh", b"z", SnapshotMeta(token=1))
    held = await d.claim("a1", "held")  # live on some process: not the sweep's
    clock.now += TTL / 2 + 1
    await d.leases.renew(held)

    assert await d.sweep(WEEK) == (1, 0)
    old = await d.store.get("a1", "old")
    assert old is not None and old.meta.lost and old.blob == b""
    assert "RLM_SESSION_TTL_S" in (old.meta.lost_reason or "")
    kept = await d.store.get("a1", "held")
    assert kept is not None and kept.blob == b"y" * 1000
    fresh = await d.store.get("b2", "fresh")
    assert fresh is not None and fresh.blob == b"z"
    # A second sweep does nothing new (tombstones are not re-dated).
    assert await d.sweep(WEEK) == (0, 0)

    clock.now += WEEK + 1
    await d.leases.release(held)
    tombstoned, removed = await d.sweep(WEEK)
    assert removed == 2  # "old" and "gone"; "held" and "fresh" became tombstones now
    assert tombstoned == 2
    assert await d.store.head("a1", "old") is None
    assert await d.store.head("b2", "gone") is None


def test_a_request_naming_an_expired_stored_session_gets_410(
    up: ScriptedUpstream, tmp_path: Path
) -> None:
    """Through HTTP: the stored snapshot is older than RLM_SESSION_TTL_S."""
    store = FileStore(tmp_path / "snapshots", clock=lambda: 1_000.0)  # saved long ago
    import asyncio

    asyncio.run(
        store.put(owner_of("key-alpha"), "sess-expired", b"", SnapshotMeta(token=1, turns=3))
    )
    up.policy = Router(["FINAL(fresh)"])
    env = service_env(
        up, rlm_sandbox="local", rlm_sandbox_pool_size=0, rlm_session_ttl_s=3600,
        rlm_session_store=f"file://{tmp_path}",
    )  # fmt: skip
    with ServiceServer(**env) as svc:
        r = httpx.post(
            svc.url + "/v1/chat/completions",
            headers={"Authorization": "Bearer key-alpha", "x-rlm-session-id": "sess-expired"},
            json={"model": "rlm", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert r.status_code == 410, r.text
        assert r.json()["error"]["code"] == "session_lost"
        assert "RLM_SESSION_TTL_S" in r.json()["error"]["message"]
        # Another key naming the same id is another session altogether.
        other = httpx.post(
            svc.url + "/v1/chat/completions",
            headers={"Authorization": "Bearer key-beta", "x-rlm-session-id": "sess-expired"},
            json={"model": "rlm", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert other.status_code == 200, other.text
