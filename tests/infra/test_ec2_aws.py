"""rlm-ec2's AWS commands, end to end through `main`, against moto's mock_aws."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from moto import mock_aws

from infra.ec2.ami import baked_param, canonical_param, resolve_ami
from infra.ec2.cli import main
from infra.ec2.deps import Deps
from infra.ec2.errors import ConfigError
from infra.ec2.settings import CONN_RULE_MARKER, DEVBOX_PROFILE, Timing
from service.constants import DEFAULT_PORT, ssm_name

REGION = "eu-west-1"
CALLER = "203.0.113.7"


class World:
    """Moto-backed Deps plus a record of EC2 calls, commands run and sleeps."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.repo = repo
        self.env = env
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ran: list[list[str]] = []
        self.statuses: list[int] = []  # exit statuses the runner hands out, then 0
        self.slept: list[float] = []
        self.ec2 = boto3.client("ec2", region_name=REGION)
        images = {
            arch: self.ec2.describe_images(Filters=[{"Name": "architecture", "Values": [arch]}])[
                "Images"
            ][0]
            for arch in ("arm64", "x86_64")
        }
        self.images = images
        # Canonical's parameters, which moto can't hold, answered here.
        self.public = {canonical_param(a): i["ImageId"] for a, i in images.items()}
        self.caller_ip_calls = 0
        self._sessions: dict[str | None, boto3.Session] = {}

    def session(self, region: str | None) -> boto3.Session:
        # One session per region: its clients then share loaded service models (fast tests).
        if region not in self._sessions:
            session = boto3.Session(region_name=region)
            session.events.register("provide-client-params.ec2", self._record)
            self._sessions[region] = session
        return self._sessions[region]

    def _record(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        self.calls.append((model.name, json.loads(json.dumps(params, default=str))))

    def called(self, operation: str) -> list[dict[str, Any]]:
        return [params for name, params in self.calls if name == operation]

    def run(self, cmd: list[str]) -> int:
        self.ran.append(list(cmd))
        return self.statuses.pop(0) if self.statuses else 0

    def caller_ip(self) -> str:
        self.caller_ip_calls += 1
        return CALLER

    def deps(self, **overrides: Any) -> Deps:
        values: dict[str, Any] = {
            "session": self.session,
            "ami_lookup": lambda get, arch, stack: resolve_ami(
                lambda n: self.public.get(n) or get(n), arch, stack
            ),
            "caller_ip": self.caller_ip,
            "run": self.run,
            "prompt": lambda question, secret: pytest.fail(f"unexpected prompt {question}"),
            "interactive": lambda: False,
            "repo_root": self.repo,
            "env": self.env,
            "timing": Timing(sleep=self.slept.append, waiter_delay_s=0, waiter_max_attempts=5),
        }
        values.update(overrides)
        return Deps(**values)

    def main(self, *argv: str, **overrides: Any) -> int:
        return main([*argv, "--region", REGION], self.deps(**overrides))

    def state(self, instance_id: str) -> str:
        reservations = self.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
        return str(reservations[0]["Instances"][0]["State"]["Name"])

    def launch_foreign(self, name: str | None = "someone-else") -> str:
        """An instance that is not rlm-py's, which no command may touch."""
        tags = [{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}]
        answer = self.ec2.run_instances(
            ImageId=self.images["arm64"]["ImageId"],
            MinCount=1,
            MaxCount=1,
            InstanceType="t4g.micro",
            **({"TagSpecifications": tags} if name else {}),
        )
        return str(answer["Instances"][0]["InstanceId"])


@pytest.fixture
def aws_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Fake credentials, and the shared AWS files moved out of the real home."""
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        monkeypatch.delenv(var)
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "aws/credentials"),
        "AWS_CONFIG_FILE": str(tmp_path / "aws/config"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture(scope="module")
def two_amis() -> list[dict[str, Any]]:
    """One arm64 and one x86_64 image out of moto's 1,300 defaults."""
    from moto.ec2.models import amis

    return [next(a for a in amis.AMIS if a["architecture"] == arch) for arch in ("arm64", "x86_64")]


@pytest.fixture
def small_ami_catalogue(
    two_amis: list[dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load two AMIs into moto's EC2 instead of all of them: seconds saved per test."""
    from moto.ec2.models import amis

    path = tmp_path / "amis.json"
    path.write_text(json.dumps(two_amis, default=str))
    monkeypatch.setenv("MOTO_AMIS_PATH", str(path))  # also skips the per-region extra lists
    monkeypatch.setattr(amis, "AMIS", two_amis)  # read at import, so patched too


@pytest.fixture
def world(tmp_path: Path, aws_env: dict[str, str], small_ami_catalogue: None) -> Iterator[World]:
    repo = tmp_path / "repo"
    repo.mkdir()
    with mock_aws():
        yield World(repo, aws_env)


@pytest.fixture
def ready(world: World) -> World:
    """A world where `make aws-setup` already ran."""
    assert world.main("aws-setup") == 0
    return world


def create(world: World, *argv: str) -> str:
    """`create` through the CLI; the new instance's id."""
    before = {i["InstanceId"] for i in _rlm_instances(world)}
    assert world.main("create", *argv) == 0
    [new] = {i["InstanceId"] for i in _rlm_instances(world)} - before
    return str(new)


def launch_rlm_py(world: World) -> str:
    """A second rlm-py instance, made behind the CLI's back."""
    answer = world.ec2.run_instances(
        ImageId=world.images["arm64"]["ImageId"], MinCount=1, MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "rlm-py"}]}],
    )  # fmt: skip
    return str(answer["Instances"][0]["InstanceId"])


