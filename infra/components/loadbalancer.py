"""The Application Load Balancer: long timeouts, sticky sessions, HTTPS, access logs."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from service.constants import READY_PATH, SESSION_COOKIE

HTTP_PORT = 80
HTTPS_PORT = 443
# How long the ALB keeps routing a client to the host that holds its session once it has
# seen the service's cookie; the service's own session eviction decides the session's life.
STICKINESS_DURATION_S = 24 * 3600
# The target group's check of READY_PATH (which fails while the host cannot start sandboxes
# or drains). It must not flap under load: a loaded host answers /readyz late, not wrong,
# so the timeout is generous and a host leaves rotation only after five failures in a row
# (100 s), and returns after two successes (40 s). /healthz stays the process's liveness.
HEALTH_INTERVAL_S = 20
HEALTH_TIMEOUT_S = 10
HEALTHY_THRESHOLD = 2
UNHEALTHY_THRESHOLD = 5


@dataclass
class LoadBalancerArgs:
    """Placement, timeouts and TLS of the ALB.

    Contracts the caller must keep (config checks them): `idle_timeout_s` exceeds the
    service's request timeout so a silent minutes-long RLM request is not cut off, and
    `deregistration_delay_s` is long enough for in-flight requests to drain.
    With `certificate_arn`, port 443 serves HTTPS and port 80 only redirects to it.
    With `alias` (domain name, Route 53 hosted zone id), an alias A record points the name
    at the ALB. `access_logs_bucket`: where the ALB writes its access logs (under
    `access_logs_prefix`); `access_logs_ready` must exist first (the bucket's policy, which
    the ALB checks when logging is turned on).
    """

    vpc_id: pulumi.Input[str]
    subnet_ids: pulumi.Input[list[str]]
    security_group_id: pulumi.Input[str]
    service_port: int
    idle_timeout_s: int
    deregistration_delay_s: int
    certificate_arn: pulumi.Input[str] | None = None
    ssl_policy: str = "ELBSecurityPolicy-TLS13-1-2-2021-06"
    alias: tuple[str, str] | None = None
    access_logs_bucket: pulumi.Input[str] | None = None
    access_logs_prefix: str = ""
    access_logs_ready: list[pulumi.Resource] | None = None


class LoadBalancer(pulumi.ComponentResource):
    """ALB, target group and listeners.

    Outputs: `dns_name`, `zone_id` (for a Route 53 alias), `target_group_arn`, and the
    `arn_suffix` of each (`alb_arn_suffix`, `target_group_arn_suffix`), the dimensions of
    their CloudWatch metrics.
    """

    alb: aws.lb.LoadBalancer
    target_group: aws.lb.TargetGroup

    def __init__(
        self, name: str, args: LoadBalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:LoadBalancer", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.alb = aws.lb.LoadBalancer(
            name,
            load_balancer_type="application",
            subnets=args.subnet_ids,
            security_groups=[args.security_group_id],
            idle_timeout=args.idle_timeout_s,
            drop_invalid_header_fields=True,
            access_logs=None
            if args.access_logs_bucket is None
            else {
                "bucket": args.access_logs_bucket,
                "prefix": args.access_logs_prefix,
                "enabled": True,
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=args.access_logs_ready or []),
        )
        self.target_group = aws.lb.TargetGroup(
            f"{name}-service",
            vpc_id=args.vpc_id,
            target_type="instance",
            port=args.service_port,
            protocol="HTTP",
            # Requests differ in length by orders of magnitude (a models list vs. a
            # ten-minute RLM run); round robin would pile long ones onto one host.
            load_balancing_algorithm_type="least_outstanding_requests",
            deregistration_delay=args.deregistration_delay_s,
            health_check={
                "path": READY_PATH,
                "port": "traffic-port",
                "protocol": "HTTP",
                "matcher": "200",
                "interval": HEALTH_INTERVAL_S,
                "timeout": HEALTH_TIMEOUT_S,
                "healthy_threshold": HEALTHY_THRESHOLD,
                "unhealthy_threshold": UNHEALTHY_THRESHOLD,
            },
            # A session's sandbox lives on one host: follow the service's own session cookie.
            stickiness={
                "enabled": True,
                "type": "app_cookie",
                "cookie_name": SESSION_COOKIE,
                "cookie_duration": STICKINESS_DURATION_S,
            },
            opts=child,
        )
        forward: list[aws.lb.ListenerDefaultActionArgsDict] = [
            {"type": "forward", "target_group_arn": self.target_group.arn}
        ]
        if args.certificate_arn is None:
            aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=self.alb.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=forward,
                opts=child,
            )
        else:
            aws.lb.Listener(
                f"{name}-https",
                load_balancer_arn=self.alb.arn,
                port=HTTPS_PORT,
                protocol="HTTPS",
                certificate_arn=args.certificate_arn,
                ssl_policy=args.ssl_policy,
                default_actions=forward,
                opts=child,
            )
            aws.lb.Listener(
                f"{name}-http",
                load_balancer_arn=self.alb.arn,
                port=HTTP_PORT,
                protocol="HTTP",
                default_actions=[
                    {
                        "type": "redirect",
                        "redirect": {
                            "protocol": "HTTPS",
                            "port": str(HTTPS_PORT),
                            "status_code": "HTTP_301",
                        },
                    }
                ],
                opts=child,
            )
        if args.alias is not None:
            domain, zone = args.alias
            aws.route53.Record(
                f"{name}-alias",
                zone_id=zone,
                name=domain,
                type="A",
                aliases=[
                    {
                        "name": self.alb.dns_name,
                        "zone_id": self.alb.zone_id,
                        "evaluate_target_health": True,
                    }
                ],
                opts=child,
            )
        self.dns_name = self.alb.dns_name
        self.zone_id = self.alb.zone_id
        self.target_group_arn = self.target_group.arn
        self.alb_arn_suffix = self.alb.arn_suffix
        self.target_group_arn_suffix = self.target_group.arn_suffix
        self.register_outputs(
            {
                "dns_name": self.dns_name,
                "zone_id": self.zone_id,
                "target_group_arn": self.target_group_arn,
            }
        )


def listener_ports(tls: bool) -> list[int]:
    """The ports the ALB listens on for a given TLS setting (what its group must open)."""
    return [HTTP_PORT, HTTPS_PORT] if tls else [HTTP_PORT]
