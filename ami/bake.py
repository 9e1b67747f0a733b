"""Bake rlm-py AMIs, one per architecture asked for, with ami/playbook.yml.

For each architecture: pack the repository and upload it to S3; create a temporary security
group (no ingress) and instance profile (the SSM agent's channels and a write-only S3 prefix
for the command's output: no SSM parameter, so no secret, is readable on a builder); launch a
builder from Canonical's Ubuntu 24.04 AMI; run the playbook on it through SSM Run Command (it
downloads the repository with a presigned URL, and its full output goes to
s3://<bucket>/rlm-py/ami-bake/<run>/output/, since SSM keeps only the first 24,000 characters);
create the image, wait until it is available, tag it and write its id to the stack's SSM
parameter `/rlm-py/<stack>/ami/<arch>`; then keep the newest `--keep` images of that stack and
architecture and deregister the older ones with their snapshots. The builder, the group, the
profile and the upload are removed whatever happens (each one as soon as it was created, it is
registered for cleanup); the output stays in S3 for reading.

The commands SSM runs are a POSIX `sh` script: AWS-RunShellScript writes them to a file with
no shebang and runs it with `sh`, which is dash on Ubuntu (no `pipefail`, no arrays).

    python -m ami.bake --arch arm64 --bucket my-bake-bucket --stack dev   # or ami/bake ...

Waiting is injectable (`Clock`, `Timeouts`) so the tests against moto take no time.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shlex
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
from botocore.exceptions import ClientError

# ami/constants.py (architectures, stock Ubuntu) and service/constants.py (parameter names)
# are the single sources; the repository root is on sys.path when this runs as
# `python -m ami.bake` or through the ami/bake wrapper.
from ami.constants import (
    ANSIBLE_CORE_VERSION,
    APT_LOCK_TIMEOUT_S,
    ARCHES,
    EC2_TRUST_POLICY,
    ubuntu_ami_param,
)
from service.constants import ssm_name

DEFAULT_INSTANCE_TYPE = {"arm64": "m7g.large", "x86_64": "m7i.large"}
DEFAULT_STACK = "dev"
# Images kept per stack and architecture. At least 2: the fleet's launch templates name the
# image `pulumi up` resolved, which is the previous one until the next `pulumi up`, and a
# scale-out from a deregistered image fails.
DEFAULT_KEEP = 3
MIN_KEEP = 2
# Extra vars for the playbook on a builder: modern runsc from gVisor's repository; the service
# enabled for the next boot but not started, so no secret is fetched into the image; the
# CloudWatch agent (the log shipper of fleet hosts) installed.
DEFAULT_PLAYBOOK_VARS = {
    "gvisor_source": "apt",
    "rlm_service_start": "false",
    "rlm_cloudwatch_agent": "true",
    "apt_lock_timeout_s": str(APT_LOCK_TIMEOUT_S),
}
# The SSM agent's own channels: registration (ssm:UpdateInstanceInformation), Run Command and
# Session Manager messages (ec2messages, ssmmessages), associations it polls for. This is
# AmazonSSMManagedInstanceCore without its ssm:GetParameter(s), ssm:GetDocument and inventory
# and patching calls: a builder reads no parameter, so it can read no secret.
SSM_AGENT_ACTIONS = (
    "ssm:UpdateInstanceInformation",
    "ssm:ListInstanceAssociations",
    "ssm:UpdateInstanceAssociationStatus",
    "ec2messages:AcknowledgeMessage",
    "ec2messages:DeleteMessage",
    "ec2messages:FailMessage",
    "ec2messages:GetEndpoint",
    "ec2messages:GetMessages",
    "ec2messages:SendReply",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
)
# Where AWS-RunShellScript's agent puts a step's output under OutputS3KeyPrefix.
OUTPUT_STEP = "awsrunShellScript/0.awsrunShellScript"
OUTPUT_TAIL_BYTES = 8000
# Paths on the builder (absolute; `provision_script(root=...)` prefixes them for tests).
BUILDER_SRC = "/opt/rlm-py-src"
BUILDER_VENV = "/opt/ansible-venv"
TERMINAL_COMMAND_STATES = {"Success", "Failed", "Cancelled", "TimedOut", "Cancelling"}
EXCLUDED_FROM_TARBALL = {
    ".git",
    ".venv",
    ".env",
    "__pycache__",
    ".pytest_cache",
    ".mypy_cache",
    ".ruff_cache",
}


class BakeError(Exception):
    """A bake that could not finish; the message says which step and which setting to change."""


class ProvisionFailed(BakeError):
    """The playbook run on the builder ended in a state other than Success.

    `output` is the tail of the full output from S3 when the agent uploaded it, else what SSM
    kept (its first 24,000 characters); `output_url` says where the whole of it is.
    """

    def __init__(self, status: str, output: str, output_url: str) -> None:
        super().__init__(
            f"provisioning ended {status}; full output under {output_url}; last output:\n"
            f"{output[-4000:]}"
        )
        self.status = status
        self.output = output
        self.output_url = output_url


class BakeTimeout(BakeError):
    """A step did not finish within its budget in Timeouts."""


@dataclass(frozen=True)
class Timeouts:
    """Every wait of a bake, in seconds. Defaults are for real AWS."""

    poll_s: float = 15.0
    # IAM is eventually consistent: a new instance profile is refused by RunInstances for a while.
    instance_profile_s: float = 180.0
    # The builder boots and its SSM agent registers.
    ssm_agent_s: float = 900.0
    # The playbook: packages, runsc, the sandbox image, the service's venv.
    provision_s: float = 3600.0
    # Snapshotting a 30 GB root volume; AWS documents no bound, an hour is ample.
    image_available_s: float = 3600.0
    terminate_s: float = 900.0


@dataclass(frozen=True)
class Clock:
    """Time as the bake sees it; tests pass one whose sleep only advances `now`."""

    now: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep


@dataclass(frozen=True)
class BakeConfig:
    """What to bake and where. `base_ami` skips Canonical's parameter (moto lacks it)."""

    arch: str
    bucket: str
    repo_dir: Path
    stack: str = DEFAULT_STACK
    keep: int = DEFAULT_KEEP
    base_ami: str | None = None
    instance_type: str | None = None
    subnet_id: str | None = None
    name_prefix: str = "rlm-py"
    volume_gb: int = 30
    playbook_vars: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_PLAYBOOK_VARS))
    timeouts: Timeouts = field(default_factory=Timeouts)

    def __post_init__(self) -> None:
        if self.arch not in ARCHES:
            raise BakeError(f"arch must be one of {', '.join(ARCHES)}, not {self.arch!r}")
        if self.keep < MIN_KEEP:
            raise BakeError(
                f"--keep {self.keep}: keep at least {MIN_KEEP} images (the fleet's launch "
                "templates still name the previous one until the next `pulumi up`)"
            )

    @property
    def ami_parameter(self) -> str:
        """The stack's pointer to its image for this architecture."""
        return ssm_name(self.stack, f"ami/{self.arch}")