# --- aws-setup ---------------------------------------------------------------------------


def test_aws_setup_writes_the_key_once_with_mode_0400(world: World) -> None:
    key = world.repo / "rlm-py.pem"
    assert world.main("aws-setup") == 0
    assert stat.S_IMODE(key.stat().st_mode) == 0o400
    first = key.read_text()
    assert "PRIVATE KEY" in first
    assert world.main("aws-setup") == 0
    assert key.read_text() == first
    assert len(world.called("CreateKeyPair")) == 1
    assert world.ec2.describe_key_pairs(KeyNames=["rlm-py"])["KeyPairs"]


def test_aws_setup_dry_run_creates_nothing(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    assert world.main("aws-setup", "--dry-run") == 0
    assert "would create key pair rlm-py" in capsys.readouterr().out
    assert not (world.repo / "rlm-py.pem").exists()
    assert world.called("CreateKeyPair") == []


def test_key_pair_without_its_pem_is_a_conflict(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    (ready.repo / "rlm-py.pem").unlink()
    assert ready.main("aws-setup") == 6
    assert "exists in eu-west-1 but" in capsys.readouterr().err
    ready.ec2.delete_key_pair(KeyName="rlm-py")
    (ready.repo / "rlm-py.pem").write_text("stale")
    assert ready.main("aws-setup") == 6


def test_a_concurrent_duplicate_key_pair_is_a_clear_error(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The pair appears between our check and our create (another terminal, say).
    from infra.ec2 import aws

    monkeypatch.setattr(aws, "key_pair_exists", lambda cx: False)
    world.ec2.create_key_pair(KeyName="rlm-py")
    assert world.main("aws-setup") == 6
    err = capsys.readouterr().err
    assert "InvalidKeyPair.Duplicate" in err and len(err.strip().splitlines()) == 1
    assert not (world.repo / "rlm-py.pem").exists()


def test_aws_setup_prints_a_new_access_key_for_the_iam_user(
    world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    iam = boto3.client("iam")
    iam.create_user(UserName="dev")
    assert world.main("aws-setup", "--iam-user", "dev") == 0
    keys = iam.list_access_keys(UserName="dev")["AccessKeyMetadata"]
    assert len(keys) == 1
    out = capsys.readouterr().out
    assert f"AccessKeyId: {keys[0]['AccessKeyId']}" in out
    assert "SecretAccessKey: " in out
    assert world.main("aws-setup", "--iam-user", "nobody") == 4


def test_aws_setup_asks_for_credentials_when_none_are_set(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    env = {k: v for k, v in world.env.items() if not k.startswith("AWS_ACCESS_KEY_ID")}
    env.pop("AWS_SECRET_ACCESS_KEY")
    assert main(["aws-setup"], world.deps(env=env)) == 3  # no terminal: can't ask

    answers = {"AWS Access Key ID: ": "AKIATEST", "AWS Secret Access Key: ": "s3cret",
               "Default region name: ": REGION}  # fmt: skip
    deps = world.deps(env=env, interactive=lambda: True, prompt=lambda q, secret: answers[q])
    assert main(["aws-setup"], deps) == 0
    assert "aws_access_key_id = AKIATEST" in Path(env["AWS_SHARED_CREDENTIALS_FILE"]).read_text()
    assert f"region = {REGION}" in Path(env["AWS_CONFIG_FILE"]).read_text()
    assert (world.repo / "rlm-py.pem").exists()


def test_missing_credentials_or_region_are_one_line_errors(
    world: World, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert main(["list"], world.deps()) == 3  # no --region, no AWS_REGION, no profile
    assert capsys.readouterr().err.strip() == f"rlm-ec2: {_no_region()}"
    assert main(["list"], world.deps(env={**world.env, "AWS_REGION": REGION})) == 0
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert world.main("list", session=lambda region: boto3.Session(region_name=region)) == 3
    assert "no AWS credentials" in capsys.readouterr().err


def _no_region() -> str:
    from infra.ec2.aws import NO_REGION

    return NO_REGION


def _arn_matches(pattern: str, arn: str) -> bool:
    """IAM's wildcard match of a resource ARN (`*` any run, `?` one character)."""
    import fnmatch

    return fnmatch.fnmatchcase(arn, pattern)


def test_aws_setup_makes_the_devbox_profile_once_with_only_its_own_secrets(world: World) -> None:
    iam = boto3.client("iam")
    writes: list[str] = []

    def iam_calls(model: Any, **_: Any) -> None:
        if not model.name.startswith(("Get", "List")):
            writes.append(model.name)

    def session(region: str | None) -> boto3.Session:
        s = world.session(region)
        s.events.register("before-call.iam", iam_calls, unique_id="iam-writes")
        return s

    assert world.main("aws-setup", session=session) == 0
    assert sorted(writes) == [
        "AddRoleToInstanceProfile",
        "CreateInstanceProfile",
        "CreateRole",
        "PutRolePolicy",
    ]
    profile = iam.get_instance_profile(InstanceProfileName=DEVBOX_PROFILE)["InstanceProfile"]
    assert [r["RoleName"] for r in profile["Roles"]] == [DEVBOX_PROFILE]
    role = iam.get_role(RoleName=DEVBOX_PROFILE)["Role"]
    trust = role["AssumeRolePolicyDocument"]
    assert [s["Principal"] for s in trust["Statement"]] == [{"Service": "ec2.amazonaws.com"}]
    assert iam.list_attached_role_policies(RoleName=DEVBOX_PROFILE)["AttachedPolicies"] == []
    [name] = iam.list_role_policies(RoleName=DEVBOX_PROFILE)["PolicyNames"]
    policy = iam.get_role_policy(RoleName=DEVBOX_PROFILE, PolicyName=name)["PolicyDocument"]
    read, decrypt = policy["Statement"]
    assert sorted(read["Action"]) == ["ssm:GetParameter", "ssm:GetParameters"]
    account = boto3.client("sts").get_caller_identity()["Account"]

    def param_arn(stack: str, region: str = REGION) -> str:
        return f"arn:aws:ssm:{region}:{account}:parameter{ssm_name(stack, 'OPENAI_API_KEY')}"

    # Its own parameters, in any region; never a fleet stack's, nor one by the old flat name.
    assert _arn_matches(read["Resource"], param_arn("devbox"))
    assert _arn_matches(read["Resource"], param_arn("devbox", "us-west-2"))
    for other in ("dev", "prod", "devbox2"):
        assert not _arn_matches(read["Resource"], param_arn(other)), other
    assert not _arn_matches(
        read["Resource"], f"arn:aws:ssm:{REGION}:{account}:parameter/rlm-py/OPENAI_API_KEY"
    )
    assert decrypt["Action"] == "kms:Decrypt"
    condition = decrypt["Condition"]["StringLike"]
    assert _arn_matches(condition["kms:ViaService"], f"ssm.{REGION}.amazonaws.com")
    assert condition["kms:EncryptionContext:PARAMETER_ARN"] == read["Resource"]

    writes.clear()
    assert world.main("aws-setup", session=session) == 0
    assert writes == []  # once: a second run changes nothing
    iam.delete_role_policy(RoleName=DEVBOX_PROFILE, PolicyName=name)
    assert world.main("aws-setup", session=session) == 0
    assert writes == ["PutRolePolicy"]  # and repairs what is missing


def test_aws_setup_dry_run_makes_no_role(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    assert world.main("aws-setup", "--dry-run") == 0
    out = capsys.readouterr().out
    assert f"would create IAM role {DEVBOX_PROFILE}" in out
    assert f"would create instance profile {DEVBOX_PROFILE}" in out
    assert boto3.client("iam").list_roles()["Roles"] == []


# --- create ------------------------------------------------------------------------------


def test_create_attaches_the_devbox_profile_unless_told_otherwise(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    first = create(ready)
    [request] = ready.called("RunInstances")
    assert request["IamInstanceProfile"] == {"Name": DEVBOX_PROFILE}
    described = ready.ec2.describe_instances(InstanceIds=[first])["Reservations"][0]["Instances"][0]
    assert described["IamInstanceProfile"]["Arn"].endswith(f"instance-profile/{DEVBOX_PROFILE}")
    assert ready.main("delete") == 0

    create(ready, "--instance-profile", "none")
    assert "IamInstanceProfile" not in ready.called("RunInstances")[-1]
    assert ready.main("delete") == 0

    iam = boto3.client("iam")
    iam.remove_role_from_instance_profile(
        InstanceProfileName=DEVBOX_PROFILE, RoleName=DEVBOX_PROFILE
    )
    iam.delete_instance_profile(InstanceProfileName=DEVBOX_PROFILE)
    capsys.readouterr()
    assert ready.main("create") == 4
    assert "run `make aws-setup` first" in capsys.readouterr().err
    assert len(ready.called("RunInstances")) == 2


def test_create_launches_stock_ubuntu_arm64_by_default(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    instance_id = create(ready)
    [request] = ready.called("RunInstances")
    image = ready.images["arm64"]
    assert request["ImageId"] == ready.public[canonical_param("arm64")] == image["ImageId"]
    assert request["InstanceType"] == "t4g.medium"
    assert request["KeyName"] == "rlm-py"
    assert request["ClientToken"].startswith("rlm-py-")
    [volume] = request["BlockDeviceMappings"]
    assert volume["DeviceName"] == image["RootDeviceName"]
    assert volume["Ebs"]["VolumeType"] == "gp3" and volume["Ebs"]["VolumeSize"] == 50
    assert {"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": "rlm-py"}]} in request[
        "TagSpecifications"
    ]
    described = ready.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]
    instance = described["Instances"][0]
    assert instance["State"]["Name"] == "running"
    assert instance["Architecture"] == "arm64"
    assert capsys.readouterr().out == f"{instance_id} {instance['PublicIpAddress']}\n"


def test_create_prefers_the_baked_ami_and_takes_type_and_size(ready: World) -> None:
    baked = ready.images["x86_64"]["ImageId"]
    boto3.client("ssm", region_name=REGION).put_parameter(
        Name=baked_param("x86_64", "staging"), Value=baked, Type="String"
    )
    assert baked_param("x86_64", "staging") == "/rlm-py/staging/ami/x86_64"
    ready.public.clear()  # the baked parameter alone must be enough
    create(ready, "--arch", "x86_64", "--root-gb", "80", "--stack", "staging")
    [request] = ready.called("RunInstances")
    assert request["ImageId"] == baked
    assert request["InstanceType"] == "t3.medium"
    assert request["BlockDeviceMappings"][0]["Ebs"]["VolumeSize"] == 80


def test_create_without_any_ami_parameter_is_not_found(ready: World) -> None:
    ready.public.clear()
    assert ready.main("create") == 4
    assert ready.called("RunInstances") == []


def test_security_group_is_created_once_and_reused(ready: World) -> None:
    first = create(ready)
    assert ready.main("delete") == 0
    second = create(ready)
    assert first != second
    assert len(ready.called("CreateSecurityGroup")) == 1
    groups = {r["SecurityGroupIds"][0] for r in ready.called("RunInstances")}
    assert len(groups) == 1
    found = ready.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["rlm-py"]}]
    )
    assert [g["GroupId"] for g in found["SecurityGroups"]] == list(groups)


def test_create_again_reports_the_instance_instead_of_launching_another(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    instance_id = create(ready)
    capsys.readouterr()
    assert ready.main("create") == 0
    assert capsys.readouterr().out.startswith(instance_id)
    assert len(ready.called("RunInstances")) == 1
    assert ready.main("create", "--arch", "x86_64") == 6  # another shape: delete first
    assert len(ready.called("RunInstances")) == 1


def test_create_refuses_mismatched_arch_and_type_and_missing_key(world: World) -> None:
    assert world.main("create", "--instance-type", "t3.medium") == 2  # arm64 is the default
    assert world.main("create") == 4  # no key pair: aws-setup first
    assert world.called("RunInstances") == []


def test_create_dry_run_prints_the_request_and_creates_nothing(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert ready.main("create", "--dry-run", "--client-token", "tok-1") == 0
    out = capsys.readouterr().out
    assert "would create security group rlm-py" in out
    request = json.loads(out[out.index("would run instance ") + len("would run instance ") :])
    assert request["ClientToken"] == "tok-1" and request["InstanceType"] == "t4g.medium"
    assert ready.called("RunInstances") == [] and ready.called("CreateSecurityGroup") == []


def test_create_retries_eventual_not_found_with_the_same_client_token(ready: World) -> None:
    failures = ["InvalidGroup.NotFound"]

    class Http:
        status_code = 400
        headers: ClassVar[dict[str, str]] = {}

    def flaky(**_: Any) -> Any:
        if failures:
            error = {"Error": {"Code": failures.pop(), "Message": "not yet"}}
            return Http(), error
        return None

    def session(region: str | None) -> boto3.Session:
        s = ready.session(region)
        s.events.register("before-call.ec2.RunInstances", flaky)
        return s

    assert ready.main("create", session=session) == 0
    tokens = [r["ClientToken"] for r in ready.called("RunInstances")]
    assert len(tokens) == 2 and tokens[0] == tokens[1]
    assert ready.slept == [1.0]
    assert len(_rlm_instances(ready)) == 1


def _rlm_instances(world: World) -> list[dict[str, Any]]:
    found = world.ec2.describe_instances(Filters=[{"Name": "tag:Name", "Values": ["rlm-py"]}])
    return [i for r in found["Reservations"] for i in r["Instances"]]


# --- conn --------------------------------------------------------------------------------


def _ingress(world: World) -> list[tuple[int, str]]:
    found = world.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["rlm-py"]}]
    )
    return sorted(
        (p["FromPort"], r["CidrIp"])
        for p in found["SecurityGroups"][0]["IpPermissions"]
        for r in p["IpRanges"]
    )


def test_conn_opens_ports_once_syncs_and_logs_in(ready: World) -> None:
    instance_id = create(ready)
    ip = ready.ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0][
        "PublicIpAddress"
    ]
    assert ready.main("conn") == 0
    assert _ingress(ready) == [(22, f"{CALLER}/32"), (DEFAULT_PORT, f"{CALLER}/32")]
    key = str(ready.repo / "rlm-py.pem")
    rsync, ssh = ready.ran
    assert rsync[0] == "rsync" and rsync[-2:] == [f"{ready.repo}/", f"ubuntu@{ip}:rlm-py/"]
    assert "--exclude=.venv/" in rsync and "--exclude=.git/" in rsync
    assert f"ssh -i {key}" in rsync[rsync.index("-e") + 1]
    assert ssh[:3] == ["ssh", "-i", key] and f"ubuntu@{ip}" in ssh

    assert ready.main("conn", instance_id) == 0
    assert len(ready.called("AuthorizeSecurityGroupIngress")) == 2  # one per rule, first time
    assert _ingress(ready) == [(22, f"{CALLER}/32"), (DEFAULT_PORT, f"{CALLER}/32")]
    assert ready.caller_ip_calls == 2  # once per conn, not once per rule


def _marked(world: World) -> list[tuple[int, str]]:
    found = world.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["rlm-py"]}]
    )
    return sorted(
        (p["FromPort"], r["CidrIp"])
        for p in found["SecurityGroups"][0]["IpPermissions"]
        for r in p["IpRanges"]
        if r.get("Description") == CONN_RULE_MARKER
    )


