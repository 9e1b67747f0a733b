"""The boto3 side of the CLI: every EC2, SSM and IAM call, and the translation of botocore's
exceptions into `infra.ec2.errors` (`aws_errors`).

Functions take an `Aws` (clients, region, timing) and return plain values; none prints.
Only instances tagged Name=rlm-py are ever selected, so nothing else in the account is touched.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import urllib.parse
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    NoCredentialsError,
    NoRegionError,
    PartialCredentialsError,
    WaiterError,
)

from ami.constants import EC2_TRUST_POLICY
from infra.ec2.errors import AwsError, ConfigError, Conflict, NotFound, UsageError, WaitTimeout
from infra.ec2.retry import retry
from infra.ec2.settings import CONN_RULE_MARKER, DEVBOX_PROFILE, DEVBOX_STACK, NAME, Timing
from service.constants import ssm_name

# Codes EC2 returns for something it created a moment ago; retried, see infra.ec2.retry.
EVENTUAL_NOT_FOUND = frozenset(
    {"InvalidInstanceID.NotFound", "InvalidGroup.NotFound", "InvalidKeyPair.NotFound"}
)
_BAD_CREDENTIALS = frozenset(
    {
        "AuthFailure",
        "ExpiredToken",
        "InvalidClientTokenId",
        "RequestExpired",
        "SignatureDoesNotMatch",
        "UnrecognizedClientException",
    }
)
NO_CREDENTIALS = (
    "no AWS credentials: run `make aws-setup`, or set AWS_PROFILE or "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY"
)
NO_REGION = "no AWS region: pass --region (make REGION=...) or set AWS_REGION"


def error_code(exc: BaseException) -> str:
    """The AWS error code of a ClientError, '' for anything else."""
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


@contextlib.contextmanager
def aws_errors() -> Iterator[None]:
    """Translate botocore exceptions raised inside the block into the CLI's named errors."""
    try:
        yield
    except (NoCredentialsError, PartialCredentialsError) as exc:
        raise ConfigError(NO_CREDENTIALS) from exc
    except NoRegionError as exc:
        raise ConfigError(NO_REGION) from exc
    except WaiterError as exc:
        if "Max attempts exceeded" in str(exc):
            raise WaitTimeout(f"gave up waiting: {exc}") from exc
        raise AwsError(str(exc)) from exc
    except ClientError as exc:
        code = error_code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _BAD_CREDENTIALS:
            raise ConfigError(f"AWS rejected the credentials ({code}): {message}") from exc
        raise AwsError(f"{exc.operation_name}: {code}: {message}") from exc
    except BotoCoreError as exc:
        raise AwsError(str(exc)) from exc


class Aws:
    """Clients of one region, and how long to wait and retry.

    SSM and IAM clients are made on first use: most commands need only EC2, and making a
    client costs a noticeable fraction of a second.
    """

    def __init__(self, session: boto3.Session, region: str, timing: Timing) -> None:
        self.region = region
        self.timing = timing
        self._session = session
        self.ec2: Any = session.client("ec2")

    @functools.cached_property
    def ssm(self) -> Any:
        return self._session.client("ssm")

    @functools.cached_property
    def iam(self) -> Any:
        return self._session.client("iam")

    @functools.cached_property
    def sts(self) -> Any:
        return self._session.client("sts")


def connect(session: boto3.Session, timing: Timing) -> Aws:
    """Clients for the session's region. Raises ConfigError without a region or credentials."""
    region = session.region_name
    if not region:
        raise ConfigError(NO_REGION)
    if session.get_credentials() is None:
        raise ConfigError(NO_CREDENTIALS)
    return Aws(session, region, timing)


def _retry_eventual(aws: Aws, call: Any, what: str) -> Any:
    t = aws.timing
    return retry(
        call,
        retryable=lambda exc: error_code(exc) in EVENTUAL_NOT_FOUND,
        sleep=t.sleep,
        attempts=t.retry_attempts,
        base_s=t.retry_base_s,
        cap_s=t.retry_cap_s,
        what=what,
    )


