"""Names that clients, operators and the infrastructure rely on.

The load balancer's stickiness cookie (infra/) and the service's session cookie must be the
same string, so both import it from here.
"""

# The sandbox image tag is the sandbox layer's; deployment reads it from here with the rest.
from sandbox.config import DEFAULT_SANDBOX_IMAGE

__all__ = [
    "CLOUDWATCH_NAMESPACE",
    "COST_HEADER",
    "DEFAULT_PORT",
    "DEFAULT_REQUEST_TIMEOUT_S",
    "DEFAULT_SANDBOX_IMAGE",
    "HEALTH_PATH",
    "KEEPALIVE_MARGIN_S",
    "METRIC_LIVE_SESSIONS",
    "METRIC_RUNNING_REQUESTS",
    "METRIC_SANDBOX_FAULTS",
    "METRIC_UPSTREAM_ERRORS",
    "READY_PATH",
    "REQUEST_ID_HEADER",
    "RESET_HEADER",
    "SESSION_COOKIE",
    "SESSION_HEADER",
    "SHOULD_RETRY_HEADER",
    "SSM_AMI_PARAM",
    "SSM_OPENAI_API_KEY",
    "SSM_PREFIX",
    "SSM_RLM_API_KEYS",
    "ssm_name",
]

SESSION_COOKIE = "rlm_session"
SESSION_HEADER = "x-rlm-session-id"
RESET_HEADER = "x-rlm-reset"
COST_HEADER = "x-rlm-cost-usd"  # a non-streamed answer's rlm.cost_usd, for header-only clients
REQUEST_ID_HEADER = "x-request-id"
SHOULD_RETRY_HEADER = "x-should-retry"
DEFAULT_PORT = 3000
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
# Default wall deadline of one request; the ALB idle timeout must exceed it.
DEFAULT_REQUEST_TIMEOUT_S = 1800
# Where the service's own secrets live in SSM Parameter Store (infra and AMI boot step).
SSM_PREFIX = "/rlm-py"
SSM_OPENAI_API_KEY = f"{SSM_PREFIX}/OPENAI_API_KEY"
SSM_RLM_API_KEYS = f"{SSM_PREFIX}/RLM_API_KEYS"
SSM_AMI_PARAM = SSM_PREFIX + "/ami/{arch}"


def ssm_name(stack: str, name: str) -> str:
    """A parameter of one stack: two stacks in one account and region never share one."""
    return f"{SSM_PREFIX}/{stack}/{name}"


# The service's HTTP keep-alive must outlast the load balancer's idle timeout, or the ALB
# reuses a connection the service just closed and answers 502. Deployments set
# RLM_KEEPALIVE_S to the ALB idle timeout plus this margin.
KEEPALIVE_MARGIN_S = 5

# What each host publishes to CloudWatch (RLM_CLOUDWATCH_NAMESPACE), per Auto Scaling group
# (dimension AutoScalingGroupName), for the scaling policies and alarms of infra/.
CLOUDWATCH_NAMESPACE = "rlm-py"
METRIC_LIVE_SESSIONS = "LiveSessions"
METRIC_RUNNING_REQUESTS = "RunningRequests"
METRIC_SANDBOX_FAULTS = "SandboxFaults"
METRIC_UPSTREAM_ERRORS = "UpstreamErrors"
