"""The hosts: one launch template per architecture, Auto Scaling groups behind the ALB."""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.naming import StackNames
from infra.components.userdata import LIFECYCLE_HOOK, BootSettings, render_user_data
from infra.config import ArchConfig, FleetMode, GroupSize, ScalingTargets
from service.constants import (
    CLOUDWATCH_NAMESPACE,
    METRIC_LIVE_SESSIONS,
    METRIC_RUNNING_REQUESTS,
)

# One entry of a mixed-instances policy: which launch template, at which version.
_TemplateSpec = (
    aws.autoscaling.GroupMixedInstancesPolicyLaunchTemplateLaunchTemplateSpecificationArgsDict
)
# Every Auto Scaling group metric, collected each minute (free; the dashboard shows them).
GROUP_METRICS = [
    aws.autoscaling.Metric.GROUP_MIN_SIZE,
    aws.autoscaling.Metric.GROUP_MAX_SIZE,
    aws.autoscaling.Metric.GROUP_DESIRED_CAPACITY,
    aws.autoscaling.Metric.GROUP_IN_SERVICE_INSTANCES,
    aws.autoscaling.Metric.GROUP_PENDING_INSTANCES,
    aws.autoscaling.Metric.GROUP_STANDBY_INSTANCES,
    aws.autoscaling.Metric.GROUP_TERMINATING_INSTANCES,
    aws.autoscaling.Metric.GROUP_TOTAL_INSTANCES,
]
# Processes the groups never run. AZRebalance terminates a host only to launch one in
# another zone: it would cut live sessions for no capacity gain (a terminated host drains
# through the lifecycle hook, but that still moves every session and waits out the
# deregistration delay). Zones rebalance anyway as hosts are replaced and scaled.
SUSPENDED_PROCESSES = ["AZRebalance"]


def plan_groups(
    names: StackNames, mode: FleetMode, archs: list[ArchConfig]
) -> dict[str, list[ArchConfig]]:
    """Each group's name and the architectures it launches: one group for all in `mixed`
    mode, one per architecture in `perArch` mode. The names are fixed by the stack, so the
    hosts' role and boot script can name their group before it exists."""
    if mode == "mixed":
        return {names.resource("mixed"): archs}
    return {names.resource(arch.arch): [arch] for arch in archs}


@dataclass
class FleetArgs:
    """Everything the hosts need.

    `mode="mixed"`: one group whose mixed-instances policy lists every architecture's
    instance types, each override pointing at its architecture's launch template, with
    launch priority in the order of `archs` then `instance_types` (capacity-flexible; the
    arm64/x86 split is whatever capacity allows). `mode="perArch"`: one group per
    architecture sized by that architecture's `size` (an exact split). Only the
    architectures in `archs` get a launch template, so only they need an AMI.

    `boot` is what the boot script needs except the group's name, which each template adds;
    it must hold no secrets. `size.desired` is only the groups' first capacity: afterwards
    the scaling policies own it. `lifecycle_heartbeat_s`: how long the termination hook
    holds a host for its drain.
    """

    names: StackNames
    archs: list[ArchConfig]
    mode: FleetMode
    size: GroupSize
    subnet_ids: pulumi.Input[list[str]]
    security_group_id: pulumi.Input[str]
    target_group_arn: pulumi.Input[str]
    boot: pulumi.Input[BootSettings]
    instance_profile_arn: pulumi.Input[str]
    scaling: ScalingTargets
    lifecycle_heartbeat_s: int
    root_volume_gb: int = 50
    root_device_name: str = "/dev/sda1"
    warmup_s: int = 300
    assign_public_ip: bool = True
    ssh_key_name: str | None = None