def wait(aws: Aws, waiter: str, instance_id: str) -> None:
    """Block on a boto3 waiter (instance_running, instance_stopped, instance_terminated)."""
    aws.ec2.get_waiter(waiter).wait(
        InstanceIds=[instance_id],
        WaiterConfig={
            "Delay": aws.timing.waiter_delay_s,
            "MaxAttempts": aws.timing.waiter_max_attempts,
        },
    )


# --- instances ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """What the commands need to know about one instance."""

    id: str
    state: str
    type: str
    arch: str
    public_ip: str | None
    az: str
    launched: str
    security_groups: tuple[tuple[str, str], ...]  # (id, name)

    @classmethod
    def from_api(cls, d: dict[str, Any]) -> Instance:
        launched = d.get("LaunchTime")
        return cls(
            id=d["InstanceId"],
            state=d["State"]["Name"],
            type=d.get("InstanceType", ""),
            arch=d.get("Architecture", ""),
            public_ip=d.get("PublicIpAddress"),
            az=d.get("Placement", {}).get("AvailabilityZone", ""),
            launched=launched.strftime("%Y-%m-%d %H:%M") if launched else "",
            security_groups=tuple(
                (g["GroupId"], g["GroupName"]) for g in d.get("SecurityGroups", [])
            ),
        )


def find_instances(
    aws: Aws, states: Sequence[str] | None = None, instance_id: str | None = None
) -> list[Instance]:
    """rlm-py instances (by Name tag), optionally in `states` or with one id, oldest first."""
    filters = [{"Name": "tag:Name", "Values": [NAME]}]
    if states:
        filters.append({"Name": "instance-state-name", "Values": list(states)})
    if instance_id:
        # A filter, not InstanceIds=: an unknown id then gives an empty answer, not an error.
        filters.append({"Name": "instance-id", "Values": [instance_id]})
    found = [
        Instance.from_api(i)
        for page in aws.ec2.get_paginator("describe_instances").paginate(Filters=filters)
        for r in page["Reservations"]
        for i in r["Instances"]
    ]
    return sorted(found, key=lambda i: (i.launched, i.id))


def describe_instance(aws: Aws, instance_id: str) -> Instance:
    """One instance by id, retried while EC2 does not know yet the id it just returned."""
    answer = _retry_eventual(
        aws,
        lambda: aws.ec2.describe_instances(InstanceIds=[instance_id]),
        f"describe {instance_id}",
    )
    return Instance.from_api(answer["Reservations"][0]["Instances"][0])


def _profile_not_visible_yet(exc: BaseException) -> bool:
    """RunInstances' answer for an instance profile IAM made seconds ago."""
    if error_code(exc) != "InvalidParameterValue" or not isinstance(exc, ClientError):
        return False
    return "instance profile" in str(exc.response.get("Error", {}).get("Message", "")).lower()


def run_instance(aws: Aws, request: dict[str, Any]) -> str:
    """Launch one instance; returns its id.

    Retries a just-created security group's NotFound, and an instance profile IAM has not
    propagated yet, with the same ClientToken, so a retry after a call that did go through
    returns that instance instead of launching a second.
    """
    t = aws.timing
    answer = retry(
        lambda: aws.ec2.run_instances(**request),
        retryable=lambda exc: (
            error_code(exc) in EVENTUAL_NOT_FOUND or _profile_not_visible_yet(exc)
        ),
        sleep=t.sleep,
        attempts=t.retry_attempts,
        base_s=t.retry_base_s,
        cap_s=t.retry_cap_s,
        what="run instance",
    )
    return str(answer["Instances"][0]["InstanceId"])


def start(aws: Aws, instance_id: str) -> None:
    aws.ec2.start_instances(InstanceIds=[instance_id])


def stop(aws: Aws, instance_id: str) -> None:
    aws.ec2.stop_instances(InstanceIds=[instance_id])


def reboot(aws: Aws, instance_id: str) -> None:
    aws.ec2.reboot_instances(InstanceIds=[instance_id])


def terminate(aws: Aws, instance_id: str) -> None:
    aws.ec2.terminate_instances(InstanceIds=[instance_id])


