"""The boot script every fleet host runs (EC2 user data).

Contract with the AMI (ami/roles/service): the image has the unit `rlm-py.service`, which
reads `/etc/rlm-py/env` (baked settings) and `SECRETS_ENV_FILE`, the oneshot unit
`SECRETS_UNIT` that runs the fetcher `SECRETS_FETCHER` (boto3, with the instance role) to
write that file 0600, python3 with boto3, and (another image step) the CloudWatch agent that
ships the service's JSON log to the group named by `RLM_LOG_GROUP`.

This script adds what only the stack knows, idempotently (running it again is harmless):
- a third environment file with this stack's settings, read last so they win over the
  baked ones, through a systemd drop-in that also gives the service's stop (its drain) as
  long as the lifecycle hook allows;
- a drop-in for the secrets unit naming this stack's parameters, so every boot (reboots
  too) fetches `/rlm-py/<stack>/...`, never a parameter of another stack;
- the lifecycle watcher `LIFECYCLE_UNIT`: when Auto Scaling marks the host for termination
  (instance metadata `autoscaling/target-lifecycle-state` becomes `Terminated`), it stops
  the service (SIGTERM: running turns get RLM_SHUTDOWN_GRACE_S, then every session is
  snapshotted to the store) and completes the termination lifecycle action;
- a restart of the service.
User data is readable by anyone who may describe the instance, so it carries names only,
never a secret value. It runs under bash (cloud-init executes it by its `#!` line).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SERVICE_UNIT = "rlm-py.service"
SECRETS_UNIT = "rlm-py-secrets.service"
LIFECYCLE_UNIT = "rlm-py-lifecycle.service"
STACK_ENV_FILE = "/etc/rlm-py/stack.env"
SECRETS_ENV_FILE = "/etc/rlm-py/secrets.env"
SECRETS_FETCHER = "/usr/local/libexec/rlm-py-fetch-secrets"
LIFECYCLE_WATCHER = "/usr/local/libexec/rlm-py-lifecycle"
SYSTEMD_DIR = "/etc/systemd/system"
DROP_IN_FILE = f"{SYSTEMD_DIR}/{SERVICE_UNIT}.d/50-stack.conf"
SECRETS_DROP_IN_FILE = f"{SYSTEMD_DIR}/{SECRETS_UNIT}.d/50-stack.conf"
LIFECYCLE_UNIT_FILE = f"{SYSTEMD_DIR}/{LIFECYCLE_UNIT}"
# The termination hook's name on every group (the watcher completes it by this name).
LIFECYCLE_HOOK = "rlm-py-drain"
# How often the watcher reads the instance's target lifecycle state.
LIFECYCLE_POLL_S = 5

# The watcher (python3 and boto3 are in the image; IMDSv2 with a hop limit of 1 answers
# processes on the host).
_WATCHER = f'''#!/usr/bin/python3
"""rlm-py: drain this host when Auto Scaling terminates it, then let termination go on."""
import argparse
import os
import subprocess
import sys
import time
import urllib.request

import boto3

# The instance metadata service (RLM_IMDS_URL only for tests).
IMDS = os.environ.get("RLM_IMDS_URL", "http://169.254.169.254") + "/latest"


def imds(path):
    token = urllib.request.Request(
        IMDS + "/api/token", method="PUT",
        headers={{"X-aws-ec2-metadata-token-ttl-seconds": "60"}},
    )
    with urllib.request.urlopen(token, timeout=2) as response:
        headers = {{"X-aws-ec2-metadata-token": response.read().decode()}}
    request = urllib.request.Request(IMDS + "/meta-data/" + path, headers=headers)
    with urllib.request.urlopen(request, timeout=2) as response:
        return response.read().decode().strip()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--region", required=True)
    parser.add_argument("--group", required=True)
    parser.add_argument("--hook", required=True)
    args = parser.parse_args()
    while True:
        try:
            if imds("autoscaling/target-lifecycle-state") == "Terminated":
                break
        except OSError:
            pass  # not in a group yet, or IMDS busy: ask again
        time.sleep({LIFECYCLE_POLL_S})
    instance = imds("instance-id")
    print("terminating: draining {SERVICE_UNIT}", flush=True)
    started = time.monotonic()
    subprocess.run(["systemctl", "stop", "{SERVICE_UNIT}"], check=False)
    print(f"drained in {{time.monotonic() - started:.0f}} s", flush=True)
    boto3.client("autoscaling", region_name=args.region).complete_lifecycle_action(
        AutoScalingGroupName=args.group,
        LifecycleHookName=args.hook,
        InstanceId=instance,
        LifecycleActionResult="CONTINUE",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


@dataclass(frozen=True)
class BootSettings:
    """What the boot script needs; every field is a plain, non-secret value.

    `secret_params` maps an environment variable to the SSM parameter holding its value.
    `secrets_revision` changes whenever a secret's value does (it is built from the
    parameters' versions), so a rotated secret yields new user data, a new launch template
    version and a rolling instance refresh that picks the new value up.
    `keepalive_s` is the ALB idle timeout plus service.constants.KEEPALIVE_MARGIN_S.
    `drain_timeout_s` bounds the service's stop (systemd `TimeoutStopSec`); the lifecycle
    hook waits a little longer. `asg_name` is the group the host belongs to (the dimension
    of its CloudWatch metrics, and the group whose lifecycle action it completes).
    """

    region: str
    port: int
    request_timeout_s: int
    keepalive_s: int
    secret_params: dict[str, str]
    secrets_revision: str
    session_store: str
    lease_table: str
    session_ttl_s: int
    log_group: str
    cloudwatch_namespace: str
    drain_timeout_s: int
    asg_name: str = ""
    openai_base_url: str | None = None
    root_model: str | None = None
    sub_model: str | None = None


def stack_env(settings: BootSettings) -> dict[str, str]:
    """The stack's service settings (the environment file), in a stable order."""
    env = {
        # Off loopback: the ALB reaches the service on the host's private address.
        "RLM_HOST": "0.0.0.0",  # noqa: S104 - behind the ALB's security group
        "RLM_PORT": str(settings.port),
        "RLM_REQUEST_TIMEOUT_S": str(settings.request_timeout_s),
        "RLM_KEEPALIVE_S": str(settings.keepalive_s),
        "RLM_SESSION_STORE": settings.session_store,
        "RLM_SESSION_LEASE_TABLE": settings.lease_table,
        "RLM_SESSION_TTL_S": str(settings.session_ttl_s),
        "RLM_LOG_GROUP": settings.log_group,
        "RLM_CLOUDWATCH_NAMESPACE": settings.cloudwatch_namespace,
        "RLM_ASG_NAME": settings.asg_name,
        # botocore reads AWS_DEFAULT_REGION (not AWS_REGION) for its clients' region.
        "AWS_DEFAULT_REGION": settings.region,
        "OPENAI_BASE_URL": settings.openai_base_url,
        "RLM_ROOT_MODEL": settings.root_model,
        "RLM_SUB_MODEL": settings.sub_model,
    }
    return {k: v for k, v in env.items() if v}


