"""What `conn` runs on the caller's machine: the rsync and ssh command lines, and how the
caller's public IP is found for the default ingress CIDRs.

Command lines are built as lists by pure functions so tests can compare them without running
anything; `run_command` is the one place that starts a process.
"""

from __future__ import annotations

import ipaddress
import shlex
import subprocess
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from infra.ec2.errors import CommandFailed, ConfigError, UsageError
from infra.ec2.settings import REMOTE_DIR

# Never shipped to the instance: environments and caches are rebuilt there, git history and
# logs are not needed, and the private key must not leave the caller's machine. `.env` does
# go: it is how the dev instance gets OPENAI_API_KEY.
RSYNC_EXCLUDES = (
    ".venv/",
    ".git/",
    "build/",
    "dist/",
    "*.egg-info/",
    "__pycache__/",
    ".pytest_cache/",
    ".ruff_cache/",
    ".mypy_cache/",
    "logs/",
    "trajectories/",
    "*.pem",
)
CHECKIP_URL = "https://checkip.amazonaws.com"
SSH_CONNECT_FAILED = 255  # ssh's (and rsync-over-ssh's) status when it could not connect


def ssh_options(key_path: Path) -> list[str]:
    # accept-new: a fresh instance's host key is unknown, but a changed one is still refused.
    return [
        "-i",
        str(key_path),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        "-o",
        "ConnectTimeout=10",
    ]


def rsync_command(repo_root: Path, key_path: Path, user: str, host: str) -> list[str]:
    """rsync the repository's working tree to ~/rlm-py on the instance.

    No --delete: files made on the instance (a .env edited there, logs) must survive a sync.
    """
    excludes = [f"--exclude={pattern}" for pattern in RSYNC_EXCLUDES]
    return [
        "rsync",
        "-az",
        *excludes,
        "-e",
        shlex.join(["ssh", *ssh_options(key_path)]),
        f"{repo_root}/",
        f"{user}@{host}:{REMOTE_DIR}/",
    ]


def ssh_command(key_path: Path, user: str, host: str) -> list[str]:
    """An interactive login shell in the synced repository on the instance."""
    return [
        "ssh",
        *ssh_options(key_path),
        "-t",
        f"{user}@{host}",
        f"cd {REMOTE_DIR} 2>/dev/null; exec bash -l",
    ]


def run_command(cmd: Sequence[str]) -> int:
    """Run `cmd` attached to this terminal; its exit status. CommandFailed if it isn't found."""
    try:
        return subprocess.run(list(cmd), check=False).returncode
    except FileNotFoundError as exc:
        raise CommandFailed(f"{cmd[0]} not found: install it and rerun") from exc


def caller_public_ip() -> str:
    """The caller's public IP as seen by AWS. ConfigError when it can't be found."""
    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=5) as response:
            text = response.read().decode().strip()
        return str(ipaddress.ip_address(text))
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"can't find your public IP ({CHECKIP_URL}: {exc}): pass SSH_CIDR=... and APP_CIDR=..."
        ) from exc


def host_cidr(ip: str) -> str:
    """The one-address CIDR of `ip` (/32, or /128 for IPv6)."""
    return str(ipaddress.ip_network(ip))


def normalize_cidr(value: str) -> str:
    """`value` as a canonical CIDR; a bare address becomes a one-address CIDR.

    UsageError when it isn't one; host bits are refused rather than silently cleared.
    """
    try:
        return str(ipaddress.ip_network(value.strip()))
    except ValueError as exc:
        raise UsageError(f"not a CIDR: {value!r} ({exc})") from exc
