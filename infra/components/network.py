"""Where the stack lives: a given VPC and subnets, or the account's default VPC."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass
class NetworkArgs:
    """`vpc_id` and `subnet_ids` together, or neither for the default VPC.

    `subnet_ids` carry the ALB (at least two availability zones) and, unless
    `host_subnet_ids` is given, the hosts too.
    """

    vpc_id: str | None = None
    subnet_ids: list[str] | None = None
    host_subnet_ids: list[str] | None = None


class Network(pulumi.ComponentResource):
    """Resolves the VPC and subnets; creates nothing, so the stack never owns a VPC.

    Outputs: `vpc_id`, `subnet_ids` (ALB), `host_subnet_ids` (Auto Scaling groups).
    """

    vpc_id: pulumi.Output[str]
    subnet_ids: pulumi.Output[list[str]]
    host_subnet_ids: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Network", name, None, opts)
        invoke_opts = pulumi.InvokeOutputOptions(parent=self)
        if args.vpc_id is not None and args.subnet_ids is not None:
            self.vpc_id = pulumi.Output.from_input(args.vpc_id)
            self.subnet_ids = pulumi.Output.from_input(args.subnet_ids)
        else:
            vpc = aws.ec2.get_vpc_output(default=True, opts=invoke_opts)
            self.vpc_id = vpc.id
            # One default subnet per availability zone: public, so the ALB can face the internet.
            self.subnet_ids = aws.ec2.get_subnets_output(
                filters=vpc.id.apply(_default_subnet_filters), opts=invoke_opts
            ).ids
        self.host_subnet_ids = (
            pulumi.Output.from_input(args.host_subnet_ids)
            if args.host_subnet_ids is not None
            else self.subnet_ids
        )
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "subnet_ids": self.subnet_ids,
                "host_subnet_ids": self.host_subnet_ids,
            }
        )


def _default_subnet_filters(vpc_id: str) -> list[aws.ec2.GetSubnetsFilterArgsDict]:
    """The default VPC's default subnets: one per availability zone."""
    return [
        {"name": "vpc-id", "values": [vpc_id]},
        {"name": "default-for-az", "values": ["true"]},
    ]
