"""Host memory of sandbox containers: what the processes serving each one (runsc-sandbox,
runsc-gofer, the containerd shim) hold, read from /proc. One reader for both benchmarks."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

# Words in the command lines of the processes that serve a runsc container on the host.
RUNSC_PROCESSES = ("runsc", "containerd-shim")


def cmdlines() -> Iterator[tuple[int, str]]:
    """(pid, command line) of every host process that can be read now (NULs as spaces)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue  # gone, or not ours to read
        if raw:
            yield int(pid), raw.replace(b"\0", b" ").decode("utf-8", "replace")


def host_kb(
    ids: Iterable[str],
    path: str = "status",
    key: str = "VmRSS:",
    *,
    only: tuple[str, ...] = (),
) -> dict[str, int]:
    """Per container id: the sum of ``key`` (kB) in /proc/<pid>/<path> over the host
    processes whose command line names that id (and, when ``only`` is given, one of its
    words). A process that vanishes or cannot be read while we look is skipped."""
    per = dict.fromkeys(ids, 0)
    for pid, cmd in cmdlines():
        if only and not any(word in cmd for word in only):
            continue
        hit = next((i for i in per if i in cmd), None)
        if hit is None:
            continue
        try:
            for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
                if line.startswith(key):
                    per[hit] += int(line.split()[1])
        except OSError:
            continue
    return per


def cgroup_memory_mb(group: str) -> float:
    """A cgroup's memory use less its inactive page cache (what ``docker stats`` shows), in
    MB; ``group`` is its path under the hierarchy (``docker/<id>``, ``rlm-py/<name>``).
    cgroup v1's memory controller, else v2's unified one; NaN when it is not found."""
    for base, usage, stat, inactive in (
        ("/sys/fs/cgroup/memory", "memory.usage_in_bytes", "memory.stat", "total_inactive_file"),
        ("/sys/fs/cgroup", "memory.current", "memory.stat", "inactive_file"),
    ):
        d = Path(base) / group
        try:
            used = int((d / usage).read_text())
            stats = dict(line.split() for line in (d / stat).read_text().splitlines())
        except (OSError, ValueError):
            continue
        return (used - int(stats.get(inactive, 0))) / 2**20
    return float("nan")
