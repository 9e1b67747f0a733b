"""Stack configuration: every key the Pulumi program reads, parsed and checked in one place.

`load_stack_config` is the only reader of `pulumi.Config`; components receive plain values
through their args dataclasses. `Pulumi.dev.yaml.example` documents each key (a test keeps
the two in step), and every refusal names the key to change.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from dataclasses import dataclass
from typing import Literal, get_args

import pulumi

# The architectures are the bake's (every host runs an image it makes); see ami.constants.
from ami.constants import ARCHES
from service.config import Settings
from service.constants import DEFAULT_REQUEST_TIMEOUT_S, KEEPALIVE_MARGIN_S

# AWS limits that the checks below enforce before AWS would reject the plan half-applied.
ALB_IDLE_TIMEOUT_MAX_S = 4000
DEREGISTRATION_DELAY_MAX_S = 3600
# Slack between the service's request deadline and the ALB idle timeout, so the service
# (not the load balancer) ends an over-long request and can answer with its own error.
IDLE_TIMEOUT_MARGIN_S = 60
# The longest an Auto Scaling lifecycle hook may wait for one heartbeat.
LIFECYCLE_HEARTBEAT_MAX_S = 7200
# Time the lifecycle hook allows beyond the service's own drain (the watcher's polling,
# systemd, the CompleteLifecycleAction call), so the service's stop timeout fires first.
LIFECYCLE_SLACK_S = 60
# What CloudWatch Logs accepts as a retention (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip
# A customer-managed key, by key ARN: IAM policies name keys by ARN, never by alias or bare id.
KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")
AMI_ID = re.compile(r"ami-[0-9a-f]{8}([0-9a-f]{9})?")
HOSTED_ZONE_ID = re.compile(r"Z[A-Z0-9]{1,31}")
EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

# The service's own defaults (one source: service/config.py), for what the stack derives.
_SERVICE = Settings.model_fields
DEFAULT_SESSION_TTL_S = int(_SERVICE["rlm_session_ttl_s"].default)
SERVICE_SHUTDOWN_GRACE_S = int(_SERVICE["rlm_shutdown_grace_s"].default)

FleetMode = Literal["mixed", "perArch"]
FLEET_MODES: tuple[FleetMode, ...] = get_args(FleetMode)

# Keys that hold credentials: refused unless stored with `pulumi config set --secret`.
SECRET_KEYS: tuple[str, ...] = ("openaiApiKey", "rlmApiKeys")

DEFAULT_INSTANCE_TYPES: dict[str, list[str]] = {
    "arm64": ["m7g.large", "m6g.large"],
    "x86_64": ["m7i.large", "m6i.large"],
}


class ConfigError(pulumi.RunError):
    """A stack config value is missing or unusable; the message names the key to change."""


@dataclass(frozen=True)
class GroupSize:
    """Bounds of one Auto Scaling group (`min <= desired <= max`)."""

    min: int
    max: int
    desired: int


@dataclass(frozen=True)
class ArchConfig:
    """What one architecture's hosts run on.

    `ami` is a configured AMI id, or None for the stack's bake parameter
    (`/rlm-py/<stack>/ami/<arch>`), read when `pulumi up` runs: a new bake then shows as a
    launch-template diff and rolls the group through an instance refresh.
    `size` is used only in `perArch` mode.
    """

    arch: str
    instance_types: list[str]
    ami: str | None
    size: GroupSize


@dataclass(frozen=True)
class ScalingTargets:
    """Per-host targets of the groups' target-tracking policies (averages over the group)."""

    cpu_percent: int
    live_sessions: int
    running_requests: int


@dataclass(frozen=True)
class StackConfig:
    """The whole stack's settings, validated. Built by `load_stack_config`."""

    stack: str
    vpc_id: str | None
    subnet_ids: list[str] | None
    host_subnet_ids: list[str] | None
    assign_public_ip: bool
    alb_ingress_cidrs: list[str]
    ssh_cidr: str | None
    ssh_key_name: str | None
    fleet_mode: FleetMode
    size: GroupSize
    archs: list[ArchConfig]
    root_volume_gb: int
    root_device_name: str
    host_warmup_s: int
    request_timeout_s: int
    idle_timeout_s: int
    deregistration_delay_s: int
    keepalive_s: int
    certificate_arn: str | None
    ssl_policy: str
    domain_name: str | None
    hosted_zone_id: str | None
    allow_plaintext: bool
    openai_base_url: str | None
    root_model: str | None
    sub_model: str | None
    kms_key_id: str | None
    session_ttl_s: int
    drain_timeout_s: int
    scaling: ScalingTargets
    log_retention_days: int
    alarm_email: str | None
    openai_api_key: pulumi.Output[str]
    rlm_api_keys: pulumi.Output[str]

    @property
    def tls(self) -> bool:
        """HTTPS on 443 (and 80 only redirects): a given certificate, or one the stack makes."""
        return self.certificate_arn is not None or self.hosted_zone_id is not None

    @property
    def lifecycle_heartbeat_s(self) -> int:
        """How long the termination hook holds a host: its drain plus slack."""
        return self.drain_timeout_s + LIFECYCLE_SLACK_S


