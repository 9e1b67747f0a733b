"""ami.bake against moto: the calls made, the parameter written, and the cleanup on success,
on a failed provision and on a timeout."""

from __future__ import annotations

import io
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pytest
from moto import mock_aws

from ami import bake
from ami.bake import Bake, BakeConfig, BakeTimeout, Clients, Clock, ProvisionFailed, Timeouts
from ami.constants import ubuntu_ami_param
from service.constants import SSM_AMI_PARAM

REGION = "us-east-1"
BUCKET = "rlm-bake-test"
FAST = Timeouts(poll_s=0)


@dataclass
class FakeClock:
    """Sleeping only moves the clock, so timeouts are reached at once."""

    t: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(seconds, 1.0)

    def clock(self) -> Clock:
        return Clock(now=self.now, sleep=self.sleep)


@pytest.fixture(autouse=True)
def _aws_env(monkeypatch):
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "ami").mkdir()
    (tmp_path / "ami" / "playbook.yml").write_text("---\n")
    (tmp_path / ".env").write_text("OPENAI_API_KEY=never-ship-me\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "big").write_text("x")
    return tmp_path


@pytest.fixture
def aws():
    # The builder role gets the AWS-managed SSM policy, which moto only knows when asked to.
    with mock_aws(config={"iam": {"load_aws_managed_policies": True}}):
        session = boto3.Session(region_name=REGION)
        clients = Clients.from_session(session)
        clients.s3.create_bucket(Bucket=BUCKET)
        yield clients


def base_ami(clients: Clients) -> str:
    return clients.ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]


def config(repo: Path, clients: Clients, **overrides) -> BakeConfig:
    values = {
        "arch": "arm64",
        "bucket": BUCKET,
        "repo_dir": repo,
        "base_ami": base_ami(clients),
        "timeouts": FAST,
    }
    values.update(overrides)
    return BakeConfig(**values)


def record_calls(clients: Clients) -> list[str]:
    """Every AWS operation the bake makes, in order, as service.Operation."""
    calls: list[str] = []
    for client in (clients.ec2, clients.s3, clients.ssm, clients.iam):
        client.meta.events.register(
            "before-call",
            lambda model, **_: calls.append(f"{model.service_model.service_name}.{model.name}"),
        )
    return calls


def fail_provision(clients: Clients, status: str = "Failed") -> None:
    """moto always reports Success; rewrite GetCommandInvocation's answer as the agent would."""

    def rewrite(parsed, **_):
        parsed["Status"] = status
        parsed["StandardErrorContent"] = "TASK [runtime : Install Docker] FAILED"

    clients.ssm.meta.events.register("after-call.ssm.GetCommandInvocation", rewrite)


def builders(clients: Clients) -> list[dict]:
    reservations = clients.ec2.describe_instances(
        Filters=[{"Name": "tag:rlm-py:arch", "Values": ["arm64", "x86_64"]}]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def assert_cleaned_up(clients: Clients) -> None:
    assert builders(clients), "the builder was launched"
    assert all(i["State"]["Name"] == "terminated" for i in builders(clients))
    groups = clients.ec2.describe_security_groups()["SecurityGroups"]
    assert not [g for g in groups if g["GroupName"].startswith("rlm-py-ami-builder")]
    assert not [
        p
        for p in clients.iam.list_instance_profiles()["InstanceProfiles"]
        if p["InstanceProfileName"].startswith("rlm-py-ami-builder")
    ]
    assert not [r for r in clients.iam.list_roles()["Roles"] if r["RoleName"].startswith("rlm-py")]
    assert clients.s3.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0) == 0