@dataclass(frozen=True)
class Clients:
    """The AWS clients a bake uses, all of one region."""

    ec2: Any
    s3: Any
    ssm: Any
    iam: Any

    @classmethod
    def from_session(cls, session: boto3.Session) -> Clients:
        return cls(*(session.client(name) for name in ("ec2", "s3", "ssm", "iam")))


def pack_repo(repo_dir: Path) -> tuple[bytes, str | None]:
    """A .tar.gz of the repository and its commit: `git archive HEAD` in a git checkout (only
    committed files travel, never a local .env), else the tree minus caches, venvs and .env."""
    if (repo_dir / ".git").exists():
        commit = _git(repo_dir, "rev-parse", "HEAD").decode().strip()
        return _git(repo_dir, "archive", "--format=tar.gz", "HEAD"), commit
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path in sorted(repo_dir.rglob("*")):
            relative = path.relative_to(repo_dir)
            if path.is_file() and not EXCLUDED_FROM_TARBALL.intersection(relative.parts):
                tar.add(path, arcname=str(relative))
    return buffer.getvalue(), None


def _git(repo_dir: Path, *args: str) -> bytes:
    return subprocess.run(
        ["git", "-C", str(repo_dir), *args], check=True, capture_output=True
    ).stdout


def provision_script(
    repo_url: str,
    playbook_vars: dict[str, str],
    ansible_version: str = ANSIBLE_CORE_VERSION,
    root: str = "",
) -> list[str]:
    """The lines SSM runs on the builder, a POSIX `sh` script (dash runs it on Ubuntu).

    Fetch the repo, install the pinned ansible-core, apply the playbook, then remove what must
    not end up in the image and clear the machine id (each instance gets its own at first
    boot). One command a line and no pipes or `&&` lists: under `set -e` only a simple
    command's failure stops the script, and dash has no `pipefail`. `root` prefixes every path
    the script writes, so a test can run it for real in a scratch directory.
    """
    q = shlex.quote
    src, venv, tarball = (
        q(root + BUILDER_SRC),
        q(root + BUILDER_VENV),
        q(root + BUILDER_SRC + ".tar.gz"),
    )
    machine_id, dbus_id = q(root + "/etc/machine-id"), q(root + "/var/lib/dbus/machine-id")
    apt = f"apt-get -o DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"
    extra_vars = " ".join(f"-e {q(f'{k}={v}')}" for k, v in sorted(playbook_vars.items()))
    return [
        "set -eux",
        "export DEBIAN_FRONTEND=noninteractive",
        # First boot: cloud-init, then apt-daily(-upgrade) and unattended-upgrades take the
        # dpkg lock. Stopped for the bake (still enabled in the image); apt-get and the
        # playbook's apt tasks wait for the lock anyway if one is already running.
        "cloud-init status --wait >/dev/null || true",
        "systemctl stop apt-daily.timer apt-daily-upgrade.timer || true",
        "systemctl stop apt-daily.service apt-daily-upgrade.service unattended-upgrades.service || true",
        f"rm -rf {src} {venv}",
        f"mkdir -p {src}",
        f"curl -fsSL --retry 5 -o {tarball} {q(repo_url)}",
        f"tar -xzf {tarball} -C {src}",
        f"rm -f {tarball}",
        f"{apt} update -q",
        f"{apt} install -y -q python3-venv",
        f"python3 -m venv {venv}",
        f"{venv}/bin/pip install -q {q(f'ansible-core=={ansible_version}')}",
        f"cd {src}",
        f"{venv}/bin/ansible-playbook -i localhost, -c local ami/playbook.yml {extra_vars}",
        "cd /",
        f"rm -rf {src} {venv} {q(root + '/etc/rlm-py/secrets.env')}",
        "apt-get clean",
        "cloud-init clean --logs",
        # Empty, not absent: systemd then makes a new id at the instance's first boot.
        f"truncate -s 0 {machine_id}",
        f"rm -f {dbus_id}",
        f"if [ -d {q(root + '/var/lib/dbus')} ]; then ln -s /etc/machine-id {dbus_id}; fi",
    ]


