"""Fleet: per-architecture launch templates, where each is used, host hardening, IAM scope."""

from __future__ import annotations

import base64
import json

import pytest

from infra.components.userdata import SECRETS_ENV_FILE, SECRETS_FETCHER, STACK_ENV_FILE
from service.constants import (
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT_S,
    SSM_AMI_PARAM,
    SSM_OPENAI_API_KEY,
    SSM_RLM_API_KEYS,
)
from tests.infra.pulumi_harness import (
    GROUP,
    INSTANCE_PROFILE,
    LAUNCH_TEMPLATE,
    PARAMETER,
    ROLE,
    ROLE_POLICY,
    ROLE_POLICY_ATTACHMENT,
    SECRETS,
    TARGET_GROUP,
    Plan,
    Planned,
    plan_stack,
)


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


def test_one_launch_template_per_arch_with_the_baked_ami_parameter_by_default():
    plan = plan_stack()
    templates = templates_by_arch(plan)
    assert set(templates) == {"arm64", "x86_64"}
    for arch, lt in templates.items():
        assert lt.inputs["imageId"] == "resolve:ssm:" + SSM_AMI_PARAM.format(arch=arch)
        # Parented to the fleet component, not floating at the stack's root.
        assert lt.parent.endswith("rlm-py:infra:Fleet::fleet")


def test_configured_ami_replaces_the_parameter_for_that_arch_only():
    plan = plan_stack({"x86_64Ami": "ami-0123456789abcdef0"})
    templates = templates_by_arch(plan)
    assert templates["x86_64"].inputs["imageId"] == "ami-0123456789abcdef0"
    assert templates["arm64"].inputs["imageId"] == "resolve:ssm:/rlm-py/ami/arm64"


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
        assert lt.inputs["iamInstanceProfile"]["arn"].endswith(":fleet-host")


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
    assert plan.exports["groupNames"] == ["fleet-mixed-auto"]


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
    arm, x86 = groups["fleet-arm64"], groups["fleet-x86_64"]
    assert {arch for _, arch in override_arches(plan, arm)} == {"arm64"}
    assert {arch for _, arch in override_arches(plan, x86)} == {"x86_64"}
    assert sizes(arm) == (1, 3, 6)
    assert sizes(x86) == (0, 1, 4)
    for group in groups.values():
        assert group.inputs["healthCheckType"] == "ELB"
    assert sorted(plan.exports["groupNames"]) == ["fleet-arm64-auto", "fleet-x86_64-auto"]


def test_user_data_names_the_parameters_but_holds_no_secret():
    plan = plan_stack({"requestTimeoutSeconds": 2400, "rootModel": "gpt-5.1"})
    for arch in ("arm64", "x86_64"):
        script = user_data(plan, arch)
        # The AMI's fetcher reads SSM with the instance role, region pinned to the stack's.
        [fetch] = [line for line in script.splitlines() if line.startswith("AWS_REGION=")]
        assert fetch == (
            f"AWS_REGION=eu-west-1 {SECRETS_FETCHER} --output {SECRETS_ENV_FILE} "
            f"OPENAI_API_KEY={SSM_OPENAI_API_KEY} RLM_API_KEYS={SSM_RLM_API_KEYS}"
        )
        settings = script.split("<<'RLM_SETTINGS'\n")[1].split("\nRLM_SETTINGS")[0]
        assert settings.splitlines() == [
            "RLM_HOST=0.0.0.0",
            f"RLM_PORT={DEFAULT_PORT}",
            "RLM_REQUEST_TIMEOUT_S=2400",
            "RLM_ROOT_MODEL=gpt-5.1",
        ]
        assert f"EnvironmentFile={STACK_ENV_FILE}" in script
        assert script.index("systemctl restart rlm-py.service") > script.index(fetch)
        for secret in SECRETS.values():
            assert secret not in script


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
