"""Stacks are independent: two stacks of the project deploy side by side in one account and
region, because every name AWS keeps unique there carries the stack."""

from __future__ import annotations

from typing import Any

from service.constants import ssm_name
from tests.infra.pulumi_harness import (
    BUCKET,
    GET_AMI_PARAMETER,
    LIFECYCLE_HOOK,
    PARAMETER,
    Plan,
    plan_stack,
)

# Inputs that are a physical name (or the prefix AWS completes into one).
NAME_KEYS = ("name", "namePrefix", "bucketPrefix", "dashboardName")
CONFIG = {"fleetMode": "perArch", "alarmEmail": "ops@example.com"}


def physical_names(plan: Plan) -> dict[str, str]:
    """Every physical name the stack gives, keyed by `<type> <logical name>`.

    Lifecycle hooks are left out: their name is unique only within their group, whose own
    name carries the stack."""
    out: dict[str, str] = {}
    for resource in plan.resources:
        if resource.type.startswith("rlm-py:") or resource.type == LIFECYCLE_HOOK:
            continue
        for key in NAME_KEYS:
            value: Any = resource.inputs.get(key)
            if isinstance(value, str):
                out[f"{resource.type} {resource.name}"] = value
    return out


def test_two_stacks_in_one_account_and_region_share_no_name():
    dev, prod = plan_stack(CONFIG, stack="dev"), plan_stack(CONFIG, stack="prod")
    dev_names, prod_names = physical_names(dev), physical_names(prod)
    # Both stacks name the same kinds of things, and many of them...
    assert dev_names.keys() == prod_names.keys()
    assert len(dev_names) >= 15
    # ...but no two names collide.
    assert set(dev_names.values()).isdisjoint(prod_names.values())
    for names, stack in ((dev_names, "dev"), (prod_names, "prod")):
        unmarked = {k: v for k, v in names.items() if stack not in v}
        assert unmarked == {}, f"names without the stack {stack!r}: {unmarked}"


def test_each_stack_uses_its_own_parameters_and_ami_pointers():
    for stack in ("dev", "prod"):
        plan = plan_stack(stack=stack)
        assert {p.inputs["name"] for p in plan.of_type(PARAMETER)} == {
            ssm_name(stack, "OPENAI_API_KEY"),
            ssm_name(stack, "RLM_API_KEYS"),
        }
        read = {args["name"] for token, args in plan.invoke_args if token == GET_AMI_PARAMETER}
        assert read == {ssm_name(stack, "ami/arm64"), ssm_name(stack, "ami/x86_64")}


def test_long_stack_names_still_fit_aws_name_limits():
    stack = "customer-acceptance-environment-eu-west-1-blue"
    plan = plan_stack(stack=stack)
    for bucket in plan.of_type(BUCKET):
        prefix = bucket.inputs["bucketPrefix"]
        assert len(prefix) <= 37 and prefix == prefix.lower()
        assert prefix.startswith("rlm-py-customer-")
    for resource in plan.resources:
        if "namePrefix" in resource.inputs:
            assert len(resource.inputs["namePrefix"]) <= 38
