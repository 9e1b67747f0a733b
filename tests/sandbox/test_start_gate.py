"""The pool's start gate: a request's cold start never queues behind warm-pool refills."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.pool import StartGate


async def _hold(
    gate: StartGate, urgent: bool, log: list[str], name: str, release: asyncio.Event
) -> None:
    async with gate.slot(urgent=urgent):
        log.append(name)
        await release.wait()


async def test_refills_leave_a_slot_for_requests() -> None:
    gate = StartGate(2)
    log: list[str] = []
    done = asyncio.Event()
    refills = [asyncio.create_task(_hold(gate, False, log, f"refill{i}", done)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert log == ["refill0"]  # one refill at a time: the second slot stays free
    request = asyncio.create_task(_hold(gate, True, log, "request", done))
    await asyncio.sleep(0.01)
    assert log == ["refill0", "request"]  # at once, not after the waiting refills
    done.set()
    await asyncio.gather(*refills, request)
    assert log[2:] == ["refill1", "refill2"] and gate.running == 0 and gate.refills == 0


async def test_waiting_requests_go_before_waiting_refills() -> None:
    gate = StartGate(1)
    log: list[str] = []
    first, rest = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold(gate, True, log, "held", first))
    await asyncio.sleep(0.01)
    refill = asyncio.create_task(_hold(gate, False, log, "refill", rest))
    await asyncio.sleep(0.01)
    request = asyncio.create_task(_hold(gate, True, log, "request", rest))
    await asyncio.sleep(0.01)
    first.set()
    await asyncio.sleep(0.01)
    assert log == ["held", "request"]  # queued after the refill, served before it
    rest.set()
    await asyncio.gather(holder, refill, request)
    assert log == ["held", "request", "refill"] and gate.running == 0


async def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    gate = StartGate(1)
    log: list[str] = []
    first, rest = asyncio.Event(), asyncio.Event()
    holder = asyncio.create_task(_hold(gate, False, log, "held", first))
    await asyncio.sleep(0.01)
    request = asyncio.create_task(_hold(gate, True, log, "request", rest))
    refill = asyncio.create_task(_hold(gate, False, log, "refill", rest))
    await asyncio.sleep(0.01)
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    first.set()
    rest.set()
    await asyncio.wait_for(asyncio.gather(holder, refill), 2)
    assert log == ["held", "refill"] and gate.running == 0 and gate.refills == 0
