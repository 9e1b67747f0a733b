"""The one ``Settings`` object: environment variables (and ``.env``), read once, passed down.

Every field maps to the upper-case environment variable of the same name
(``rlm_max_depth`` <- ``RLM_MAX_DEPTH``). ``.env.example`` lists them all with defaults.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from sandbox.config import DEFAULT_SANDBOX_IMAGE, SandboxConfig
from service.constants import DEFAULT_PORT, DEFAULT_REQUEST_TIMEOUT_S


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Upstream model API
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    # Sent as OpenAI-Organization / OpenAI-Project when set (the SDK's variable names).
    openai_org_id: str | None = None
    openai_project_id: str | None = None
    rlm_root_model: str = "gpt-5"
    rlm_sub_model: str = "gpt-5-mini"
    rlm_served_models: str = Field("", description="comma list; default: 'rlm' and the root model")
    rlm_sub_models: str = Field(
        "", description="comma list sandbox code may name; default: sub, root"
    )
    rlm_upstream_timeout_s: float = Field(600.0, gt=0)
    rlm_upstream_retries: int = Field(3, ge=0, le=10)
    rlm_upstream_concurrency: int = Field(64, ge=1)

    # HTTP
    rlm_host: str = "127.0.0.1"
    rlm_port: int = Field(DEFAULT_PORT, ge=0, le=65535)
    rlm_api_keys: SecretStr = SecretStr("")
    rlm_allow_unauthenticated: bool = False
    rlm_max_body_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    rlm_log_level: str = "info"
    # HTTP keep-alive of idle connections: must exceed the load balancer's idle timeout
    # (infra sets it to the ALB's plus service.constants.KEEPALIVE_MARGIN_S).
    rlm_keepalive_s: float = Field(75.0, gt=0)
    # Host metrics (live sessions, running requests, sandbox faults) to CloudWatch, per
    # Auto Scaling group (RLM_ASG_NAME, else the instance's aws:autoscaling:groupName tag).
    rlm_cloudwatch_namespace: str | None = None
    rlm_asg_name: str | None = None
    rlm_cloudwatch_interval_s: float = Field(60.0, ge=1)

    # Sandboxes
    # Service processes on the port (0: one per core); sessions are routed to their holder.
    rlm_workers: int = Field(1, ge=0, le=256)
    rlm_sandbox: Literal["docker", "runsc", "local"] = "docker"
    # A Docker runtime: runc, or gVisor's under a name starting with runsc (runsc-systrap...)
    rlm_sandbox_runtime: str = Field("runsc", pattern=r"^(runc|runsc[A-Za-z0-9_.-]{0,40})$")
    rlm_sandbox_state_dir: str = "/var/lib/rlm-py"
    rlm_sandbox_image: str = DEFAULT_SANDBOX_IMAGE
    rlm_sandbox_pool_size: int = Field(8, ge=0)
    # Used sandboxes kept, reset, for a later session of the same key (0: never reused)
    rlm_sandbox_keep: int = Field(0, ge=0)
    # RLM_SANDBOX=runsc: new sandboxes restored from a checkpoint of a started worker
    rlm_sandbox_restore: bool = True
    rlm_sandbox_memory_mb: int = Field(1024, ge=128)
    rlm_sandbox_cpus: float = Field(1.0, gt=0)
    rlm_sandbox_pids: int = Field(256, ge=128)
    rlm_sandbox_tmpfs_mb: int = Field(256, ge=1)
    rlm_sandbox_start_timeout_s: float = Field(20.0, gt=0)
    rlm_instance: str = "rlm-py"

    # RLM engine
    rlm_max_iterations: int = Field(20, ge=1, le=1000)
    rlm_max_depth: int = Field(1, ge=0, le=10)
    rlm_exec_timeout_s: float = Field(30.0, gt=0)
    rlm_exec_hard_grace_s: float = Field(10.0, gt=0)
    rlm_max_sub_calls: int = Field(256, ge=0)
    rlm_max_total_tokens: int | None = Field(None, ge=1)
    rlm_output_max_chars: int = Field(20_000, ge=100)
    rlm_batch_concurrency: int = Field(16, ge=1)
    rlm_trajectory_dir: str | None = None

    # Cost: prices (USD per million tokens) over the shipped defaults of the default models,
    # a per-request cap and a daily budget per key (None: none)
    rlm_prices_file: str | None = None
    rlm_prices: str = Field("", description='JSON: {"model": {"input": .., "output": ..}}')
    rlm_max_cost_usd: float | None = Field(None, gt=0, allow_inf_nan=False)
    rlm_key_daily_usd: float | None = Field(None, gt=0, allow_inf_nan=False)

    # Requests, sessions and backpressure
    rlm_request_timeout_s: float = Field(float(DEFAULT_REQUEST_TIMEOUT_S), gt=0)
    rlm_max_running: int = Field(64, ge=1)
    rlm_max_queued: int = Field(256, ge=0)
    rlm_session_queue: int = Field(8, ge=1)
    rlm_max_sessions: int = Field(256, ge=1)
    # One key's share (0: three quarters of the host's RLM_MAX_SESSIONS / RLM_MAX_RUNNING).
    rlm_max_sessions_per_key: int = Field(0, ge=0)
    rlm_max_running_per_key: int = Field(0, ge=0)
    # New sandboxes are refused (429) while the host's available memory is below this.
    rlm_min_free_mb: int = Field(512, ge=0)
    rlm_session_ttl_s: float = Field(86400.0, gt=0)
    rlm_session_idle_s: float = Field(300.0, gt=0)
    rlm_session_store: str | None = None
    rlm_session_lease_table: str | None = None
    rlm_snapshot_max_mb: int = Field(1024, ge=1)
    rlm_cookie_sessions: bool = False
    rlm_shutdown_grace_s: float = Field(30.0, ge=0)

    # The Responses API: how long a finished response stays retrievable, how many are kept
    # on this process (per key: 0 means three quarters of RLM_MAX_RESPONSES)
    rlm_response_ttl_s: float = Field(3600.0, gt=0)
    rlm_max_responses: int = Field(10_000, ge=1)
    rlm_max_responses_per_key: int = Field(0, ge=0)

    @field_validator(
        "openai_api_key",
        "openai_base_url",
        "openai_org_id",
        "openai_project_id",
        "rlm_trajectory_dir",
        "rlm_max_total_tokens",
        "rlm_prices_file",
        "rlm_max_cost_usd",
        "rlm_key_daily_usd",
        "rlm_session_store",
        "rlm_session_lease_table",
        "rlm_cloudwatch_namespace",
        "rlm_asg_name",
        mode="before",
    )
    @classmethod
    def _empty_is_none(cls, v: object) -> object:
        return None if v == "" else v

    @model_validator(mode="after")
    def _refuse_open_service(self) -> Settings:
        if (
            not self.api_keys
            and not self.rlm_allow_unauthenticated
            and not _is_loopback(self.rlm_host)
        ):
            raise ValueError(
                f"refusing to serve on {self.rlm_host} without authentication: set RLM_API_KEYS, "
                "or RLM_ALLOW_UNAUTHENTICATED=true if something in front of the service checks callers"
            )
        return self

    @model_validator(mode="after")
    def _runsc_backend_runs_runsc(self) -> Settings:
        if self.rlm_sandbox == "runsc" and self.rlm_sandbox_runtime == "runc":
            raise ValueError(
                "RLM_SANDBOX=runsc runs gVisor's runsc directly: RLM_SANDBOX_RUNTIME must be "
                "a runsc runtime (use RLM_SANDBOX=docker for runc)"
            )
        return self

    @property
    def api_keys(self) -> list[str]:
        return [k.strip() for k in self.rlm_api_keys.get_secret_value().split(",") if k.strip()]

    @property
    def sub_models(self) -> tuple[str, ...]:
        """Models sandbox code may name; empty means the sub and the root model."""
        return tuple(m.strip() for m in self.rlm_sub_models.split(",") if m.strip())

    @property
    def sessions_per_key(self) -> int:
        return self.rlm_max_sessions_per_key or max(1, self.rlm_max_sessions * 3 // 4)

    @property
    def running_per_key(self) -> int:
        return self.rlm_max_running_per_key or max(1, self.rlm_max_running * 3 // 4)

    @property
    def responses_per_key(self) -> int:
        return self.rlm_max_responses_per_key or max(1, self.rlm_max_responses * 3 // 4)

    @property
    def public_bind(self) -> bool:
        """Serving off loopback: only the public surface answers without a key."""
        return not _is_loopback(self.rlm_host)

    @property
    def served_models(self) -> list[str]:
        names = [m.strip() for m in self.rlm_served_models.split(",") if m.strip()]
        return names or ["rlm", self.rlm_root_model]

    def secrets(self) -> list[str]:
        """Every secret value, for redaction of logs and trajectories."""
        out = list(self.api_keys)
        if self.openai_api_key is not None and self.openai_api_key.get_secret_value():
            out.append(self.openai_api_key.get_secret_value())
        return out

    def sandbox_config(self) -> SandboxConfig:
        return SandboxConfig(
            backend=self.rlm_sandbox,
            runtime=self.rlm_sandbox_runtime,
            state_dir=self.rlm_sandbox_state_dir,
            image=self.rlm_sandbox_image,
            instance=self.rlm_instance,
            start_timeout_s=self.rlm_sandbox_start_timeout_s,
            exec_timeout_s=self.rlm_exec_timeout_s,
            hard_grace_s=self.rlm_exec_hard_grace_s,
            memory_mb=self.rlm_sandbox_memory_mb,
            cpus=self.rlm_sandbox_cpus,
            pids=self.rlm_sandbox_pids,
            tmpfs_mb=self.rlm_sandbox_tmpfs_mb,
            fsize_mb=self.rlm_sandbox_tmpfs_mb,
            restore=self.rlm_sandbox_restore,
        )


def _is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