@dataclass(frozen=True)
class LaunchSpec:
    """Everything `create` decides before launching."""

    image_id: str
    root_device: str
    instance_type: str
    root_gb: int
    security_group_id: str
    client_token: str
    instance_profile: str | None = None


def run_request(spec: LaunchSpec) -> dict[str, Any]:
    """The RunInstances parameters for the dev instance (printed as is by --dry-run)."""
    tags = [_name_tag()]
    request: dict[str, Any] = {
        "ImageId": spec.image_id,
        "InstanceType": spec.instance_type,
        "MinCount": 1,
        "MaxCount": 1,
        "KeyName": NAME,
        "SecurityGroupIds": [spec.security_group_id],
        "ClientToken": spec.client_token,
        "BlockDeviceMappings": [
            {
                "DeviceName": spec.root_device,
                "Ebs": {
                    "VolumeSize": spec.root_gb,
                    "VolumeType": "gp3",
                    "DeleteOnTermination": True,
                    "Encrypted": True,
                },
            }
        ],
        # IMDSv2 only; hop limit 1 keeps containers on the host from reaching the metadata.
        "MetadataOptions": {"HttpTokens": "required", "HttpPutResponseHopLimit": 1},
        "TagSpecifications": [
            {"ResourceType": "instance", "Tags": tags},
            {"ResourceType": "volume", "Tags": tags},
        ],
    }
    if spec.instance_profile:
        request["IamInstanceProfile"] = {"Name": spec.instance_profile}
    return request


# --- images and instance types ---------------------------------------------------------


def ssm_parameter(aws: Aws, name: str) -> str | None:
    """An SSM parameter's value, None when it does not exist."""
    try:
        return str(aws.ssm.get_parameter(Name=name)["Parameter"]["Value"])
    except ClientError as exc:
        if error_code(exc) == "ParameterNotFound":
            return None
        raise


@dataclass(frozen=True)
class Image:
    id: str
    arch: str
    root_device: str


def describe_image(aws: Aws, image_id: str) -> Image:
    images = aws.ec2.describe_images(ImageIds=[image_id])["Images"]
    if not images:
        raise NotFound(f"AMI {image_id} not found in {aws.region}")
    i = images[0]
    return Image(id=image_id, arch=i.get("Architecture", ""), root_device=i["RootDeviceName"])


def check_instance_type(aws: Aws, instance_type: str, arch: str) -> None:
    """Raise UsageError unless `instance_type` exists here and runs `arch`.

    Checked before launching because RunInstances' own error for a mismatch is vague.
    """
    try:
        types = aws.ec2.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
    except ClientError as exc:
        if error_code(exc) == "InvalidInstanceType":
            raise UsageError(f"unknown instance type {instance_type!r}") from exc
        raise
    supported = types[0]["ProcessorInfo"]["SupportedArchitectures"] if types else []
    if arch not in supported:
        raise UsageError(
            f"instance type {instance_type} runs {'/'.join(supported) or 'nothing'}, not {arch}:"
            " pick a matching INSTANCE_TYPE or ARCH"
        )


# --- key pair ----------------------------------------------------------------------------


def key_pair_exists(aws: Aws) -> bool:
    try:
        aws.ec2.describe_key_pairs(KeyNames=[NAME])
    except ClientError as exc:
        if error_code(exc) == "InvalidKeyPair.NotFound":
            return False
        raise
    return True


def create_key_pair(aws: Aws, key_path: Path) -> None:
    """Create key pair rlm-py and write its private key to `key_path` with mode 0400.

    The file is created exclusively: an existing file is never overwritten. If writing fails,
    the pair is deleted again, because EC2 can't hand out the private key a second time.
    """
    try:
        answer = aws.ec2.create_key_pair(
            KeyName=NAME,
            KeyType="ed25519",
            TagSpecifications=[{"ResourceType": "key-pair", "Tags": [_name_tag()]}],
        )
    except ClientError as exc:
        if error_code(exc) == "InvalidKeyPair.Duplicate":
            raise Conflict(
                f"key pair {NAME} already exists in {aws.region} (InvalidKeyPair.Duplicate) and "
                f"its private key is not in {key_path}: copy the .pem here, or delete the pair "
                f"(aws ec2 delete-key-pair --key-name {NAME} --region {aws.region}) and rerun"
            ) from exc
        raise
    try:
        write_private_key(key_path, answer["KeyMaterial"])
    except OSError:
        aws.ec2.delete_key_pair(KeyName=NAME)
        raise


