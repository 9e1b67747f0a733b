"""Secrets: SecureString parameters named by the service, values never anywhere else."""

from __future__ import annotations

import json

import pytest
from pulumi.runtime.rpc import _special_secret_sig, _special_sig_key

from infra.config import ConfigError
from service.constants import ssm_name
from tests.infra.pulumi_harness import PARAMETER, SECRETS, STACK, plan_stack

SSM_OPENAI_API_KEY = ssm_name(STACK, "OPENAI_API_KEY")
SSM_RLM_API_KEYS = ssm_name(STACK, "RLM_API_KEYS")


def test_secrets_are_securestring_parameters_named_by_the_stack():
    parameters = plan_stack().of_type(PARAMETER)
    by_name = {p.inputs["name"]: p.inputs for p in parameters}
    assert set(by_name) == {SSM_OPENAI_API_KEY, SSM_RLM_API_KEYS}
    assert {p["type"] for p in by_name.values()} == {"SecureString"}
    values = {name: p["value"] for name, p in by_name.items()}
    # Marked secret in Pulumi too, so the state and the CLI's diffs keep it masked.
    assert values == {
        SSM_OPENAI_API_KEY: {
            _special_sig_key: _special_secret_sig,
            "value": SECRETS["openaiApiKey"],
        },
        SSM_RLM_API_KEYS: {_special_sig_key: _special_secret_sig, "value": SECRETS["rlmApiKeys"]},
    }


def test_secret_values_appear_in_no_other_resource_nor_export():
    plan = plan_stack({"certificateArn": "arn:aws:acm:eu-west-1:1:certificate/x"})
    elsewhere = json.dumps(
        [r.inputs for r in plan.resources if r.type != PARAMETER] + [plan.exports], default=str
    )
    for secret in SECRETS.values():
        assert secret not in elsewhere
    # ...and every parameter the stack writes is a SecureString.
    assert {p.inputs["type"] for p in plan.of_type(PARAMETER)} == {"SecureString"}


@pytest.mark.parametrize("key", ["openaiApiKey", "rlmApiKeys"])
def test_a_secret_in_plain_config_is_refused(key: str):
    secrets = {k: v for k, v in SECRETS.items() if k != key}
    with pytest.raises(ConfigError, match=f"--secret {key}"):
        plan_stack(secrets=secrets, plain={key: SECRETS[key]})


def test_missing_secrets_stop_the_program():
    with pytest.raises(Exception, match="rlmApiKeys"):
        plan_stack(secrets={"openaiApiKey": "sk-x"})


@pytest.mark.parametrize(
    "key",
    [
        "alias/rlm-py",
        "arn:aws:kms:eu-west-1:123456789012:alias/rlm-py",
        "1234abcd-12ab-34cd-56ef-1234567890ab",
    ],
)
def test_a_kms_key_that_is_not_a_key_arn_is_refused(key: str):
    with pytest.raises(ConfigError, match="kmsKeyId") as refused:
        plan_stack({"kmsKeyId": key})
    assert "ARN" in str(refused.value)