def lifecycle_watcher() -> str:
    """The watcher's source (python3 + boto3 on the host), as the boot script installs it."""
    return _WATCHER


def render_user_data(settings: BootSettings) -> str:
    """The bash script for cloud-init; idempotent, so running it again is harmless."""
    settings_lines = "\n".join(f"{k}={v}" for k, v in stack_env(settings).items())
    pairs = " ".join(
        shlex.quote(f"{var}={param}") for var, param in sorted(settings.secret_params.items())
    )
    region = shlex.quote(settings.region)
    dirs = " ".join(
        shlex.quote(path.rsplit("/", 1)[0])
        for path in (STACK_ENV_FILE, DROP_IN_FILE, SECRETS_DROP_IN_FILE, LIFECYCLE_WATCHER)
    )
    watcher_args = (
        f"--region {region} --group {shlex.quote(settings.asg_name)} --hook {LIFECYCLE_HOOK}"
    )
    return f"""#!/bin/bash
# rlm-py host boot (group {settings.asg_name}, secrets revision {settings.secrets_revision}).
set -euo pipefail
umask 077
install -d -m 0755 {dirs}
cat > {STACK_ENV_FILE} <<'RLM_SETTINGS'
{settings_lines}
RLM_SETTINGS
chmod 0644 {STACK_ENV_FILE}
cat > {DROP_IN_FILE} <<'RLM_DROP_IN'
[Service]
EnvironmentFile={STACK_ENV_FILE}
# The drain (running turns, then a snapshot of every session) must end before systemd kills.
TimeoutStopSec={settings.drain_timeout_s}
RLM_DROP_IN
cat > {SECRETS_DROP_IN_FILE} <<'RLM_SECRETS_DROP_IN'
[Service]
Environment=AWS_REGION={region} AWS_DEFAULT_REGION={region}
ExecStart=
ExecStart=/usr/bin/python3 {SECRETS_FETCHER} --output {SECRETS_ENV_FILE} {pairs}
RLM_SECRETS_DROP_IN
cat > {LIFECYCLE_WATCHER} <<'RLM_LIFECYCLE'
{_WATCHER}RLM_LIFECYCLE
cat > {LIFECYCLE_UNIT_FILE} <<'RLM_LIFECYCLE_UNIT'
[Unit]
Description=rlm-py: drain the service before Auto Scaling terminates this host
Wants=network-online.target
After=network-online.target

[Service]
ExecStart=/usr/bin/python3 {LIFECYCLE_WATCHER} {watcher_args}
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
RLM_LIFECYCLE_UNIT
chmod 0644 {DROP_IN_FILE} {SECRETS_DROP_IN_FILE} {LIFECYCLE_UNIT_FILE}
chmod 0755 {LIFECYCLE_WATCHER}

if [ ! -x {SECRETS_FETCHER} ]; then
  echo "rlm-py boot: {SECRETS_FETCHER} missing; is this an rlm-py AMI (make ami)?" >&2
  exit 1
fi
systemctl daemon-reload
systemctl restart {SECRETS_UNIT}
systemctl enable {SERVICE_UNIT} {LIFECYCLE_UNIT}
systemctl restart {SERVICE_UNIT} {LIFECYCLE_UNIT}
"""