def builder_policy(bucket: str, output_prefix: str) -> dict[str, Any]:
    """The builder's only permissions: the SSM agent's channels, and writing its command
    output under `output_prefix` in `bucket`. No ssm:GetParameter*, no KMS, no S3 read."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "SsmAgent",
                "Effect": "Allow",
                "Action": list(SSM_AGENT_ACTIONS),
                "Resource": "*",
            },
            {
                # The agent may set the bucket-owner ACL on what it uploads.
                "Sid": "CommandOutput",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:PutObjectAcl"],
                "Resource": f"arn:aws:s3:::{bucket}/{output_prefix}/*",
            },
            {
                # The agent checks the bucket's region and encryption before it uploads.
                "Sid": "CommandOutputBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketLocation", "s3:GetEncryptionConfiguration"],
                "Resource": f"arn:aws:s3:::{bucket}",
            },
        ],
    }


def waiter_config(total_s: float, delay_s: float) -> dict[str, int]:
    """A boto3 WaiterConfig that polls every delay_s for total_s in all."""
    delay = int(delay_s)
    return {"Delay": delay, "MaxAttempts": max(1, math.ceil(total_s / max(delay, 1)))}


class Bake:
    """One architecture's bake. `run()` returns the new AMI id or raises a BakeError."""

    def __init__(
        self,
        config: BakeConfig,
        clients: Clients,
        clock: Clock | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.clients = clients
        self.clock = clock or Clock()
        started = datetime.now(UTC)
        self.run_id = f"{started:%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
        # Orders images made within one second too (CreationDate has whole seconds).
        self.started_at = started.isoformat(timespec="microseconds")
        self.name = f"{config.name_prefix}-ami-builder-{config.arch}-{self.run_id}"
        # Where the SSM agent writes the provisioning output (kept after the bake).
        self.output_prefix = f"{config.name_prefix}/ami-bake/{self.run_id}-{config.arch}/output"
        self._log = log or (lambda message: print(message, file=sys.stderr))

    def log(self, message: str) -> None:
        self._log(f"[{self.config.arch}] {message}")

    def run(self) -> str:
        with ExitStack() as cleanup:
            return self._run(cleanup)

    def _run(self, cleanup: ExitStack) -> str:
        config, timeouts = self.config, self.config.timeouts
        base_ami = config.base_ami or self.ubuntu_ami()
        repo_url, commit = self.upload_repo(cleanup)
        group_id = self.create_security_group(cleanup)
        profile = self.create_instance_profile(cleanup)
        instance_id = self.launch_builder(cleanup, base_ami, group_id, profile)
        self.clients.ec2.get_waiter("instance_running").wait(
            InstanceIds=[instance_id],
            WaiterConfig=waiter_config(timeouts.ssm_agent_s, timeouts.poll_s),
        )
        self.provision(instance_id, repo_url)
        image_id = self.create_image(instance_id, base_ami, commit)
        self.clients.ssm.put_parameter(
            Name=config.ami_parameter,
            Value=image_id,
            Type="String",
            DataType="aws:ec2:image",
            Overwrite=True,
            Description=f"rlm-py AMI of stack {config.stack} for {config.arch}, baked {self.run_id}",
        )
        self.log(f"{image_id} written to {config.ami_parameter}")
        self.prune_images(keep_ids={image_id})
        return image_id

    # -- steps -------------------------------------------------------------------------------

    def ubuntu_ami(self) -> str:
        name = ubuntu_ami_param(self.config.arch)
        try:
            return self.clients.ssm.get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            raise BakeError(f"cannot read {name} ({exc}); pass --base-ami") from exc

    def upload_repo(self, cleanup: ExitStack) -> tuple[str, str | None]:
        tarball, commit = pack_repo(self.config.repo_dir)
        key = f"{self.config.name_prefix}/ami-bake/{self.run_id}-{self.config.arch}.tar.gz"
        s3, bucket = self.clients.s3, self.config.bucket
        s3.put_object(Bucket=bucket, Key=key, Body=tarball)
        cleanup.callback(
            self._quietly, "delete the repository tarball", s3.delete_object, Bucket=bucket, Key=key
        )
        self.log(
            f"uploaded the repository ({len(tarball)} bytes, commit {commit}) to s3://{bucket}/{key}"
        )
        expires = int(self.config.timeouts.ssm_agent_s + self.config.timeouts.provision_s)
        url = s3.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=expires
        )
        return url, commit

    def create_security_group(self, cleanup: ExitStack) -> str:
        ec2 = self.clients.ec2
        if self.config.subnet_id:
            vpc_id = ec2.describe_subnets(SubnetIds=[self.config.subnet_id])["Subnets"][0]["VpcId"]
        else:
            vpcs = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"]
            if not vpcs:
                raise BakeError("this region has no default VPC; pass --subnet-id")
            vpc_id = vpcs[0]["VpcId"]
        # No ingress at all: the builder is driven through SSM, which only needs egress.
        group_id = ec2.create_security_group(
            GroupName=self.name,
            Description="rlm-py AMI builder (temporary, egress only)",
            VpcId=vpc_id,
            TagSpecifications=[{"ResourceType": "security-group", "Tags": self._tags()}],
        )["GroupId"]
        cleanup.callback(
            self._quietly, "delete the security group", ec2.delete_security_group, GroupId=group_id
        )
        return group_id

    def create_instance_profile(self, cleanup: ExitStack) -> str:
        iam = self.clients.iam
        iam.create_role(
            RoleName=self.name,
            AssumeRolePolicyDocument=EC2_TRUST_POLICY,
            Description="rlm-py AMI builder (temporary)",
        )
        cleanup.callback(
            self._quietly, "delete the builder role", iam.delete_role, RoleName=self.name
        )
        iam.put_role_policy(
            RoleName=self.name,
            PolicyName="builder",
            PolicyDocument=json.dumps(builder_policy(self.config.bucket, self.output_prefix)),
        )
        cleanup.callback(
            self._quietly,
            "delete the builder's policy",
            iam.delete_role_policy,
            RoleName=self.name,
            PolicyName="builder",
        )
        iam.create_instance_profile(InstanceProfileName=self.name)
        cleanup.callback(
            self._quietly,
            "delete the instance profile",
            iam.delete_instance_profile,
            InstanceProfileName=self.name,
        )
        iam.add_role_to_instance_profile(InstanceProfileName=self.name, RoleName=self.name)
        cleanup.callback(
            self._quietly,
            "remove the role from the profile",
            iam.remove_role_from_instance_profile,
            InstanceProfileName=self.name,
            RoleName=self.name,
        )
        return self.name

    def launch_builder(self, cleanup: ExitStack, base_ami: str, group_id: str, profile: str) -> str:
        ec2, config = self.clients.ec2, self.config
        root_device = ec2.describe_images(ImageIds=[base_ami])["Images"][0].get(
            "RootDeviceName", "/dev/sda1"
        )
        request: dict[str, Any] = {
            "ImageId": base_ami,
            "InstanceType": config.instance_type or DEFAULT_INSTANCE_TYPE[config.arch],
            "MinCount": 1,
            "MaxCount": 1,
            "SecurityGroupIds": [group_id],
            "IamInstanceProfile": {"Name": profile},
            "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled"},
            "BlockDeviceMappings": [
                {
                    "DeviceName": root_device,
                    "Ebs": {
                        "VolumeSize": config.volume_gb,
                        "VolumeType": "gp3",
                        "DeleteOnTermination": True,
                    },
                }
            ],
            "InstanceInitiatedShutdownBehavior": "terminate",
            "TagSpecifications": [{"ResourceType": "instance", "Tags": self._tags()}],
        }
        if config.subnet_id:
            request["SubnetId"] = config.subnet_id

        def launch() -> str | None:
            try:
                return ec2.run_instances(**request)["Instances"][0]["InstanceId"]
            except ClientError as exc:
                if "instance profile" in str(exc).lower():
                    return None  # not propagated yet
                raise

        instance_id = self._poll(
            launch,
            config.timeouts.instance_profile_s,
            "the new instance profile to be accepted by RunInstances",
        )
        cleanup.callback(self.terminate, instance_id)
        self.log(f"builder {instance_id} launched from {base_ami}")
        return instance_id

    def provision(self, instance_id: str, repo_url: str) -> None:
        ssm, timeouts = self.clients.ssm, self.config.timeouts
        playbook_vars = {"rlm_stack": self.config.stack, **self.config.playbook_vars}
        commands = provision_script(repo_url, playbook_vars)

        def send() -> str | None:
            try:
                return ssm.send_command(
                    InstanceIds=[instance_id],
                    DocumentName="AWS-RunShellScript",
                    Comment=f"rlm-py AMI bake {self.run_id}",
                    Parameters={
                        "commands": commands,
                        "executionTimeout": [str(int(timeouts.provision_s))],
                    },
                    # SSM keeps only 24,000 characters of output; the agent uploads all of it.
                    OutputS3BucketName=self.config.bucket,
                    OutputS3KeyPrefix=self.output_prefix,
                    OutputS3Region=ssm.meta.region_name,
                )["Command"]["CommandId"]
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "InvalidInstanceId":
                    return None  # the agent has not registered yet
                raise

        command_id = self._poll(
            send, timeouts.ssm_agent_s, f"the SSM agent on {instance_id} to register"
        )
        output_url = f"s3://{self.config.bucket}/{self.output_prefix}/{command_id}/{instance_id}/"
        self.log(f"running the playbook (SSM command {command_id}); full output: {output_url}")

        def finished() -> dict[str, Any] | None:
            try:
                invocation = ssm.get_command_invocation(
                    CommandId=command_id, InstanceId=instance_id
                )
            except ClientError as exc:
                if exc.response["Error"]["Code"] == "InvocationDoesNotExist":
                    return None
                raise
            return invocation if invocation["Status"] in TERMINAL_COMMAND_STATES else None

        invocation = self._poll(
            finished, timeouts.provision_s + timeouts.poll_s, f"SSM command {command_id}"
        )
        if invocation["Status"] != "Success":
            output = self.output_tail(command_id, instance_id) or (
                invocation.get("StandardOutputContent", "")
                + invocation.get("StandardErrorContent", "")
            )
            raise ProvisionFailed(invocation["Status"], output, output_url)
        self.log("playbook applied")

    def output_tail(self, command_id: str, instance_id: str) -> str:
        """The last OUTPUT_TAIL_BYTES of the command's stdout and stderr as the agent uploaded
        them to S3; '' when it uploaded nothing (it could not, or has not yet)."""
        s3, bucket = self.clients.s3, self.config.bucket
        parts = []
        for stream in ("stdout", "stderr"):
            key = f"{self.output_prefix}/{command_id}/{instance_id}/{OUTPUT_STEP}/{stream}"
            try:
                body = s3.get_object(Bucket=bucket, Key=key, Range=f"bytes=-{OUTPUT_TAIL_BYTES}")
            except ClientError as exc:
                self.log(f"no {stream} in s3://{bucket}/{key} ({_code(exc)})")
                continue
            text = body["Body"].read().decode("utf-8", "replace")
            parts.append(f"--- {stream} (tail) ---\n{text}")
        return "\n".join(parts)

    def create_image(self, instance_id: str, base_ami: str, commit: str | None) -> str:
        ec2, config = self.clients.ec2, self.config
        tags = self._tags(**{"rlm-py:base-ami": base_ami, "rlm-py:commit": commit or "unknown"})
        tags[0]["Value"] = f"{config.name_prefix}-{config.arch}-{self.run_id}"  # the Name tag
        image_id = ec2.create_image(
            InstanceId=instance_id,
            Name=tags[0]["Value"],
            Description=f"rlm-py host ({config.arch}): Docker, gVisor runsc, sandbox image, service",
            TagSpecifications=[{"ResourceType": "image", "Tags": tags}],
        )["ImageId"]
        self.log(f"waiting for {image_id} to become available")
        ec2.get_waiter("image_available").wait(
            ImageIds=[image_id],
            WaiterConfig=waiter_config(config.timeouts.image_available_s, config.timeouts.poll_s),
        )
        # Snapshots exist only once the image does; tagged so they can be traced back too.
        image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
        snapshots = [
            m["Ebs"]["SnapshotId"]
            for m in image.get("BlockDeviceMappings", [])
            if m.get("Ebs", {}).get("SnapshotId")
        ]
        if snapshots:
            ec2.create_tags(Resources=snapshots, Tags=tags)
        return image_id

    def prune_images(self, keep_ids: set[str]) -> list[str]:
        """Deregister this stack's and architecture's images beyond the newest `keep`, and
        delete their snapshots; never one in `keep_ids`, one a live instance runs or one a
        launch template's default or latest version names. The images deregistered."""
        ec2, config = self.clients.ec2, self.config
        images = ec2.describe_images(
            Owners=["self"],
            Filters=[
                {"Name": "tag:rlm-py:arch", "Values": [config.arch]},
                {"Name": "tag:rlm-py:stack", "Values": [config.stack]},
            ],
        )["Images"]

        def age(image: dict[str, Any]) -> tuple[str, str]:
            tags = {t["Key"]: t["Value"] for t in image.get("Tags", [])}
            return image.get("CreationDate", ""), tags.get("rlm-py:started", "")

        newest_first = sorted(images, key=age, reverse=True)
        old = [i for i in newest_first[config.keep :] if i["ImageId"] not in keep_ids]
        in_use = self._images_in_use() if old else set()
        pruned = []
        for image in old:
            if image["ImageId"] in in_use:
                self.log(f"keeping {image['ImageId']}: an instance or launch template uses it")
                continue
            snapshots = [
                m["Ebs"]["SnapshotId"]
                for m in image.get("BlockDeviceMappings", [])
                if m.get("Ebs", {}).get("SnapshotId")
            ]
            ec2.deregister_image(ImageId=image["ImageId"])
            for snapshot in snapshots:
                self._quietly("delete a snapshot", ec2.delete_snapshot, SnapshotId=snapshot)
            pruned.append(image["ImageId"])
            self.log(f"deregistered {image['ImageId']} and snapshots {', '.join(snapshots) or '-'}")
        return pruned

    def _images_in_use(self) -> set[str]:
        ec2 = self.clients.ec2
        used = {
            i["ImageId"]
            for page in ec2.get_paginator("describe_instances").paginate(
                Filters=[
                    {
                        "Name": "instance-state-name",
                        "Values": ["pending", "running", "stopping", "stopped"],
                    }
                ]
            )
            for r in page["Reservations"]
            for i in r["Instances"]
        }
        for page in ec2.get_paginator("describe_launch_templates").paginate():
            for template in page["LaunchTemplates"]:
                versions = ec2.describe_launch_template_versions(
                    LaunchTemplateId=template["LaunchTemplateId"], Versions=["$Default", "$Latest"]
                )["LaunchTemplateVersions"]
                used.update(
                    v["LaunchTemplateData"]["ImageId"]
                    for v in versions
                    if v.get("LaunchTemplateData", {}).get("ImageId")
                )
        return used

    def terminate(self, instance_id: str) -> None:
        ec2 = self.clients.ec2
        self._quietly("terminate the builder", ec2.terminate_instances, InstanceIds=[instance_id])
        # The security group can only go once the instance is gone.
        self._quietly(
            "wait for the builder to terminate",
            ec2.get_waiter("instance_terminated").wait,
            InstanceIds=[instance_id],
            WaiterConfig=waiter_config(
                self.config.timeouts.terminate_s, self.config.timeouts.poll_s
            ),
        )

    # -- helpers -----------------------------------------------------------------------------

    def _tags(self, **extra: str) -> list[dict[str, str]]:
        tags = {
            "Name": self.name,
            "rlm-py:arch": self.config.arch,
            "rlm-py:stack": self.config.stack,
            "rlm-py:bake": self.run_id,
            "rlm-py:started": self.started_at,
            **extra,
        }
        return [{"Key": k, "Value": v} for k, v in tags.items()]

    def _poll(self, attempt: Callable[[], Any], timeout_s: float, what: str) -> Any:
        deadline = self.clock.now() + timeout_s
        while True:
            result = attempt()
            if result is not None:
                return result
            if self.clock.now() >= deadline:
                raise BakeTimeout(
                    f"gave up after {timeout_s:.0f} s waiting for {what}; raise it in Timeouts"
                )
            self.clock.sleep(self.config.timeouts.poll_s)

    def _quietly(self, what: str, call: Callable[..., Any], **kwargs: Any) -> None:
        # Cleanup goes on past a failing step and never hides the error that ended the bake.
        try:
            call(**kwargs)
        except Exception as exc:  # noqa: BLE001 - cleanup goes on whatever failed
            self.log(f"cleanup: could not {what}: {exc}")


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", "error"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ami/bake", description="Bake rlm-py AMIs with ami/playbook.yml."
    )
    parser.add_argument(
        "--arch",
        action="append",
        required=True,
        choices=[*ARCHES, "all"],
        help="architecture to bake, only those asked for; repeat, or 'all'",
    )
    parser.add_argument(
        "--stack",
        default=DEFAULT_STACK,
        help=f"the stack whose AMI pointer /rlm-py/<stack>/ami/<arch> is written (default {DEFAULT_STACK})",
    )
    parser.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help=f"images kept per stack and architecture, the new one included (default {DEFAULT_KEEP}, at least {MIN_KEEP})",
    )
    parser.add_argument(
        "--bucket",
        default=os.environ.get("RLM_AMI_BUCKET"),
        help="S3 bucket for the repository tarball (env RLM_AMI_BUCKET)",
    )
    parser.add_argument("--region", default=None, help="AWS region (default: the boto3 chain)")
    parser.add_argument("--profile", default=None, help="AWS profile")
    parser.add_argument(
        "--subnet-id", default=None, help="subnet for the builder (default VPC otherwise)"
    )
    parser.add_argument(
        "--instance-type", default=None, help="builder type (default m7g.large / m7i.large)"
    )
    parser.add_argument(
        "--base-ami", default=None, help="base AMI instead of Canonical's Ubuntu 24.04"
    )
    parser.add_argument(
        "--var",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra playbook variable (repeatable), e.g. gvisor_release=20250101",
    )
    parser.add_argument("--repo-dir", type=Path, default=Path(__file__).resolve().parent.parent)
    args = parser.parse_args(argv)
    if not args.bucket:
        parser.error("--bucket (or RLM_AMI_BUCKET) is required")
    if args.base_ami and len(_arches(args.arch)) > 1:
        parser.error("--base-ami names one architecture's AMI: pass one --arch with it")
    if args.keep < MIN_KEEP:
        parser.error(
            f"--keep must be at least {MIN_KEEP}: the fleet may still use the previous image"
        )
    return args