class Fleet(pulumi.ComponentResource):
    """Launch templates (`launch_templates`, by arch) and groups (`groups`).

    Health is the ALB's (`/readyz`), not only EC2's, so a host that cannot start sandboxes
    is replaced. Any launch template change (AMI, user data, volume) produces a new version
    that the groups reference by number, which starts a rolling instance refresh: new hosts
    first, old hosts drained (deregistration delay, then the termination lifecycle hook
    while the service snapshots its sessions). The AMI id is read from the stack's bake
    parameter when `pulumi up` runs, so a new bake is such a change, shown in the preview.
    Scaling: target tracking on CPU, live sessions and running requests per host; the
    group scales out when any policy asks and in only when all agree.
    Output: `group_names`.
    """

    launch_templates: dict[str, aws.ec2.LaunchTemplate]
    groups: list[aws.autoscaling.Group]
    group_names: pulumi.Output[list[str]]

    def __init__(
        self, name: str, args: FleetArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Fleet", name, None, opts)
        planned = plan_groups(args.names, args.mode, args.archs)
        group_of = {arch.arch: group for group, archs in planned.items() for arch in archs}
        self.launch_templates = {
            arch.arch: self._launch_template(name, arch, group_of[arch.arch], args)
            for arch in args.archs
        }
        self.groups = []
        for group_name, archs in planned.items():
            size = args.size if args.mode == "mixed" else archs[0].size
            suffix = "mixed" if args.mode == "mixed" else archs[0].arch
            group = self._group(f"{name}-{suffix}", group_name, archs, size, args)
            self._day_two(f"{name}-{suffix}", group, group_name, args)
            self.groups.append(group)
        self.group_names = pulumi.Output.all(*[g.name for g in self.groups])
        self.register_outputs({"group_names": self.group_names})

    def _launch_template(
        self, name: str, arch: ArchConfig, group_name: str, args: FleetArgs
    ) -> aws.ec2.LaunchTemplate:
        tags = {
            "Name": f"{name}-{arch.arch}",
            "rlm-py:arch": arch.arch,
            "rlm-py:stack": args.names.stack,
        }
        user_data = pulumi.Output.from_input(args.boot).apply(
            lambda boot: base64.b64encode(
                render_user_data(dataclasses.replace(boot, asg_name=group_name)).encode()
            ).decode()
        )
        return aws.ec2.LaunchTemplate(
            f"{name}-{arch.arch}",
            description=f"rlm-py host, {arch.arch}, group {group_name}",
            image_id=self._ami(arch, args.names),
            user_data=user_data,
            iam_instance_profile={"arn": args.instance_profile_arn},
            key_name=args.ssh_key_name,
            # One-minute EC2 metrics: the CPU scaling policy reacts in minutes, not tens.
            monitoring={"enabled": True},
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
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _ami(self, arch: ArchConfig, names: StackNames) -> pulumi.Input[str]:
        """The configured AMI id, or the one the stack's bake last wrote, read now (at
        `pulumi up`), never at each launch: a scale-out boots the image the last deploy
        rolled out, and a new bake shows up as a launch-template diff."""
        if arch.ami is not None:
            return arch.ami
        return aws.ssm.get_parameter_output(
            name=names.ami_parameter(arch.arch),
            opts=pulumi.InvokeOutputOptions(parent=self),
        ).insecure_value

    def _group(
        self,
        name: str,
        group_name: str,
        archs: list[ArchConfig],
        size: GroupSize,
        args: FleetArgs,
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
            name=group_name,
            min_size=size.min,
            max_size=size.max,
            # The first capacity only: afterwards the scaling policies own it, and a
            # `pulumi up` must not reset what they chose.
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
            # On-demand only (below), so there is no spot capacity to rebalance; off, stated.
            capacity_rebalance=False,
            suspended_processes=SUSPENDED_PROCESSES,
            enabled_metrics=GROUP_METRICS,
            metrics_granularity="1Minute",
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
                {"key": "Name", "value": group_name, "propagate_at_launch": True},
                {"key": "rlm-py:group", "value": group_name, "propagate_at_launch": True},
            ],
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["desiredCapacity"]),
        )

    def _day_two(
        self, name: str, group: aws.autoscaling.Group, group_name: str, args: FleetArgs
    ) -> None:
        """The termination lifecycle hook and the target-tracking policies of one group."""
        child = pulumi.ResourceOptions(parent=self)
        # A host being terminated (scale-in, instance refresh, unhealthy) waits here while
        # its lifecycle watcher stops the service, which snapshots every session; the
        # watcher then completes the action. CONTINUE on timeout: a hung host still goes.
        aws.autoscaling.LifecycleHook(
            f"{name}-drain",
            name=LIFECYCLE_HOOK,
            autoscaling_group_name=group.name,
            lifecycle_transition="autoscaling:EC2_INSTANCE_TERMINATING",
            heartbeat_timeout=args.lifecycle_heartbeat_s,
            default_result="CONTINUE",
            opts=child,
        )
        aws.autoscaling.Policy(
            f"{name}-cpu",
            autoscaling_group_name=group.name,
            policy_type="TargetTrackingScaling",
            target_tracking_configuration={
                "predefined_metric_specification": {
                    "predefined_metric_type": "ASGAverageCPUUtilization"
                },
                "target_value": args.scaling.cpu_percent,
            },
            opts=child,
        )
        # Each host publishes its own value once a minute with the group's name as the only
        # dimension, so the metric's Average is the per-host mean over the group.
        for suffix, metric, target in (
            ("sessions", METRIC_LIVE_SESSIONS, args.scaling.live_sessions),
            ("running", METRIC_RUNNING_REQUESTS, args.scaling.running_requests),
        ):
            aws.autoscaling.Policy(
                f"{name}-{suffix}",
                autoscaling_group_name=group.name,
                policy_type="TargetTrackingScaling",
                target_tracking_configuration={
                    "customized_metric_specification": {
                        "namespace": CLOUDWATCH_NAMESPACE,
                        "metric_name": metric,
                        "statistic": "Average",
                        "metric_dimensions": [
                            {"name": "AutoScalingGroupName", "value": group_name}
                        ],
                    },
                    "target_value": target,
                },
                opts=child,
            )
