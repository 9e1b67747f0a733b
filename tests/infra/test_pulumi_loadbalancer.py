"""Load balancer: sticky sessions on the service's cookie, timeouts for long requests, TLS."""

from __future__ import annotations

import pytest

from infra.config import ConfigError
from service.constants import (
    DEFAULT_PORT,
    DEFAULT_REQUEST_TIMEOUT_S,
    HEALTH_PATH,
    READY_PATH,
    SESSION_COOKIE,
)
from tests.infra.pulumi_harness import (
    ALB,
    CERT,
    CERTIFICATE,
    CERTIFICATE_VALIDATION,
    GROUP,
    INGRESS_RULE,
    LISTENER,
    RECORD,
    TARGET_GROUP,
    plan_stack,
)

ZONE = "Z0123456789ABCDEFGHIJ"


def test_sessions_stick_to_their_host_by_the_services_cookie():
    stickiness = plan_stack().one(TARGET_GROUP).inputs["stickiness"]
    assert stickiness["enabled"] is True
    assert stickiness["type"] == "app_cookie"
    assert stickiness["cookieName"] == SESSION_COOKIE


def test_target_group_checks_health_and_spreads_by_outstanding_requests():
    tg = plan_stack().one(TARGET_GROUP).inputs
    assert tg["port"] == DEFAULT_PORT and tg["protocol"] == "HTTP"
    health = tg["healthCheck"]
    # Readiness (fails when the host cannot start sandboxes, or drains), not liveness.
    assert health["path"] == READY_PATH != HEALTH_PATH
    assert health["matcher"] == "200"
    # No flapping under load: a slow answer is given time, and a host leaves rotation only
    # after several failures in a row (at least a minute and a half).
    assert health["timeout"] >= 10 and health["timeout"] < health["interval"]
    assert health["unhealthyThreshold"] >= 5
    assert health["interval"] * health["unhealthyThreshold"] >= 90
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


def test_plain_http_open_to_the_world_is_refused_by_default():
    with pytest.raises(ConfigError, match="allowPlaintext") as refused:
        plan_stack(tls=False)
    assert "0.0.0.0/0" in str(refused.value) and "hostedZoneId" in str(refused.value)


def test_plain_http_is_allowed_to_a_private_network_without_opt_in():
    plan = plan_stack({"albIngressCidrs": ["10.0.0.0/8"]}, tls=False)
    [listener] = plan.of_type(LISTENER)
    assert listener.inputs["protocol"] == "HTTP"


def test_without_a_certificate_and_with_opt_in_http_forwards_to_the_service():
    plan = plan_stack({"allowPlaintext": True}, tls=False)
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
    assert plan.of_type(RECORD) == []  # no zone given: the operator points the name


def test_a_domain_and_zone_get_a_dns_validated_certificate_and_an_alias():
    plan = plan_stack({"domainName": "rlm.example.com", "hostedZoneId": ZONE}, tls=False)
    certificate = plan.one(CERTIFICATE)
    assert certificate.inputs["domainName"] == "rlm.example.com"
    assert certificate.inputs["validationMethod"] == "DNS"
    records = {r.inputs["type"]: r for r in plan.of_type(RECORD)}
    assert set(records) == {"CNAME", "A"}
    validation_record = records["CNAME"].inputs
    [option] = certificate.outputs["domainValidationOptions"]
    assert validation_record["zoneId"] == ZONE
    assert validation_record["name"] == option["resourceRecordName"]
    assert validation_record["records"] == [option["resourceRecordValue"]]
    validation = plan.one(CERTIFICATE_VALIDATION).inputs
    assert validation["certificateArn"] == certificate.outputs["arn"]
    assert validation["validationRecordFqdns"] == [records["CNAME"].outputs["fqdn"]]
    # HTTPS serves the validated certificate; HTTP only redirects.
    listeners = {listener.inputs["port"]: listener.inputs for listener in plan.of_type(LISTENER)}
    assert listeners[443]["certificateArn"] == certificate.outputs["arn"]
    assert listeners[80]["defaultActions"][0]["type"] == "redirect"
    alias = records["A"].inputs
    alb = plan.one(ALB).outputs
    assert (alias["zoneId"], alias["name"]) == (ZONE, "rlm.example.com")
    assert alias["aliases"] == [
        {"name": alb["dnsName"], "zoneId": alb["zoneId"], "evaluateTargetHealth": True}
    ]
    assert plan.exports["url"] == "https://rlm.example.com"
    ports = {r.inputs["fromPort"] for r in plan.of_type(INGRESS_RULE) if r.inputs.get("cidrIpv4")}
    assert ports == {80, 443}


def test_a_given_certificate_with_a_zone_still_gets_the_alias_and_no_new_certificate():
    plan = plan_stack({"domainName": "rlm.example.com", "hostedZoneId": ZONE})
    assert plan.of_type(CERTIFICATE) == []
    [alias] = plan.of_type(RECORD)
    assert alias.inputs["type"] == "A"


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"hostedZoneId": ZONE}, "domainName"),
        ({"domainName": "rlm.example.com", "hostedZoneId": "example.com"}, "hostedZoneId"),
    ],
)
def test_a_zone_without_a_domain_or_a_bad_zone_id_is_refused(config, key):
    with pytest.raises(ConfigError, match=key):
        plan_stack(config)


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
