"""The hosts: one launch template per architecture, Auto Scaling groups behind the ALB."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.host_role import HostRole, HostRoleArgs
from infra.config import ArchConfig, FleetMode, GroupSize

# One entry of a mixed-instances policy: which launch template, at which version.
_TemplateSpec = (
    aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgsDict
)


@dataclass
class FleetArgs:
    """Everything the hosts need.

    `mode="mixed"`: one group whose mixed-instances policy lists every architecture's
    instance types, each override pointing at its architecture's launch template, with
    launch priority in the order of `archs` then `instance_types` (capacity-flexible; the
    arm64/x86 split is whatever capacity allows). `mode="perArch"`: one group per
    architecture sized by that architecture's `size` (an exact split).

    `user_data` is the plain boot script (base64-encoded here); it must hold no secrets.
    """

    archs: list[ArchConfig]
    mode: FleetMode
    size: GroupSize
    subnet_ids: pulumi.Input[list[str]]
    security_group_id: pulumi.Input[str]
    target_group_arn: pulumi.Input[str]
    user_data: pulumi.Input[str]
    secret_parameter_arns: pulumi.Input[list[str]]
    kms_key_id: str | None = None
    root_volume_gb: int = 50
    root_device_name: str = "/dev/sda1"
    warmup_s: int = 300
    assign_public_ip: bool = True
    ssh_key_name: str | None = None


class Fleet(pulumi.ComponentResource):
    """Launch templates (`launch_templates`, by arch) and groups (`groups`).

    Health is the ALB's (`/healthz`), not only EC2's, so a host whose service is down is
    replaced. Any launch template change (AMI, user data, volume) produces a new version
    that the groups reference by number, which starts a rolling instance refresh: new hosts
    first, old hosts drained by the target group's deregistration delay.
    Output: `group_names`.
    """

    launch_templates: dict[str, aws.ec2.LaunchTemplate]
    groups: list[aws.autoscaling.Group]
    group_names: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Fleet", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        role = HostRole(
            f"{name}-host",
            HostRoleArgs(parameter_arns=args.secret_parameter_arns, kms_key_id=args.kms_key_id),
            opts=child,
        )
        user_data_b64 = pulumi.Output.from_input(args.user_data).apply(
            lambda script: base64.b64encode(script.encode()).decode()
        )
        self.launch_templates = {
            arch.arch: self._launch_template(name, arch, args, role, user_data_b64)
            for arch in args.archs
        }
        if args.mode == "mixed":
            self.groups = [self._group(f"{name}-mixed", args.archs, args.size, args)]
        else:
            self.groups = [
                self._group(f"{name}-{arch.arch}", [arch], arch.size, args) for arch in args.archs
            ]
        self.group_names = pulumi.Output.all(*[g.name for g in self.groups])
        self.register_outputs({"group_names": self.group_names})

    def _launch_template(
        self,
        name: str,
        arch: ArchConfig,
        args: FleetArgs,
        role: HostRole,
        user_data_b64: pulumi.Output[str],
    ) -> aws.ec2.LaunchTemplate:
        tags = {"Name": f"{name}-{arch.arch}", "rlm-py:arch": arch.arch}
        return aws.ec2.LaunchTemplate(
            f"{name}-{arch.arch}",
            description=f"rlm-py host, {arch.arch}",
            # An AMI id, or resolve:ssm:/rlm-py/ami/<arch> that EC2 reads at each launch.
            image_id=arch.ami,
            user_data=user_data_b64,
            iam_instance_profile={"arn": role.profile.arn},
            key_name=args.ssh_key_name,
            # IMDSv2 only; hop limit 1 keeps containers on a bridge network from reaching the
            # metadata service and the instance role's credentials.
            metadata_options={
                "http_endpoint": "enabled",
                "http_tokens": "required",
                "http_put_response_hop_limit": 1,
            },
            block_device_mappings=[
                {
                    "device_name": args.root_device_name,
                    "ebs": {
                        "volume_type": "gp3",
                        "volume_size": args.root_volume_gb,
                        "encrypted": "true",
                        "delete_on_termination": "true",
                    },
                }
            ],
            network_interfaces=[
                {
                    "device_index": 0,
                    "associate_public_ip_address": str(args.assign_public_ip).lower(),
                    "security_groups": [args.security_group_id],
                    "delete_on_termination": "true",
                }
            ],
            tag_specifications=[
                {"resource_type": "instance", "tags": tags},
                {"resource_type": "volume", "tags": tags},
            ],
            tags=tags,
            update_default_version=True,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[role]),
        )

    def _group(
        self, name: str, archs: list[ArchConfig], size: GroupSize, args: FleetArgs
    ) -> aws.autoscaling.Group:
        def spec(arch: ArchConfig) -> _TemplateSpec:
            template = self.launch_templates[arch.arch]
            # A version number, not "$Latest": a new version then changes the group's
            # configuration, which is what triggers the instance refresh.
            return {
                "launch_template_id": template.id,
                "version": template.latest_version.apply(str),
            }

        return aws.autoscaling.Group(
            name,
            min_size=size.min,
            max_size=size.max,
            desired_capacity=size.desired,
            vpc_zone_identifiers=args.subnet_ids,
            target_group_arns=[args.target_group_arn],
            health_check_type="ELB",
            health_check_grace_period=args.warmup_s,
            default_instance_warmup=args.warmup_s,
            mixed_instances_policy={
                "launch_template": {
                    "launch_template_specification": spec(archs[0]),
                    "overrides": [
                        {"instance_type": instance_type, "launch_template_specification": spec(a)}
                        for a in archs
                        for instance_type in a.instance_types
                    ],
                },
                # On-demand only: a reclaimed spot host would take its live sessions with it.
                "instances_distribution": {
                    "on_demand_base_capacity": 0,
                    "on_demand_percentage_above_base_capacity": 100,
                    "on_demand_allocation_strategy": "prioritized",
                },
            },
            instance_refresh={
                "strategy": "Rolling",
                "preferences": {
                    # Launch replacements before terminating: capacity never dips during
                    # a deploy.
                    "min_healthy_percentage": 100,
                    "max_healthy_percentage": 150,
                    "instance_warmup": str(args.warmup_s),
                },
            },
            tags=[
                {"key": "Name", "value": name, "propagate_at_launch": True},
                {"key": "rlm-py:group", "value": name, "propagate_at_launch": True},
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )
