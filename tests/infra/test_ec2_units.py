"""rlm-ec2 parts that need no AWS: retry, AMI choice, command lines, ec2-setup, error mapping."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.exceptions import ClientError, NoCredentialsError, NoRegionError, WaiterError

from infra.ec2 import host, remote
from infra.ec2.ami import baked_param, canonical_param, resolve_ami
from infra.ec2.aws import aws_errors
from infra.ec2.cli import main
from infra.ec2.credentials import SharedFiles, write_credentials, write_region
from infra.ec2.deps import Deps
from infra.ec2.errors import (
    AwsError,
    ConfigError,
    NotFound,
    UsageError,
    WaitTimeout,
)
from infra.ec2.retry import backoff_delays, retry
from service.constants import DEFAULT_SANDBOX_IMAGE

REPO = Path(__file__).resolve().parents[2]


def client_error(code: str, op: str = "RunInstances") -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "msg"}}, op)


# --- retry -------------------------------------------------------------------------------


def test_backoff_doubles_up_to_the_cap() -> None:
    assert backoff_delays(6, 1.0, 8.0) == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert backoff_delays(1, 1.0, 8.0) == []


def test_retry_sleeps_between_retryable_failures_then_returns() -> None:
    outcomes: list[object] = [KeyError("a"), KeyError("b"), "ok"]
    slept: list[float] = []

    def call() -> object:
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    result = retry(
        call,
        retryable=lambda e: isinstance(e, KeyError),
        sleep=slept.append,
        attempts=5,
        base_s=0.5,
        cap_s=10,
        what="x",
    )
    assert result == "ok"
    assert slept == [0.5, 1.0]


def test_retry_gives_up_with_wait_timeout_and_passes_other_errors_at_once() -> None:
    slept: list[float] = []

    def always_missing() -> None:
        raise KeyError("gone")

    with pytest.raises(WaitTimeout, match="after 3 tries"):
        retry(always_missing, retryable=lambda e: True, sleep=slept.append, attempts=3,
              base_s=1, cap_s=1, what="x")  # fmt: skip
    assert slept == [1, 1]

    slept.clear()
    with pytest.raises(KeyError):
        retry(always_missing, retryable=lambda e: False, sleep=slept.append, attempts=3,
              base_s=1, cap_s=1, what="x")  # fmt: skip
    assert slept == []


# --- AMI choice --------------------------------------------------------------------------


def test_canonical_parameter_names_use_debian_arch_names() -> None:
    assert canonical_param("arm64") == (
        "/aws/service/canonical/ubuntu/server/24.04/stable/current/arm64/hvm/ebs-gp3/ami-id"
    )
    assert "/current/amd64/" in canonical_param("x86_64")
    assert baked_param("x86_64") == "/rlm-py/dev/ami/x86_64"  # per stack, `dev` by default
    assert baked_param("arm64", "prod") == "/rlm-py/prod/ami/arm64"


def test_baked_ami_wins_over_stock_ubuntu() -> None:
    params = {baked_param("arm64"): "ami-baked", canonical_param("arm64"): "ami-stock"}
    ami = resolve_ami(params.get, "arm64")
    assert (ami.image_id, ami.baked, ami.parameter) == ("ami-baked", True, "/rlm-py/dev/ami/arm64")
    # Another stack's image is not this stack's: stock Ubuntu then.
    assert resolve_ami(params.get, "arm64", "prod").image_id == "ami-stock"


def test_stock_ubuntu_when_nothing_is_baked() -> None:
    params = {canonical_param("x86_64"): "ami-stock"}
    ami = resolve_ami(params.get, "x86_64")
    assert (ami.image_id, ami.baked) == ("ami-stock", False)


def test_no_ami_parameter_at_all_is_not_found() -> None:
    with pytest.raises(NotFound, match="no AMI for arm64"):
        resolve_ami(lambda name: None, "arm64")


# --- conn's command lines ----------------------------------------------------------------


def test_rsync_command_excludes_local_state_and_uses_the_key() -> None:
    cmd = remote.rsync_command(
        Path("/src/rlm-py"), Path("/src/rlm-py/rlm-py.pem"), "ubuntu", "1.2.3.4"
    )
    assert cmd[:2] == ["rsync", "-az"]
    assert cmd[-2:] == ["/src/rlm-py/", "ubuntu@1.2.3.4:rlm-py/"]
    excludes = {c.removeprefix("--exclude=") for c in cmd if c.startswith("--exclude=")}
    assert {".venv/", ".git/", "build/", "dist/", "logs/", "*.pem"} <= excludes
    assert "--delete" not in cmd
    ssh = cmd[cmd.index("-e") + 1]
    assert ssh.startswith("ssh -i /src/rlm-py/rlm-py.pem ")
    assert "StrictHostKeyChecking=accept-new" in ssh


def test_ssh_command_logs_into_the_synced_repo() -> None:
    cmd = remote.ssh_command(Path("/k.pem"), "ubuntu", "1.2.3.4")
    assert cmd[:3] == ["ssh", "-i", "/k.pem"]
    assert cmd[-3:] == ["-t", "ubuntu@1.2.3.4", "cd rlm-py 2>/dev/null; exec bash -l"]


def test_cidrs_are_normalized_and_bad_ones_refused() -> None:
    assert remote.host_cidr("203.0.113.7") == "203.0.113.7/32"
    assert remote.host_cidr("2001:db8::1") == "2001:db8::1/128"
    assert remote.normalize_cidr("10.0.0.0/8") == "10.0.0.0/8"
    assert remote.normalize_cidr("198.51.100.9") == "198.51.100.9/32"
    for bad in ("nope", "10.0.0.1/8", "300.1.1.1/32"):
        with pytest.raises(UsageError):
            remote.normalize_cidr(bad)


# --- ec2-setup ---------------------------------------------------------------------------


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "ami").mkdir()
    (tmp_path / "ami" / "playbook.yml").write_text("- hosts: all\n")
    return tmp_path


def setup_deps(repo: Path, ran: list[list[str]], *, ansible: bool, status: int = 0,
               ec2: bool = True) -> Deps:  # fmt: skip
    def run(cmd: list[str]) -> int:
        ran.append(list(cmd))
        return status

    return Deps(
        run=run,
        which=lambda name: "/usr/bin/" + name if ansible else None,
        on_ec2=lambda: ec2,
        repo_root=repo,
        env={},
    )


def test_ec2_setup_runs_the_playbook_locally_with_extra_vars(repo: Path) -> None:
    ran: list[list[str]] = []
    assert (
        main(["ec2-setup", "-e", "gvisor_source=release"], setup_deps(repo, ran, ansible=True)) == 0
    )
    assert ran == [
        [
            "ansible-playbook", "-i", "localhost,", "-c", "local", str(repo / "ami/playbook.yml"),
            "--extra-vars", json.dumps({"rlm_repo_dir": str(repo), "sandbox_image": DEFAULT_SANDBOX_IMAGE,
                                        "rlm_dotenv": str(repo / ".env")}, sort_keys=True),
            "--extra-vars", "gvisor_source=release",
        ]
    ]  # fmt: skip
    assert main(["ec2-setup", "-e", "novalue"], setup_deps(repo, ran, ansible=True)) == 2


def test_ec2_setup_installs_ansible_first_when_missing(repo: Path) -> None:
    ran: list[list[str]] = []
    assert main(["ec2-setup"], setup_deps(repo, ran, ansible=False)) == 0
    assert [c[-1] for c in ran[:2]] == ["-q", "ansible-core"]
    assert ran[2][0] == "ansible-playbook"


def test_ec2_setup_dry_run_prints_and_runs_nothing(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ran: list[list[str]] = []
    assert main(["ec2-setup", "--dry-run"], setup_deps(repo, ran, ansible=False)) == 0
    out = capsys.readouterr().out.splitlines()
    assert ran == []
    assert out[0] == "would run sudo apt-get update -q"
    assert out[2].startswith(
        f"would run ansible-playbook -i localhost, -c local {repo}/ami/playbook.yml --extra-vars '"
    )


def test_ec2_setup_failures_have_exit_codes(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ran: list[list[str]] = []
    assert main(["ec2-setup"], setup_deps(repo, ran, ansible=True, status=2)) == 9
    assert "ansible-playbook" in capsys.readouterr().err
    assert main(["ec2-setup"], setup_deps(repo, ran, ansible=True, ec2=False)) == 2
    assert main(["ec2-setup", "--force", "--dry-run"],
                setup_deps(repo, ran, ansible=True, ec2=False)) == 0  # fmt: skip
    (repo / "ami/playbook.yml").unlink()
    assert main(["ec2-setup"], setup_deps(repo, ran, ansible=True)) == 4


def test_ec2_detection(tmp_path: Path) -> None:
    assert not host.on_ec2(tmp_path)
    vendor = tmp_path / "devices/virtual/dmi/id/sys_vendor"
    vendor.parent.mkdir(parents=True)
    vendor.write_text("Amazon EC2\n")
    assert host.on_ec2(tmp_path)


def test_ec2_setup_runs_without_boto3(repo: Path) -> None:
    """On a fresh instance the system python3 has no boto3: ec2-setup must not import it."""
    code = (
        "import sys; sys.modules['boto3'] = None; sys.modules['botocore'] = None\n"
        "from pathlib import Path\n"
        "from infra.ec2.cli import main\nfrom infra.ec2.deps import Deps\n"
        f"sys.exit(main(['ec2-setup', '--dry-run', '--force'], Deps(repo_root=Path({str(repo)!r}))))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "ansible-playbook" in done.stdout


# --- error mapping, credentials files ----------------------------------------------------


@pytest.mark.parametrize(
    ("raised", "expected", "text"),
    [
        (NoCredentialsError(), ConfigError, "no AWS credentials"),
        (NoRegionError(), ConfigError, "no AWS region"),
        (client_error("AuthFailure"), ConfigError, "rejected the credentials"),
        (client_error("UnauthorizedOperation"), AwsError, "RunInstances: UnauthorizedOperation"),
        (WaiterError("InstanceRunning", "Max attempts exceeded", {}), WaitTimeout, "gave up"),
    ],
)
def test_botocore_errors_become_named_errors(
    raised: Exception, expected: type[Exception], text: str
) -> None:
    with pytest.raises(expected, match=text), aws_errors():
        raise raised


def test_exit_codes_are_distinct() -> None:
    from infra.ec2 import errors

    codes = [getattr(errors, name).exit_code for name in errors.__all__]
    assert len(set(codes)) == len(codes)


def test_credentials_files_written_like_aws_configure(tmp_path: Path) -> None:
    creds, config = tmp_path / ".aws/credentials", tmp_path / ".aws/config"
    creds.parent.mkdir()
    creds.write_text("[other]\naws_access_key_id = KEEP\n")
    files = SharedFiles.from_env(
        {"AWS_SHARED_CREDENTIALS_FILE": str(creds), "AWS_CONFIG_FILE": str(config),
         "AWS_PROFILE": "dev"}
    )  # fmt: skip
    write_credentials(files, "AKIA1", "s3cret")
    write_region(files, "eu-west-1")
    text = creds.read_text()
    assert "[other]" in text and "KEEP" in text
    assert "[dev]\naws_access_key_id = AKIA1\naws_secret_access_key = s3cret" in text
    assert "[profile dev]\nregion = eu-west-1" in config.read_text()
    assert stat.S_IMODE(os.stat(creds).st_mode) == 0o600
