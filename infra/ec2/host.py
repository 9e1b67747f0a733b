"""`ec2-setup`: provision the instance this runs on with the Ansible playbook ami/playbook.yml.

It runs on a fresh Ubuntu host, usually with the system python3, so this module (like
errors and settings) uses the standard library only; boto3 is not needed on the instance.
"""

from __future__ import annotations

import getpass
import json
import platform
from pathlib import Path

from infra.ec2.errors import UsageError
from service.constants import DEFAULT_PORT, DEFAULT_SANDBOX_IMAGE

PLAYBOOK = Path("ami") / "playbook.yml"
# Ubuntu 24.04 packages ansible-core 2.16, which is what the playbook targets.
INSTALL_ANSIBLE = (
    ("sudo", "apt-get", "update", "-q"),
    ("sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "ansible-core"),
)
_ARCH = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "x86_64", "amd64": "x86_64"}


def host_arch(machine: str | None = None) -> str:
    """This host's arch in the CLI's spelling (arm64 or x86_64)."""
    machine = machine or platform.machine()
    try:
        return _ARCH[machine.lower()]
    except KeyError:
        raise UsageError(
            f"unsupported machine {machine!r}: rlm-py hosts are arm64 or x86_64"
        ) from None


def on_ec2(sys_root: Path = Path("/sys")) -> bool:
    """Whether this machine looks like an EC2 instance (Nitro DMI vendor, or a Xen ec2 uuid).

    A guard, not a proof: it keeps `make ec2-setup` from provisioning a laptop by mistake.
    """
    vendor = sys_root / "devices/virtual/dmi/id/sys_vendor"
    uuid = sys_root / "hypervisor/uuid"
    try:
        if vendor.exists() and vendor.read_text().strip() == "Amazon EC2":
            return True
        return uuid.exists() and uuid.read_text().strip().lower().startswith("ec2")
    except OSError:
        return False


def playbook_vars(repo_root: Path, arch: str, user: str | None = None) -> dict[str, object]:
    """Extra vars handed to the playbook: where the repo is and how the service runs."""
    return {
        "rlm_repo_dir": str(repo_root),
        "rlm_arch": arch,
        "rlm_user": user or getpass.getuser(),
        "rlm_port": DEFAULT_PORT,
        "rlm_sandbox_image": DEFAULT_SANDBOX_IMAGE,
    }


def playbook_command(repo_root: Path, extra_vars: dict[str, object]) -> list[str]:
    """ansible-playbook against this host, without SSH (`-c local`)."""
    return [
        "ansible-playbook",
        "-i",
        "localhost,",
        "-c",
        "local",
        str(repo_root / PLAYBOOK),
        # One JSON document keeps types (the port stays an int) and needs no quoting.
        "--extra-vars",
        json.dumps(extra_vars, sort_keys=True),
    ]
