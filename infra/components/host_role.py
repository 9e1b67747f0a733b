"""The fleet hosts' IAM identity: Session Manager, and read access to our own secrets only."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from ami.constants import EC2_TRUST_POLICY

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


@dataclass
class HostRoleArgs:
    """`parameter_arns`: the only parameters the hosts may read (decrypted).

    `kms_key_id`: the customer-managed key those parameters use, if any; the hosts get
    `kms:Decrypt` on it, and only through SSM.
    """

    parameter_arns: pulumi.Input[list[str]]
    kms_key_id: str | None = None


class HostRole(pulumi.ComponentResource):
    """Role, its two inline policies and the instance profile (`profile`)."""

    role: aws.iam.Role
    profile: aws.iam.InstanceProfile

    def __init__(
        self, name: str, args: HostRoleArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:HostRole", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.role = aws.iam.Role(
            name,
            description="rlm-py fleet hosts",
            assume_role_policy=EC2_TRUST_POLICY,
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-session-manager",
            role=self.role.id,
            policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": SESSION_MANAGER_ACTIONS, "Resource": "*"}
                    ],
                }
            ),
            opts=child,
        )
        aws.iam.RolePolicy(
            f"{name}-read-secrets",
            role=self.role.id,
            policy=pulumi.Output.from_input(args.parameter_arns).apply(
                lambda arns: _read_secrets_policy(arns, args.kms_key_id)
            ),
            opts=child,
        )
        self.profile = aws.iam.InstanceProfile(name, role=self.role.name, opts=child)
        self.register_outputs({"profile_arn": self.profile.arn})


def _read_secrets_policy(parameter_arns: list[str], kms_key_id: str | None) -> str:
    statements: list[dict] = [
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
    return json.dumps({"Version": "2012-10-17", "Statement": statements})
