"""ami.bake against moto: the calls made, the builder's permissions, the parameter written,
the output kept in S3, the images kept per stack and architecture, and the cleanup on success,
on a failed provision and on a timeout."""

from __future__ import annotations

import io
import json
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
from service.constants import ssm_name

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
def small_ami_catalogue(tmp_path: Path, monkeypatch):
    """Two of moto's stock AMIs instead of all of them (and no per-region lists): each test's
    fresh EC2 backend loads in a fraction of the time."""
    from moto.ec2.models import amis

    two = [next(a for a in amis.AMIS if a["architecture"] == arch) for arch in bake.ARCHES]
    path = tmp_path / "amis.json"
    path.write_text(json.dumps(two, default=str))
    monkeypatch.setenv("MOTO_AMIS_PATH", str(path))
    monkeypatch.setattr(amis, "AMIS", two)


@pytest.fixture
def aws(small_ami_catalogue):
    with mock_aws():
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


def upload_output(clients: Clients, stdout: str, stderr: str) -> list[str]:
    """Do what the SSM agent does with OutputS3BucketName/KeyPrefix: upload the step's whole
    stdout and stderr (moto's Run Command runs nothing). The keys written."""
    keys: list[str] = []

    def agent(parsed, **_):
        command = parsed["Command"]
        prefix = command["OutputS3KeyPrefix"]
        for instance_id in command["InstanceIds"]:
            for stream, text in (("stdout", stdout), ("stderr", stderr)):
                key = f"{prefix}/{command['CommandId']}/{instance_id}/{bake.OUTPUT_STEP}/{stream}"
                clients.s3.put_object(
                    Bucket=command["OutputS3BucketName"], Key=key, Body=text.encode()
                )
                keys.append(key)

    clients.ssm.meta.events.register("after-call.ssm.SendCommand", agent)
    return keys


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
    # The repository tarball goes; the command's output (if any) stays for reading.
    left = clients.s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])
    assert all("/output/" in o["Key"] for o in left), left


def test_bake_makes_the_image_writes_the_parameter_and_cleans_up(aws, repo):
    calls = record_calls(aws)
    image_id = Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    param = aws.ssm.get_parameter(Name=ssm_name("dev", "ami/arm64"))["Parameter"]
    assert param["Value"] == image_id
    assert param["Name"] == "/rlm-py/dev/ami/arm64"
    image = aws.ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert image["State"] == "available"
    tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
    assert tags["rlm-py:arch"] == "arm64"
    assert tags["rlm-py:base-ami"] == base_ami(aws)
    assert tags["rlm-py:stack"] == "dev"
    assert_cleaned_up(aws)

    # The order that matters: upload before launch, provision before the image, the parameter
    # only once the image is available, the builder terminated (and waited for) before its
    # group is deleted, everything undone in the reverse order of its creation.
    expected_in_order = [
        "s3.PutObject",
        "ec2.CreateSecurityGroup",
        "iam.PutRolePolicy",
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
        "iam.DeleteRolePolicy",
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
    assert "-e rlm_stack=dev" in script and "-e rlm_cloudwatch_agent=true" in script
    assert "rm -rf /opt/rlm-py-src /opt/ansible-venv /etc/rlm-py/secrets.env" in script
    assert f"ansible-core=={bake.ANSIBLE_CORE_VERSION}" in script
    assert sent["Parameters"]["executionTimeout"] == ["3600"]
    # The whole output goes to the bucket, under this bake's own prefix.
    assert sent["OutputS3BucketName"] == BUCKET
    assert sent["OutputS3KeyPrefix"].startswith("rlm-py/ami-bake/")
    assert sent["OutputS3KeyPrefix"].endswith("-arm64/output")


def test_failed_provision_terminates_the_builder_and_writes_no_parameter(aws, repo):
    fail_provision(aws)
    with pytest.raises(ProvisionFailed) as failure:
        Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    assert failure.value.status == "Failed"
    assert "Install Docker" in str(failure.value)
    assert_cleaned_up(aws)
    assert aws.ec2.describe_images(Owners=["self"])["Images"] == []
    with pytest.raises(aws.ssm.exceptions.ParameterNotFound):
        aws.ssm.get_parameter(Name=ssm_name("dev", "ami/arm64"))


def test_a_failure_reports_the_tail_of_the_full_output_from_s3(aws, repo):
    """SSM keeps the first 24,000 characters; the error is at the end of 100,000."""
    fail_provision(aws)
    long_run = "ok: [localhost]\n" * 6000 + "TASK [service : Install rlm-py] fatal: pip exploded\n"
    keys = upload_output(aws, stdout=long_run, stderr="E: dpkg was interrupted\n")
    with pytest.raises(ProvisionFailed) as failure:
        Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    message = str(failure.value)
    assert "pip exploded" in message and "dpkg was interrupted" in message
    assert failure.value.output_url.startswith(f"s3://{BUCKET}/rlm-py/ami-bake/")
    assert failure.value.output_url in message
    assert all(
        key.startswith(failure.value.output_url.removeprefix(f"s3://{BUCKET}/")) for key in keys
    )
    assert len(failure.value.output) < 2 * bake.OUTPUT_TAIL_BYTES + 100
    # The output outlives the bake, for reading.
    stored = {o["Key"] for o in aws.s3.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert set(keys) <= stored


def test_the_builder_role_can_read_no_parameter_and_write_only_its_output(aws, repo):
    seen = {}

    def capture(**_):
        [role] = [r for r in aws.iam.list_roles()["Roles"] if r["RoleName"].startswith("rlm-py")]
        seen["attached"] = aws.iam.list_attached_role_policies(RoleName=role["RoleName"])
        [name] = aws.iam.list_role_policies(RoleName=role["RoleName"])["PolicyNames"]
        seen["policy"] = aws.iam.get_role_policy(RoleName=role["RoleName"], PolicyName=name)[
            "PolicyDocument"
        ]

    aws.ec2.meta.events.register("after-call.ec2.RunInstances", capture)
    sent = {}
    aws.ssm.meta.events.register(
        "before-parameter-build.ssm.SendCommand", lambda params, **_: sent.update(params)
    )
    Bake(config(repo, aws), aws, FakeClock().clock(), log=lambda _: None).run()

    assert seen["attached"]["AttachedPolicies"] == []  # no AmazonSSMManagedInstanceCore
    policy = seen["policy"]
    if isinstance(policy, str):
        policy = json.loads(policy)
    allowed = [
        (a, st["Resource"])
        for st in policy["Statement"]
        for a in ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])
    ]
    assert all(st["Effect"] == "Allow" for st in policy["Statement"])
    names = [a for a, _ in allowed]
    assert not [a for a in names if "*" in a], "no wildcard actions"
    assert not [
        a for a in names if a.lower().startswith(("ssm:getparameter", "kms:", "secretsmanager:"))
    ]
    assert not [a for a in names if a.startswith("ssm:") and a not in bake.SSM_AGENT_ACTIONS]
    assert "ssm:UpdateInstanceInformation" in names and "ssmmessages:OpenControlChannel" in names
    s3 = [(a, r) for a, r in allowed if a.startswith("s3:")]
    assert ("s3:PutObject", f"arn:aws:s3:::{BUCKET}/{sent['OutputS3KeyPrefix']}/*") in s3
    assert not [a for a, r in s3 if a in {"s3:GetObject", "s3:ListBucket"}]
    own_prefix = f"arn:aws:s3:::{BUCKET}/{sent['OutputS3KeyPrefix']}/*"
    assert {r for a, r in s3 if a.startswith("s3:PutObject")} == {own_prefix}
    assert {r for a, r in s3 if not a.startswith("s3:PutObject")} == {f"arn:aws:s3:::{BUCKET}"}


