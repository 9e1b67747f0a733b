"""The fleet hosts' IAM identity: each permission scoped to this stack's own resources.

One inline policy per concern (Session Manager, secrets, sessions storage, logs and
metrics, the termination lifecycle hook), so a policy test can read each on its own and a
change to one never rewrites the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from ami.constants import EC2_TRUST_POLICY
from infra.components.naming import StackNames
from service.constants import CLOUDWATCH_NAMESPACE

# The minimum Session Manager needs (AWS's "minimal permissions" for the SSM agent). Not the
# managed AmazonSSMManagedInstanceCore policy: that one also allows ssm:GetParameter(s) on
# every parameter in the account, which would break "read our own parameters only".
SESSION_MANAGER_ACTIONS = [
    "ssm:UpdateInstanceInformation",
    "ssmmessages:CreateControlChannel",
    "ssmmessages:CreateDataChannel",
    "ssmmessages:OpenControlChannel",
    "ssmmessages:OpenDataChannel",
]
PARAMETER_READ_ACTIONS = ["ssm:GetParameter", "ssm:GetParameters"]
# What service/store/aws.py calls: ranged and conditional GetObject, conditional PutObject,
# DeleteObject on its own prefix; GetItem and PutItem (conditional) on the lease table.
SNAPSHOT_OBJECT_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
LEASE_ITEM_ACTIONS = ["dynamodb:GetItem", "dynamodb:PutItem"]
# What the CloudWatch agent needs to ship into an existing group (it creates no group and
# sets no retention: the stack owns both).
LOG_ACTIONS = ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"]
LIFECYCLE_ACTIONS = [
    "autoscaling:CompleteLifecycleAction",
    "autoscaling:RecordLifecycleActionHeartbeat",
]

Statement = dict[str, Any]


@dataclass
class HostRoleArgs:
    """The only resources the hosts may touch.

    `parameter_arns`: the stack's secrets (read, decrypted). `kms_key_id`: the customer key
    (an ARN) those parameters use, if any; granted for decryption through SSM only.
    `sessions_bucket_arn` + `sessions_prefix`: snapshots, objects under the prefix only.
    `lease_table_arn`: the lease table. `log_group_arn`: the service's log group.
    `group_names`: the Auto Scaling groups whose termination hook a host may complete.
    """

    names: StackNames
    parameter_arns: pulumi.Input[list[str]]
    sessions_bucket_arn: pulumi.Input[str]
    sessions_prefix: str
    lease_table_arn: pulumi.Input[str]
    log_group_arn: pulumi.Input[str]
    group_names: list[str]
    kms_key_id: str | None = None


class HostRole(pulumi.ComponentResource):
    """Role, its inline policies (`policies`, by concern) and the instance profile."""

    role: aws.iam.Role
    profile: aws.iam.InstanceProfile
    policies: dict[str, aws.iam.RolePolicy]

    def __init__(
        self, name: str, args: HostRoleArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:HostRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.role = aws.iam.Role(
            name,
            name_prefix=args.names.iam_prefix("host"),
            description=f"rlm-py fleet hosts of stack {args.names.stack}",
            assume_role_policy=EC2_TRUST_POLICY,
            opts=child,
        )
        invoke = pulumi.InvokeOutputOptions(parent=self)
        region = aws.get_region_output(opts=invoke).region
        account = aws.get_caller_identity_output(opts=invoke).account_id
        documents: dict[str, pulumi.Input[str]] = {
            "session-manager": _policy(
                [{"Effect": "Allow", "Action": SESSION_MANAGER_ACTIONS, "Resource": "*"}]
            ),
            "read-secrets": pulumi.Output.from_input(args.parameter_arns).apply(
                lambda arns: _policy(_read_secrets(arns, args.kms_key_id))
            ),
            "sessions": pulumi.Output.all(args.sessions_bucket_arn, args.lease_table_arn).apply(
                lambda v: _policy(_sessions(v[0], args.sessions_prefix, v[1]))
            ),
            "telemetry": pulumi.Output.from_input(args.log_group_arn).apply(
                lambda arn: _policy(_telemetry(arn))
            ),
            "lifecycle": pulumi.Output.all(region, account).apply(
                lambda v: _policy(_lifecycle(v[0], v[1], args.group_names))
            ),
        }
        self.policies = {
            concern: aws.iam.RolePolicy(
                f"{name}-{concern}", role=self.role.id, policy=document, opts=child
            )
            for concern, document in documents.items()
        }
        self.profile = aws.iam.InstanceProfile(
            name, name_prefix=args.names.iam_prefix("host"), role=self.role.name, opts=child
        )
        self.register_outputs({"profile_arn": self.profile.arn})


def _policy(statements: list[Statement]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": statements})


def _read_secrets(parameter_arns: list[str], kms_key_id: str | None) -> list[Statement]:
    statements: list[Statement] = [
        {"Effect": "Allow", "Action": PARAMETER_READ_ACTIONS, "Resource": sorted(parameter_arns)}
    ]
    if kms_key_id is not None:
        statements.append(
            {
                "Effect": "Allow",
                "Action": "kms:Decrypt",
                "Resource": kms_key_id,
                "Condition": {"StringLike": {"kms:ViaService": "ssm.*.amazonaws.com"}},
            }
        )
    return statements


def _sessions(bucket_arn: str, prefix: str, table_arn: str) -> list[Statement]:
    return [
        {
            "Effect": "Allow",
            "Action": SNAPSHOT_OBJECT_ACTIONS,
            "Resource": f"{bucket_arn}/{prefix}/*",
        },
        # Without ListBucket, S3 answers a GetObject for a missing key with 403 instead of
        # 404, and the store would report "unavailable" for a session never snapshotted.
        # The bucket holds this stack's snapshots only.
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn},
        {"Effect": "Allow", "Action": LEASE_ITEM_ACTIONS, "Resource": table_arn},
    ]


def _telemetry(log_group_arn: str) -> list[Statement]:
    return [
        {
            "Effect": "Allow",
            "Action": LOG_ACTIONS,
            "Resource": [log_group_arn, f"{log_group_arn}:log-stream:*"],
        },
        # PutMetricData has no resource-level permissions; the namespace condition keeps
        # hosts from writing into any other namespace (AWS/*, other applications).
        {
            "Effect": "Allow",
            "Action": "cloudwatch:PutMetricData",
            "Resource": "*",
            "Condition": {"StringEquals": {"cloudwatch:namespace": CLOUDWATCH_NAMESPACE}},
        },
    ]


def _lifecycle(region: str, account: str, group_names: list[str]) -> list[Statement]:
    return [
        {
            "Effect": "Allow",
            "Action": LIFECYCLE_ACTIONS,
            "Resource": [
                f"arn:aws:autoscaling:{region}:{account}:autoScalingGroup:*:"
                f"autoScalingGroupName/{group}"
                for group in group_names
            ],
        }
    ]
