"""What an operator watches: alarms (optionally mailed through SNS) and one dashboard.

Metrics read: the ALB's own (namespace AWS/ApplicationELB), the groups' EC2 CPU, and what
each host publishes in service.constants.CLOUDWATCH_NAMESPACE once a minute with the
dimension AutoScalingGroupName (the per-group series the scaling policies and alarms use)
and, for the dashboard's per-host lines, AutoScalingGroupName + InstanceId.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.components.naming import StackNames
from service.constants import (
    CLOUDWATCH_NAMESPACE,
    METRIC_LIVE_SESSIONS,
    METRIC_RUNNING_REQUESTS,
    METRIC_SANDBOX_FAULTS,
)

# Upstream model errors as the hosts publish them (not yet in service.constants: the
# publisher and this name must agree).
METRIC_UPSTREAM_ERRORS = "UpstreamErrors"
ALB_NAMESPACE = "AWS/ApplicationELB"
PERIOD_S = 60
# Alarm thresholds: a 5xx share of all requests over 3 of 5 minutes; an unhealthy target
# for 5 minutes in a row (a replacement host passes its checks sooner); sandbox faults
# (sandboxes lost, failed starts) summed over 5 minutes on one group.
ERROR_RATE_PERCENT = 5
UNHEALTHY_MINUTES = 5
SANDBOX_FAULTS_PER_5_MIN = 5


@dataclass
class MonitoringArgs:
    """The resources to watch; `alarm_email` subscribes an address to the alarms' topic
    (AWS mails a confirmation link first)."""

    names: StackNames
    alb_arn_suffix: pulumi.Input[str]
    target_group_arn_suffix: pulumi.Input[str]
    group_names: list[str]
    alarm_email: str | None = None


class Monitoring(pulumi.ComponentResource):
    """Alarms (`alarms`, by purpose) and the dashboard; an SNS topic with `alarm_email`."""

    alarms: dict[str, aws.cloudwatch.MetricAlarm]
    dashboard: aws.cloudwatch.Dashboard

    def __init__(
        self, name: str, args: MonitoringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Monitoring", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        actions: list[pulumi.Input[str]] = []
        if args.alarm_email is not None:
            topic = aws.sns.Topic(f"{name}-alarms", name=args.names.resource("alarms"), opts=child)
            aws.sns.TopicSubscription(
                f"{name}-alarms-email",
                topic=topic.arn,
                protocol="email",
                endpoint=args.alarm_email,
                opts=child,
            )
            actions = [topic.arn]
        alarm = _AlarmFactory(self, args.names, actions)
        alb = {"LoadBalancer": args.alb_arn_suffix}
        self.alarms = {
            "5xx-rate": alarm.metric_math(
                f"{name}-5xx-rate",
                "alb-5xx-rate",
                f"More than {ERROR_RATE_PERCENT}% of requests answered 5xx (ALB or hosts)",
                queries={
                    "elb": ("HTTPCode_ELB_5XX_Count", alb),
                    "target": ("HTTPCode_Target_5XX_Count", alb),
                    "requests": ("RequestCount", alb),
                },
                expression="100 * (FILL(elb, 0) + FILL(target, 0)) / requests",
                threshold=ERROR_RATE_PERCENT,
                periods=5,
                breaching=3,
            ),
            "unhealthy-hosts": alarm.metric(
                f"{name}-unhealthy-hosts",
                "unhealthy-hosts",
                f"A host failed its readiness check for {UNHEALTHY_MINUTES} minutes",
                namespace=ALB_NAMESPACE,
                metric="UnHealthyHostCount",
                dimensions={
                    "TargetGroup": args.target_group_arn_suffix,
                    "LoadBalancer": args.alb_arn_suffix,
                },
                statistic="Maximum",
                threshold=1,
                periods=UNHEALTHY_MINUTES,
            ),
        }
        for group in args.group_names:
            short = group.removeprefix(args.names.resource(""))  # mixed, arm64, x86_64
            self.alarms[f"sandbox-faults-{short}"] = alarm.metric(
                f"{name}-sandbox-faults-{short}",
                f"sandbox-faults-{short}",
                f"Sandbox faults on {group}: sandboxes lost or failing to start",
                namespace=CLOUDWATCH_NAMESPACE,
                metric=METRIC_SANDBOX_FAULTS,
                dimensions={"AutoScalingGroupName": group},
                statistic="Sum",
                threshold=SANDBOX_FAULTS_PER_5_MIN,
                periods=1,
                period_s=5 * PERIOD_S,
            )
        region = aws.get_region_output(opts=pulumi.InvokeOutputOptions(parent=self)).region
        body = pulumi.Output.all(region, args.alb_arn_suffix, args.target_group_arn_suffix).apply(
            lambda v: json.dumps(dashboard_body(v[0], v[1], v[2], args.group_names))
        )
        self.dashboard = aws.cloudwatch.Dashboard(
            f"{name}-dashboard",
            dashboard_name=args.names.resource("service"),
            dashboard_body=body,
            opts=child,
        )
        self.register_outputs({"dashboard": self.dashboard.dashboard_name})


class _AlarmFactory:
    """Alarms named `rlm-py-<stack>-<what>`, all with the same actions."""

    def __init__(
        self, parent: pulumi.Resource, names: StackNames, actions: list[pulumi.Input[str]]
    ) -> None:
        self.opts = pulumi.ResourceOptions(parent=parent)
        self.names = names
        self.actions = actions

    def metric(
        self,
        resource: str,
        what: str,
        description: str,
        *,
        namespace: str,
        metric: str,
        dimensions: dict[str, pulumi.Input[str]],
        statistic: str,
        threshold: float,
        periods: int,
        period_s: int = PERIOD_S,
    ) -> aws.cloudwatch.MetricAlarm:
        return aws.cloudwatch.MetricAlarm(
            resource,
            name=self.names.resource(what),
            alarm_description=description,
            namespace=namespace,
            metric_name=metric,
            dimensions=dimensions,
            statistic=statistic,
            period=period_s,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            threshold=threshold,
            comparison_operator="GreaterThanOrEqualToThreshold",
            # No data: no traffic, or no host publishing yet; not a fault by itself.
            treat_missing_data="notBreaching",
            alarm_actions=self.actions,
            ok_actions=self.actions,
            opts=self.opts,
        )

    def metric_math(
        self,
        resource: str,
        what: str,
        description: str,
        *,
        queries: dict[str, tuple[str, dict[str, pulumi.Input[str]]]],
        expression: str,
        threshold: float,
        periods: int,
        breaching: int,
    ) -> aws.cloudwatch.MetricAlarm:
        metric_queries: list[aws.cloudwatch.MetricAlarmMetricQueryArgsDict] = [
            {
                "id": query_id,
                "return_data": False,
                "metric": {
                    "namespace": ALB_NAMESPACE,
                    "metric_name": metric,
                    "dimensions": dimensions,
                    "stat": "Sum",
                    "period": PERIOD_S,
                },
            }
            for query_id, (metric, dimensions) in queries.items()
        ]
        metric_queries.append(
            {"id": "rate", "expression": expression, "label": what, "return_data": True}
        )
        return aws.cloudwatch.MetricAlarm(
            resource,
            name=self.names.resource(what),
            alarm_description=description,
            metric_queries=metric_queries,
            evaluation_periods=periods,
            datapoints_to_alarm=breaching,
            threshold=threshold,
            comparison_operator="GreaterThanThreshold",
            treat_missing_data="notBreaching",
            alarm_actions=self.actions,
            ok_actions=self.actions,
            opts=self.opts,
        )


def dashboard_body(
    region: str, alb: str, target_group: str, group_names: list[str]
) -> dict[str, Any]:
    """Requests, latency, hosts, then per group and per host: sessions, running requests,
    sandbox faults and upstream errors, and the hosts' CPU."""

    def widget(title: str, metrics: list[list[Any]], stat: str = "Sum") -> dict[str, Any]:
        return {
            "type": "metric",
            "width": 12,
            "height": 6,
            "properties": {
                "title": title,
                "region": region,
                "view": "timeSeries",
                "stat": stat,
                "period": PERIOD_S,
                "metrics": metrics,
            },
        }

    def per_group_and_host(metric: str, stat: str) -> list[list[Any]]:
        lines: list[list[Any]] = []
        for i, group in enumerate(group_names):
            lines.append(
                [CLOUDWATCH_NAMESPACE, metric, "AutoScalingGroupName", group, {"stat": stat}]
            )
            search = (
                f"SEARCH('{{{CLOUDWATCH_NAMESPACE},AutoScalingGroupName,InstanceId}} "
                f'MetricName="{metric}" AutoScalingGroupName="{group}"\', '
                f"'{stat}', {PERIOD_S})"
            )
            lines.append([{"expression": search, "id": f"hosts{i}", "label": "host"}])
        return lines

    alb_dims = ["LoadBalancer", alb]
    widgets = [
        widget(
            "Requests and errors (ALB)",
            [
                [ALB_NAMESPACE, "RequestCount", *alb_dims],
                [ALB_NAMESPACE, "HTTPCode_Target_2XX_Count", *alb_dims],
                [ALB_NAMESPACE, "HTTPCode_Target_4XX_Count", *alb_dims],
                [ALB_NAMESPACE, "HTTPCode_Target_5XX_Count", *alb_dims],
                [ALB_NAMESPACE, "HTTPCode_ELB_5XX_Count", *alb_dims],
            ],
        ),
        widget(
            "Latency (target response time, s)",
            [
                [ALB_NAMESPACE, "TargetResponseTime", *alb_dims, {"stat": p}]
                for p in ("p50", "p90", "p99")
            ],
            stat="p50",
        ),
        widget(
            "Hosts",
            [
                [ALB_NAMESPACE, "HealthyHostCount", "TargetGroup", target_group, *alb_dims],
                [ALB_NAMESPACE, "UnHealthyHostCount", "TargetGroup", target_group, *alb_dims],
                *[
                    ["AWS/AutoScaling", "GroupInServiceInstances", "AutoScalingGroupName", g]
                    for g in group_names
                ],
            ],
            stat="Maximum",
        ),
        widget(
            "CPU per group (%)",
            [["AWS/EC2", "CPUUtilization", "AutoScalingGroupName", g] for g in group_names],
            stat="Average",
        ),
        widget(
            "Live sessions (per host)",
            per_group_and_host(METRIC_LIVE_SESSIONS, "Average"),
            stat="Average",
        ),
        widget(
            "Running requests (per host)",
            per_group_and_host(METRIC_RUNNING_REQUESTS, "Average"),
            stat="Average",
        ),
        widget("Sandbox faults", per_group_and_host(METRIC_SANDBOX_FAULTS, "Sum")),
        widget("Upstream errors", per_group_and_host(METRIC_UPSTREAM_ERRORS, "Sum")),
    ]
    return {"widgets": widgets}
