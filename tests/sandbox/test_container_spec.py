"""The Docker container spec (sandbox/docker_backend.py ``container_spec``): every isolation
setting exactly as strict as intended, for every configuration, with nothing of the host's
environment in it. No container is started: these run without Docker.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import pytest

from sandbox.config import SandboxConfig
from sandbox.docker_backend import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_OWNER_PID,
    LABEL_SESSION,
    WORKER_CMD,
    container_spec,
    max_procs,
)
from service.config import Settings

MIB = 2**20

CONFIGS = [
    pytest.param(SandboxConfig(), id="defaults"),
    pytest.param(
        SandboxConfig(
            instance="rlm-test",
            memory_mb=256,
            cpus=0.5,
            pids=64,
            tmpfs_mb=32,
            nofile=64,
            fsize_mb=16,
            exec_timeout_s=2.0,
            output_cap_chars=10_000,
        ),
        id="small",
    ),
    pytest.param(
        SandboxConfig(
            instance="prod-eu-1",
            image="registry.example/rlm-sandbox:1.2",
            memory_mb=8192,
            cpus=4.0,
            pids=1024,
            tmpfs_mb=2048,
            nofile=4096,
            fsize_mb=1024,
            exec_timeout_s=120.0,
        ),
        id="large",
    ),
    pytest.param(SandboxConfig(runtime="runc", instance="dev"), id="runc"),
    pytest.param(SandboxConfig(backend="local"), id="local-backend-config"),
]

# Every key the spec may have. A new key changes the isolation: review it, then add it here.
SPEC_KEYS = {
    "image", "command", "name", "stdin_open", "tty", "detach", "runtime", "network_mode",
    "read_only", "tmpfs", "user", "working_dir", "cap_drop", "security_opt", "mem_limit",
    "memswap_limit", "nano_cpus", "pids_limit", "ulimits", "environment", "hostname", "labels",
    "log_config", "auto_remove", "oom_score_adj",
}  # fmt: skip


def test_sandboxes_go_first_when_the_host_runs_out_of_memory() -> None:
    assert spec(SandboxConfig())["oom_score_adj"] == 1000


# containers.create/run arguments that would weaken the sandbox or reach the host.
FORBIDDEN_KEYS = [
    "privileged", "cap_add", "volumes", "volumes_from", "mounts", "devices", "device_requests",
    "device_cgroup_rules", "network", "networking_config", "ports", "publish_all_ports",
    "pid_mode", "ipc_mode", "uts_mode", "userns_mode", "cgroupns", "cgroup_parent",
    "extra_hosts", "dns", "links", "sysctls", "oom_kill_disable", "group_add", "init_path",
    "storage_opt", "shm_size", "use_config_proxy", "environment_file",
]  # fmt: skip

SECRETS = {
    "OPENAI_API_KEY": "fake-host-secret-openai-0123456789",  # a marker, not a key
    "RLM_API_KEYS": "client-key-alpha,client-key-beta",
    "AWS_SECRET_ACCESS_KEY": "aws-host-secret-abcdef",
    "AWS_ACCESS_KEY_ID": "AKIAHOSTSECRET",
    "DOCKER_HOST": "tcp://host-docker-secret:2375",
    "PYTHONPATH": "/host/secret/pythonpath",
    "HTTPS_PROXY": "http://user:proxy-secret@proxy:3128",
    "HOME": "/root/host-secret-home",
    "LANG": "xx_HOST.SECRET",
}


def spec(cfg: SandboxConfig, session: str = "") -> dict[str, Any]:
    return container_spec(cfg, "rlm-box-0", session)


def flag(command: list[str], name: str) -> str:
    return command[command.index(name) + 1]


# ---- isolation settings: the same, whatever the configuration ---------------------------

ISOLATION: list[Any] = [
    pytest.param("network_mode", "none", id="no-network"),
    pytest.param("read_only", True, id="read-only-rootfs"),
    pytest.param("user", "10001:10001", id="unprivileged-user"),
    pytest.param("working_dir", "/tmp", id="workdir-on-tmpfs"),
    pytest.param("cap_drop", ["ALL"], id="all-capabilities-dropped"),
    pytest.param("security_opt", ["no-new-privileges"], id="no-new-privileges-only"),
    pytest.param("log_config", {"type": "none"}, id="no-log-driver"),
    pytest.param("environment", {"HOME": "/tmp", "LANG": "C.UTF-8"}, id="fixed-environment"),
    pytest.param("hostname", "sandbox", id="own-hostname"),
    pytest.param("stdin_open", True, id="stdin-open"),
    pytest.param("tty", False, id="no-tty"),
    pytest.param("detach", True, id="detached"),
    pytest.param("auto_remove", False, id="removed-by-us"),
]


@pytest.mark.parametrize("cfg", CONFIGS)
@pytest.mark.parametrize(("key", "expected"), ISOLATION)
def test_isolation_setting(cfg: SandboxConfig, key: str, expected: Any) -> None:
    value = spec(cfg)[key]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_spec_has_exactly_the_reviewed_keys(cfg: SandboxConfig) -> None:
    assert set(spec(cfg)) == SPEC_KEYS


@pytest.mark.parametrize("key", FORBIDDEN_KEYS)
def test_nothing_that_weakens_the_sandbox(key: str) -> None:
    assert key not in spec(SandboxConfig())


@pytest.mark.parametrize("cfg", CONFIGS)
def test_only_tmp_is_writable_and_nothing_there_executes(cfg: SandboxConfig) -> None:
    tmpfs = spec(cfg)["tmpfs"]
    assert list(tmpfs) == ["/tmp"]
    opts = tmpfs["/tmp"].split(",")
    assert {"rw", "nosuid", "nodev", "noexec", "mode=1777", f"size={cfg.tmpfs_mb}m"} == set(opts)
    assert "exec" not in opts and "suid" not in opts and "dev" not in opts


@pytest.mark.parametrize("cfg", CONFIGS)
def test_no_root_and_no_privileges(cfg: SandboxConfig) -> None:
    s = spec(cfg)
    uid, gid = s["user"].split(":")
    assert int(uid) != 0 and int(gid) != 0
    assert not s.get("privileged", False)
    assert not s.get("cap_add")
    assert not any("unconfined" in opt for opt in s["security_opt"])


@pytest.mark.parametrize("cfg", CONFIGS)
def test_memory_cannot_spill_into_swap(cfg: SandboxConfig) -> None:
    s = spec(cfg)
    assert s["mem_limit"] == s["memswap_limit"] == f"{cfg.memory_mb}m"


@pytest.mark.parametrize("cfg", CONFIGS)
def test_config_numbers_flow_into_the_spec(cfg: SandboxConfig) -> None:
    s = spec(cfg)
    assert s["image"] == cfg.image
    assert s["runtime"] == cfg.runtime
    assert s["pids_limit"] == cfg.pids
    assert s["nano_cpus"] == round(cfg.cpus * 1e9) and isinstance(s["nano_cpus"], int)
    ulimits = {u.name: (u.soft, u.hard) for u in s["ulimits"]}
    assert ulimits == {
        "nofile": (cfg.nofile, cfg.nofile),
        "fsize": (cfg.fsize_mb * MIB, cfg.fsize_mb * MIB),
    }


@pytest.mark.parametrize("cfg", CONFIGS)
def test_command_runs_the_worker_with_the_config_limits(cfg: SandboxConfig) -> None:
    command = spec(cfg)["command"]
    assert command[: len(WORKER_CMD)] == WORKER_CMD
    assert float(flag(command, "--timeout")) == cfg.exec_timeout_s
    assert int(flag(command, "--output-cap")) == cfg.output_cap_chars
    assert int(flag(command, "--memory-bytes")) == max(0, cfg.memory_mb - 64) * MIB
    assert int(flag(command, "--max-procs")) == max_procs(cfg)
    assert all(isinstance(part, str) for part in command)


def test_default_runtime_is_gvisor() -> None:
    assert spec(SandboxConfig())["runtime"] == "runsc"


@pytest.mark.parametrize(
    ("instance", "session", "name"),
    [
        pytest.param("rlm-py", "", "rlm-rlm-py-0", id="pooled-no-session"),
        pytest.param("rlm-test", "sess-123", "rlm-rlm-test-1", id="session"),
        pytest.param("prod-eu-1", "s" * 64, "box", id="long-session"),
    ],
)
def test_labels_and_name(instance: str, session: str, name: str) -> None:
    s = container_spec(SandboxConfig(instance=instance), name, session)
    assert s["name"] == name
    assert s["labels"] == {
        LABEL_MANAGED: "1",
        LABEL_INSTANCE: instance,
        LABEL_SESSION: session,
        LABEL_OWNER_PID: str(os.getpid()),
    }
    assert all(isinstance(v, str) for v in s["labels"].values())


# ---- nothing of the host's environment ---------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS)
def test_host_environment_does_not_leak(
    cfg: SandboxConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in SECRETS.items():
        monkeypatch.setenv(key, value)
    s = spec(cfg)
    assert s["environment"] == {"HOME": "/tmp", "LANG": "C.UTF-8"}
    text = repr(s)
    for key, value in SECRETS.items():
        assert value not in text, f"{key} of the host reached the container spec"


def test_spec_from_service_settings_has_no_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The path the service takes: environment -> Settings -> SandboxConfig -> spec."""
    env = {
        "RLM_HOST": "127.0.0.1",
        "RLM_SANDBOX": "docker",
        "RLM_SANDBOX_RUNTIME": "runsc",
        "RLM_SANDBOX_IMAGE": "rlm-sandbox:ci",
        "RLM_INSTANCE": "ci-1",
        "RLM_SANDBOX_MEMORY_MB": "512",
        "RLM_SANDBOX_CPUS": "1.5",
        "RLM_SANDBOX_PIDS": "160",
        "RLM_SANDBOX_TMPFS_MB": "48",
        "RLM_EXEC_TIMEOUT_S": "12",
        "OPENAI_API_KEY": SECRETS["OPENAI_API_KEY"],
        "RLM_API_KEYS": SECRETS["RLM_API_KEYS"],
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    s = container_spec(Settings(_env_file=None).sandbox_config(), "rlm-ci-1-x", "")  # type: ignore[call-arg]
    assert (s["image"], s["runtime"], s["labels"][LABEL_INSTANCE]) == (
        "rlm-sandbox:ci",
        "runsc",
        "ci-1",
    )
    assert s["mem_limit"] == s["memswap_limit"] == "512m"
    assert s["nano_cpus"] == 1_500_000_000 and s["pids_limit"] == 160
    assert s["tmpfs"]["/tmp"].startswith("rw,nosuid,nodev,noexec,size=48m,")
    fsize = next(u for u in s["ulimits"] if u.name == "fsize")
    assert fsize.soft == fsize.hard == 48 * MIB
    assert float(flag(s["command"], "--timeout")) == 12.0
    text = repr(s)
    for secret in (SECRETS["OPENAI_API_KEY"], "client-key-alpha", "client-key-beta"):
        assert secret not in text


def test_specs_share_no_mutable_state() -> None:
    """The SDK may mutate what it is given: one spec must not change the next."""
    first = spec(SandboxConfig())
    first["environment"]["OPENAI_API_KEY"] = "leak"
    first["labels"]["x"] = "y"
    first["tmpfs"]["/host"] = "rw"
    first["cap_drop"].clear()
    first["security_opt"].clear()
    first["command"].append("--evil")
    second = spec(SandboxConfig())
    assert second["environment"] == {"HOME": "/tmp", "LANG": "C.UTF-8"}
    assert "x" not in second["labels"] and list(second["tmpfs"]) == ["/tmp"]
    assert second["cap_drop"] == ["ALL"] and second["security_opt"] == ["no-new-privileges"]
    assert "--evil" not in second["command"]


# ---- max_procs: RLIMIT_NPROC below the pids cap ------------------------------------------

MAX_PROCS = [
    pytest.param("runsc", 64, 2, id="runsc-64"),
    pytest.param("runsc", 128, 4, id="runsc-128"),
    pytest.param("runsc", 192, 12, id="runsc-192"),
    pytest.param("runsc", 256, 20, id="runsc-256"),
    pytest.param("runsc", 1024, 116, id="runsc-1024"),
    pytest.param("runsc", 96, 2, id="runsc-floor"),
    pytest.param("runsc", 10, 2, id="runsc-tiny-floor"),
    pytest.param("runc", 64, 56, id="runc-64"),
    pytest.param("runc", 128, 120, id="runc-128"),
    pytest.param("runc", 9, 2, id="runc-floor"),
]


@pytest.mark.parametrize(("runtime", "pids", "expected"), MAX_PROCS)
def test_max_procs(runtime: str, pids: int, expected: int) -> None:
    assert max_procs(SandboxConfig(runtime=runtime, pids=pids)) == expected


@pytest.mark.parametrize("runtime", ["runsc", "runc"])
@pytest.mark.parametrize("pids", [128, 129, 160, 256, 500, 4096])
def test_fork_limit_is_below_the_pids_cap(runtime: str, pids: int) -> None:
    """From the service's minimum (RLM_SANDBOX_PIDS >= 128) up: fork fails before the cap."""
    cfg = dataclasses.replace(SandboxConfig(), runtime=runtime, pids=pids)
    assert 2 <= max_procs(cfg) < pids