def load_stack_config(config: pulumi.Config) -> StackConfig:
    """Read and check every key of the `rlm-py` config namespace.

    Raises `ConfigError` for a value AWS would reject or that would weaken the deployment
    (SSH open to the world, a plain-text secret, an ALB that cuts requests short).
    """
    vpc_id = config.get("vpcId")
    subnet_ids = _get_list(config, "subnetIds")
    if (vpc_id is None) != (subnet_ids is None):
        # Guessing which subnets of a custom VPC are public would put the ALB in the wrong ones.
        raise ConfigError("set both vpcId and subnetIds, or neither (to use the default VPC)")
    if subnet_ids is not None and len(subnet_ids) < 2:
        raise ConfigError("subnetIds: an ALB needs subnets in at least two availability zones")

    ssh_cidr = config.get("sshCidr")
    if ssh_cidr is not None:
        _check_cidr("sshCidr", ssh_cidr)
        if ipaddress.ip_network(ssh_cidr, strict=False).prefixlen == 0:
            raise ConfigError(
                f"sshCidr={ssh_cidr} opens SSH to the whole internet; use your own /32, "
                "or leave it unset and use SSM Session Manager"
            )
    alb_ingress_cidrs = _get_list(config, "albIngressCidrs") or ["0.0.0.0/0"]
    for cidr in alb_ingress_cidrs:
        _check_cidr("albIngressCidrs", cidr)
        if ipaddress.ip_network(cidr, strict=False).version == 6:
            raise ConfigError(
                f"albIngressCidrs: {cidr} is an IPv6 block, but the load balancer is IPv4-only "
                "(it has no IPv6 address to reach); give IPv4 blocks"
            )

    certificate_arn = config.get("certificateArn")
    domain_name = config.get("domainName")
    hosted_zone_id = config.get("hostedZoneId")
    if hosted_zone_id is not None:
        if domain_name is None:
            raise ConfigError(
                "hostedZoneId is set without domainName: name the domain the stack should "
                "certify and point at the load balancer"
            )
        if not HOSTED_ZONE_ID.fullmatch(hosted_zone_id):
            raise ConfigError(
                f"hostedZoneId={hosted_zone_id!r} is not a Route 53 hosted zone id (Z...)"
            )
    allow_plaintext = _get_bool(config, "allowPlaintext", False)
    tls = certificate_arn is not None or hosted_zone_id is not None
    world = [c for c in alb_ingress_cidrs if ipaddress.ip_network(c, strict=False).prefixlen == 0]
    if not tls and world and not allow_plaintext:
        raise ConfigError(
            f"the load balancer would serve plain HTTP to {', '.join(world)}: API keys, "
            "contexts and answers would cross the internet in clear text. Set domainName and "
            "hostedZoneId (the stack creates the certificate), or certificateArn; or narrow "
            "albIngressCidrs; or set allowPlaintext: true to accept it"
        )

    kms_key_id = config.get("kmsKeyId")
    if kms_key_id is not None and not KMS_KEY_ARN.fullmatch(kms_key_id):
        raise ConfigError(
            f"kmsKeyId={kms_key_id!r} is not a KMS key ARN (arn:aws:kms:<region>:<account>:"
            "key/<key-id>): the hosts' IAM policy names the key by ARN, so an alias or a bare "
            "key id would grant nothing; give the key's ARN (aws kms describe-key --key-id ...)"
        )

    given = config.get("fleetMode") or "mixed"
    fleet_mode = next((mode for mode in FLEET_MODES if mode == given), None)
    if fleet_mode is None:
        raise ConfigError(f"fleetMode must be one of {', '.join(FLEET_MODES)}, not {given!r}")
    size = _group_size(config, "", GroupSize(min=1, max=4, desired=2))
    architectures = _get_list(config, "architectures") or list(ARCHES)
    unknown = [a for a in architectures if a not in ARCHES]
    if unknown or len(set(architectures)) != len(architectures):
        raise ConfigError(
            f"architectures must list distinct values among {', '.join(ARCHES)}, "
            f"got {architectures}"
        )
    archs = [
        ArchConfig(
            arch=arch,
            instance_types=_get_list(config, f"{arch}InstanceTypes")
            or DEFAULT_INSTANCE_TYPES[arch],
            ami=_ami_id(config, f"{arch}Ami"),
            size=_group_size(config, arch, size),
        )
        for arch in architectures
    ]

    request_timeout_s = _get_positive_int(
        config, "requestTimeoutSeconds", DEFAULT_REQUEST_TIMEOUT_S
    )
    idle_timeout_s = _get_positive_int(
        config, "idleTimeoutSeconds", request_timeout_s + IDLE_TIMEOUT_MARGIN_S
    )
    if idle_timeout_s <= request_timeout_s:
        raise ConfigError(
            f"idleTimeoutSeconds={idle_timeout_s} must exceed requestTimeoutSeconds="
            f"{request_timeout_s}, or the ALB drops long requests before the service answers"
        )
    if idle_timeout_s > ALB_IDLE_TIMEOUT_MAX_S:
        raise ConfigError(
            f"the ALB idle timeout ({idle_timeout_s} s) would exceed AWS's maximum of "
            f"{ALB_IDLE_TIMEOUT_MAX_S} s; lower requestTimeoutSeconds (or idleTimeoutSeconds)"
        )
    # Draining as long as a request may run lets in-flight requests finish during scale-in
    # and instance refresh; AWS caps the delay at one hour.
    deregistration_delay_s = _get_positive_int(
        config,
        "deregistrationDelaySeconds",
        min(request_timeout_s, DEREGISTRATION_DELAY_MAX_S),
    )
    if deregistration_delay_s > DEREGISTRATION_DELAY_MAX_S:
        raise ConfigError(
            f"deregistrationDelaySeconds={deregistration_delay_s} exceeds AWS's maximum of "
            f"{DEREGISTRATION_DELAY_MAX_S}"
        )

    session_ttl_s = _get_positive_int(config, "sessionTtlSeconds", DEFAULT_SESSION_TTL_S)
    drain_timeout_s = _get_positive_int(config, "drainTimeoutSeconds", 600)
    if drain_timeout_s <= SERVICE_SHUTDOWN_GRACE_S:
        raise ConfigError(
            f"drainTimeoutSeconds={drain_timeout_s} leaves no time to snapshot sessions after "
            f"the service's {SERVICE_SHUTDOWN_GRACE_S} s shutdown grace; give more"
        )
    if drain_timeout_s + LIFECYCLE_SLACK_S > LIFECYCLE_HEARTBEAT_MAX_S:
        raise ConfigError(
            f"drainTimeoutSeconds={drain_timeout_s} plus {LIFECYCLE_SLACK_S} s exceeds the "
            f"lifecycle hook's maximum heartbeat of {LIFECYCLE_HEARTBEAT_MAX_S} s"
        )
    cpu_percent = _get_positive_int(config, "scaleCpuPercent", 60)
    if cpu_percent >= 100:
        raise ConfigError(f"scaleCpuPercent must be below 100, got {cpu_percent}")
    scaling = ScalingTargets(
        cpu_percent=cpu_percent,
        live_sessions=_get_positive_int(config, "scaleLiveSessionsPerHost", 64),
        running_requests=_get_positive_int(config, "scaleRunningRequestsPerHost", 32),
    )
    log_retention_days = _get_positive_int(config, "logRetentionDays", 30)
    if log_retention_days not in LOG_RETENTION_DAYS:
        raise ConfigError(
            f"logRetentionDays={log_retention_days} is not a retention CloudWatch Logs "
            f"accepts; one of {', '.join(map(str, LOG_RETENTION_DAYS))}"
        )
    alarm_email = config.get("alarmEmail")
    if alarm_email is not None and not EMAIL.fullmatch(alarm_email):
        raise ConfigError(f"alarmEmail={alarm_email!r} is not an e-mail address")

    for key in SECRET_KEYS:
        if config.get(key) is not None and not pulumi.runtime.is_config_secret(
            config.full_key(key)
        ):
            raise ConfigError(
                f"{key} is stored in plain text; set it with `pulumi config set --secret {key}`"
            )

    return StackConfig(
        stack=pulumi.get_stack(),
        vpc_id=vpc_id,
        subnet_ids=subnet_ids,
        host_subnet_ids=_get_list(config, "hostSubnetIds"),
        assign_public_ip=_get_bool(config, "assignPublicIp", True),
        alb_ingress_cidrs=alb_ingress_cidrs,
        ssh_cidr=ssh_cidr,
        ssh_key_name=config.get("sshKeyName"),
        fleet_mode=fleet_mode,
        size=size,
        archs=archs,
        root_volume_gb=_get_positive_int(config, "rootVolumeGb", 50),
        root_device_name=config.get("rootDeviceName") or "/dev/sda1",
        host_warmup_s=_get_positive_int(config, "hostWarmupSeconds", 300),
        request_timeout_s=request_timeout_s,
        idle_timeout_s=idle_timeout_s,
        deregistration_delay_s=deregistration_delay_s,
        # The service keeps idle connections open longer than the ALB does, so the ALB never
        # reuses one the service has just closed (a sporadic 502).
        keepalive_s=idle_timeout_s + KEEPALIVE_MARGIN_S,
        certificate_arn=certificate_arn,
        ssl_policy=config.get("sslPolicy") or "ELBSecurityPolicy-TLS13-1-2-2021-06",
        domain_name=domain_name,
        hosted_zone_id=hosted_zone_id,
        allow_plaintext=allow_plaintext,
        openai_base_url=config.get("openaiBaseUrl"),
        root_model=config.get("rootModel"),
        sub_model=config.get("subModel"),
        kms_key_id=kms_key_id,
        session_ttl_s=session_ttl_s,
        drain_timeout_s=drain_timeout_s,
        scaling=scaling,
        log_retention_days=log_retention_days,
        alarm_email=alarm_email,
        openai_api_key=config.require_secret("openaiApiKey"),
        rlm_api_keys=config.require_secret("rlmApiKeys"),
    )


