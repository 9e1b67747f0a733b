"""What every rlm-py host is built from: EC2 architectures, Canonical's Ubuntu, an EC2 role.

Defined here, in ``ami``, because the bake is where a host image starts: the Pulumi fleet and
the dev-instance CLI (``infra``) launch what the bake makes, or the same stock Ubuntu it
starts from, and already run ``ami/playbook.yml``; so ``infra`` imports from ``ami`` and never
the reverse. Standard library only: ``python3 -m infra.ec2 ec2-setup`` runs on a fresh host.
"""

from __future__ import annotations

import json

# EC2's own architecture names, as in `/rlm-py/<stack>/ami/<arch>` (service.constants.ssm_name).
# Order matters where capacity is mixed: earlier architectures get launch priority.
ARCHES: tuple[str, ...] = ("arm64", "x86_64")
# Canonical's public SSM parameter for the current Ubuntu 24.04 server AMI, which names the
# architecture the Debian way.
UBUNTU_AMI_PARAM = (
    "/aws/service/canonical/ubuntu/server/24.04/stable/current/{deb_arch}/hvm/ebs-gp3/ami-id"
)
DEB_ARCH = {"arm64": "arm64", "x86_64": "amd64"}
# The trust policy of every host's IAM role (the bake's builder and the fleet's hosts): only
# EC2 instances may assume it.
EC2_TRUST_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "ec2.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
)


# The ansible-core the bake installs on a builder: exactly the version the playbook is tested
# with here (tests/ami checks that the venv's ansible-core is of the same series), so a new
# release on PyPI never changes a bake behind our back.
ANSIBLE_CORE_VERSION = "2.19.14"
# How long apt waits for the dpkg lock (seconds): on a fresh Ubuntu host apt-daily and
# unattended-upgrades hold it for minutes; the bake's apt-get and the playbook's apt tasks wait.
APT_LOCK_TIMEOUT_S = 600


def ubuntu_ami_param(arch: str) -> str:
    """Canonical's Ubuntu 24.04 parameter for an EC2 architecture; KeyError for another."""
    return UBUNTU_AMI_PARAM.format(deb_arch=DEB_ARCH[arch])
