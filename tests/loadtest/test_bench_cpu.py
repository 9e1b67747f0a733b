"""bench_cpu's accounting: host processes sorted into groups, CPU read from /proc."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench_cpu import (
    GROUPS,
    Proc,
    Variant,
    busy_s,
    cpu_by_group,
    group_of,
    hot_spots,
    parse_spec,
    processes,
    start_profile,
    table,
)


def test_groups_by_command_line_and_parent() -> None:
    table_ = {
        10: Proc("runsc-sandbox --root=/x boot --bundle=/b", 1, 0.0),
        11: Proc("", 10, 0.0),  # a ptrace stub of that sandbox
        12: Proc("", 11, 0.0),  # a stub forked by a stub
        13: Proc("/usr/bin/containerd-shim-runc-v2 -namespace moby", 1, 0.0),
        14: Proc("dockerd --pidfile /var/run/docker.pid", 1, 0.0),
        15: Proc("", 2, 0.0),  # a kernel thread
        16: Proc("/venv/bin/python -m service", 99, 0.0),  # a worker of the supervisor
        17: Proc("python -m loadtest.serve_upstream --port 1", 1, 0.0),
        18: Proc("sshd: root", 1, 0.0),
    }
    got = {pid: group_of(pid, p, 99, {os.getpid()}, table_) for pid, p in table_.items()}
    assert got == {
        10: GROUPS[1], 11: GROUPS[1], 12: GROUPS[1], 13: GROUPS[3], 14: GROUPS[2],
        15: GROUPS[4], 16: GROUPS[0], 17: GROUPS[5], 18: GROUPS[6],
    }  # fmt: skip


def test_cpu_burnt_between_two_readings_is_found() -> None:
    before, busy0 = processes(), busy_s()
    burn = (
        "import sys, time\nt = time.process_time()\n"
        "while time.process_time() - t < 0.3: pass\nsys.stdin.read()"
    )
    child = subprocess.Popen([sys.executable, "-c", burn], stdin=subprocess.PIPE)
    try:
        while child.pid not in processes() or processes()[child.pid].cpu_s < 0.3:
            pass
        after, busy1 = processes(), busy_s()
    finally:
        child.communicate(b"")
    groups = cpu_by_group(before, after, service_pid=child.pid)  # the child stands in
    assert 0.3 <= groups[GROUPS[0]] < 1.0
    assert busy1 - busy0 >= 0.3
    result = {"label": "x", "ms": dict.fromkeys(GROUPS, 1.0), "unattributed_ms": 0.0,
              "total_ms": 7.0, "rate": 1.0, "users": 3, "p50_ms": 1.0, "p95_ms": 2.0, "cores_busy": 1.0,
              "failures": 0, "reset": True}  # fmt: skip
    kept = {**result, "reset": False, "ms": {**result["ms"], GROUPS[5]: 2.5}}
    text = table([result, kept])
    assert text.count("\n") == len(GROUPS) + 8 and "**7.00**" in text
    assert "| 1.0 (3 users) | 1.0 (3 users, no reset) |" in text
    assert "| whole machine but the load client and the upstream | 6.00 | 4.50 |" in text


def test_variant_specs_name_backend_runtime_workers_and_reset() -> None:
    assert parse_spec("docker") == Variant("docker", "", "", reset=True)
    assert parse_spec("runsc:2") == Variant("runsc", "", "2")
    assert parse_spec("runsc@runsc-systrap") == Variant("runsc", "runsc-systrap", "")
    assert parse_spec(" docker@runsc-ptrace:3") == Variant("docker", "runsc-ptrace", "3")
    assert parse_spec("runsc/keep") == Variant("runsc", reset=False)
    assert parse_spec("runsc@runsc-systrap:2/keep") == Variant("runsc", "runsc-systrap", "2", False)
    for bad in ("kata", "runsc:two", "@runsc", "runsc/", "runsc/reset"):
        with pytest.raises(ValueError, match="not a variant"):
            parse_spec(bad)


def test_profile_names_the_function_that_burns_the_cpu(tmp_path: Path) -> None:
    # A real py-spy on a real process: the function spinning on the GIL comes out on top.
    code = "def burn_here():\n    while True:\n        sum(range(1000))\nburn_here()\n"
    busy = subprocess.Popen([sys.executable, "-c", code])
    try:
        out = tmp_path / "spy.txt"
        spy = start_profile(out, busy.pid, 2)
        assert spy.wait(timeout=60) == 0
    finally:
        busy.kill()
        busy.wait()
    report = hot_spots(out, requests=10).splitlines()
    per_request = float(report[0].split()[1])
    assert 100 < per_request < 260  # about 2 s of samples over 10 requests: ~200 ms each
    top = report[2].split("|")
    assert top[2].strip() == "burn_here (<string>)"
    assert float(top[0]) > 0.5 * per_request  # its own samples, not only beneath it
