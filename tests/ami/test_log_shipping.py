"""rlm-py-logs (ami/roles/service/files/rlm-py-logs.sh), which points the CloudWatch agent at
RLM_LOG_GROUP at boot, run for real under dash with a stub amazon-cloudwatch-agent-ctl."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "ami/roles/service/files/rlm-py-logs.sh"
DASH = shutil.which("dash")
LOG_FILE = "/var/log/rlm-py/service.log"


@pytest.fixture
def host(tmp_path: Path) -> dict[str, Path]:
    ctl = tmp_path / "amazon-cloudwatch-agent-ctl"
    ctl.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path}/ctl.log\n')
    ctl.chmod(0o755)
    env = tmp_path / "env"
    env.write_text("RLM_HOST=0.0.0.0\nRLM_PORT=3000\n")
    return {"root": tmp_path, "ctl": ctl, "env": env, "stack": tmp_path / "stack.env",
            "config": tmp_path / "rlm-py.json"}  # fmt: skip


def run(host: dict[str, Path], ctl: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert DASH is not None, "dash not found: apt-get install -y dash"
    args = [
        LOG_FILE,
        str(host["config"]),
        str(ctl or host["ctl"]),
        str(host["env"]),
        str(host["stack"]),
    ]
    return subprocess.run([DASH, str(SCRIPT), *args], capture_output=True, text=True, timeout=30)


def ctl_calls(host: dict[str, Path]) -> list[str]:
    log = host["root"] / "ctl.log"
    return log.read_text().splitlines() if log.exists() else []


def test_without_a_log_group_the_agent_is_left_off(host):
    result = run(host)  # stack.env not written yet: an image before its user data ran
    assert result.returncode == 0, result.stderr
    assert "RLM_LOG_GROUP is not set" in result.stdout
    assert ctl_calls(host) == ["-a stop"]
    assert not host["config"].exists()


def test_the_stack_settings_name_the_group_and_the_agent_is_configured(host):
    host["env"].write_text(host["env"].read_text() + "RLM_LOG_GROUP=/rlm-py/baked/service\n")
    host["stack"].write_text('RLM_PORT=3000\nRLM_LOG_GROUP="/rlm-py/prod/service"')  # no final \n
    result = run(host)
    assert result.returncode == 0, result.stderr
    config = json.loads(host["config"].read_text())
    [entry] = config["logs"]["logs_collected"]["files"]["collect_list"]
    assert entry["log_group_name"] == "/rlm-py/prod/service"  # the last file wins, unquoted
    assert entry["file_path"] == LOG_FILE
    assert entry["log_stream_name"] == "{instance_id}"
    assert ctl_calls(host) == [f"-a fetch-config -m ec2 -c file:{host['config']} -s"]


@pytest.mark.parametrize("group", ['/rlm-py/x"; rm -rf /', "/rlm-py/a b"])
def test_a_group_name_outside_cloudwatch_logs_alphabet_is_refused(host, group):
    host["stack"].write_text(f"RLM_LOG_GROUP={group}\n")
    result = run(host)
    assert result.returncode == 1
    assert "not a CloudWatch Logs group name" in result.stderr
    assert ctl_calls(host) == [] and not host["config"].exists()


def test_a_group_without_the_agent_installed_fails_the_unit(host):
    host["stack"].write_text("RLM_LOG_GROUP=/rlm-py/prod/service\n")
    result = run(host, ctl=host["root"] / "missing-ctl")
    assert result.returncode == 1
    assert "rlm_cloudwatch_agent" in result.stderr


def test_a_failing_agent_fails_the_unit(host):
    host["ctl"].write_text("#!/bin/sh\nexit 7\n")
    host["stack"].write_text("RLM_LOG_GROUP=/rlm-py/prod/service\n")
    assert run(host).returncode == 7
