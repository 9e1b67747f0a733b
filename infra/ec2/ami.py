"""Which AMI `create` launches: the baked rlm-py AMI if one is published, else stock Ubuntu.

The baked AMI's id is kept in SSM per stack (`/rlm-py/<stack>/ami/<arch>`, service.constants.ssm_name);
stock Ubuntu 24.04 comes from Canonical's public SSM parameter, which names the arch the
Debian way (amd64). The parameter reader is passed in, so tests can answer the public name,
which moto can neither hold nor let us write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ami.constants import ubuntu_ami_param
from infra.ec2.errors import NotFound, UsageError
from infra.ec2.settings import DEFAULT_AMI_STACK
from service.constants import ssm_name

# Returns a parameter's value, or None when the parameter does not exist.
ParamGetter = Callable[[str], str | None]


@dataclass(frozen=True)
class Ami:
    """An AMI id and the SSM parameter it was read from."""

    image_id: str
    parameter: str
    baked: bool


def baked_param(arch: str, stack: str = DEFAULT_AMI_STACK) -> str:
    return ssm_name(stack, f"ami/{arch}")


def canonical_param(arch: str) -> str:
    try:
        return ubuntu_ami_param(arch)
    except KeyError:
        raise UsageError(f"unknown arch {arch!r}: use arm64 or x86_64") from None


def resolve_ami(get: ParamGetter, arch: str, stack: str = DEFAULT_AMI_STACK) -> Ami:
    """Stack `stack`'s baked AMI for `arch` when its parameter exists, else Canonical's
    Ubuntu 24.04.

    Raises NotFound when neither parameter answers (a region without Canonical's parameters).
    """
    baked_name = baked_param(arch, stack)
    for name, baked in ((baked_name, True), (canonical_param(arch), False)):
        value = get(name)
        if value:
            return Ami(image_id=value, parameter=name, baked=baked)
    raise NotFound(f"no AMI for {arch}: neither {baked_name} nor {canonical_param(arch)}")