def write_private_key(path: Path, material: str) -> None:
    """Write `material` to a new file readable by its owner only (0400)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    try:
        # The umask can only remove bits; fchmod makes the mode exact whatever it is.
        os.fchmod(fd, 0o400)
        os.write(fd, material.encode())
    finally:
        os.close(fd)


# --- network -----------------------------------------------------------------------------


def default_vpc_id(aws: Aws) -> str:
    vpcs = aws.ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise NotFound(f"no default VPC in {aws.region}: create one (aws ec2 create-default-vpc)")
    return str(vpcs[0]["VpcId"])


def find_security_group(aws: Aws, vpc_id: str) -> str | None:
    groups = aws.ec2.describe_security_groups(
        Filters=[
            {"Name": "group-name", "Values": [NAME]},
            {"Name": "vpc-id", "Values": [vpc_id]},
        ]
    )["SecurityGroups"]
    return str(groups[0]["GroupId"]) if groups else None


def create_security_group(aws: Aws, vpc_id: str) -> str:
    """Create security group rlm-py with no ingress; `conn` opens ports for the caller."""
    answer = aws.ec2.create_security_group(
        GroupName=NAME,
        Description="rlm-py dev instance: SSH and the service port from allowed CIDRs",
        VpcId=vpc_id,
        TagSpecifications=[{"ResourceType": "security-group", "Tags": [_name_tag()]}],
    )
    return str(answer["GroupId"])


@dataclass(frozen=True)
class Rule:
    """One TCP port open to one CIDR (IPv4 or IPv6)."""

    port: int
    cidr: str

    def permission(self, description: str | None = None) -> dict[str, Any]:
        described = {"Description": description} if description else {}
        ranges = (
            {"Ipv6Ranges": [{"CidrIpv6": self.cidr, **described}]}
            if ":" in self.cidr
            else {"IpRanges": [{"CidrIp": self.cidr, **described}]}
        )
        return {"IpProtocol": "tcp", "FromPort": self.port, "ToPort": self.port, **ranges}


def existing_rules(aws: Aws, group_id: str, marker: str | None = None) -> set[Rule]:
    """The group's single-port TCP ingress rules; with `marker`, only those described so."""
    group = aws.ec2.describe_security_groups(GroupIds=[group_id])["SecurityGroups"][0]
    rules: set[Rule] = set()
    for p in group.get("IpPermissions", []):
        if p.get("IpProtocol") != "tcp" or p.get("FromPort") != p.get("ToPort"):
            continue
        ranges = [(r["CidrIp"], r.get("Description")) for r in p.get("IpRanges", [])]
        ranges += [(r["CidrIpv6"], r.get("Description")) for r in p.get("Ipv6Ranges", [])]
        rules.update(
            Rule(port=p["FromPort"], cidr=cidr)
            for cidr, description in ranges
            if marker is None or description == marker
        )
    return rules


def authorize(aws: Aws, group_id: str, rules: Sequence[Rule]) -> None:
    """Add ingress `rules`, described with CONN_RULE_MARKER, one call each; a rule someone
    added meanwhile counts as done."""
    for rule in rules:
        try:
            _retry_eventual(
                aws,
                lambda rule=rule: aws.ec2.authorize_security_group_ingress(
                    GroupId=group_id, IpPermissions=[rule.permission(CONN_RULE_MARKER)]
                ),
                f"authorize port {rule.port}",
            )
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.Duplicate":
                raise


def revoke(aws: Aws, group_id: str, rules: Sequence[Rule]) -> None:
    """Remove ingress `rules`; one already gone counts as done."""
    for rule in rules:
        try:
            aws.ec2.revoke_security_group_ingress(
                GroupId=group_id, IpPermissions=[rule.permission()]
            )
        except ClientError as exc:
            if error_code(exc) != "InvalidPermission.NotFound":
                raise


