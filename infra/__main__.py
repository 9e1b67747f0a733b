"""rlm-py on AWS: arm64 and x86-64 hosts behind an Application Load Balancer.

Run from this directory with the Pulumi CLI (`pulumi up`); every config key is documented
in Pulumi.dev.yaml.example. Outputs: `url`, `albDnsName`, `albZoneId`, `groupNames`.
"""

import sys
from pathlib import Path

# The Pulumi CLI runs this file with infra/ on sys.path; the program imports the repository's
# packages (infra, service), so put the checkout's root first, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi
import pulumi_aws as aws

from infra.components import (
    Fleet,
    FleetArgs,
    LoadBalancer,
    LoadBalancerArgs,
    Network,
    NetworkArgs,
    Secrets,
    SecretsArgs,
    Security,
    SecurityArgs,
)
from infra.components.loadbalancer import listener_ports
from infra.components.userdata import BootSettings, render_user_data
from infra.config import load_stack_config
from service.constants import DEFAULT_PORT

cfg = load_stack_config(pulumi.Config())

network = Network(
    "network",
    NetworkArgs(vpc_id=cfg.vpc_id, subnet_ids=cfg.subnet_ids, host_subnet_ids=cfg.host_subnet_ids),
)
security = Security(
    "security",
    SecurityArgs(
        vpc_id=network.vpc_id,
        service_port=DEFAULT_PORT,
        listener_ports=listener_ports(cfg.certificate_arn),
        alb_ingress_cidrs=cfg.alb_ingress_cidrs,
        ssh_cidr=cfg.ssh_cidr,
    ),
)
secrets = Secrets(
    "secrets",
    SecretsArgs(
        openai_api_key=cfg.openai_api_key,
        rlm_api_keys=cfg.rlm_api_keys,
        kms_key_id=cfg.kms_key_id,
    ),
)
alb = LoadBalancer(
    "alb",
    LoadBalancerArgs(
        vpc_id=network.vpc_id,
        subnet_ids=network.subnet_ids,
        security_group_id=security.alb_sg.id,
        service_port=DEFAULT_PORT,
        idle_timeout_s=cfg.idle_timeout_s,
        deregistration_delay_s=cfg.deregistration_delay_s,
        certificate_arn=cfg.certificate_arn,
        ssl_policy=cfg.ssl_policy,
    ),
)
user_data = pulumi.Output.all(aws.get_region_output().region, secrets.revision).apply(
    lambda values: render_user_data(
        BootSettings(
            region=values[0],
            port=DEFAULT_PORT,
            request_timeout_s=cfg.request_timeout_s,
            secret_params=secrets.env_params,
            secrets_revision=values[1],
            openai_base_url=cfg.openai_base_url,
            root_model=cfg.root_model,
            sub_model=cfg.sub_model,
        )
    )
)
fleet = Fleet(
    "fleet",
    FleetArgs(
        archs=cfg.archs,
        mode=cfg.fleet_mode,
        size=cfg.size,
        subnet_ids=network.host_subnet_ids,
        security_group_id=security.host_sg.id,
        target_group_arn=alb.target_group_arn,
        user_data=user_data,
        secret_parameter_arns=secrets.arns,
        kms_key_id=cfg.kms_key_id,
        root_volume_gb=cfg.root_volume_gb,
        root_device_name=cfg.root_device_name,
        warmup_s=cfg.host_warmup_s,
        assign_public_ip=cfg.assign_public_ip,
        ssh_key_name=cfg.ssh_key_name,
    ),
)

scheme = "http" if cfg.certificate_arn is None else "https"
pulumi.export(
    "url",
    f"{scheme}://{cfg.domain_name}"
    if cfg.domain_name
    else alb.dns_name.apply(lambda dns: f"{scheme}://{dns}"),
)
pulumi.export("albDnsName", alb.dns_name)
pulumi.export("albZoneId", alb.zone_id)
pulumi.export("groupNames", fleet.group_names)
