"""Everything the commands reach outside the process for, bundled so tests can swap it.

Defaults talk to the real world (boto3 sessions, checkip.amazonaws.com, subprocesses, the
terminal). Tests replace them: moto-backed sessions, a fixed IP, a recording runner, a
zero-delay `Timing`. This module stays stdlib-only; boto3 is imported when a session is made.
"""

from __future__ import annotations

import getpass
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.ec2 import host, remote
from infra.ec2.ami import Ami, ParamGetter, resolve_ami
from infra.ec2.settings import KEY_FILE, Timing


def boto3_session(region: str | None) -> Any:
    """A boto3 session; region None leaves it to AWS_DEFAULT_REGION and the profile."""
    import boto3  # here, not at the top: `ec2-setup` runs where boto3 isn't installed

    return boto3.Session(region_name=region)


def ask(question: str, secret: bool) -> str:
    return (getpass.getpass(question) if secret else input(question)).strip()


def default_repo_root() -> Path:
    """The checkout this package sits in; the current directory when installed elsewhere."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() else Path.cwd()


@dataclass(frozen=True)
class Deps:
    """The outside world of one CLI run."""

    session: Callable[[str | None], Any] = boto3_session
    # (SSM parameter reader, arch, stack) -> the AMI to launch.
    ami_lookup: Callable[[ParamGetter, str, str], Ami] = resolve_ami
    caller_ip: Callable[[], str] = remote.caller_public_ip
    run: Callable[[Sequence[str]], int] = remote.run_command
    which: Callable[[str], str | None] = shutil.which
    prompt: Callable[[str, bool], str] = ask
    interactive: Callable[[], bool] = field(default=lambda: sys.stdin.isatty())
    on_ec2: Callable[[], bool] = host.on_ec2
    repo_root: Path = field(default_factory=default_repo_root)
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    timing: Timing = field(default_factory=Timing)

    @property
    def key_path(self) -> Path:
        return self.repo_root / KEY_FILE