# --- IAM ---------------------------------------------------------------------------------


def create_access_key(aws: Aws, user: str) -> tuple[str, str]:
    """A new access key for IAM user `user`: (access key id, secret)."""
    try:
        key = aws.iam.create_access_key(UserName=user)["AccessKey"]
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            raise NotFound(f"IAM user {user!r} not found") from exc
        raise
    return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


def devbox_policy(account: str) -> dict[str, Any]:
    """What the dev instance's role may do: read its own secrets, the SSM parameters under
    ssm_name(DEVBOX_STACK, ...), and decrypt them, only through SSM and only for those
    parameters (SecureStrings under a customer key need kms:Decrypt; aws/ssm's key policy
    already allows SSM's callers). Any region: IAM is global, the dev instance's is not."""
    parameters = f"arn:aws:ssm:*:{account}:parameter{ssm_name(DEVBOX_STACK, '*')}"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadOwnSecrets",
                "Effect": "Allow",
                "Action": ["ssm:GetParameter", "ssm:GetParameters"],
                "Resource": parameters,
            },
            {
                "Sid": "DecryptOwnSecretsThroughSsm",
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": f"arn:aws:kms:*:{account}:key/*",
                "Condition": {
                    "StringLike": {
                        "kms:ViaService": "ssm.*.amazonaws.com",
                        "kms:EncryptionContext:PARAMETER_ARN": parameters,
                    }
                },
            },
        ],
    }


def _policy_document(value: Any) -> Any:
    # boto3 hands IAM policy documents back decoded (moto too); a string is URL-encoded JSON.
    if isinstance(value, str):
        return json.loads(urllib.parse.unquote(value))
    return value


def ensure_devbox_profile(aws: Aws, dry_run: bool) -> list[str]:
    """Make (once) role and instance profile DEVBOX_PROFILE with `devbox_policy`; what was
    done (or, dry, would be), one line each; [] when everything was already in place."""
    iam, name, done = aws.iam, DEVBOX_PROFILE, []
    account = str(aws.sts.get_caller_identity()["Account"])
    policy = devbox_policy(account)
    try:
        iam.get_role(RoleName=name)
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        done.append(f"create IAM role {name} (EC2 may assume it)")
        if not dry_run:
            iam.create_role(
                RoleName=name,
                AssumeRolePolicyDocument=EC2_TRUST_POLICY,
                Description="rlm-py dev instance: reads its own secrets from SSM",
                Tags=[_name_tag()],
            )
    current = None
    if not done:
        try:
            current = iam.get_role_policy(RoleName=name, PolicyName="secrets")["PolicyDocument"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
    if current is None or _policy_document(current) != policy:
        done.append(f"allow {name} to read {ssm_name(DEVBOX_STACK, '*')} from SSM")
        if not dry_run:
            iam.put_role_policy(
                RoleName=name, PolicyName="secrets", PolicyDocument=json.dumps(policy)
            )
    try:
        roles = iam.get_instance_profile(InstanceProfileName=name)["InstanceProfile"]["Roles"]
    except ClientError as exc:
        if error_code(exc) != "NoSuchEntity":
            raise
        done.append(f"create instance profile {name}")
        roles = []
        if not dry_run:
            iam.create_instance_profile(InstanceProfileName=name, Tags=[_name_tag()])
    if name not in {r["RoleName"] for r in roles}:
        done.append(f"put role {name} in instance profile {name}")
        if not dry_run:
            iam.add_role_to_instance_profile(InstanceProfileName=name, RoleName=name)
    return done


def instance_profile_exists(aws: Aws, name: str) -> bool:
    try:
        aws.iam.get_instance_profile(InstanceProfileName=name)
    except ClientError as exc:
        if error_code(exc) == "NoSuchEntity":
            return False
        raise
    return True


def _name_tag() -> dict[str, str]:
    return {"Key": "Name", "Value": NAME}
