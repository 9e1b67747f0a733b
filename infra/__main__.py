"""rlm-py on AWS: arm64 and x86-64 hosts behind an Application Load Balancer.

Run from this directory with the Pulumi CLI (`pulumi up`); every config key is documented
in Pulumi.dev.yaml.example, the whole deployment in docs/aws.md. Every name that must be
unique in an account and region carries the stack (infra/components/naming.py), so stacks
deploy side by side. Outputs: `url`, `albDnsName`, `albZoneId`, `groupNames`,
`sessionStore`, `leaseTable`, `logGroup`, `dashboard`.
"""

import sys
from pathlib import Path

# The Pulumi CLI runs this file with infra/ on sys.path; the program imports the repository's
# packages (infra, service), so put the checkout's root first, installed or not.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pulumi
import pulumi_aws as aws

from infra.components import (
    Certificate,
    CertificateArgs,
    Fleet,
    FleetArgs,
    HostRole,
    HostRoleArgs,
    LoadBalancer,
    LoadBalancerArgs,
    Monitoring,
    MonitoringArgs,
    Network,
    NetworkArgs,
    Secrets,
    SecretsArgs,
    Security,
    SecurityArgs,
    SessionStorage,
    SessionStorageArgs,
    StackNames,
    Telemetry,
    TelemetryArgs,
)
from infra.components.fleet import plan_groups
from infra.components.loadbalancer import listener_ports
from infra.components.naming import SESSIONS_PREFIX
from infra.components.userdata import BootSettings
from infra.config import load_stack_config, session_bucket_expiry_days
from service.constants import CLOUDWATCH_NAMESPACE, DEFAULT_PORT

cfg = load_stack_config(pulumi.Config())
names = StackNames(cfg.stack)
group_names = list(plan_groups(names, cfg.fleet_mode, cfg.archs))

network = Network(
    "network",
    NetworkArgs(vpc_id=cfg.vpc_id, subnet_ids=cfg.subnet_ids, host_subnet_ids=cfg.host_subnet_ids),
)
security = Security(
    "security",
    SecurityArgs(
        vpc_id=network.vpc_id,
        service_port=DEFAULT_PORT,
        listener_ports=listener_ports(cfg.tls),
        alb_ingress_cidrs=cfg.alb_ingress_cidrs,
        ssh_cidr=cfg.ssh_cidr,
    ),
)
secrets = Secrets(
    "secrets",
    SecretsArgs(
        names=names,
        openai_api_key=cfg.openai_api_key,
        rlm_api_keys=cfg.rlm_api_keys,
        kms_key_id=cfg.kms_key_id,
    ),
)
storage = SessionStorage(
    "sessions",
    SessionStorageArgs(
        names=names,
        prefix=SESSIONS_PREFIX,
        expiry_days=session_bucket_expiry_days(cfg.session_ttl_s),
    ),
)
telemetry = Telemetry(
    "telemetry", TelemetryArgs(names=names, retention_days=cfg.log_retention_days)
)

certificate_arn: pulumi.Input[str] | None = cfg.certificate_arn
if certificate_arn is None and cfg.domain_name and cfg.hosted_zone_id:
    certificate_arn = Certificate(
        "certificate",
        CertificateArgs(domain_name=cfg.domain_name, hosted_zone_id=cfg.hosted_zone_id),
    ).certificate_arn
alb = LoadBalancer(
    "alb",
    LoadBalancerArgs(
        vpc_id=network.vpc_id,
        subnet_ids=network.subnet_ids,
        security_group_id=security.alb_sg.id,
        service_port=DEFAULT_PORT,
        idle_timeout_s=cfg.idle_timeout_s,
        deregistration_delay_s=cfg.deregistration_delay_s,
        certificate_arn=certificate_arn,
        ssl_policy=cfg.ssl_policy,
        alias=(cfg.domain_name, cfg.hosted_zone_id)
        if cfg.domain_name and cfg.hosted_zone_id
        else None,
        access_logs_bucket=telemetry.access_logs_bucket,
        access_logs_prefix=telemetry.access_logs_prefix,
        access_logs_ready=[telemetry.access_logs_policy],
    ),
)
host_role = HostRole(
    "host",
    HostRoleArgs(
        names=names,
        parameter_arns=secrets.arns,
        sessions_bucket_arn=storage.bucket_arn,
        sessions_prefix=SESSIONS_PREFIX,
        lease_table_arn=storage.table_arn,
        log_group_arn=telemetry.log_group_arn,
        group_names=group_names,
        kms_key_id=cfg.kms_key_id,
    ),
)
boot = pulumi.Output.all(
    aws.get_region_output().region,
    secrets.revision,
    storage.store_url,
    storage.table_name,
    telemetry.log_group_name,
).apply(
    lambda values: BootSettings(
        region=values[0],
        port=DEFAULT_PORT,
        request_timeout_s=cfg.request_timeout_s,
        keepalive_s=cfg.keepalive_s,
        secret_params=secrets.env_params,
        secrets_revision=values[1],
        session_store=values[2],
        lease_table=values[3],
        session_ttl_s=cfg.session_ttl_s,
        log_group=values[4],
        cloudwatch_namespace=CLOUDWATCH_NAMESPACE,
        drain_timeout_s=cfg.drain_timeout_s,
        openai_base_url=cfg.openai_base_url,
        root_model=cfg.root_model,
        sub_model=cfg.sub_model,
    )
)
fleet = Fleet(
    "fleet",
    FleetArgs(
        names=names,
        archs=cfg.archs,
        mode=cfg.fleet_mode,
        size=cfg.size,
        subnet_ids=network.host_subnet_ids,
        security_group_id=security.host_sg.id,
        target_group_arn=alb.target_group_arn,
        boot=boot,
        instance_profile_arn=host_role.profile.arn,
        scaling=cfg.scaling,
        lifecycle_heartbeat_s=cfg.lifecycle_heartbeat_s,
        root_volume_gb=cfg.root_volume_gb,
        root_device_name=cfg.root_device_name,
        warmup_s=cfg.host_warmup_s,
        assign_public_ip=cfg.assign_public_ip,
        ssh_key_name=cfg.ssh_key_name,
    ),
)
monitoring = Monitoring(
    "monitoring",
    MonitoringArgs(
        names=names,
        alb_arn_suffix=alb.alb_arn_suffix,
        target_group_arn_suffix=alb.target_group_arn_suffix,
        group_names=group_names,
        alarm_email=cfg.alarm_email,
    ),
    opts=pulumi.ResourceOptions(depends_on=[fleet]),
)

scheme = "https" if cfg.tls else "http"
pulumi.export(
    "url",
    f"{scheme}://{cfg.domain_name}"
    if cfg.domain_name
    else alb.dns_name.apply(lambda dns: f"{scheme}://{dns}"),
)
pulumi.export("albDnsName", alb.dns_name)
pulumi.export("albZoneId", alb.zone_id)
pulumi.export("groupNames", fleet.group_names)
pulumi.export("sessionStore", storage.store_url)
pulumi.export("leaseTable", storage.table_name)
pulumi.export("logGroup", telemetry.log_group_name)
pulumi.export("dashboard", monitoring.dashboard.dashboard_name)
