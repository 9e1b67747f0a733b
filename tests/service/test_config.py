"""Settings: defaults, the documented names, and secure refusals."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def _documented(path: Path) -> set[str]:
    return set(re.findall(r"^([A-Z_]+)=", path.read_text(), re.MULTILINE))


def test_env_example_lists_every_setting_with_its_default() -> None:
    names = {name.upper() for name in Settings.model_fields}
    documented = _documented(ROOT / ".env.example")
    assert documented == names
    # Loading the example gives exactly the defaults.
    example = Settings(_env_file=str(ROOT / ".env.example"))  # type: ignore[call-arg]
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert example.model_dump() == defaults.model_dump()


def test_readme_settings_table_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    missing = [n.upper() for n in Settings.model_fields if f"`{n.upper()}`" not in readme]
    assert missing == []


def test_fixed_defaults() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.rlm_root_model, s.rlm_sub_model, s.rlm_port, s.rlm_host) == (
        "gpt-5",
        "gpt-5-mini",
        3000,
        "127.0.0.1",
    )
    assert (s.rlm_sandbox, s.rlm_sandbox_runtime, s.rlm_max_iterations, s.rlm_max_depth) == (
        "docker",
        "runsc",
        20,
        1,
    )
    assert (s.rlm_exec_timeout_s, s.rlm_request_timeout_s, s.rlm_sandbox_pool_size) == (30, 1800, 8)
    assert s.rlm_max_body_bytes == 268435456 and s.rlm_trajectory_dir is None


def test_bad_values_are_refused_with_the_setting_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLM_MAX_DEPTH", "-1")
    with pytest.raises(ValidationError, match="rlm_max_depth"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("RLM_MAX_DEPTH", "1")
    monkeypatch.setenv("RLM_SANDBOX", "none")
    with pytest.raises(ValidationError, match="rlm_sandbox"):
        Settings(_env_file=None)  # type: ignore[call-arg]


def test_sandbox_runtime_names_a_docker_runtime(monkeypatch: pytest.MonkeyPatch) -> None:
    """runc, or a gVisor runtime by any name starting with runsc (one a platform, as the
    playbook registers them); the runsc backend refuses runc, anything else is refused."""
    monkeypatch.setenv("RLM_SANDBOX", "runsc")
    monkeypatch.setenv("RLM_SANDBOX_RUNTIME", "runsc-systrap")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert s.sandbox_config().runtime == "runsc-systrap" and s.sandbox_config().gvisor
    monkeypatch.setenv("RLM_SANDBOX_RUNTIME", "runc")
    with pytest.raises(ValidationError, match="must be a runsc runtime"):
        Settings(_env_file=None)  # type: ignore[call-arg]
    monkeypatch.setenv("RLM_SANDBOX", "docker")
    assert not Settings(_env_file=None).sandbox_config().gvisor  # type: ignore[call-arg]
    for bad in ("kata", "runsc --debug", "runsc/../x", ""):
        monkeypatch.setenv("RLM_SANDBOX_RUNTIME", bad)
        with pytest.raises(ValidationError, match="rlm_sandbox_runtime"):
            Settings(_env_file=None)  # type: ignore[call-arg]


def test_keys_are_secret_in_reprs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdef123456")
    monkeypatch.setenv("RLM_API_KEYS", "client-key-1, client-key-2")
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert "sk-abcdef123456" not in repr(s) and "client-key-1" not in repr(s)
    assert s.api_keys == ["client-key-1", "client-key-2"]
    assert set(s.secrets()) == {"sk-abcdef123456", "client-key-1", "client-key-2"}