def bake_once(aws, repo, **overrides) -> str:
    return Bake(config(repo, aws, **overrides), aws, FakeClock().clock(), log=lambda _: None).run()


def image_state(aws, image_id: str) -> str | None:
    images = aws.ec2.describe_images(Owners=["self"], ImageIds=[image_id])["Images"]
    return images[0]["State"] if images else None


def own_images(aws) -> set[str]:
    return {i["ImageId"] for i in aws.ec2.describe_images(Owners=["self"])["Images"]}


def test_only_the_newest_images_of_a_stack_and_arch_are_kept_with_their_snapshots(aws, repo):
    other_stack = bake_once(aws, repo, stack="prod")
    other_arch = bake_once(aws, repo, arch="x86_64")
    made = [bake_once(aws, repo, keep=3) for _ in range(3)]
    assert own_images(aws) == {other_stack, other_arch, *made}
    oldest = aws.ec2.describe_images(ImageIds=made[:2])["Images"]
    snapshots = {
        m["Ebs"]["SnapshotId"] for i in oldest for m in i["BlockDeviceMappings"] if "Ebs" in m
    }
    assert len(snapshots) == 2

    made += [bake_once(aws, repo, keep=3) for _ in range(2)]

    assert own_images(aws) == {other_stack, other_arch, *made[-3:]}
    assert aws.ssm.get_parameter(Name="/rlm-py/dev/ami/arm64")["Parameter"]["Value"] == made[-1]
    assert aws.ssm.get_parameter(Name="/rlm-py/prod/ami/arm64")["Parameter"]["Value"] == other_stack
    left = {s["SnapshotId"] for s in aws.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert not snapshots & left


def test_an_image_a_launch_template_still_names_is_kept(aws, repo):
    first = bake_once(aws, repo)
    aws.ec2.create_launch_template(
        LaunchTemplateName="fleet", LaunchTemplateData={"ImageId": first}
    )
    made = [bake_once(aws, repo, keep=2) for _ in range(3)]
    assert own_images(aws) == {first, *made[-2:]}


def test_keeping_fewer_than_two_images_is_refused(aws, repo):
    with pytest.raises(bake.BakeError, match="keep at least 2"):
        config(repo, aws, keep=1)
    with pytest.raises(SystemExit):
        bake.parse_args(["--arch", "arm64", "--bucket", "b", "--keep", "1"])


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
    assert aws.ssm.get_parameter(Name="/rlm-py/dev/ami/x86_64")["Parameter"]["Value"].startswith(
        "ami-"
    )


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
                "--stack",
                "staging",
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
        value = aws.ssm.get_parameter(Name=f"/rlm-py/staging/ami/{arch}")["Parameter"]["Value"]
        assert value.startswith("ami-")


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
        bake.parse_args(["--arch", "all", "--bucket", "b", "--base-ami", "ami-1"])


def test_only_the_architectures_asked_for_are_baked():
    with pytest.raises(SystemExit):
        bake.parse_args(["--bucket", "b"])  # no silent "both"
    assert bake._arches(bake.parse_args(["--arch", "x86_64", "--bucket", "b"]).arch) == ["x86_64"]
    assert bake._arches(["all"]) == list(bake.ARCHES)
    assert bake.parse_args(["--arch", "arm64", "--bucket", "b"]).stack == "dev"


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