def test_bake_makes_the_image_writes_the_parameter_and_cleans_up(aws, repo):
    calls = record_calls(aws)
    image_id = Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    param = aws.ssm.get_parameter(Name=SSM_AMI_PARAM.format(arch="arm64"))["Parameter"]
    assert param["Value"] == image_id
    assert param["Name"] == "/rlm-py/ami/arm64"
    image = aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["State"] == "available"
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    assert tags["rlm-py:arch"] == "arm64"
    assert tags["rlm-py:base-ami"] == base_ami(aws)
    assert_cleaned_up(aws)

    # The order that matters: upload before launch, provision before the image, the parameter
    # only once the image is available, the builder terminated (and waited for) before its
    # group is deleted, everything undone in the reverse order of its creation.
    expected_in_order = [
        "s3.PutObject",
        "ec2.CreateSecurityGroup",
        "iam.CreateInstanceProfile",
        "ec2.RunInstances",
        "ssm.SendCommand",
        "ssm.GetCommandInvocation",
        "ec2.CreateImage",
        "ec2.DescribeImages",
        "ec2.CreateTags",
        "ssm.PutParameter",
        "ec2.TerminateInstances",
        "ec2.DescribeInstances",
        "iam.DeleteRole",
        "ec2.DeleteSecurityGroup",
        "s3.DeleteObject",
    ]
    remaining = iter(calls)
    assert all(call in remaining for call in expected_in_order), calls


def test_builder_is_launched_locked_down(aws, repo):
    launched = {}
    aws.ec2.meta.events.register(
        "before-parameter-build.ec2.RunInstances", lambda params, **_: launched.update(params)
    )
    Bake(
        config(repo, aws, instance_type="t4g.large"), aws, FakeClock().clock(), log=lambda _: None
    ).run()

    assert launched["MetadataOptions"]["HttpTokens"] == "required"
    assert launched["IamInstanceProfile"]["Name"].startswith("rlm-py-ami-builder-arm64-")
    assert launched["InstanceType"] == "t4g.large"
    assert launched["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 30


def test_the_group_has_no_ingress(aws, repo):
    seen = {}

    def capture(http_response, parsed, model, **_):
        if model.name == "RunInstances":
            group_id = parsed["Instances"][0]["SecurityGroups"][0]["GroupId"]
            seen["group"] = aws.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][
                0
            ]

    aws.ec2.meta.events.register("after-call.ec2.RunInstances", capture)
    Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()
    assert seen["group"]["IpPermissions"] == []


def test_the_playbook_runs_through_ssm_with_the_repo_from_a_presigned_url(aws, repo):
    sent = {}
    aws.ssm.meta.events.register(
        "before-parameter-build.ssm.SendCommand", lambda params, **_: sent.update(params)
    )
    Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    assert sent["DocumentName"] == "AWS-RunShellScript"
    script = "\n".join(sent["Parameters"]["commands"])
    assert "Signature=" in script and BUCKET in script
    assert "ansible-playbook -i localhost, -c local ami/playbook.yml" in script
    assert "-e gvisor_source=apt" in script and "-e rlm_service_start=false" in script
    assert 'rm -rf "$src" /opt/ansible-venv /etc/rlm-py/secrets.env' in script
    assert sent["Parameters"]["executionTimeout"] == ["3600"]


def test_failed_provision_terminates_the_builder_and_writes_no_parameter(aws, repo):
    fail_provision(aws)
    with pytest.raises(ProvisionFailed) as failure:
        Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    assert failure.value.status == "Failed"
    assert "Install Docker" in str(failure.value)
    assert_cleaned_up(aws)
    assert aws.ec2.describe_images(Owners=["self"])["Images"] == []
    with pytest.raises(aws.ssm.exceptions.ParameterNotFound):
        aws.ssm.get_parameter(Name=SSM_AMI_PARAM.format(arch="arm64"))


def test_provision_that_never_finishes_times_out_and_cleans_up(aws, repo):
    fail_provision(aws, status="InProgress")
    clock = FakeClock()
    timeouts = Timeouts(poll_s=15, provision_s=120)
    with pytest.raises(BakeTimeout, match="SSM command"):
        Bake(config(repo, aws, timeouts=timeouts), aws, clock.clock(), log=lambda _: None).run()

    assert clock.sleeps and set(clock.sleeps) == {15}
    assert clock.t >= 120
    assert_cleaned_up(aws)


