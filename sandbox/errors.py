"""Sandbox failures as named exceptions.

    SandboxError
    ├── SandboxStartError      the sandbox could not be started (image missing, runtime down)
    ├── SandboxUnavailable     no sandbox could be had in time (pool empty, runtime busy)
    ├── WorkerError            the worker could not do what was asked (e.g. out of memory
    │                          decoding a context); the sandbox lives on
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


class SandboxLost(SandboxError):
    """The sandbox died or was killed; everything it held is gone."""

    kind = "lost"


class HardTimeout(SandboxLost):
    kind = "hard_timeout"


class MemoryLimit(SandboxLost):
    kind = "memory_limit"


class ProtocolViolation(SandboxLost):
    kind = "protocol_violation"
