"""Load balancer: sticky sessions on the service's cookie, timeouts for long requests, TLS."""

from __future__ import annotations

import pytest

from infra.config import ConfigError
from service.constants import (
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT_S,
    HEALTH_PATH,
    SESSION_COOKIE,
)
from tests.infra.pulumi_harness import ALB, GROUP, LISTENER, TARGET_GROUP, plan_stack

CERT = "arn:aws:acm:eu-west-1:123456789012:certificate/0f0f0f0f"


def test_sessions_stick_to_their_host_by_the_services_cookie():
    stickiness = plan_stack().one(TARGET_GROUP).inputs["stickiness"]
    assert stickiness["enabled"] is True
    assert stickiness["type"] == "app_cookie"
    assert stickiness["cookieName"] == SESSION_COOKIE


def test_target_group_checks_health_and_spreads_by_outstanding_requests():
    tg = plan_stack().one(TARGET_GROUP).inputs
    assert tg["port"] == DEFAULT_PORT and tg["protocol"] == "HTTP"
    assert tg["healthCheck"]["path"] == HEALTH_PATH
    assert tg["healthCheck"]["matcher"] == "200"
    assert tg["loadBalancingAlgorithmType"] == "least_outstanding_requests"
    # In-flight requests may drain for as long as a request may run.
    assert tg["deregistrationDelay"] == DEFAULT_REQUEST_TIMEOUT_S


def test_idle_timeout_exceeds_the_default_request_timeout():
    idle = plan_stack().one(ALB).inputs["idleTimeout"]
    assert DEFAULT_REQUEST_TIMEOUT_S < idle <= 4000


def test_idle_timeout_follows_a_configured_request_timeout():
    plan = plan_stack({"requestTimeoutSeconds": 3600})
    assert plan.one(ALB).inputs["idleTimeout"] > 3600
    assert plan.one(TARGET_GROUP).inputs["deregistrationDelay"] == 3600  # AWS's cap


@pytest.mark.parametrize(
    "config",
    [
        {"requestTimeoutSeconds": 3990},  # + margin would pass the ALB's 4000 s maximum
        {"requestTimeoutSeconds": 600, "idleTimeoutSeconds": 600},
        {"deregistrationDelaySeconds": 3601},
    ],
)
def test_timeouts_that_would_cut_requests_short_are_refused(config):
    with pytest.raises(ConfigError):
        plan_stack(config)


def test_without_a_certificate_http_forwards_to_the_service():
    plan = plan_stack()
    [listener] = plan.of_type(LISTENER)
    assert (listener.inputs["port"], listener.inputs["protocol"]) == (80, "HTTP")
    [action] = listener.inputs["defaultActions"]
    assert action == {"type": "forward", "targetGroupArn": plan.one(TARGET_GROUP).outputs["arn"]}
    assert plan.exports["url"] == f"http://{plan.exports['albDnsName']}"


def test_a_certificate_adds_https_and_turns_http_into_a_redirect():
    plan = plan_stack({"certificateArn": CERT})
    listeners = {listener.inputs["port"]: listener.inputs for listener in plan.of_type(LISTENER)}
    assert set(listeners) == {80, 443}
    https = listeners[443]
    assert (https["protocol"], https["certificateArn"]) == ("HTTPS", CERT)
    assert https["sslPolicy"].startswith("ELBSecurityPolicy-TLS13")
    assert https["defaultActions"][0]["targetGroupArn"] == plan.one(TARGET_GROUP).outputs["arn"]
    [redirect] = listeners[80]["defaultActions"]
    assert redirect["type"] == "redirect"
    assert redirect["redirect"] == {"protocol": "HTTPS", "port": "443", "statusCode": "HTTP_301"}
    assert plan.exports["url"].startswith("https://")


def test_domain_name_shapes_the_url_output():
    plan = plan_stack({"certificateArn": CERT, "domainName": "rlm.example.com"})
    assert plan.exports["url"] == "https://rlm.example.com"
    assert plan.exports["albZoneId"]


def test_alb_sits_in_the_default_vpc_subnets_unless_given_others():
    default = plan_stack()
    assert default.one(ALB).inputs["subnets"] == [
        "subnet-default-a",
        "subnet-default-b",
        "subnet-default-c",
    ]
    assert "aws:ec2/getVpc:getVpc" in default.invokes
    given = plan_stack(
        {
            "vpcId": "vpc-0abc",
            "subnetIds": ["subnet-pub-1", "subnet-pub-2"],
            "hostSubnetIds": ["subnet-priv-1", "subnet-priv-2"],
            "assignPublicIp": False,
        }
    )
    assert given.one(ALB).inputs["subnets"] == ["subnet-pub-1", "subnet-pub-2"]
    assert given.one(TARGET_GROUP).inputs["vpcId"] == "vpc-0abc"
    assert "aws:ec2/getVpc:getVpc" not in given.invokes
    assert given.one(GROUP).inputs["vpcZoneIdentifiers"] == ["subnet-priv-1", "subnet-priv-2"]
