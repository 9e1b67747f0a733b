"""Every physical name the stack gives, derived from the stack's name in one place.

Two stacks of this project in one account and region must never share a name: SSM
parameters, the lease table, the log group, the Auto Scaling groups, alarms and the
dashboard carry the stack verbatim (Pulumi allows letters, digits, `-`, `_` and `.` in a
stack name, which all of those accept). Names AWS keeps unique across regions or accounts
(S3 buckets, IAM roles and instance profiles) are prefixes: AWS or the provider appends a
unique suffix, and the prefix (with the stack, shortened to fit) says whose it is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.constants import SSM_PREFIX, ssm_name

PROJECT = "rlm-py"
# AWS limits on the prefixes the provider completes with a unique suffix.
BUCKET_PREFIX_MAX = 37
IAM_NAME_PREFIX_MAX = 38
# The object prefix of session snapshots in the sessions bucket (RLM_SESSION_STORE).
SESSIONS_PREFIX = "sessions"
# The object prefix of the ALB's access logs in the logs bucket.
ALB_LOGS_PREFIX = "alb"


@dataclass(frozen=True)
class StackNames:
    """The names of one stack's resources (`stack` as `pulumi.get_stack()` gives it)."""

    stack: str

    def parameter(self, name: str) -> str:
        """An SSM parameter of this stack, e.g. `/rlm-py/<stack>/OPENAI_API_KEY`."""
        return ssm_name(self.stack, name)

    def ami_parameter(self, arch: str) -> str:
        """Where the bake writes this stack's AMI id for `arch`: `/rlm-py/<stack>/ami/<arch>`."""
        return ssm_name(self.stack, f"ami/{arch}")

    def resource(self, what: str) -> str:
        """A regional name: `rlm-py-<stack>-<what>` (groups, table, alarms, dashboard)."""
        return f"{PROJECT}-{self.stack}-{what}"

    @property
    def log_group(self) -> str:
        """The service's CloudWatch log group, `/rlm-py/<stack>/service`."""
        return f"{SSM_PREFIX}/{self.stack}/service"

    @property
    def lease_table(self) -> str:
        return self.resource("session-leases")

    def bucket_prefix(self, what: str) -> str:
        """A bucket name prefix: lower case, `[a-z0-9-]`, at most 37 characters."""
        return _prefix(f"{PROJECT}-", _slug(self.stack), f"-{what}-", BUCKET_PREFIX_MAX)

    def iam_prefix(self, what: str) -> str:
        """An IAM role or instance profile name prefix (at most 38 characters)."""
        stack = re.sub(r"[^\w+=,.@-]", "-", self.stack)
        return _prefix(f"{PROJECT}-", stack, f"-{what}-", IAM_NAME_PREFIX_MAX)


def _slug(text: str) -> str:
    """Lower case letters, digits and single hyphens (what a bucket name accepts)."""
    return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9-]", "-", text.lower())).strip("-") or "stack"


def _prefix(head: str, middle: str, tail: str, limit: int) -> str:
    """`head + middle + tail`, `middle` shortened so the whole fits in `limit`."""
    room = limit - len(head) - len(tail)
    return head + middle[:room].rstrip("-.") + tail
