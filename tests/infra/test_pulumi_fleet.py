"""Fleet: per-architecture launch templates, where each is used, host hardening, IAM scope,
the boot script's settings, the termination hook and the scaling policies."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess

import pytest

from infra.components.userdata import (
    LIFECYCLE_HOOK,
    SECRETS_DROP_IN_FILE,
    SECRETS_ENV_FILE,
    SECRETS_FETCHER,
    STACK_ENV_FILE,
)
from infra.config import ConfigError
from service.constants import (
    CLOUDWATCH_NAMESPACE,
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT_S,
    KEEPALIVE_MARGIN_S,
    METRIC_LIVE_SESSIONS,
    METRIC_RUNNING_REQUESTS,
    ssm_name,
)
from tests.infra.pulumi_harness import (
    ALB,
    GET_AMI_PARAMETER,
    GROUP,
    INSTANCE_PROFILE,
    LAUNCH_TEMPLATE,
    PARAMETER,
    ROLE,
    ROLE_POLICY,
    ROLE_POLICY_ATTACHMENT,
    SCALING_POLICY,
    SECRETS,
    STACK,
    TARGET_GROUP,
    Plan,
    Planned,
    baked_ami,
    plan_stack,
)
from tests.infra.pulumi_harness import LIFECYCLE_HOOK as LIFECYCLE_HOOK_TYPE

OPENAI_PARAM = ssm_name(STACK, "OPENAI_API_KEY")
API_KEYS_PARAM = ssm_name(STACK, "RLM_API_KEYS")


def templates_by_arch(plan: Plan) -> dict[str, Planned]:
    return {lt.inputs["tags"]["rlm-py:arch"]: lt for lt in plan.of_type(LAUNCH_TEMPLATE)}


def user_data(plan: Plan, arch: str) -> str:
    return base64.b64decode(templates_by_arch(plan)[arch].inputs["userData"]).decode()


def sizes(group: Planned) -> tuple[int, int, int]:
    return group.inputs["minSize"], group.inputs["desiredCapacity"], group.inputs["maxSize"]


def override_arches(plan: Plan, group: Planned) -> list[tuple[str, str]]:
    """(instance type, arch of the launch template it launches) for each override."""
    arch_of = {f"lt-{lt.name}": arch for arch, lt in templates_by_arch(plan).items()}
    return [
        (o["instanceType"], arch_of[o["launchTemplateSpecification"]["launchTemplateId"]])
        for o in group.inputs["mixedInstancesPolicy"]["launchTemplate"]["overrides"]
    ]


def stack_env(script: str) -> dict[str, str]:
    settings = script.split("<<'RLM_SETTINGS'\n")[1].split("\nRLM_SETTINGS")[0]
    return dict(line.split("=", 1) for line in settings.splitlines())


def test_one_launch_template_per_arch_with_the_stacks_baked_ami_read_at_deploy_time():
    plan = plan_stack()
    templates = templates_by_arch(plan)
    assert set(templates) == {"arm64", "x86_64"}
    for arch, lt in templates.items():
        # The id itself (read from /rlm-py/<stack>/ami/<arch> when `pulumi up` runs), never
        # a resolve:ssm: reference EC2 would follow at each launch.
        assert lt.inputs["imageId"] == baked_ami(ssm_name(STACK, f"ami/{arch}"))
        assert lt.inputs["imageId"].startswith("ami-")
        # Parented to the fleet component, not floating at the stack's root.
        assert lt.parent.endswith("rlm-py:infra:Fleet::fleet")
    read = sorted(args["name"] for token, args in plan.invoke_args if token == GET_AMI_PARAMETER)
    assert read == [ssm_name(STACK, "ami/arm64"), ssm_name(STACK, "ami/x86_64")]


def test_a_new_bake_is_a_launch_template_diff_that_refreshes_the_group():
    param = ssm_name(STACK, "ami/arm64")
    before = plan_stack(amis={param: "ami-0aaaaaaaaaaaaaaaa"})
    after = plan_stack(amis={param: "ami-0bbbbbbbbbbbbbbbb"})
    old, new = templates_by_arch(before), templates_by_arch(after)
    # The image id itself is in the template's inputs: `pulumi preview` shows the diff...
    assert old["arm64"].inputs["imageId"] == "ami-0aaaaaaaaaaaaaaaa"
    assert new["arm64"].inputs["imageId"] == "ami-0bbbbbbbbbbbbbbbb"
    assert old["x86_64"].inputs == new["x86_64"].inputs
    # ...a new template version follows, which the group names by number (not $Latest), so
    # its configuration changes and its rolling instance refresh replaces the hosts.
    group = after.one(GROUP).inputs
    spec = group["mixedInstancesPolicy"]["launchTemplate"]["launchTemplateSpecification"]
    assert spec["version"] != "$Latest"
    assert new["arm64"].inputs["updateDefaultVersion"] is True
    refresh = group["instanceRefresh"]
    assert refresh["strategy"] == "Rolling"
    assert refresh["preferences"]["minHealthyPercentage"] == 100


def test_only_the_architectures_the_fleet_uses_need_an_ami():
    plan = plan_stack({"architectures": ["x86_64"]})
    assert set(templates_by_arch(plan)) == {"x86_64"}
    read = [args["name"] for token, args in plan.invoke_args if token == GET_AMI_PARAMETER]
    assert read == [ssm_name(STACK, "ami/x86_64")]
    assert {arch for _, arch in override_arches(plan, plan.one(GROUP))} == {"x86_64"}


def test_configured_ami_replaces_the_parameter_for_that_arch_only():
    plan = plan_stack({"x86_64Ami": "ami-0123456789abcdef0"})
    templates = templates_by_arch(plan)
    assert templates["x86_64"].inputs["imageId"] == "ami-0123456789abcdef0"
    assert templates["arm64"].inputs["imageId"] == baked_ami(ssm_name(STACK, "ami/arm64"))
    read = [args["name"] for token, args in plan.invoke_args if token == GET_AMI_PARAMETER]
    assert read == [ssm_name(STACK, "ami/arm64")]


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"arm64Ami": "resolve:ssm:/rlm-py/ami/arm64"}, "arm64Ami"),
        ({"architectures": ["arm64", "riscv64"]}, "architectures"),
        ({"architectures": ["arm64", "arm64"]}, "architectures"),
    ],
)
def test_bad_ami_and_architecture_settings_are_refused(config, key):
    with pytest.raises(ConfigError, match=key):
        plan_stack(config)


def test_hosts_require_imdsv2_and_boot_from_an_encrypted_gp3_volume():
    for lt in plan_stack({"rootVolumeGb": 80}).of_type(LAUNCH_TEMPLATE):
        metadata = lt.inputs["metadataOptions"]
        assert metadata["httpTokens"] == "required"
        assert metadata["httpEndpoint"] == "enabled"
        assert metadata["httpPutResponseHopLimit"] == 1
        [root] = lt.inputs["blockDeviceMappings"]
        assert root["deviceName"] == "/dev/sda1"
        assert root["ebs"] == {
            "volumeType": "gp3",
            "volumeSize": 80,
            "encrypted": "true",
            "deleteOnTermination": "true",
        }
        assert lt.inputs["iamInstanceProfile"]["arn"].endswith(":host")


def test_mixed_mode_is_one_elb_checked_group_using_both_templates():
    plan = plan_stack()
    group = plan.one(GROUP)
    assert override_arches(plan, group) == [
        ("m7g.large", "arm64"),
        ("m6g.large", "arm64"),
        ("m7i.large", "x86_64"),
        ("m6i.large", "x86_64"),
    ]
    policy = group.inputs["mixedInstancesPolicy"]
    spec = policy["launchTemplate"]["launchTemplateSpecification"]
    assert spec == {"launchTemplateId": "lt-fleet-arm64", "version": "1"}
    assert policy["instancesDistribution"]["onDemandPercentageAboveBaseCapacity"] == 100
    assert group.inputs["healthCheckType"] == "ELB"
    assert group.inputs["targetGroupArns"] == [plan.one(TARGET_GROUP).outputs["arn"]]
    assert sizes(group) == (1, 2, 4)
    assert group.inputs["instanceRefresh"]["strategy"] == "Rolling"
    assert group.inputs["instanceRefresh"]["preferences"]["minHealthyPercentage"] == 100
    assert plan.exports["groupNames"] == [f"rlm-py-{STACK}-mixed"]


def test_instance_types_and_counts_come_from_config():
    plan = plan_stack(
        {
            "arm64InstanceTypes": ["c7g.2xlarge"],
            "x86_64InstanceTypes": "c7i.2xlarge, c6i.2xlarge",
            "minSize": 2,
            "desiredCapacity": 3,
            "maxSize": 10,
            "hostWarmupSeconds": 420,
        }
    )
    group = plan.one(GROUP)
    assert override_arches(plan, group) == [
        ("c7g.2xlarge", "arm64"),
        ("c7i.2xlarge", "x86_64"),
        ("c6i.2xlarge", "x86_64"),
    ]
    assert sizes(group) == (2, 3, 10)
    assert group.inputs["healthCheckGracePeriod"] == 420
    assert group.inputs["instanceRefresh"]["preferences"]["instanceWarmup"] == "420"


def test_per_arch_mode_gives_each_arch_its_own_group_and_exact_count():
    plan = plan_stack(
        {
            "fleetMode": "perArch",
            "arm64DesiredCapacity": 3,
            "arm64MaxSize": 6,
            "x86_64MinSize": 0,
            "x86_64DesiredCapacity": 1,
        }
    )
    groups = {g.name: g for g in plan.of_type(GROUP)}
    assert set(groups) == {"fleet-arm64", "fleet-x86_64"}
    assert {g.inputs["name"] for g in groups.values()} == {
        f"rlm-py-{STACK}-arm64",
        f"rlm-py-{STACK}-x86_64",
    }
    arm, x86 = groups["fleet-arm64"], groups["fleet-x86_64"]
    assert {arch for _, arch in override_arches(plan, arm)} == {"arm64"}
    assert {arch for _, arch in override_arches(plan, x86)} == {"x86_64"}
    assert sizes(arm) == (1, 3, 6)
    assert sizes(x86) == (0, 1, 4)
    for group in groups.values():
        assert group.inputs["healthCheckType"] == "ELB"
    assert sorted(plan.exports["groupNames"]) == [
        f"rlm-py-{STACK}-arm64",
        f"rlm-py-{STACK}-x86_64",
    ]
    # Each architecture's hosts name their own group (metrics, lifecycle action).
    assert stack_env(user_data(plan, "arm64"))["RLM_ASG_NAME"] == f"rlm-py-{STACK}-arm64"
    assert stack_env(user_data(plan, "x86_64"))["RLM_ASG_NAME"] == f"rlm-py-{STACK}-x86_64"


def test_user_data_names_the_parameters_but_holds_no_secret():
    plan = plan_stack({"requestTimeoutSeconds": 2400, "rootModel": "gpt-5.1"})
    for arch in ("arm64", "x86_64"):
        script = user_data(plan, arch)
        # The AMI's secrets unit fetches this stack's parameters, at this boot and every
        # reboot, with the region pinned to the stack's.
        drop_in = script.split("<<'RLM_SECRETS_DROP_IN'\n")[1].split("\nRLM_SECRETS_DROP_IN")[0]
        assert drop_in.splitlines() == [
            "[Service]",
            "Environment=AWS_REGION=eu-west-1 AWS_DEFAULT_REGION=eu-west-1",
            "ExecStart=",
            (
                f"ExecStart=/usr/bin/python3 {SECRETS_FETCHER} --output {SECRETS_ENV_FILE} "
                f"OPENAI_API_KEY={OPENAI_PARAM} RLM_API_KEYS={API_KEYS_PARAM}"
            ),
        ]
        assert f"cat > {SECRETS_DROP_IN_FILE} <<" in script
        env = stack_env(script)
        assert env["RLM_HOST"] == "0.0.0.0"
        assert env["RLM_PORT"] == str(DEFAULT_PORT)
        assert env["RLM_REQUEST_TIMEOUT_S"] == "2400"
        assert env["RLM_ROOT_MODEL"] == "gpt-5.1"
        assert "RLM_SUB_MODEL" not in env and "OPENAI_BASE_URL" not in env
        assert f"EnvironmentFile={STACK_ENV_FILE}" in script
        restart_secrets = script.index("systemctl restart rlm-py-secrets.service")
        assert script.index("systemctl restart rlm-py.service") > restart_secrets
        for secret in SECRETS.values():
            assert secret not in script


def test_keepalive_outlasts_the_alb_idle_timeout_from_one_setting():
    for config in ({}, {"requestTimeoutSeconds": 600}, {"idleTimeoutSeconds": 2500}):
        plan = plan_stack(config)
        idle = int(plan.one(ALB).inputs["idleTimeout"])
        for arch in ("arm64", "x86_64"):
            assert stack_env(user_data(plan, arch))["RLM_KEEPALIVE_S"] == str(
                idle + KEEPALIVE_MARGIN_S
            )


def test_user_data_wires_the_sessions_store_logs_and_metrics():
    plan = plan_stack({"sessionTtlSeconds": 7200})
    env = stack_env(user_data(plan, "arm64"))
    assert env["RLM_SESSION_STORE"] == plan.exports["sessionStore"]
    assert env["RLM_SESSION_STORE"].startswith(f"s3://rlm-py-{STACK}-sessions-")
    assert env["RLM_SESSION_STORE"].endswith("/sessions")
    assert env["RLM_SESSION_LEASE_TABLE"] == f"rlm-py-{STACK}-session-leases"
    assert env["RLM_SESSION_TTL_S"] == "7200"
    assert env["RLM_LOG_GROUP"] == f"/rlm-py/{STACK}/service"
    assert env["RLM_CLOUDWATCH_NAMESPACE"] == CLOUDWATCH_NAMESPACE
    assert env["RLM_ASG_NAME"] == plan.one(GROUP).inputs["name"]
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1"


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
def test_user_data_is_valid_bash_and_its_watcher_valid_python(tmp_path):
    script = user_data(plan_stack(), "arm64")
    assert script.startswith("#!/bin/bash\n")  # cloud-init runs it by its #! line
    subprocess.run(["bash", "-n"], input=script, text=True, check=True)
    watcher = script.split("<<'RLM_LIFECYCLE'\n")[1].split("RLM_LIFECYCLE\n")[0]
    compile(watcher, "rlm-py-lifecycle", "exec")
    assert "autoscaling/target-lifecycle-state" in watcher
    assert "complete_lifecycle_action" in watcher
    # Within EC2's 16 KB limit on user data (before base64).
    assert len(script.encode()) < 16 * 1024


def test_default_request_timeout_reaches_the_hosts():
    # The service's own default, not a copy in infra/.
    assert f"RLM_REQUEST_TIMEOUT_S={DEFAULT_REQUEST_TIMEOUT_S}\n" in user_data(
        plan_stack(), "arm64"
    )


def test_hosts_may_read_only_the_services_own_parameters():
    plan = plan_stack()
    assert plan.of_type(ROLE_POLICY_ATTACHMENT) == []  # no broad managed policies
    parameter_arns = sorted(p.outputs["arn"] for p in plan.of_type(PARAMETER))
    grants: list[tuple[str, object]] = []
    for policy in plan.of_type(ROLE_POLICY):
        for statement in json.loads(policy.inputs["policy"])["Statement"]:
            actions = statement["Action"]
            grants.extend(
                (action, statement["Resource"])
                for action in ([actions] if isinstance(actions, str) else actions)
            )
    reads = [resource for action, resource in grants if action.startswith("ssm:GetParameter")]
    assert reads == [parameter_arns, parameter_arns]
    assert all(f"parameter/rlm-py/{STACK}/" in arn for arn in parameter_arns)
    assert ("ssmmessages:OpenDataChannel", "*") in grants  # Session Manager
    assert not any(action in ("*", "ssm:*", "kms:*") for action, _ in grants)
    assert len(plan.of_type(INSTANCE_PROFILE)) == 1


def test_only_ec2_instances_may_assume_the_host_role():
    [role] = plan_stack().of_type(ROLE)
    [statement] = json.loads(role.inputs["assumeRolePolicy"])["Statement"]
    assert statement == {
        "Effect": "Allow",
        "Principal": {"Service": "ec2.amazonaws.com"},
        "Action": "sts:AssumeRole",
    }


def test_a_customer_kms_key_is_granted_only_through_ssm():
    key = "arn:aws:kms:eu-west-1:123456789012:key/abcd"
    plan = plan_stack({"kmsKeyId": key})
    assert {p.inputs["keyId"] for p in plan.of_type(PARAMETER)} == {key}
    statements = [
        s
        for policy in plan.of_type(ROLE_POLICY)
        for s in json.loads(policy.inputs["policy"])["Statement"]
        if s["Action"] == "kms:Decrypt"
    ]
    assert statements == [
        {
            "Effect": "Allow",
            "Action": "kms:Decrypt",
            "Resource": key,
            "Condition": {"StringLike": {"kms:ViaService": "ssm.*.amazonaws.com"}},
        }
    ]


@pytest.mark.parametrize("public", [True, False])
def test_public_ip_follows_config(public: bool):
    for lt in plan_stack({"assignPublicIp": public}).of_type(LAUNCH_TEMPLATE):
        [nic] = lt.inputs["networkInterfaces"]
        assert nic["associatePublicIpAddress"] == str(public).lower()
        assert nic["securityGroups"] == ["security-host-id"]


def test_a_termination_hook_holds_each_group_for_the_drain():
    plan = plan_stack({"fleetMode": "perArch", "drainTimeoutSeconds": 900})
    hooks = plan.of_type(LIFECYCLE_HOOK_TYPE)
    groups = {g.name for g in plan.of_type(GROUP)}
    assert sorted(h.inputs["autoscalingGroupName"] for h in hooks) == sorted(
        g.inputs["name"] for g in plan.of_type(GROUP)
    )
    assert len(hooks) == len(groups) == 2
    for hook in hooks:
        assert hook.inputs["name"] == LIFECYCLE_HOOK
        assert hook.inputs["lifecycleTransition"] == "autoscaling:EC2_INSTANCE_TERMINATING"
        assert hook.inputs["defaultResult"] == "CONTINUE"
        # Longer than the service's stop timeout, which bounds the drain.
        assert hook.inputs["heartbeatTimeout"] > 900
    script = user_data(plan, "arm64")
    assert "TimeoutStopSec=900" in script
    assert f"--hook {LIFECYCLE_HOOK}" in script
    assert f"--region eu-west-1 --group rlm-py-{STACK}-arm64" in script


def test_the_default_drain_outlasts_the_services_shutdown_grace():
    from service.config import Settings

    [hook] = plan_stack().of_type(LIFECYCLE_HOOK_TYPE)
    grace = Settings.model_fields["rlm_shutdown_grace_s"].default
    assert hook.inputs["heartbeatTimeout"] > grace + 60


@pytest.mark.parametrize("drain", [10, 7200])
def test_a_drain_timeout_the_hook_cannot_hold_is_refused(drain: int):
    with pytest.raises(ConfigError, match="drainTimeoutSeconds"):
        plan_stack({"drainTimeoutSeconds": drain})


def test_groups_scale_on_cpu_sessions_and_running_requests_per_host():
    plan = plan_stack(
        {"scaleCpuPercent": 50, "scaleLiveSessionsPerHost": 40, "scaleRunningRequestsPerHost": 20}
    )
    group = plan.one(GROUP)
    name = group.inputs["name"]
    policies = plan.of_type(SCALING_POLICY)
    assert {p.inputs["autoscalingGroupName"] for p in policies} == {name}
    assert {p.inputs["policyType"] for p in policies} == {"TargetTrackingScaling"}
    targets = {}
    for policy in policies:
        config = policy.inputs["targetTrackingConfiguration"]
        if "predefinedMetricSpecification" in config:
            spec = config["predefinedMetricSpecification"]
            targets[spec["predefinedMetricType"]] = config["targetValue"]
        else:
            spec = config["customizedMetricSpecification"]
            assert spec["namespace"] == CLOUDWATCH_NAMESPACE
            assert spec["statistic"] == "Average"
            assert spec["metricDimensions"] == [{"name": "AutoScalingGroupName", "value": name}]
            targets[spec["metricName"]] = config["targetValue"]
    assert targets == {
        "ASGAverageCPUUtilization": 50,
        METRIC_LIVE_SESSIONS: 40,
        METRIC_RUNNING_REQUESTS: 20,
    }


def test_capacity_belongs_to_the_policies_and_rebalancing_cuts_no_session():
    plan = plan_stack({"fleetMode": "perArch"})
    for group in plan.of_type(GROUP):
        # desiredCapacity is the first size only; `pulumi up` never resets the policies' choice.
        assert "desiredCapacity" in group.ignore_changes
        assert group.inputs["suspendedProcesses"] == ["AZRebalance"]
        assert group.inputs["capacityRebalance"] is False
        assert "GroupInServiceInstances" in group.inputs["enabledMetrics"]
    # One-minute EC2 metrics, so the CPU policy sees load within minutes.
    for template in plan.of_type(LAUNCH_TEMPLATE):
        assert template.inputs["monitoring"] == {"enabled": True}
        assert group.inputs["metricsGranularity"] == "1Minute"
    assert len(plan.of_type(SCALING_POLICY)) == 6


def test_hosts_may_complete_only_their_groups_lifecycle_actions():
    plan = plan_stack({"fleetMode": "perArch"})
    [statement] = policy_statements(plan, "host-lifecycle")
    assert statement["Action"] == [
        "autoscaling:CompleteLifecycleAction",
        "autoscaling:RecordLifecycleActionHeartbeat",
    ]
    assert statement["Resource"] == [
        f"arn:aws:autoscaling:eu-west-1:123456789012:autoScalingGroup:*:"
        f"autoScalingGroupName/rlm-py-{STACK}-{arch}"
        for arch in ("arm64", "x86_64")
    ]


def policy_statements(plan: Plan, name: str) -> list[dict]:
    [policy] = [p for p in plan.of_type(ROLE_POLICY) if p.name == name]
    return json.loads(policy.inputs["policy"])["Statement"]
