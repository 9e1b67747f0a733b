"""Stack config: the documented keys are the keys read, refusals name the key, and the
program's shared names come from service.constants rather than copies."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pulumi
import pytest

from infra.config import ConfigError
from service import constants
from tests.infra.pulumi_harness import PROJECT, Planned, plan_stack

INFRA = Path(__file__).resolve().parents[2] / "infra"
EXAMPLE = INFRA / "Pulumi.dev.yaml.example"


def keys_read(monkeypatch: pytest.MonkeyPatch, config: dict | None = None) -> set[str]:
    seen: set[str] = set()
    full_key = pulumi.Config.full_key

    def recording(self: pulumi.Config, key: str) -> str:
        if self.name == PROJECT:
            seen.add(key)
        return full_key(self, key)

    monkeypatch.setattr(pulumi.Config, "full_key", recording)
    plan_stack(config)
    return seen


def test_the_example_documents_exactly_the_keys_the_program_reads(monkeypatch):
    documented = set(re.findall(rf"^\s*#?\s*{PROJECT}:(\w+):", EXAMPLE.read_text(), re.MULTILINE))
    read = keys_read(monkeypatch) | keys_read(monkeypatch, {"fleetMode": "perArch"})
    assert documented == read


def test_the_example_is_valid_yaml_with_the_project_namespace():
    yaml = pytest.importorskip("yaml")
    config = yaml.safe_load(EXAMPLE.read_text())["config"]
    assert "aws:region" in config
    assert all(key.startswith((f"{PROJECT}:", "aws:")) for key in config)
    project = yaml.safe_load((INFRA / "Pulumi.yaml").read_text())
    assert project["name"] == PROJECT and project["runtime"]["name"] == "python"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"vpcId": "vpc-1"}, "subnetIds"),
        ({"vpcId": "vpc-1", "subnetIds": ["subnet-1"]}, "subnetIds"),
        ({"fleetMode": "both"}, "fleetMode"),
        ({"minSize": 3, "desiredCapacity": 2}, "minSize"),
        ({"fleetMode": "perArch", "x86_64DesiredCapacity": 9}, "x86_64DesiredCapacity"),
        ({"arm64InstanceTypes": []}, "arm64InstanceTypes"),
        ({"rootVolumeGb": "big"}, "rootVolumeGb"),
        ({"assignPublicIp": "maybe"}, "assignPublicIp"),
        ({"albIngressCidrs": ["10.0.0.0/33"]}, "albIngressCidrs"),
        ({"requestTimeoutSeconds": 0}, "requestTimeoutSeconds"),
    ],
)
def test_bad_values_are_refused_naming_the_key(config: dict, key: str):
    with pytest.raises(ConfigError, match=key):
        plan_stack(config)


def test_every_component_owns_its_resources():
    plan = plan_stack(
        {
            "sshCidr": "203.0.113.7/32",
            "domainName": "rlm.example.com",
            "hostedZoneId": "Z0123456789ABCDEFGHIJ",
            "alarmEmail": "ops@example.com",
        },
        tls=False,
    )
    components = {
        "Network",
        "Security",
        "Secrets",
        "SessionStorage",
        "Telemetry",
        "Certificate",
        "LoadBalancer",
        "HostRole",
        "Fleet",
        "Monitoring",
    }
    top = [r for r in plan.resources if r.parent.endswith("pulumi:pulumi:Stack::rlm-py-test")]
    assert sorted(r.type.split(":")[-1] for r in top) == sorted(components)
    custom: list[Planned] = [r for r in plan.resources if not r.type.startswith("rlm-py:")]
    assert custom and all(re.search(r"rlm-py:infra:\w+::[\w-]+$", r.parent) for r in custom), [
        r.name for r in custom if "rlm-py:infra:" not in r.parent
    ]


def _string_literals(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return {
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    }


def test_shared_names_are_imported_from_service_constants_not_copied():
    # (CLOUDWATCH_NAMESPACE is the project's name too, so it cannot be told apart here.)
    shared = [
        constants.SESSION_COOKIE,
        constants.HEALTH_PATH,
        constants.READY_PATH,
        constants.METRIC_LIVE_SESSIONS,
        constants.METRIC_RUNNING_REQUESTS,
        constants.METRIC_SANDBOX_FAULTS,
        "resolve:ssm:",
    ]
    sources = [
        INFRA / "__main__.py",
        INFRA / "config.py",
        *sorted((INFRA / "components").glob("*.py")),
    ]
    copies = [
        (path.name, literal)
        for path in sources
        for literal in _string_literals(path)
        for name in shared
        # Whole names only: "rlm_session" is the cookie, "rlm_session_ttl_s" a setting.
        if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", literal)
        or literal.startswith(constants.SSM_PREFIX)
    ]
    assert copies == []
