"""The boot script every fleet host runs (EC2 user data).

Contract with the AMI (ami/roles/service): the image has the unit `rlm-py.service`, which
reads `/etc/rlm-py/env` (baked settings) and `SECRETS_ENV_FILE`, and the fetcher
`SECRETS_FETCHER` (boto3, with the instance role) that writes that file 0600.
This script adds what only the stack knows: a systemd drop-in pointing the unit at a third
environment file with this stack's settings (read last, so they win over the baked ones);
a fresh fetch of the secrets from SSM; a restart of the service.
User data is readable by anyone who may describe the instance, so it carries SSM parameter
names only, never a secret value.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

SERVICE_UNIT = "rlm-py.service"
STACK_ENV_FILE = "/etc/rlm-py/stack.env"
SECRETS_ENV_FILE = "/etc/rlm-py/secrets.env"
SECRETS_FETCHER = "/usr/local/libexec/rlm-py-fetch-secrets"
DROP_IN_FILE = f"/etc/systemd/system/{SERVICE_UNIT}.d/50-stack.conf"


@dataclass(frozen=True)
class BootSettings:
    """What the boot script needs; every field is a plain, non-secret value.

    `secret_params` maps an environment variable to the SSM parameter holding its value.
    `secrets_revision` changes whenever a secret's value does (it is built from the
    parameters' versions), so a rotated secret yields new user data, a new launch template
    version and a rolling instance refresh that picks the new value up.
    """

    region: str
    port: int
    request_timeout_s: int
    secret_params: dict[str, str]
    secrets_revision: str
    openai_base_url: str | None = None
    root_model: str | None = None
    sub_model: str | None = None


def render_user_data(settings: BootSettings) -> str:
    """The bash script for cloud-init; idempotent, so running it again is harmless."""
    env = {
        # Off loopback: the ALB reaches the service on the host's private address.
        "RLM_HOST": "0.0.0.0",  # noqa: S104 - behind the ALB's security group
        "RLM_PORT": str(settings.port),
        "RLM_REQUEST_TIMEOUT_S": str(settings.request_timeout_s),
        "OPENAI_BASE_URL": settings.openai_base_url,
        "RLM_ROOT_MODEL": settings.root_model,
        "RLM_SUB_MODEL": settings.sub_model,
    }
    settings_lines = "\n".join(f"{k}={v}" for k, v in env.items() if v is not None)
    pairs = " ".join(
        shlex.quote(f"{var}={param}") for var, param in sorted(settings.secret_params.items())
    )
    return f"""#!/bin/bash
# rlm-py host boot (secrets revision {settings.secrets_revision}).
set -euo pipefail
umask 077
install -d -m 0755 /etc/rlm-py {shlex.quote(DROP_IN_FILE.rsplit("/", 1)[0])}
cat > {STACK_ENV_FILE} <<'RLM_SETTINGS'
{settings_lines}
RLM_SETTINGS
chmod 0644 {STACK_ENV_FILE}
cat > {DROP_IN_FILE} <<'RLM_DROP_IN'
[Service]
EnvironmentFile={STACK_ENV_FILE}
RLM_DROP_IN
chmod 0644 {DROP_IN_FILE}

if [ ! -x {SECRETS_FETCHER} ]; then
  echo "rlm-py boot: {SECRETS_FETCHER} missing; is this an rlm-py AMI (make ami)?" >&2
  exit 1
fi
AWS_REGION={shlex.quote(settings.region)} {SECRETS_FETCHER} --output {SECRETS_ENV_FILE} {pairs}

systemctl daemon-reload
systemctl enable {SERVICE_UNIT}
systemctl restart {SERVICE_UNIT}
"""
