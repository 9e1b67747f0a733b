"""Errors of the rlm-ec2 CLI; each class carries the exit code a script can test.

    Ec2Error                     exit 1   base class; never raised bare
    ├── UsageError               exit 2   options that can't work together (also argparse's code)
    ├── ConfigError              exit 3   no credentials or region, credentials AWS rejects,
    │                                     caller's public IP not found
    ├── NotFound                 exit 4   no matching rlm-py instance, key pair, AMI, playbook
    ├── Ambiguous                exit 5   several rlm-py instances match: pass an instance id
    ├── Conflict                 exit 6   state a person must resolve (key pair without its
    │                                     .pem, instance in the wrong state, other arch exists)
    ├── AwsError                 exit 7   any other AWS API error, code and message kept
    ├── WaitTimeout              exit 8   a waiter or an eventual-consistency retry gave up
    └── CommandFailed            exit 9   rsync, ssh, apt-get or ansible-playbook failed

This module is stdlib-only: botocore exceptions are translated into these in one place,
`infra.ec2.aws.aws_errors`, and `infra.ec2.cli.main` turns them into exit codes.
"""

from __future__ import annotations


class Ec2Error(Exception):
    """Base of every error the CLI reports as one line on stderr."""

    exit_code = 1


class UsageError(Ec2Error):
    exit_code = 2


class ConfigError(Ec2Error):
    exit_code = 3


class NotFound(Ec2Error):
    exit_code = 4


class Ambiguous(Ec2Error):
    exit_code = 5


class Conflict(Ec2Error):
    exit_code = 6


class AwsError(Ec2Error):
    exit_code = 7


class WaitTimeout(Ec2Error):
    exit_code = 8


class CommandFailed(Ec2Error):
    exit_code = 9


__all__ = [
    "Ambiguous",
    "AwsError",
    "CommandFailed",
    "ConfigError",
    "Conflict",
    "Ec2Error",
    "NotFound",
    "UsageError",
    "WaitTimeout",
]
