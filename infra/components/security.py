"""Security groups: the world reaches the ALB, only the ALB reaches the service port."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TypedDict

import pulumi
import pulumi_aws as aws

SSH_PORT = 22


@dataclass
class SecurityArgs:
    """Who may connect to what.

    `listener_ports` are opened on the ALB to `alb_ingress_cidrs`; `service_port` on the
    hosts only to the ALB's group; SSH on the hosts only to `ssh_cidr`, and only when set
    (config refuses a /0). Hosts keep open egress: they call the upstream model API, SSM
    and package mirrors.
    """

    vpc_id: pulumi.Input[str]
    service_port: int
    listener_ports: list[int]
    alb_ingress_cidrs: list[str] = field(default_factory=lambda: ["0.0.0.0/0"])
    ssh_cidr: str | None = None


class Security(pulumi.ComponentResource):
    """Two groups, `alb_sg` and `host_sg`, with one rule resource per permission.

    Rules are separate resources (not inline blocks) so the groups can reference each other
    without a cycle and a rule change never replaces a group.
    """

    alb_sg: aws.ec2.SecurityGroup
    host_sg: aws.ec2.SecurityGroup

    def __init__(
        self, name: str, args: SecurityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Security", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.alb_sg = aws.ec2.SecurityGroup(
            f"{name}-alb",
            vpc_id=args.vpc_id,
            description="rlm-py ALB: listeners from the configured CIDRs",
            opts=child,
        )
        self.host_sg = aws.ec2.SecurityGroup(
            f"{name}-host",
            vpc_id=args.vpc_id,
            description="rlm-py hosts: service port from the ALB only",
            opts=child,
        )

        for port in args.listener_ports:
            for i, cidr in enumerate(args.alb_ingress_cidrs):
                aws.vpc.SecurityGroupIngressRule(
                    f"{name}-alb-in-{port}-{i}",
                    security_group_id=self.alb_sg.id,
                    ip_protocol="tcp",
                    from_port=port,
                    to_port=port,
                    **_cidr_field(cidr),
                    description=f"ALB listener {port}",
                    opts=child,
                )
        aws.vpc.SecurityGroupEgressRule(
            f"{name}-alb-out-service",
            security_group_id=self.alb_sg.id,
            ip_protocol="tcp",
            from_port=args.service_port,
            to_port=args.service_port,
            referenced_security_group_id=self.host_sg.id,
            description="ALB to the service and its health check",
            opts=child,
        )
        aws.vpc.SecurityGroupIngressRule(
            f"{name}-host-in-service",
            security_group_id=self.host_sg.id,
            ip_protocol="tcp",
            from_port=args.service_port,
            to_port=args.service_port,
            referenced_security_group_id=self.alb_sg.id,
            description="service port from the ALB only",
            opts=child,
        )
        if args.ssh_cidr is not None:
            aws.vpc.SecurityGroupIngressRule(
                f"{name}-host-in-ssh",
                security_group_id=self.host_sg.id,
                ip_protocol="tcp",
                from_port=SSH_PORT,
                to_port=SSH_PORT,
                **_cidr_field(args.ssh_cidr),
                description="SSH from the operator's network",
                opts=child,
            )
        for i, cidr in enumerate(["0.0.0.0/0", "::/0"]):
            aws.vpc.SecurityGroupEgressRule(
                f"{name}-host-out-{i}",
                security_group_id=self.host_sg.id,
                ip_protocol="-1",
                **_cidr_field(cidr),
                description="upstream model API, SSM, package mirrors",
                opts=child,
            )
        self.register_outputs({"alb_sg_id": self.alb_sg.id, "host_sg_id": self.host_sg.id})


class _CidrField(TypedDict, total=False):
    """Exactly one of a rule's two CIDR arguments (typed, so ``**`` keeps its keyword check)."""

    cidr_ipv4: str
    cidr_ipv6: str


def _cidr_field(cidr: str) -> _CidrField:
    """The rule argument for a CIDR: `cidr_ipv6` for IPv6 blocks, `cidr_ipv4` otherwise."""
    if ipaddress.ip_network(cidr, strict=False).version == 6:
        return {"cidr_ipv6": cidr}
    return {"cidr_ipv4": cidr}