def test_without_a_base_ami_the_canonical_parameter_is_read(aws, repo, monkeypatch):
    asked = []
    monkeypatch.setattr(
        Bake, "ubuntu_ami", lambda self: asked.append(self.config.arch) or base_ami(aws)
    )
    Bake(
        config(repo, aws, base_ami=None, arch="x86_64"),
        aws,
        FakeClock().clock(),
        log=lambda _: None,
    ).run()
    assert asked == ["x86_64"]
    assert aws.ssm.get_parameter(Name="/rlm-py/ami/x86_64")["Parameter"]["Value"].startswith("ami-")


def test_missing_canonical_parameter_names_the_flag(aws, repo):
    b = Bake(config(repo, aws, base_ami=None), aws, FakeClock().clock(), log=lambda _: None)
    with pytest.raises(bake.BakeError, match="--base-ami"):
        b.run()


def test_canonical_parameter_name_per_arch():
    assert ubuntu_ami_param("x86_64").endswith("/24.04/stable/current/amd64/hvm/ebs-gp3/ami-id")
    assert "/arm64/" in ubuntu_ami_param("arm64")


def test_main_bakes_both_arches(aws, repo, capsys, monkeypatch):
    monkeypatch.setattr(Clients, "from_session", classmethod(lambda cls, session: aws))
    ami = base_ami(aws)
    # One --base-ami serves one arch only; bake each arch with it through main() in turn.
    for arch in bake.ARCHES:
        code = bake.main(
            [
                "--arch",
                arch,
                "--bucket",
                BUCKET,
                "--region",
                REGION,
                "--base-ami",
                ami,
                "--repo-dir",
                str(repo),
                "--var",
                "gvisor_release=20250101",
            ],
            clock=FakeClock().clock(),
            timeouts=FAST,
        )
        assert code == 0
    out = capsys.readouterr().out.split()
    assert out[0] == "arm64" and out[2] == "x86_64"
    for arch in bake.ARCHES:
        assert aws.ssm.get_parameter(Name=f"/rlm-py/ami/{arch}")["Parameter"]["Value"].startswith(
            "ami-"
        )


def test_main_reports_failure_with_exit_1(aws, repo, capsys, monkeypatch):
    monkeypatch.setattr(Clients, "from_session", classmethod(lambda cls, session: aws))
    fail_provision(aws)
    code = bake.main(
        [
            "--arch",
            "arm64",
            "--bucket",
            BUCKET,
            "--region",
            REGION,
            "--base-ami",
            base_ami(aws),
            "--repo-dir",
            str(repo),
        ],
        clock=FakeClock().clock(),
        timeouts=FAST,
    )
    assert code == 1
    assert "bake failed: provisioning ended Failed" in capsys.readouterr().err


def test_base_ami_with_two_arches_is_refused():
    with pytest.raises(SystemExit):
        bake.parse_args(["--bucket", "b", "--base-ami", "ami-1"])


def test_waiter_budget_is_an_hour_at_fifteen_seconds():
    assert bake.waiter_config(3600, 15) == {"Delay": 15, "MaxAttempts": 240}
    assert bake.waiter_config(3600, 0)["MaxAttempts"] >= 1


def test_pack_repo_leaves_out_env_venv_and_git(repo):
    tarball, commit = bake.pack_repo(repo)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        names = tar.getnames()
    assert names == ["ami/playbook.yml"]
    assert commit is None


def test_pack_repo_ships_the_committed_tree_of_a_checkout(repo):
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text(".env\n.venv/\n")
    subprocess.run([*git, "add", "ami", ".gitignore"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (repo / "untracked.txt").write_text("not committed")

    tarball, commit = bake.pack_repo(repo)
    with tarfile.open(fileobj=io.BytesIO(tarball)) as tar:
        names = set(tar.getnames())
    assert "ami/playbook.yml" in names
    assert ".env" not in names and "untracked.txt" not in names
    assert commit and len(commit) == 40