def _get_list(config: pulumi.Config, key: str) -> list[str] | None:
    """A list key, given as a YAML/JSON list or as one comma-separated string."""
    raw = config.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = [part.strip() for part in raw.split(",") if part.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{key} must be a non-empty list of strings, got {raw!r}")
    return value


def _ami_id(config: pulumi.Config, key: str) -> str | None:
    value = config.get(key)
    if value is not None and not AMI_ID.fullmatch(value):
        raise ConfigError(
            f"{key}={value!r} is not an AMI id (ami-...); leave it unset to use the stack's "
            "bake parameter, read when `pulumi up` runs"
        )
    return value


def session_bucket_expiry_days(session_ttl_s: int) -> int:
    """Days after which S3 deletes a snapshot: the session TTL rounded up, plus one day.

    A snapshot is rewritten at every hibernation, so its age is at most the time since the
    session was last used; the extra day covers S3 running expiry once a day."""
    return math.ceil(session_ttl_s / 86400) + 1


def _get_positive_int(config: pulumi.Config, key: str, default: int) -> int:
    try:
        value = config.get_int(key)
    except pulumi.ConfigTypeError as exc:
        raise ConfigError(f"{key} must be an integer") from exc
    if value is None:
        return default
    if value <= 0:
        raise ConfigError(f"{key} must be positive, got {value}")
    return value


def _get_bool(config: pulumi.Config, key: str, default: bool) -> bool:
    try:
        value = config.get_bool(key)
    except pulumi.ConfigTypeError as exc:
        raise ConfigError(f"{key} must be true or false") from exc
    return default if value is None else value


def _group_size(config: pulumi.Config, prefix: str, default: GroupSize) -> GroupSize:
    """`minSize`/`maxSize`/`desiredCapacity`, or `<arch>MinSize`... falling back to `default`."""

    def key(name: str) -> str:
        return prefix + name[0].upper() + name[1:] if prefix else name

    def get(name: str, fallback: int) -> int:
        try:
            value = config.get_int(key(name))
        except pulumi.ConfigTypeError as exc:
            raise ConfigError(f"{key(name)} must be an integer") from exc
        if value is not None and value < 0:
            raise ConfigError(f"{key(name)} must not be negative, got {value}")
        return fallback if value is None else value

    size = GroupSize(
        min=get("minSize", default.min),
        max=get("maxSize", default.max),
        desired=get("desiredCapacity", default.desired),
    )
    if not size.min <= size.desired <= size.max:
        raise ConfigError(
            f"{key('minSize')} <= {key('desiredCapacity')} <= {key('maxSize')} does not hold "
            f"({size.min}, {size.desired}, {size.max})"
        )
    return size


def _check_cidr(key: str, cidr: str) -> None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError as exc:
        raise ConfigError(f"{key}: {cidr!r} is not a CIDR block") from exc
