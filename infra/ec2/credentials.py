"""The shared AWS config files, written the way `aws configure` writes them.

`aws-setup` uses this when no credentials are set at all: it asks for an access key and a
region and stores them for the active profile. Paths follow the AWS conventions
(AWS_SHARED_CREDENTIALS_FILE, AWS_CONFIG_FILE, else ~/.aws/); other profiles are kept.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class SharedFiles:
    credentials: Path
    config: Path
    profile: str

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SharedFiles:
        home = Path(env.get("HOME") or Path.home())
        return cls(
            credentials=Path(env.get("AWS_SHARED_CREDENTIALS_FILE") or home / ".aws/credentials"),
            config=Path(env.get("AWS_CONFIG_FILE") or home / ".aws/config"),
            profile=env.get("AWS_PROFILE") or "default",
        )

    @property
    def config_section(self) -> str:
        # In the config file every profile but "default" is written "profile NAME".
        return "default" if self.profile == "default" else f"profile {self.profile}"


def write_credentials(files: SharedFiles, key_id: str, secret: str) -> None:
    _update(
        files.credentials,
        files.profile,
        {"aws_access_key_id": key_id, "aws_secret_access_key": secret},
    )


def write_region(files: SharedFiles, region: str) -> None:
    _update(files.config, files.config_section, {"region": region})


def _update(path: Path, section: str, values: dict[str, str]) -> None:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(path)
    if not parser.has_section(section):
        parser.add_section(section)
    for key, value in values.items():
        parser.set(section, key, value)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # 0600 before anything is written: the file holds a secret (an existing file too).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as f:
        parser.write(f)
