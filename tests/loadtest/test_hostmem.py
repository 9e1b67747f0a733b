"""The benchmarks' /proc reader, on a process of our own."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest

from loadtest.hostmem import RUNSC_PROCESSES, host_kb


@pytest.fixture
def sleeper() -> Iterator[str]:
    """A process whose command line names a fresh marker, as a shim names its container."""
    marker = f"rlm-hostmem-{uuid.uuid4().hex}"
    code = "import time; print('ready', flush=True); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code, marker], stdout=subprocess.PIPE)
    try:
        # Up and running: before its exec a child's command line is still ours, and on a
        # loaded machine the first reading could come before it.
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        yield marker
    finally:
        proc.kill()
        proc.wait(timeout=10)


def test_host_kb_sums_the_processes_naming_the_id(sleeper: str) -> None:
    other = f"rlm-hostmem-{uuid.uuid4().hex}"
    rss = host_kb([sleeper, other])
    assert rss[sleeper] > 1000  # a Python interpreter holds megabytes
    assert rss[other] == 0
    assert host_kb([sleeper], "status", "VmSize:")[sleeper] >= rss[sleeper]


def test_only_filters_by_command_words(sleeper: str) -> None:
    assert host_kb([sleeper], only=RUNSC_PROCESSES) == {sleeper: 0}
    assert host_kb([sleeper], only=("python",))[sleeper] > 0
