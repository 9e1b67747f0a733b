"""The service role applied for real, into a scratch tree, on a host without systemd as PID 1
(this machine, CI): code synced, venv installed, environment and units written and enabled,
nothing started; a second apply changes nothing (no pip reinstall, no restart); a changed
setting rewrites only what depends on it. The units it writes pass `systemd-analyze verify`.

Every path the role writes is a variable pointed into tmp_path, except the system user (its
own name, removed afterwards) and the role's apt packages (rsync, python3-venv, python3-boto3).
Needs root and ansible-playbook, as CI has after `make install`; systemd-analyze comes from
Debian's `systemd` package, which the test installs when it is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.ami.test_playbook import ANSIBLE_PLAYBOOK, ENV, PLAYBOOK, REPO, recap_changed

USER = "rlm-roletest"
pytestmark = [
    pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core not installed"),
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("apt-get") or not shutil.which("docker"),
        reason="needs root on a Debian/Ubuntu host with docker.io (CI after the runtime playbook)",
    ),
]
SNAPSHOT_IGNORE = shutil.ignore_patterns(
    ".venv", ".git", ".mypy_cache", ".ruff_cache", ".pytest_cache", "__pycache__", "logs", "*.pem"
)


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        install = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", "systemd"],
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        found = shutil.which("systemd-analyze")
        assert found, (
            f"systemd-analyze missing and `apt-get install systemd` failed: {install.stderr}"
        )
    return found


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("host")
    # The checkout is edited while tests run: the role syncs a snapshot of it.
    repo = root / "checkout"
    shutil.copytree(REPO, repo, ignore=SNAPSHOT_IGNORE)
    settings = {
        "rlm_repo_dir": str(repo),
        "rlm_user": USER,
        "rlm_home": str(root / "opt/rlm-py"),
        "rlm_state_dir": str(root / "var/lib/rlm-py"),
        "rlm_config_dir": str(root / "etc/rlm-py"),
        "rlm_unit_dir": str(root / "units"),
        "rlm_libexec_dir": str(root / "libexec"),
        "rlm_log_file": str(root / "var/log/rlm-py/service.log"),
        "rlm_systemd": "false",
        "rlm_stack": "teststack",
        # The AMI's log shipping, without Amazon's package (not reachable from here).
        "rlm_cloudwatch_agent": "true",
    }
    yield root, settings
    subprocess.run(["userdel", USER], capture_output=True, check=False)


def apply(settings: dict[str, str], **extra: str) -> subprocess.CompletedProcess[str]:
    assert ANSIBLE_PLAYBOOK is not None
    result = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(PLAYBOOK), "--tags", "service",
         "--skip-tags", "cloudwatch-agent-package", "-e", json.dumps({**settings, **extra})],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result


def ran(output: str, task: str) -> bool:
    """Whether `task` did something (ok or changed), not skipped."""
    block = output.split(f"TASK [service : {task}]", 1)
    assert len(block) == 2, f"no task {task!r} in the output"
    body = block[1].split("TASK [", 1)[0].split("RUNNING HANDLER", 1)[0]
    return bool(re.search(r"^(ok|changed):", body, re.MULTILINE))


def changed_tasks(output: str) -> set[str]:
    """The names of the tasks and handlers that reported a change."""
    found = set()
    for block in re.split(r"^(?=TASK \[|RUNNING HANDLER \[)", output, flags=re.MULTILINE)[1:]:
        name = block.split("]", 1)[0].split(" : ", 1)[-1]
        if re.search(r"^changed:", block, re.MULTILINE):
            found.add(name)
    return found


def test_the_role_installs_once_then_changes_nothing(host):
    root, settings = host
    first = apply(settings)
    assert recap_changed(first.stdout) > 0
    assert ran(first.stdout, "Install rlm-py into its venv")
    assert (root / "opt/rlm-py/.venv/bin/python").exists()
    units = root / "units"
    for unit in (
        "rlm-py.service",
        "rlm-py-secrets.service",
        "rlm-py-logs.service",
        "rlm-py-logs.path",
    ):
        assert (units / unit).is_file(), unit
        link = units / "multi-user.target.wants" / unit
        assert link.is_symlink() and link.resolve() == (units / unit).resolve(), unit

    second = apply(settings)
    assert recap_changed(second.stdout) == 0, second.stdout[-4000:]
    assert not ran(second.stdout, "Install rlm-py into its venv")
    assert "RUNNING HANDLER" not in second.stdout

    # A changed setting rewrites the unit and notifies the restart, and nothing else.
    third = apply(settings, rlm_limit_nofile="4096")
    assert changed_tasks(third.stdout) == {"Install the systemd units"}, third.stdout[-4000:]
    assert "LimitNOFILE=4096" in (units / "rlm-py.service").read_text()
    assert not ran(third.stdout, "Install rlm-py into its venv")
    apply(settings)  # back to the defaults for the next test


def test_the_unit_files_pass_systemd_analyze_verify(host):
    root, settings = host
    apply(settings)
    units = root / "units"
    service = (units / "rlm-py.service").read_text()
    assert "LimitNOFILE=65536" in service
    assert re.search(r"\[Unit\][^\[]*StartLimitIntervalSec=0", service)
    assert re.search(r"\[Service\][^\[]*Restart=always", service)
    assert f"EnvironmentFile={root}/etc/rlm-py/env" in service
    assert f"StandardOutput=append:{root}/var/log/rlm-py/service.log" in service
    secrets = (units / "rlm-py-secrets.service").read_text()
    assert "OPENAI_API_KEY=/rlm-py/teststack/OPENAI_API_KEY" in secrets
    names = ["rlm-py.service", "rlm-py-secrets.service", "rlm-py-logs.service", "rlm-py-logs.path"]
    result = subprocess.run(
        [systemd_analyze(), "verify", "--man=no", *(str(units / n) for n in names)],
        # The scratch unit directory first, then the system's (docker.service, targets).
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{units}:", "SYSTEMD_LOG_COLOR": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        # Only the units' own findings: a container's own unit files may draw warnings too.
        if str(units) in line or line.startswith(tuple(names))
    ]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


def test_a_dev_instance_reads_its_dotenv_first(host):
    root, settings = host
    dotenv = root / "home/ubuntu/rlm-py/.env"
    apply(settings, rlm_dotenv=str(dotenv), rlm_cloudwatch_agent="false")
    lines = (root / "units/rlm-py.service").read_text().splitlines()
    files = [line for line in lines if line.startswith("EnvironmentFile=")]
    # Later files win: .env < the playbook's settings < the secrets from SSM.
    assert files == [
        f"EnvironmentFile=-{dotenv}",
        f"EnvironmentFile={root}/etc/rlm-py/env",
        f"EnvironmentFile={root}/etc/rlm-py/secrets.env",
    ]
    assert not [line for line in lines if line.startswith("StandardOutput=")]  # journald
    apply(settings)