def test_conn_from_a_new_ip_replaces_the_previous_callers_rules(ready: World) -> None:
    create(ready)
    assert ready.main("conn", "--no-ssh", "--no-sync") == 0
    assert _marked(ready) == [(22, f"{CALLER}/32"), (DEFAULT_PORT, f"{CALLER}/32")]
    # A rule someone added by hand (no marker) is never touched.
    group_id = ready.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["rlm-py"]}]
    )["SecurityGroups"][0]["GroupId"]
    ready.ec2.authorize_security_group_ingress(
        GroupId=group_id, IpProtocol="tcp", FromPort=22, ToPort=22, CidrIp="10.0.0.0/8"
    )

    moved = "198.51.100.9"
    assert ready.main("conn", "--no-ssh", "--no-sync", caller_ip=lambda: moved) == 0
    assert _marked(ready) == [(22, f"{moved}/32"), (DEFAULT_PORT, f"{moved}/32")]
    assert _ingress(ready) == [
        (22, "10.0.0.0/8"),
        (22, f"{moved}/32"),
        (DEFAULT_PORT, f"{moved}/32"),
    ]
    revoked = ready.called("RevokeSecurityGroupIngress")
    assert [r["IpPermissions"][0]["IpRanges"][0]["CidrIp"] for r in revoked] == [f"{CALLER}/32"] * 2

    # The same caller again: nothing to add or revoke.
    assert ready.main("conn", "--no-ssh", "--no-sync", caller_ip=lambda: moved) == 0
    assert len(ready.called("RevokeSecurityGroupIngress")) == 2
    assert len(ready.called("AuthorizeSecurityGroupIngress")) == 4


