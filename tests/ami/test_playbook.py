"""ami/playbook.yml: syntax check, ansible-lint, and the runtime role applied for real against a
throwaway dockerd of its own (start, idempotent second run, reload on a changed daemon.json).

The ansible tests run wherever ansible-playbook is installed (the `ami` extra); CI installs it,
so there they run rather than skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ami.constants import ANSIBLE_CORE_VERSION, APT_LOCK_TIMEOUT_S
from infra.ec2.settings import DEVBOX_STACK
from service import constants

REPO = Path(__file__).resolve().parents[2]
PLAYBOOK = REPO / "ami" / "playbook.yml"
VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str | None:
    beside = VENV_BIN / name
    return str(beside) if beside.exists() else shutil.which(name)


ANSIBLE_PLAYBOOK = tool("ansible-playbook")
ANSIBLE_LINT = tool("ansible-lint")
needs_ansible = pytest.mark.skipif(ANSIBLE_PLAYBOOK is None, reason="ansible-core not installed")
ENV = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}", "ANSIBLE_NOCOLOR": "1"}


def playbook(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", "localhost,", "-c", "local", str(PLAYBOOK), *args],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@needs_ansible
def test_syntax_check():
    result = playbook("--syntax-check")
    assert result.returncode == 0, result.stdout + result.stderr


@needs_ansible
@pytest.mark.parametrize("tag", ["runtime", "image", "service"])
def test_each_tag_selects_its_role(tag):
    result = playbook("--list-tasks", "--tags", tag)
    assert result.returncode == 0, result.stdout + result.stderr
    roles = set(re.findall(r"^\s+(\w+) : ", result.stdout, re.MULTILINE))
    assert roles == {tag}, result.stdout


@pytest.mark.skipif(ANSIBLE_LINT is None, reason="ansible-lint not installed")
def test_ansible_lint_production_profile_offline():
    result = subprocess.run(
        [ANSIBLE_LINT, "--offline", "--nocolor", "--profile", "production", str(PLAYBOOK)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_ssm_secret_names_match_service_constants():
    yaml = pytest.importorskip("yaml")
    settings = yaml.safe_load((REPO / "ami" / "group_vars" / "all.yml").read_text())
    stack = settings["rlm_stack"]
    assert stack == DEVBOX_STACK  # a dev instance reads the parameters its role may read
    rendered = {
        var: name.replace("{{ rlm_stack }}", stack)
        for var, name in settings["rlm_ssm_secrets"].items()
    }
    assert rendered == {
        "OPENAI_API_KEY": constants.ssm_name(stack, "OPENAI_API_KEY"),
        "RLM_API_KEYS": constants.ssm_name(stack, "RLM_API_KEYS"),
    }
    assert settings["sandbox_image"] == constants.DEFAULT_SANDBOX_IMAGE
    assert settings["rlm_env"]["RLM_PORT"] == str(constants.DEFAULT_PORT)
    assert settings["apt_lock_timeout_s"] == APT_LOCK_TIMEOUT_S


def test_the_bakes_ansible_core_is_the_series_tested_here():
    """The bake pins ansible-core exactly; these tests run the playbook with the venv's. The
    same minor series keeps what the tests prove true on the builder (2.19 changed templating)."""
    from importlib.metadata import version

    installed = version("ansible-core")
    assert installed.split(".")[:2] == ANSIBLE_CORE_VERSION.split(".")[:2], (
        f"the venv has ansible-core {installed}, the bake installs {ANSIBLE_CORE_VERSION}: "
        "move ami/constants.py ANSIBLE_CORE_VERSION to the tested release"
    )


def recap_changed(output: str) -> int:
    match = re.search(r"localhost\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=0", output)
    assert match, output
    return int(match.group(1))


@needs_ansible
@pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("dockerd") or not Path("/usr/bin/runsc").exists(),
    reason="needs root, dockerd and Debian's runsc (CI has them after the runtime playbook)",
)
def test_runtime_role_starts_then_leaves_then_reloads_a_dockerd():
    """A dockerd of its own (own socket, config, data root, no networking), so the host's
    daemon and its containers are never touched."""
    home = Path(tempfile.mkdtemp(prefix="rlm-dockerd-"))  # short: unix socket paths are limited
    sock = f"unix://{home}/docker.sock"
    settings = {
        "gvisor_source": "debian",
        "docker_daemon_json": f"{home}/daemon.json",
        "docker_host": sock,
        "dockerd_pidfile": f"{home}/docker.pid",
        "dockerd_log": f"{home}/dockerd.log",
        "dockerd_args": f"--config-file {home}/daemon.json -H {sock} --data-root {home}/data"
        f" --exec-root {home}/exec --bridge=none --iptables=false --ip-masq=false",
    }
    daemon_vars = ["-e", json.dumps(settings)]  # JSON: key=value would split at the spaces
    runtimes = ["docker", "-H", sock, "info", "--format", "{{json .Runtimes.runsc}}"]
    try:
        first = playbook("--tags", "runtime", *daemon_vars)
        assert recap_changed(first.stdout) > 0, first.stdout
        assert '"--platform=ptrace","--network=none"' in subprocess.check_output(
            runtimes, text=True
        )
        # One runtime a platform besides it, on the same binary, for benchmarks.
        every = ["docker", "-H", sock, "info", "--format", "{{json .Runtimes}}"]
        registered = json.loads(subprocess.check_output(every, text=True))
        assert registered["runsc-systrap"]["runtimeArgs"] == [
            "--platform=systrap",
            "--network=none",
        ]
        assert registered["runsc-ptrace"]["path"] == registered["runsc"]["path"]
        pid = (home / "docker.pid").read_text().strip()
        live = ["docker", "-H", sock, "info", "--format", "{{.LiveRestoreEnabled}}"]
        assert subprocess.check_output(live, text=True).strip() == "true"

        second = playbook("--tags", "runtime", *daemon_vars)
        assert recap_changed(second.stdout) == 0, second.stdout

        third = playbook("--tags", "runtime", *daemon_vars, "-e", "runsc_platform=systrap")
        assert "Reload dockerd for the new daemon.json (no systemd)" in third.stdout
        assert '"--platform=systrap"' in subprocess.check_output(runtimes, text=True)
        assert (home / "docker.pid").read_text().strip() == pid, "reloaded, not restarted"
    finally:
        pidfile = home / "docker.pid"
        if pidfile.exists():
            pid = int(pidfile.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.2)
        shutil.rmtree(home, ignore_errors=True)
