"""rlm-ec2: one dev EC2 instance for rlm-py (`python -m infra.ec2`, the `make` targets).

Commands:
    aws-setup [--iam-user U]   credentials (asked for if none), an access key for U,
                               key pair rlm-py and ./rlm-py.pem (0400), IAM role and
                               instance profile rlm-py-devbox (reads /rlm-py/devbox/* in SSM)
    create [--arch A] [--instance-type T] [--root-gb N] [--instance-profile P] [--stack S]
                               launch Ubuntu 24.04 (or stack S's baked AMI) in the default
                               VPC, with instance profile rlm-py-devbox (or P, or none)
    conn [ID] [--ssh-cidr C] [--app-cidr C]
                               open tcp/22 and the service port to the caller (replacing
                               the previous caller's rules), rsync the repo, ssh in
    ec2-setup [-e KEY=VALUE]   on the instance: provision it with ami/playbook.yml
    list                       table of rlm-py instances
    start|stop|reboot|delete [ID]
                               change state and wait for it

Every command takes --region (else AWS_REGION, then the profile's region) and --dry-run
(print what would be done; read-only AWS calls still run).

Exit codes (errors are one line on stderr, `rlm-ec2: <message>`):
    0  done (also: nothing to do, e.g. `start` on a running instance)
    1  unexpected failure (a bug: a traceback follows)
    2  usage: bad option or combination (arch vs instance type, CIDR)
    3  configuration: no credentials or region, credentials rejected, public IP unknown
    4  not found: no matching rlm-py instance, key pair, AMI, playbook or .pem
    5  ambiguous: several rlm-py instances match; pass an instance id
    6  conflict: key pair without its .pem, instance in the wrong state, other one exists
    7  any other AWS API error
    8  timed out waiting (waiter, or EC2 still saying NotFound after retries)
    9  rsync, ssh, apt-get or ansible-playbook failed
  130  interrupted
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from ami.constants import ARCHES
from infra.ec2 import host
from infra.ec2.deps import Deps
from infra.ec2.errors import CommandFailed, Ec2Error, NotFound, UsageError
from infra.ec2.settings import (
    DEFAULT_AMI_STACK,
    DEFAULT_INSTANCE_TYPES,
    DEFAULT_ROOT_GB,
    DEVBOX_PROFILE,
    NAME,
    SSH_USER,
)


def parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--region", help="AWS region (default: AWS_REGION, then the profile's)")
    common.add_argument("--dry-run", action="store_true", help="print what would be done")
    p = argparse.ArgumentParser(
        prog="rlm-ec2",
        description="One dev EC2 instance for rlm-py.",
        epilog=__doc__[__doc__.index("Exit codes") :],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("aws-setup", parents=[common], help="credentials, access key, key pair")
    s.add_argument("--iam-user", help="create (and print once) an access key for this IAM user")

    s = sub.add_parser("create", parents=[common], help="launch the dev instance")
    s.add_argument("--arch", choices=ARCHES, default="arm64")
    s.add_argument(
        "--instance-type",
        help=", ".join(f"default {t} for {a}" for a, t in DEFAULT_INSTANCE_TYPES.items()),
    )
    s.add_argument("--root-gb", type=int, default=DEFAULT_ROOT_GB, help="gp3 root volume, GiB")
    s.add_argument("--client-token", help="idempotency token (default: a fresh one per run)")
    s.add_argument(
        "--instance-profile",
        default=DEVBOX_PROFILE,
        help=f"IAM instance profile (default {DEVBOX_PROFILE}, made by aws-setup; 'none': none)",
    )
    s.add_argument(
        "--stack",
        default=DEFAULT_AMI_STACK,
        help=f"whose baked AMI to prefer, /rlm-py/<stack>/ami/<arch> (default {DEFAULT_AMI_STACK})",
    )

    s = sub.add_parser("conn", parents=[common], help="open ports, sync the repo, ssh in")
    s.add_argument("instance_id", nargs="?")
    s.add_argument("--ssh-cidr", help="who may SSH in (default: your public IP)")
    s.add_argument("--app-cidr", help="who may reach the service port (default: your public IP)")
    s.add_argument("--user", default=SSH_USER, help="login user on the instance")
    s.add_argument("--no-sync", action="store_true", help="skip the rsync")
    s.add_argument("--no-ssh", action="store_true", help="skip the ssh session")

    s = sub.add_parser("ec2-setup", parents=[common], help="on the instance: run the playbook")
    s.add_argument("--force", action="store_true", help="run even if this isn't an EC2 host")
    s.add_argument(
        "-e",
        "--extra-var",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="playbook variable (ami/group_vars/all.yml), repeatable",
    )

    sub.add_parser("list", parents=[common], help=f"table of {NAME} instances")
    for name in ("start", "stop", "reboot", "delete"):
        s = sub.add_parser(name, parents=[common], help=f"{name} the {NAME} instance")
        s.add_argument("instance_id", nargs="?")
    return p


def ec2_setup(args: argparse.Namespace, deps: Deps) -> int:
    """Provision this host: install ansible-core if missing, then run ami/playbook.yml."""
    if not (args.force or deps.on_ec2()):
        raise UsageError("this doesn't look like an EC2 instance: run ec2-setup there (or --force)")
    playbook = deps.repo_root / host.PLAYBOOK
    if not playbook.is_file():
        raise NotFound(f"{playbook} not found: sync the repo first (`make conn`)")
    steps = [] if deps.which("ansible-playbook") else [list(c) for c in host.INSTALL_ANSIBLE]
    steps.append(host.playbook_command(deps.repo_root, args.extra_var))
    for cmd in steps:
        if args.dry_run:
            print("would run " + shlex.join(cmd))
            continue
        status = deps.run(cmd)
        if status != 0:
            raise CommandFailed(f"`{shlex.join(cmd)}` exited with status {status}")
    return 0


def main(argv: Sequence[str] | None = None, deps: Deps | None = None) -> int:
    """Parse `argv`, run the command, and map the CLI's errors to exit codes (here only)."""
    args = parser().parse_args(argv)
    deps = deps or Deps()
    try:
        if args.command == "ec2-setup":
            return ec2_setup(args, deps)
        # Imported here: it needs boto3, which `ec2-setup` hosts may lack.
        from infra.ec2 import commands

        return commands.run(args, deps)
    except Ec2Error as exc:
        print(f"rlm-ec2: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rlm-ec2: interrupted", file=sys.stderr)
        return 130