def test_conn_dry_run_shows_what_it_would_revoke(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    create(ready)
    assert ready.main("conn", "--no-ssh", "--no-sync") == 0
    capsys.readouterr()
    assert (
        ready.main("conn", "--dry-run", "--no-ssh", "--no-sync", caller_ip=lambda: "192.0.2.1") == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"would revoke tcp/22 from {CALLER}/32 in {_group(ready)}",
        f"would revoke tcp/{DEFAULT_PORT} from {CALLER}/32 in {_group(ready)}",
    ]
    assert _marked(ready) == [(22, f"{CALLER}/32"), (DEFAULT_PORT, f"{CALLER}/32")]


def _group(world: World) -> str:
    found = world.ec2.describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["rlm-py"]}]
    )
    return str(found["SecurityGroups"][0]["GroupId"])


def test_conn_takes_explicit_cidrs_without_looking_up_the_caller(ready: World) -> None:
    create(ready)

    def no_lookup() -> str:
        raise AssertionError("caller IP looked up")

    code = ready.main("conn", "--ssh-cidr", "198.51.100.0/24", "--app-cidr", "0.0.0.0/0",
                      "--no-ssh", caller_ip=no_lookup)  # fmt: skip
    assert code == 0
    assert _ingress(ready) == [(22, "198.51.100.0/24"), (DEFAULT_PORT, "0.0.0.0/0")]
    assert [c[0] for c in ready.ran] == ["rsync"]
    assert ready.main("conn", "--ssh-cidr", "10.0.0.1/8", "--app-cidr", "10.0.0.0/8") == 2


