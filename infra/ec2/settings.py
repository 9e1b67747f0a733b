"""Fixed names and defaults of the dev instance, and the timing knobs of waits and retries.

Names shared with the service and the AMI build (port, SSM parameter of the baked AMI) come
from `service.constants`, the architectures and the stock Ubuntu image from `ami.constants`;
only what is particular to the single dev instance lives here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

# The instance's Name tag, the key pair and the security group all carry this name: it is
# how every command tells "our" instance from anything else in the account.
NAME = "rlm-py"
KEY_FILE = f"{NAME}.pem"
DEFAULT_INSTANCE_TYPES = {"arm64": "t4g.medium", "x86_64": "t3.medium"}
DEFAULT_ROOT_GB = 50
# Ubuntu AMIs log in as "ubuntu"; the baked AMI is built from them.
SSH_USER = "ubuntu"
# Where `conn` puts the repository on the instance, relative to the login user's home.
REMOTE_DIR = NAME
SSH_PORT = 22
# Instance states in which an instance still exists (terminated ones linger for an hour).
LIVE_STATES = ("pending", "running", "stopping", "stopped")
# The dev instance's stack name in SSM: it reads its secrets from /rlm-py/devbox/<VARIABLE>
# (service.constants.ssm_name), which no fleet stack uses, and nothing else.
DEVBOX_STACK = "devbox"
# The IAM role and instance profile `aws-setup` makes for it (both carry this name).
DEVBOX_PROFILE = f"{NAME}-devbox"
# The AMI `create` prefers: the baked image of this stack (`make ami STACK=...`).
DEFAULT_AMI_STACK = "dev"
# The description `conn` gives its caller-IP ingress rules, so a new caller IP replaces the
# rules of the previous one instead of adding to them; rules without it are never touched.
CONN_RULE_MARKER = f"{NAME} conn: caller IP"


@dataclass(frozen=True)
class Timing:
    """Every wait in one place. Tests pass `sleep` and zero delays to run instantly."""

    sleep: Callable[[float], None] = field(default=time.sleep)
    # Eventual-consistency retries: 1+2+4+8+8 s, about 23 s in all.
    retry_attempts: int = 6
    retry_base_s: float = 1.0
    retry_cap_s: float = 8.0
    # boto3 waiters poll every `waiter_delay_s` up to `waiter_max_attempts` times (10 min).
    waiter_delay_s: int = 5
    waiter_max_attempts: int = 120
    # A fresh instance is "running" before sshd listens; rsync is retried this often.
    ssh_attempts: int = 10
    ssh_retry_s: float = 6.0
