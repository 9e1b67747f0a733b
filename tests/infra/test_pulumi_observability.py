"""Observability on AWS: the service's log group, ALB access logs, alarms and a dashboard."""

from __future__ import annotations

import json

import pytest

from infra.config import ConfigError
from service.constants import (
    CLOUDWATCH_NAMESPACE,
    METRIC_LIVE_SESSIONS,
    METRIC_RUNNING_REQUESTS,
    METRIC_SANDBOX_FAULTS,
)
from tests.infra.pulumi_harness import (
    ACCOUNT,
    ALARM,
    ALB,
    BUCKET,
    BUCKET_LIFECYCLE,
    BUCKET_POLICY,
    DASHBOARD,
    ELB_ACCOUNT_ARN,
    GROUP,
    LOG_GROUP,
    ROLE_POLICY,
    STACK,
    SUBSCRIPTION,
    TARGET_GROUP,
    TOPIC,
    Plan,
    Planned,
    plan_stack,
)


def logs_bucket(plan: Plan) -> Planned:
    [bucket] = [b for b in plan.of_type(BUCKET) if "-alb-logs-" in b.inputs["bucketPrefix"]]
    return bucket


def alarms(plan: Plan) -> dict[str, dict]:
    return {a.inputs["name"]: a.inputs for a in plan.of_type(ALARM)}


@pytest.mark.parametrize(("config", "days"), [({}, 30), ({"logRetentionDays": 90}, 90)])
def test_a_log_group_per_stack_with_retention(config, days):
    plan = plan_stack(config)
    group = plan.one(LOG_GROUP)
    assert group.inputs["name"] == f"/rlm-py/{STACK}/service"
    assert group.inputs["retentionInDays"] == days
    assert plan.exports["logGroup"] == group.inputs["name"]
    # The access logs are kept as long.
    [lifecycle] = [
        r
        for r in plan.of_type(BUCKET_LIFECYCLE)
        if r.inputs["bucket"] == f"{logs_bucket(plan).name}-id"
    ]
    assert lifecycle.inputs["rules"][0]["expiration"] == {"days": days}


@pytest.mark.parametrize(
    ("config", "key"),
    [({"logRetentionDays": 31}, "logRetentionDays"), ({"alarmEmail": "ops"}, "alarmEmail")],
)
def test_bad_observability_settings_are_refused(config, key):
    with pytest.raises(ConfigError, match=key):
        plan_stack(config)


def test_hosts_write_only_to_their_log_group_and_metric_namespace():
    plan = plan_stack()
    arn = plan.one(LOG_GROUP).outputs["arn"]
    [policy] = [p for p in plan.of_type(ROLE_POLICY) if p.name == "host-telemetry"]
    logs, metrics = json.loads(policy.inputs["policy"])["Statement"]
    assert logs["Resource"] == [arn, f"{arn}:log-stream:*"]
    assert "logs:PutLogEvents" in logs["Action"]
    assert not any(a in logs["Action"] for a in ("logs:CreateLogGroup", "logs:PutRetentionPolicy"))
    assert metrics["Action"] == "cloudwatch:PutMetricData"
    assert metrics["Condition"] == {"StringEquals": {"cloudwatch:namespace": CLOUDWATCH_NAMESPACE}}


def test_the_alb_writes_access_logs_to_a_bucket_that_admits_only_log_delivery():
    plan = plan_stack()
    bucket = logs_bucket(plan)
    access_logs = plan.one(ALB).inputs["accessLogs"]
    assert access_logs == {"bucket": bucket.outputs["bucket"], "prefix": "alb", "enabled": True}
    [policy] = [p for p in plan.of_type(BUCKET_POLICY) if p.inputs["bucket"] == f"{bucket.name}-id"]
    # AWS checks the bucket's policy when logging is turned on: the ALB waits for it.
    assert any(urn.endswith(f"::{policy.name}") for urn in plan.one(ALB).depends_on)
    allows = [s for s in json.loads(policy.inputs["policy"])["Statement"] if s["Effect"] == "Allow"]
    assert {json.dumps(s["Principal"], sort_keys=True) for s in allows} == {
        json.dumps({"AWS": ELB_ACCOUNT_ARN}),
        json.dumps({"Service": "logdelivery.elasticloadbalancing.amazonaws.com"}),
    }
    for statement in allows:
        assert statement["Action"] == "s3:PutObject"
        assert statement["Resource"] == f"{bucket.outputs['arn']}/alb/AWSLogs/{ACCOUNT}/*"


