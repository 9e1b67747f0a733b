"""Sandbox failures as named exceptions.

    SandboxError
    ├── SandboxStartError      the sandbox could not be started (image missing, runtime down)
    ├── SandboxUnavailable     no sandbox could be had in time (pool empty, runtime busy)
    ├── WorkerError            the worker could not do what was asked (e.g. out of memory
    │   │                      decoding a context); the sandbox lives on
    │   └── SnapshotOverCap    a snapshot would exceed RLM_SNAPSHOT_MAX_MB
    └── SandboxLost            a running sandbox is gone; its session's variables are lost
        ├── HardTimeout        code ran past the hard deadline and the sandbox was killed
        ├── MemoryLimit        the sandbox hit its memory cap
        └── ProtocolViolation  the worker sent something that breaks the wire format

User code failing (an exception, a soft timeout) is not an exception on the host: it is data
in the exec result. Docker SDK errors are translated into these inside ``sandbox/`` only.
"""

from __future__ import annotations


class SandboxError(Exception):
    """Base of every sandbox infrastructure failure."""

    kind = "sandbox_error"


class SandboxStartError(SandboxError):
    kind = "start_failed"


class SandboxUnavailable(SandboxError):
    kind = "unavailable"


class WorkerError(SandboxError):
    kind = "worker_error"


class SnapshotOverCap(WorkerError):
    """The session's snapshot would exceed its cap; the sandbox and session live on."""

    kind = "snapshot_too_large"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message)
        self.size = size


class SandboxLost(SandboxError):
    """The sandbox died or was killed; everything it held is gone."""

    kind = "lost"


class HardTimeout(SandboxLost):
    """A request ran past its hard deadline, measured by the host (see sandbox/handle.py)."""

    kind = "hard_timeout"


class MemoryLimit(SandboxLost):
    kind = "memory_limit"


class ProtocolViolation(SandboxLost):
    """The sandbox sent a frame that breaks the wire format or its schema, exceeds a size
    bound, or answers nothing the host asked for. Only that sandbox is lost; the message
    names the violation."""

    kind = "protocol_violation"