def _arches(chosen: list[str]) -> list[str]:
    if "all" in chosen:
        return list(ARCHES)
    return list(dict.fromkeys(chosen))


def main(
    argv: list[str] | None = None, clock: Clock | None = None, timeouts: Timeouts | None = None
) -> int:
    """Bake every requested architecture concurrently; print `arch image-id` lines."""
    args = parse_args(argv)
    playbook_vars = dict(DEFAULT_PLAYBOOK_VARS)
    playbook_vars.update(pair.split("=", 1) for pair in args.var)
    clients = Clients.from_session(
        boto3.Session(profile_name=args.profile, region_name=args.region)
    )

    def bake_one(arch: str) -> str:
        config = BakeConfig(
            arch=arch,
            bucket=args.bucket,
            repo_dir=args.repo_dir,
            stack=args.stack,
            keep=args.keep,
            base_ami=args.base_ami,
            instance_type=args.instance_type,
            subnet_id=args.subnet_id,
            playbook_vars=playbook_vars,
            timeouts=timeouts or Timeouts(),
        )
        return Bake(config, clients, clock).run()

    arches = _arches(args.arch)
    with ThreadPoolExecutor(max_workers=len(arches)) as pool:
        futures = {arch: pool.submit(bake_one, arch) for arch in arches}
    failed = 0
    for arch, future in futures.items():
        error = future.exception()
        if error is None:
            print(f"{arch} {future.result()}")
        else:
            failed += 1
            detail = str(error) if isinstance(error, BakeError) else repr(error)
            print(f"[{arch}] bake failed: {detail}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
