"""Warm pool, reaper and launch failures (Docker + runsc)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from sandbox.config import SandboxConfig
from sandbox.docker_backend import LABEL_INSTANCE, LABEL_MANAGED, client
from sandbox.errors import SandboxError, SandboxStartError, SandboxUnavailable
from sandbox.pool import SandboxPool, launch

from .conftest import assert_no_leak, containers


async def _wait_idle(pool: SandboxPool, n: int, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while pool.idle < n:
        assert time.monotonic() < deadline, (
            f"pool has {pool.idle} idle sandboxes, wanted {n}: {pool.last_error}"
        )
        await asyncio.sleep(0.05)


async def test_warm_pool_fills_pops_refills_and_closes(docker_cfg: SandboxConfig) -> None:
    pool = SandboxPool(docker_cfg, size=2)
    await pool.start()
    try:
        await _wait_idle(pool, 2)
        assert pool.ready and pool.in_use == 0
        t0 = time.perf_counter()
        first = await pool.acquire()
        assert time.perf_counter() - t0 < 0.05  # a queue pop, not a container start
        assert first.alive and pool.in_use == 1
        assert (await first.exec("6 * 7")).stdout == "42\n"
        await _wait_idle(pool, 2)  # refilled in the background
        second = await pool.acquire()
        assert second is not first
        ids = await asyncio.to_thread(containers)
        assert len(ids) == 3
        await pool.release(second)
        assert not second.alive
    finally:
        await pool.close()
    assert not first.alive  # handed-out sandboxes are removed too
    await assert_no_leak(ids)


async def test_acquire_from_an_empty_pool_starts_one(docker_cfg: SandboxConfig) -> None:
    pool = SandboxPool(docker_cfg, size=0)
    await pool.start()
    try:
        handle = await pool.acquire()
        assert (await handle.exec("1")).stdout == "1\n"
        ids = await asyncio.to_thread(containers)
    finally:
        await pool.close()
    await assert_no_leak(ids)


async def test_reaper_removes_leftovers_of_this_instance_only(docker_cfg: SandboxConfig) -> None:
    cfg = dataclasses.replace(docker_cfg, instance="rlm-test-reaper")
    other = dataclasses.replace(docker_cfg, instance="rlm-test-bystander")
    dc = client()

    def leftover(instance: str) -> str:
        c = dc.containers.create(
            cfg.image, ["sleep", "60"], labels={LABEL_MANAGED: "1", LABEL_INSTANCE: instance},
            network_mode="none", runtime=cfg.runtime,
        )  # fmt: skip
        return c.id

    stale = await asyncio.to_thread(leftover, cfg.instance)
    bystander = await asyncio.to_thread(leftover, other.instance)
    try:
        pool = SandboxPool(cfg, size=0)
        await pool.start()
        await pool.close()
        assert await asyncio.to_thread(containers, cfg.instance) == []
        assert await asyncio.to_thread(containers, other.instance) == [bystander]
    finally:
        await asyncio.to_thread(lambda: dc.containers.get(bystander).remove(force=True))
    await assert_no_leak([stale], cfg.instance)
    await assert_no_leak([bystander], other.instance)


async def test_close_removes_a_sandbox_the_pool_lost_track_of(docker_cfg: SandboxConfig) -> None:
    """A create the daemon carried out but never answered (it crashed): the pool never
    learnt the container's id. Its shutdown removes it anyway, by the instance label."""
    cfg = dataclasses.replace(docker_cfg, instance="rlm-test-lost-track")
    pool = SandboxPool(cfg, size=0)
    await pool.start()
    try:
        lost = await asyncio.to_thread(
            lambda: client().containers.create(
                cfg.image, ["sleep", "60"], network_mode="none", runtime=cfg.runtime,
                labels={LABEL_MANAGED: "1", LABEL_INSTANCE: cfg.instance},
            ).id
        )  # fmt: skip
    finally:
        await pool.close()
    await assert_no_leak([lost], cfg.instance)


async def test_unknown_backend_is_unavailable(docker_cfg: SandboxConfig) -> None:
    with pytest.raises(
        SandboxUnavailable, match=r"unknown sandbox backend 'firecracker'.*RLM_SANDBOX"
    ):
        await launch(dataclasses.replace(docker_cfg, backend="firecracker"))


async def test_missing_image_is_a_start_error_and_leaks_nothing(docker_cfg: SandboxConfig) -> None:
    cfg = dataclasses.replace(docker_cfg, image="rlm-sandbox:does-not-exist")
    with pytest.raises(SandboxStartError, match=r"not found.*make image.*RLM_SANDBOX_IMAGE"):
        await launch(cfg)
    await assert_no_leak([])


async def test_unknown_runtime_is_a_start_error_and_leaks_nothing(
    docker_cfg: SandboxConfig,
) -> None:
    cfg = dataclasses.replace(docker_cfg, runtime="no-such-runtime")
    with pytest.raises(SandboxStartError, match="could not start"):
        await launch(cfg)
    await assert_no_leak([])


