"""Sandbox limits and timeouts, kept together and passed down (never read from os.environ)."""

from __future__ import annotations

from dataclasses import dataclass

# The sandbox image tag launched by default (the service's RLM_SANDBOX_IMAGE default, and the
# tag `make image` builds). Owned here, the lowest layer that needs it.
DEFAULT_SANDBOX_IMAGE = "rlm-sandbox:latest"


@dataclass(frozen=True, slots=True)
class SandboxConfig:
    """Everything a launcher needs to start and police one sandbox.

    Timeouts:
        start_timeout_s   container start to the worker's hello
        exec_timeout_s    soft limit of one code block, enforced inside the worker
        hard_grace_s      extra time past the soft limit before the host kills the sandbox
    """

    backend: str = "docker"  # docker | runsc (runsc as the OCI runtime, no daemon) | local
    runtime: str = "runsc"  # Docker runtime: runc or runsc[-name] (the runsc backend: its flags)
    state_dir: str = "/var/lib/rlm-py"  # backend runsc: its state, bundles, exported image
    runsc_path: str = ""  # backend runsc: its binary; empty = the one Docker runs for `runtime`
    image: str = DEFAULT_SANDBOX_IMAGE
    instance: str = "rlm-py"  # label value naming this service instance
    start_timeout_s: float = 20.0
    exec_timeout_s: float = 30.0
    hard_grace_s: float = 10.0
    output_cap_chars: int = 1_000_000
    memory_mb: int = 1024
    cpus: float = 1.0
    pids: int = 256
    tmpfs_mb: int = 256
    nofile: int = 256
    fsize_mb: int = 256
    # backend runsc: new sandboxes restored from a checkpoint of a started worker
    restore: bool = True

    @property
    def gvisor(self) -> bool:
        """The runtime is gVisor's (Docker runtimes named runsc, runsc-systrap, ...)."""
        return self.runtime.startswith("runsc")

    @property
    def hard_timeout_s(self) -> float:
        return self.exec_timeout_s + self.hard_grace_s