def test_conn_without_a_public_ip_lookup_is_a_config_error(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    create(ready)

    def offline() -> str:
        raise ConfigError("can't find your public IP: pass SSH_CIDR=... and APP_CIDR=...")

    assert ready.main("conn", caller_ip=offline) == 3
    assert "SSH_CIDR" in capsys.readouterr().err
    assert ready.called("AuthorizeSecurityGroupIngress") == [] and ready.ran == []


def test_conn_retries_rsync_until_ssh_answers_and_reports_ssh_failure(ready: World) -> None:
    create(ready)
    ready.statuses = [255, 255, 0, 255]  # rsync x3, then ssh can't connect
    assert ready.main("conn") == 9
    assert [c[0] for c in ready.ran] == ["rsync", "rsync", "rsync", "ssh"]
    assert ready.slept == [6.0, 6.0]
    ready.ran.clear()
    ready.statuses = [23]  # rsync's own failure: no retry
    assert ready.main("conn") == 9
    assert [c[0] for c in ready.ran] == ["rsync"]


def test_conn_dry_run_prints_the_plan_and_changes_nothing(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    create(ready)
    capsys.readouterr()
    assert ready.main("conn", "--dry-run") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"would allow tcp/22 from {CALLER}/32")
    assert out[1].startswith(f"would allow tcp/{DEFAULT_PORT} from {CALLER}/32")
    assert out[2].startswith("would run rsync -az ") and out[3].startswith("would run ssh -i ")
    assert ready.ran == [] and _ingress(ready) == []


def test_conn_with_several_running_instances_lists_them(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    first = create(ready)
    launch_rlm_py(ready)
    capsys.readouterr()
    assert ready.main("conn") == 5
    err = capsys.readouterr().err
    assert first in err and "INSTANCE" in err and "pass one instance id" in err
    assert ready.main("conn", first, "--no-ssh", "--no-sync") == 0


# --- list, start, stop, reboot, delete ---------------------------------------------------


def test_lifecycle_touches_only_rlm_py_instances(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign, untagged = ready.launch_foreign(), ready.launch_foreign(name=None)
    ours = create(ready)
    capsys.readouterr()

    assert ready.main("list") == 0
    out = capsys.readouterr().out
    assert ours in out and foreign not in out and untagged not in out
    assert out.splitlines()[0].split()[:2] == ["INSTANCE", "STATE"]

    assert ready.main("stop") == 0
    assert ready.state(ours) == "stopped"
    assert ready.main("stop") == 0  # already stopped: nothing to do
    assert ready.main("reboot") == 4  # nothing running to reboot
    assert ready.main("start") == 0
    assert ready.state(ours) == "running"
    assert ready.main("reboot") == 0
    assert ready.called("RebootInstances") == [{"InstanceIds": [ours]}]
    assert ready.main("delete") == 0
    assert ready.state(ours) == "terminated"

    for op in ("StopInstances", "StartInstances", "RebootInstances", "TerminateInstances"):
        assert all(call["InstanceIds"] == [ours] for call in ready.called(op)), op
    assert ready.state(foreign) == "running" and ready.state(untagged) == "running"


def test_an_explicit_foreign_id_is_refused(
    ready: World, capsys: pytest.CaptureFixture[str]
) -> None:
    foreign = ready.launch_foreign()
    for verb in ("stop", "reboot", "delete", "conn"):
        assert ready.main(verb, foreign) == 4, verb
    assert "not a live rlm-py instance" in capsys.readouterr().err
    assert ready.state(foreign) == "running"
    assert ready.called("StopInstances") == ready.called("TerminateInstances") == []


def test_dry_run_changes_no_state(ready: World, capsys: pytest.CaptureFixture[str]) -> None:
    ours = create(ready)
    capsys.readouterr()
    assert ready.main("delete", "--dry-run") == 0
    assert capsys.readouterr().out == f"would delete {ours}\n"
    assert ready.state(ours) == "running"


def test_several_candidates_are_ambiguous(ready: World) -> None:
    first = create(ready)
    assert ready.main("stop") == 0
    assert ready.main("delete", first, "--dry-run") == 0
    second = launch_rlm_py(ready)
    ready.ec2.stop_instances(InstanceIds=[second])
    assert ready.main("start") == 5
    assert ready.main("start", second) == 0
    assert ready.state(second) == "running" and ready.state(first) == "stopped"