def test_alarms_watch_5xx_rate_unhealthy_hosts_and_sandbox_faults():
    plan = plan_stack({"fleetMode": "perArch"})
    alb_suffix = plan.one(ALB).outputs["arnSuffix"]
    tg_suffix = plan.one(TARGET_GROUP).outputs["arnSuffix"]
    found = alarms(plan)
    prefix = f"rlm-py-{STACK}-"
    assert set(found) == {
        f"{prefix}alb-5xx-rate",
        f"{prefix}unhealthy-hosts",
        f"{prefix}sandbox-faults-arm64",
        f"{prefix}sandbox-faults-x86_64",
    }
    rate = found[f"{prefix}alb-5xx-rate"]
    queries = {q["id"]: q for q in rate["metricQueries"]}
    metrics = {
        q["metric"]["metricName"]: q["metric"]["dimensions"]
        for q in queries.values()
        if "metric" in q
    }
    assert metrics == {
        "HTTPCode_ELB_5XX_Count": {"LoadBalancer": alb_suffix},
        "HTTPCode_Target_5XX_Count": {"LoadBalancer": alb_suffix},
        "RequestCount": {"LoadBalancer": alb_suffix},
    }
    [returned] = [q for q in queries.values() if q.get("returnData")]
    assert "/ requests" in returned["expression"] and returned["expression"].startswith("100 *")
    unhealthy = found[f"{prefix}unhealthy-hosts"]
    assert (unhealthy["namespace"], unhealthy["metricName"]) == (
        "AWS/ApplicationELB",
        "UnHealthyHostCount",
    )
    assert unhealthy["dimensions"] == {"TargetGroup": tg_suffix, "LoadBalancer": alb_suffix}
    assert unhealthy["threshold"] >= 1
    groups = {g.inputs["name"] for g in plan.of_type(GROUP)}
    faults = [a for name, a in found.items() if "sandbox-faults" in name]
    assert {a["dimensions"]["AutoScalingGroupName"] for a in faults} == groups
    for alarm in faults:
        assert (alarm["namespace"], alarm["metricName"]) == (
            CLOUDWATCH_NAMESPACE,
            METRIC_SANDBOX_FAULTS,
        )
        assert alarm["statistic"] == "Sum"
    # Without alarmEmail no topic, and no actions.
    assert plan.of_type(TOPIC) == []
    assert all(not a.get("alarmActions") for a in found.values())


def test_alarm_email_gets_a_topic_every_alarm_notifies():
    plan = plan_stack({"alarmEmail": "ops@example.com"})
    topic = plan.one(TOPIC)
    subscription = plan.one(SUBSCRIPTION).inputs
    assert (subscription["protocol"], subscription["endpoint"]) == ("email", "ops@example.com")
    assert subscription["topic"] == topic.outputs["arn"]
    for alarm in alarms(plan).values():
        assert alarm["alarmActions"] == [topic.outputs["arn"]]
        assert alarm["okActions"] == [topic.outputs["arn"]]


def test_the_dashboard_shows_requests_latency_sessions_sandboxes_and_upstream_errors():
    plan = plan_stack()
    dashboard = plan.one(DASHBOARD).inputs
    assert dashboard["dashboardName"] == f"rlm-py-{STACK}-service"
    body = json.loads(dashboard["dashboardBody"])
    titles = [w["properties"]["title"] for w in body["widgets"]]
    text = json.dumps(body)
    for metric in (
        "RequestCount",
        "TargetResponseTime",
        METRIC_LIVE_SESSIONS,
        METRIC_RUNNING_REQUESTS,
        METRIC_SANDBOX_FAULTS,
        "UpstreamErrors",
        "CPUUtilization",
    ):
        assert metric in text, metric
    group = plan.one(GROUP).inputs["name"]
    sessions = body["widgets"][titles.index("Live sessions (per host)")]["properties"]["metrics"]
    assert [CLOUDWATCH_NAMESPACE, METRIC_LIVE_SESSIONS, "AutoScalingGroupName", group] == sessions[
        0
    ][:4]
    assert "InstanceId" in sessions[1][0]["expression"]  # one line per host
    assert plan.exports["dashboard"] == dashboard["dashboardName"]