async def test_pool_refill_failure_is_reported(docker_cfg: SandboxConfig) -> None:
    pool = SandboxPool(dataclasses.replace(docker_cfg, image="rlm-sandbox:does-not-exist"), size=1)
    await pool.start()
    try:
        deadline = time.monotonic() + 10
        while pool.last_error is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert "make image" in pool.last_error and not pool.ready
        with pytest.raises(SandboxStartError):
            await pool.acquire()
    finally:
        await pool.close()
    await assert_no_leak([])


_LEFTOVERS = (
    "import os, sys\n"
    "print('secret' in globals(), 'colorsys' in sys.modules, os.listdir('/tmp'), os.listdir('/dev/shm'))"
)


async def test_a_kept_sandbox_serves_only_its_owner_and_comes_back_reset(
    runsc_cfg: SandboxConfig,
) -> None:
    reused: list[int] = []
    pool = SandboxPool(runsc_cfg, size=0, keep=2, on_reused=lambda: reused.append(1))
    await pool.start()
    try:
        alice = await pool.acquire("alice")
        await alice.exec(
            "secret = 'of alice'\nimport colorsys\nopen('/tmp/left', 'w').write('x')\n"
            "open('/dev/shm/left', 'w').write('x')"
        )
        await pool.release(alice, "alice")
        assert alice.alive and pool.kept == 1 and pool.in_use == 0
        bob = await pool.acquire("bob")
        assert bob is not alice and reused == []  # another key never gets it: a start
        again = await pool.acquire("alice")
        assert again is alice and reused == [1] and pool.kept == 0 and pool.in_use == 2
        # A fresh interpreter: no variable, module or file of the last session.
        assert (await again.exec(_LEFTOVERS)).stdout == "False False [] []\n"
        await pool.release(bob)  # no owner: closed, never kept
        assert not bob.alive and pool.kept == 0
        ids = await asyncio.to_thread(containers)
    finally:
        await pool.close()
    assert not alice.alive
    await assert_no_leak(ids)


async def test_kept_sandboxes_are_capped_expire_and_never_outlive_the_pool(
    runsc_cfg: SandboxConfig,
) -> None:
    pool = SandboxPool(runsc_cfg, size=0, keep=2)
    await pool.start()
    try:
        boxes = [await pool.acquire(owner) for owner in ("a", "b", "c")]
        for box, owner in zip(boxes, ("a", "b", "c"), strict=True):
            await pool.release(box, owner)
        assert pool.kept == 2  # past the cap the oldest (a's) is closed, whoever's it was
        deadline = time.monotonic() + 10
        while boxes[0].alive:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        assert boxes[1].alive and boxes[2].alive
        fresh = await pool.acquire("a")  # a's is gone: a start
        assert fresh not in boxes
        # A sandbox whose code is still running is not kept: no reset under it.
        running = asyncio.create_task(fresh.exec("import time; time.sleep(30)"))
        deadline = time.monotonic() + 10
        while not fresh.busy:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        await pool.release(fresh, "a")
        assert not fresh.alive and pool.kept == 2
        with pytest.raises(SandboxError):
            await running
        pool.KEEP_IDLE_S = 0.2  # kept ones not taken in time are closed by the refill loop
        deadline = time.monotonic() + 10
        while pool.kept or boxes[1].alive or boxes[2].alive:
            assert time.monotonic() < deadline, f"{pool.kept} still kept"
            await asyncio.sleep(0.05)
        pool.KEEP_IDLE_S = 60.0
        last = await pool.acquire("z")
        await pool.release(last, "z")
        assert pool.kept == 1 and last.alive  # kept as the pool closes: closed with it
        ids = await asyncio.to_thread(containers)
    finally:
        await pool.close()
    assert not last.alive
    await assert_no_leak(ids)


async def test_an_expired_kept_sandbox_is_never_handed_out(runsc_cfg: SandboxConfig) -> None:
    pool = SandboxPool(runsc_cfg, size=0, keep=1)
    pool.KEEP_IDLE_S = 0.05
    await pool.start()
    try:
        box = await pool.acquire("a")
        await pool.release(box, "a")
        await asyncio.sleep(0.1)  # expired: acquire skips it even before the loop closes it
        fresh = await pool.acquire("a")
        assert fresh is not box
        ids = await asyncio.to_thread(containers)
    finally:
        await pool.close()
    await assert_no_leak(ids)


async def test_a_sandbox_is_kept_for_a_bounded_number_of_sessions(
    runsc_cfg: SandboxConfig,
) -> None:
    pool = SandboxPool(runsc_cfg, size=0, keep=1)
    pool.KEEP_MAX_SESSIONS = 3
    await pool.start()
    try:
        first = await pool.acquire("a")
        for _ in range(2):  # sessions 1 and 2 end: kept each time
            await pool.release(first, "a")
            assert await pool.acquire("a") is first
        await pool.release(first, "a")  # the third: closed
        assert not first.alive and pool.kept == 0
        ids = await asyncio.to_thread(containers)
    finally:
        await pool.close()
    await assert_no_leak(ids)
