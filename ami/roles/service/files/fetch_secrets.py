#!/usr/bin/python3
"""Fetch rlm-py's secrets from SSM Parameter Store into a root-only environment file.

Run at every boot by rlm-py-secrets.service, before rlm-py.service reads the file as an
EnvironmentFile. Usage:

    rlm-py-fetch-secrets --output /etc/rlm-py/secrets.env OPENAI_API_KEY=/rlm-py/<stack>/OPENAI_API_KEY ...

The region comes from AWS_REGION / AWS_DEFAULT_REGION, else from the instance metadata service
(IMDSv2: a session token first, then the placement region). A parameter that does not exist is
left out with a warning, so the service's own settings decide whether it can run without it; an
AWS error fails the unit (after a few tries, since credentials can lag the network at boot).
Runs with the system python3 and Debian's/Ubuntu's python3-boto3.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

IMDS_URL = "http://169.254.169.254"
ATTEMPTS = 5
RETRY_DELAY_S = 3.0


def imds_region(base_url: str = IMDS_URL, timeout_s: float = 2.0) -> str:
    """The instance's region from IMDSv2 (token, then placement/region)."""
    token_request = urllib.request.Request(
        f"{base_url}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_request, timeout=timeout_s) as response:
        token = response.read().decode()
    region_request = urllib.request.Request(
        f"{base_url}/latest/meta-data/placement/region",
        headers={"X-aws-ec2-metadata-token": token},
    )
    with urllib.request.urlopen(region_request, timeout=timeout_s) as response:
        return response.read().decode().strip()


def resolve_region(environ: Mapping[str, str], imds: Callable[[], str] = imds_region) -> str:
    """AWS_REGION or AWS_DEFAULT_REGION when set, else the region IMDS reports."""
    return environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION") or imds()


def fetch(ssm: Any, wanted: Mapping[str, str]) -> dict[str, str]:
    """Map each environment variable in `wanted` to its decrypted SSM parameter value."""
    response = ssm.get_parameters(Names=sorted(set(wanted.values())), WithDecryption=True)
    values = {p["Name"]: p["Value"] for p in response["Parameters"]}
    for name in response.get("InvalidParameters", []):
        print(f"warning: SSM parameter {name} does not exist; left out", file=sys.stderr)
    return {var: values[param] for var, param in wanted.items() if param in values}


def render(values: Mapping[str, str]) -> str:
    """systemd EnvironmentFile text: one double-quoted, backslash-escaped KEY="value" a line."""
    lines = []
    for var, value in sorted(values.items()):
        if "\n" in value or "\r" in value:
            raise ValueError(f"{var}: a value with a line break cannot go in an EnvironmentFile")
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{var}="{escaped}"\n')
    return "".join(lines)


def write_private(path: str, text: str) -> None:
    """Replace `path` atomically with a 0600 file; it is never readable by others, even briefly."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secrets-")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="environment file to write (0600)")
    parser.add_argument("pairs", nargs="+", metavar="VAR=/ssm/parameter")
    args = parser.parse_args(argv)
    try:
        args.wanted = dict(pair.split("=", 1) for pair in args.pairs)
    except ValueError:
        parser.error("each argument after the options must be VAR=/ssm/parameter")
    return args


def main(
    argv: list[str] | None = None, ssm: Any = None, sleep: Callable[[float], None] = time.sleep
) -> int:
    """Fetch and write; `ssm` (a boto3 SSM client) and `sleep` are injectable for tests."""
    args = parse_args(argv)
    if ssm is None:
        import boto3

        ssm = boto3.client("ssm", region_name=resolve_region(os.environ))
    for attempt in range(1, ATTEMPTS + 1):
        try:
            values = fetch(ssm, args.wanted)
            break
        except Exception as exc:  # noqa: BLE001 - botocore's errors and network errors alike: retry, then fail
            print(f"attempt {attempt}/{ATTEMPTS}: {exc}", file=sys.stderr)
            if attempt == ATTEMPTS:
                return 1
            sleep(RETRY_DELAY_S * attempt)
    write_private(args.output, render(values))
    print(f"wrote {sorted(values)} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
