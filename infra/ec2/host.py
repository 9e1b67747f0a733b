"""`ec2-setup`: provision the instance this runs on with the Ansible playbook ami/playbook.yml.

It runs on a fresh Ubuntu host, usually with the system python3, so this module (like
errors and settings) uses the standard library only; boto3 is not needed on the instance.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from infra.ec2.errors import UsageError
from service.constants import DEFAULT_SANDBOX_IMAGE

PLAYBOOK = Path("ami") / "playbook.yml"
# Ubuntu 24.04 packages ansible-core 2.16, which is what the playbook targets.
INSTALL_ANSIBLE = (
    ("sudo", "apt-get", "update", "-q"),
    ("sudo", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y", "-q", "ansible-core"),
)


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


def playbook_command(repo_root: Path, extra: Sequence[str] = ()) -> list[str]:
    """ansible-playbook against this host, without SSH (`-c local`).

    The playbook becomes root itself and finds the arch from the host's facts; only where
    this checkout is, the sandbox tag and the checkout's `.env` are passed, plus the caller's
    KEY=VALUE `extra` (ami/group_vars/all.yml lists the variables). The unit reads that .env
    first (if it exists), so the playbook's settings and the secrets from SSM win over it.
    """
    own = {
        "rlm_repo_dir": str(repo_root),
        "sandbox_image": DEFAULT_SANDBOX_IMAGE,
        "rlm_dotenv": str(repo_root / ".env"),
    }
    cmd = ["ansible-playbook", "-i", "localhost,", "-c", "local", str(repo_root / PLAYBOOK)]
    # One JSON document needs no quoting; the caller's KEY=VALUE pairs come later and win.
    cmd += ["--extra-vars", json.dumps(own, sort_keys=True)]
    for item in extra:
        if "=" not in item:
            raise UsageError(f"extra var {item!r} is not KEY=VALUE")
        cmd += ["--extra-vars", item]
    return cmd
