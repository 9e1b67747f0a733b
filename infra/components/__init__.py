"""The stack's building blocks, one `ComponentResource` per module.

`__main__` wires them: network -> security -> secrets, session storage, telemetry ->
certificate -> load balancer -> host role -> fleet -> monitoring. Names come from `naming`.
"""

from infra.components.certificate import Certificate, CertificateArgs
from infra.components.fleet import Fleet, FleetArgs
from infra.components.host_role import HostRole, HostRoleArgs
from infra.components.loadbalancer import LoadBalancer, LoadBalancerArgs
from infra.components.monitoring import Monitoring, MonitoringArgs
from infra.components.naming import StackNames
from infra.components.network import Network, NetworkArgs
from infra.components.secrets import Secrets, SecretsArgs
from infra.components.security import Security, SecurityArgs
from infra.components.storage import SessionStorage, SessionStorageArgs
from infra.components.telemetry import Telemetry, TelemetryArgs

__all__ = [
    "Certificate",
    "CertificateArgs",
    "Fleet",
    "FleetArgs",
    "HostRole",
    "HostRoleArgs",
    "LoadBalancer",
    "LoadBalancerArgs",
    "Monitoring",
    "MonitoringArgs",
    "Network",
    "NetworkArgs",
    "Secrets",
    "SecretsArgs",
    "Security",
    "SecurityArgs",
    "SessionStorage",
    "SessionStorageArgs",
    "StackNames",
    "Telemetry",
    "TelemetryArgs",
]
