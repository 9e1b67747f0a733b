"""Snapshots on both backends: a session's REPL leaves as one opaque blob and comes back in a
fresh sandbox, one value at a time, naming what could not be kept."""

from __future__ import annotations

import pytest

from sandbox.config import SandboxConfig
from sandbox.errors import SnapshotOverCap
from sandbox.handle import SandboxHandle
from sandbox.pool import launch

SETUP = """
import json, threading
numbers = list(range(10_000))
nested = {'a': [1, 2, {'b': (3, 4)}], 'text': 'é' * 100}
class Point:
    def __init__(self, x): self.x = x
p = Point(7)
def double(x, k=2):
    return helper_total(x) * k
def helper_total(x):
    return sum(x)
lock = threading.Lock()
gen = (i for i in range(3))
state_set('counter', 41)
state_set(('tuple', 'key'), b'bytes')
"""


async def test_a_snapshot_restores_into_a_fresh_sandbox(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    await sandbox.load("the context " * 1000, "root", ("context_0", "context"))
    r = await sandbox.exec(SETUP)
    assert r.error is None, r
    snap = await sandbox.snapshot(64 * 2**20)
    # Classes defined in the REPL travel as their class statement, functions as code.
    assert set(snap.unpicklable) == {"lock", "gen"}
    assert len(snap.blob) > 10_000
    fresh = await launch(cfg)
    try:
        failed = await fresh.restore(snap.blob)
        r = await fresh.exec(
            "print(sum(numbers), nested['a'][2]['b'], len(context_0), json.dumps([1]),"
            " state_get('counter') + 1, state[('tuple', 'key')], 'lock' in globals(),"
            " double([1, 2]), double([1], k=5), p.x, isinstance(p, Point))"
        )
        assert r.error is None, r
        assert r.stdout == "49995000 (3, 4) 12000 [1] 42 b'bytes' False 6 5 7 True\n", r.stdout
        assert failed == []
    finally:
        await fresh.close()


async def test_a_snapshot_over_its_cap_is_refused_and_the_session_lives_on(
    sandbox: SandboxHandle,
) -> None:
    await sandbox.exec("big = 'x' * 3_000_000")
    with pytest.raises(SnapshotOverCap) as info:
        await sandbox.snapshot(1_000_000)
    assert info.value.size > 3_000_000
    r = await sandbox.exec("print(len(big))")
    assert r.stdout == "3000000\n"


async def test_a_large_snapshot_travels_in_pieces(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    await sandbox.exec("import os, zlib\nblob = os.urandom(9 * 2**20)\nsig = zlib.crc32(blob)")
    snap = await sandbox.snapshot(0)
    fresh = await launch(cfg)
    try:
        assert await fresh.restore(snap.blob) == []
        r = await fresh.exec("print(len(blob), zlib.crc32(blob) == sig)")
        assert r.stdout == f"{9 * 2**20} True\n"
    finally:
        await fresh.close()


async def test_a_snapshot_of_hostile_values_loses_only_them(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    await sandbox.exec(
        "class Evil:\n"
        "    def __reduce__(self): raise RuntimeError('no')\n"
        "evil = Evil()\nkept = 'yes'\n"
        # A class statement that cannot run again (its body used up what it read): it is
        # lost at restore, with what refers to it, and nothing else.
        "once = [1]\n"
        "class Once:\n    token = once.pop()\n"
        "one = Once()\n"
    )
    snap = await sandbox.snapshot(0)
    assert snap.unpicklable == ["evil"]  # Evil itself travels as its class statement
    fresh = await launch(cfg)
    try:
        assert sorted(await fresh.restore(snap.blob)) == ["Once", "one"]
        assert await fresh.get_var("kept") == "yes"
        assert await fresh.get_var("evil") is None
    finally:
        await fresh.close()


async def test_a_value_under_several_names_is_kept_once(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    text = "z" * 2**20
    await sandbox.load(text, "root", ("context_0", "context"))
    await sandbox.exec("same = context\ncopy = context + ''")
    snap = await sandbox.snapshot(0)
    assert len(snap.blob) < 2.5 * 2**20  # context, context_0 and same: one copy; copy: another
    fresh = await launch(cfg)
    try:
        assert await fresh.restore(snap.blob) == []
        r = await fresh.exec("print(context is context_0 is same, len(copy))")
        assert r.stdout == f"True {2**20}\n"
    finally:
        await fresh.close()


CLASSES = """
from dataclasses import dataclass, field

@dataclass
class Item:
    name: str
    tags: list = field(default_factory=list)

class Base:
    def kind(self):
        return 'base'

class Counter(Base):
    def __init__(self):
        self.n = 0
    def incr(self):
        self.n += 1
        return self.n
    def kind(self):
        return 'counter:' + super().kind()

items = [Item('a', ['x']), Item('b')]
counter = Counter()
counter.incr(); counter.incr()
def score(item):
    return len(item.tags)
registry = {'score': score, 'cls': Counter, 'first': items[0]}
state_set('best', items[0])
"""


async def test_classes_defined_in_the_repl_and_their_instances_come_back(
    sandbox: SandboxHandle, cfg: SandboxConfig
) -> None:
    r = await sandbox.exec(CLASSES)
    assert r.error is None, r.output()
    # A class redefined later: instances of the old one cannot be rebuilt (listed), those of
    # the new one can.
    r = await sandbox.exec("class Old:\n    pass\nold = Old()\nclass Old:\n    v = 2\nnew = Old()")
    assert r.error is None, r.output()
    snap = await sandbox.snapshot(0)
    assert set(snap.unpicklable) == {"old"}
    fresh = await launch(cfg)
    try:
        failed = await fresh.restore(snap.blob)
        assert failed == []
        r = await fresh.exec(
            "print(items, counter.incr(), counter.kind(), isinstance(counter, Base),"
            " registry['score'](registry['first']), registry['cls'] is Counter,"
            # (Values are pickled one by one: shared objects inside two values become
            # equal copies, as in any per-value store.)
            " registry['first'] == items[0], state_get('best') == items[0],"
            " type(new).v, Item('c'))"
        )
        assert r.error is None, r.output()
        assert r.stdout == (
            "[Item(name='a', tags=['x']), Item(name='b', tags=[])] 3 counter:base True 1 True"
            " True True 2 Item(name='c', tags=[])\n"
        ), r.stdout
    finally:
        await fresh.close()
