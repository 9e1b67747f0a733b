"""Security groups: nothing but the ALB's listeners is open to the internet."""

from __future__ import annotations

import ipaddress

import pytest

from infra.config import ConfigError
from service.constants import DEFAULT_PORT
from tests.infra.pulumi_harness import (
    EGRESS_RULE,
    INGRESS_RULE,
    SECURITY_GROUP,
    Plan,
    Planned,
    plan_stack,
)

SSH = 22


def is_world(rule: Planned) -> bool:
    cidr = rule.inputs.get("cidrIpv4") or rule.inputs.get("cidrIpv6")
    return cidr is not None and ipaddress.ip_network(cidr).prefixlen == 0


def opens(rule: Planned, port: int) -> bool:
    if rule.inputs["ipProtocol"] in ("-1", "all"):
        return True
    return rule.inputs["fromPort"] <= port <= rule.inputs["toPort"]


def world_open_ports(plan: Plan) -> set[int]:
    return {
        port
        for rule in plan.of_type(INGRESS_RULE)
        if is_world(rule)
        for port in (SSH, DEFAULT_PORT, 80, 443)
        if opens(rule, port)
    }


@pytest.mark.parametrize(
    "config",
    [
        {},
        {"sshCidr": "203.0.113.7/32", "albIngressCidrs": ["0.0.0.0/0"]},
        {"sshCidr": "2001:db8::1/128"},
    ],
)
def test_no_rule_opens_ssh_or_the_service_port_to_the_internet(config):
    plan = plan_stack(config)
    assert world_open_ports(plan) <= {80, 443}
    # No inline rules on the groups either (they'd escape the check above).
    for group in plan.of_type(SECURITY_GROUP):
        assert not group.inputs.get("ingress")


def test_the_service_port_accepts_only_the_albs_group():
    plan = plan_stack({"sshCidr": "203.0.113.7/32"})
    groups = {g.name: g.outputs["name"] for g in plan.of_type(SECURITY_GROUP)}
    assert set(groups) == {"security-alb", "security-host"}
    service_rules = [r for r in plan.of_type(INGRESS_RULE) if opens(r, DEFAULT_PORT)]
    assert [
        (r.inputs["securityGroupId"], r.inputs.get("referencedSecurityGroupId"))
        for r in service_rules
    ] == [("security-host-id", "security-alb-id")]
    alb_egress = [
        r for r in plan.of_type(EGRESS_RULE) if r.inputs["securityGroupId"] == "security-alb-id"
    ]
    assert [(r.inputs["fromPort"], r.inputs["referencedSecurityGroupId"]) for r in alb_egress] == [
        (DEFAULT_PORT, "security-host-id")
    ]


def test_ssh_only_when_a_cidr_is_configured():
    assert not [r for r in plan_stack().of_type(INGRESS_RULE) if opens(r, SSH)]
    [ssh] = [
        r for r in plan_stack({"sshCidr": "203.0.113.7/32"}).of_type(INGRESS_RULE) if opens(r, SSH)
    ]
    assert ssh.inputs["cidrIpv4"] == "203.0.113.7/32"
    assert (ssh.inputs["fromPort"], ssh.inputs["toPort"]) == (SSH, SSH)
    assert ssh.inputs["securityGroupId"] == "security-host-id"


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "::/0", "not-a-cidr"])
def test_ssh_to_the_world_is_refused(cidr: str):
    with pytest.raises(ConfigError, match="sshCidr"):
        plan_stack({"sshCidr": cidr})


def test_alb_ingress_cidrs_come_from_config():
    plan = plan_stack({"albIngressCidrs": ["198.51.100.0/24", "203.0.113.0/24"]})
    rules = [
        r for r in plan.of_type(INGRESS_RULE) if r.inputs["securityGroupId"] == "security-alb-id"
    ]
    assert sorted((r.inputs["fromPort"], r.inputs["cidrIpv4"]) for r in rules) == [
        (80, "198.51.100.0/24"),
        (80, "203.0.113.0/24"),
        (443, "198.51.100.0/24"),
        (443, "203.0.113.0/24"),
    ]
    assert world_open_ports(plan) == set()


@pytest.mark.parametrize("cidr", ["::/0", "2001:db8::/32"])
def test_ipv6_ingress_on_the_ipv4_only_alb_is_refused(cidr: str):
    with pytest.raises(ConfigError, match="albIngressCidrs") as refused:
        plan_stack({"albIngressCidrs": ["198.51.100.0/24", cidr]})
    assert "IPv4-only" in str(refused.value)
