"""The stack's building blocks, one `ComponentResource` per module.

`__main__` wires them: network -> security -> secrets -> load balancer -> fleet.
"""

from infra.components.fleet import Fleet, FleetArgs
from infra.components.loadbalancer import LoadBalancer, LoadBalancerArgs
from infra.components.network import Network, NetworkArgs
from infra.components.secrets import Secrets, SecretsArgs
from infra.components.security import Security, SecurityArgs

__all__ = [
    "Fleet",
    "FleetArgs",
    "LoadBalancer",
    "LoadBalancerArgs",
    "Network",
    "NetworkArgs",
    "Secrets",
    "SecretsArgs",
    "Security",
    "SecurityArgs",
]
