"""Stack configuration: every key the Pulumi program reads, parsed and checked in one place.

`load_stack_config` is the only reader of `pulumi.Config`; components receive plain values
through their args dataclasses. `Pulumi.dev.yaml.example` documents each key (a test keeps
the two in step), and every refusal names the key to change.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Literal, get_args

import pulumi

# The architectures are the bake's (every host runs an image it makes); see ami.constants.
from ami.constants import ARCHES
from service.constants import DEFAULT_REQUEST_TIMEOUT_S, SSM_AMI_PARAM

# AWS limits that the checks below enforce before AWS would reject the plan half-applied.
ALB_IDLE_TIMEOUT_MAX_S = 4000
DEREGISTRATION_DELAY_MAX_S = 3600
# Slack between the service's request deadline and the ALB idle timeout, so the service
# (not the load balancer) ends an over-long request and can answer with its own error.
IDLE_TIMEOUT_MARGIN_S = 60

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

    `ami` is an AMI id or a `resolve:ssm:` reference that EC2 resolves at each launch, so
    a re-bake that rewrites the parameter is picked up by the next instance refresh.
    `size` is used only in `perArch` mode.
    """

    arch: str
    instance_types: list[str]
    ami: str
    size: GroupSize


@dataclass(frozen=True)
class StackConfig:
    """The whole stack's settings, validated. Built by `load_stack_config`."""

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
    certificate_arn: str | None
    ssl_policy: str
    domain_name: str | None
    openai_base_url: str | None
    root_model: str | None
    sub_model: str | None
    kms_key_id: str | None
    openai_api_key: pulumi.Output[str]
    rlm_api_keys: pulumi.Output[str]


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

    given = config.get("fleetMode") or "mixed"
    fleet_mode = next((mode for mode in FLEET_MODES if mode == given), None)
    if fleet_mode is None:
        raise ConfigError(f"fleetMode must be one of {', '.join(FLEET_MODES)}, not {given!r}")
    size = _group_size(config, "", GroupSize(min=1, max=4, desired=2))
    archs = [
        ArchConfig(
            arch=arch,
            instance_types=_get_list(config, f"{arch}InstanceTypes")
            or DEFAULT_INSTANCE_TYPES[arch],
            ami=config.get(f"{arch}Ami") or "resolve:ssm:" + SSM_AMI_PARAM.format(arch=arch),
            size=_group_size(config, arch, size),
        )
        for arch in ARCHES
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

    for key in SECRET_KEYS:
        if config.get(key) is not None and not pulumi.runtime.is_config_secret(
            config.full_key(key)
        ):
            raise ConfigError(
                f"{key} is stored in plain text; set it with `pulumi config set --secret {key}`"
            )

    return StackConfig(
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
        certificate_arn=config.get("certificateArn"),
        ssl_policy=config.get("sslPolicy") or "ELBSecurityPolicy-TLS13-1-2-2021-06",
        domain_name=config.get("domainName"),
        openai_base_url=config.get("openaiBaseUrl"),
        root_model=config.get("rootModel"),
        sub_model=config.get("subModel"),
        kms_key_id=config.get("kmsKeyId"),
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
