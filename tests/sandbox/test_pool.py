"""Warm pool, reaper and launch failures (Docker + runsc)."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from sandbox.config import SandboxConfig
from sandbox.docker_backend import LABEL_INSTANCE, LABEL_MANAGED, client
from sandbox.errors import SandboxStartError, SandboxUnavailable
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
