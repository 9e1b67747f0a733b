"""The AWS-facing commands: aws-setup, create, conn, list, start, stop, reboot, delete.

Each takes the parsed arguments and a `Deps`, returns an exit status, and raises the named
errors of `infra.ec2.errors` (botocore's are translated by `aws.aws_errors`, around the whole
command). Results, and a dry run's "would ..." lines, go to stdout; progress goes to stderr.
With --dry-run nothing is created, changed or run; read-only AWS calls still happen, so the
plan printed is the one a real run would carry out.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from infra.ec2 import aws, remote
from infra.ec2.aws import Aws, Instance, LaunchSpec, Rule
from infra.ec2.credentials import SharedFiles, write_credentials, write_region
from infra.ec2.deps import Deps
from infra.ec2.errors import (
    Ambiguous,
    CommandFailed,
    ConfigError,
    Conflict,
    NotFound,
    UsageError,
)
from infra.ec2.settings import (
    CONN_RULE_MARKER,
    DEFAULT_INSTANCE_TYPES,
    DEVBOX_PROFILE,
    DEVBOX_STACK,
    LIVE_STATES,
    NAME,
    SSH_PORT,
)
from service.constants import DEFAULT_PORT, ssm_name

# `create --instance-profile none`: launch without one (the service then finds no secrets).
NO_PROFILE = "none"


def say(message: str) -> None:
    """Progress for the person at the terminal; stdout stays for results."""
    print(message, file=sys.stderr, flush=True)


def plan(message: str) -> None:
    print(f"would {message}", flush=True)


def _region(args: argparse.Namespace, deps: Deps) -> str | None:
    return args.region or deps.env.get("AWS_REGION") or None


def _connect(args: argparse.Namespace, deps: Deps) -> Aws:
    return aws.connect(deps.session(_region(args, deps)), deps.timing)


# --- aws-setup ---------------------------------------------------------------------------


def aws_setup(args: argparse.Namespace, deps: Deps) -> int:
    """Credentials (asked for when none are set), an access key for IAM_USER, key pair rlm-py,
    and the dev instance's role and instance profile (it reads its own secrets from SSM)."""
    session = deps.session(_region(args, deps))
    if session.get_credentials() is None:
        session = _configure(args, deps, session.region_name)
        if session is None:  # dry run: nothing to talk to AWS with
            plan(f"create key pair {NAME} and write {deps.key_path} (mode 0400)")
            plan(f"create IAM role and instance profile {DEVBOX_PROFILE}")
            return 0
    cx = aws.connect(session, deps.timing)
    if args.iam_user:
        if args.dry_run:
            plan(f"create an access key for IAM user {args.iam_user}")
        else:
            key_id, secret = aws.create_access_key(cx, args.iam_user)
            print(f"AccessKeyId: {key_id}")
            print(f"SecretAccessKey: {secret}")
            say("the secret is shown this once: store it now (e.g. `aws configure` where needed)")
    _ensure_key_pair(cx, deps, args.dry_run)
    done = aws.ensure_devbox_profile(cx, args.dry_run)
    for line in done:
        (plan if args.dry_run else say)(line if args.dry_run else f"did: {line}")
    if not done:
        say(f"instance profile {DEVBOX_PROFILE} is in place")
    say(
        f"the dev instance reads OPENAI_API_KEY and RLM_API_KEYS from SSM "
        f"({ssm_name(DEVBOX_STACK, 'OPENAI_API_KEY')}, {ssm_name(DEVBOX_STACK, 'RLM_API_KEYS')}: "
        "aws ssm put-parameter --type SecureString --name ... --value ...), else from the .env "
        "that `make conn` copies"
    )
    return 0


def _configure(args: argparse.Namespace, deps: Deps, region: str | None) -> Any:
    """Ask for an access key and region as `aws configure` does; the session using them."""
    files = SharedFiles.from_env(deps.env)
    if args.dry_run:
        plan(f"ask for an access key and region and write them to {files.credentials}")
        return None
    if not deps.interactive():
        raise ConfigError(f"{aws.NO_CREDENTIALS} (no terminal to ask on)")
    key_id = deps.prompt("AWS Access Key ID: ", False)
    secret = deps.prompt("AWS Secret Access Key: ", True)
    region = region or deps.prompt("Default region name: ", False)
    if not (key_id and secret and region):
        raise ConfigError("access key id, secret and region are all needed")
    write_credentials(files, key_id, secret)
    write_region(files, region)
    say(f"wrote profile {files.profile} to {files.credentials} and {files.config}")
    return deps.session(region)


def _ensure_key_pair(cx: Aws, deps: Deps, dry_run: bool) -> None:
    key_path = deps.key_path
    exists, have_file = aws.key_pair_exists(cx), key_path.exists()
    if exists and have_file:
        say(f"key pair {NAME} exists in {cx.region}; using {key_path}")
    elif exists:
        raise Conflict(
            f"key pair {NAME} exists in {cx.region} but {key_path} is missing; EC2 can't give "
            f"the private key again: copy it here, or delete the pair (aws ec2 delete-key-pair "
            f"--key-name {NAME} --region {cx.region}) and rerun"
        )
    elif have_file:
        raise Conflict(
            f"{key_path} exists but key pair {NAME} does not in {cx.region} (another region, "
            "or a deleted pair): move the file away and rerun"
        )
    elif dry_run:
        plan(f"create key pair {NAME} in {cx.region} and write {key_path} (mode 0400)")
    else:
        aws.create_key_pair(cx, key_path)
        say(f"created key pair {NAME} in {cx.region}; wrote {key_path} (mode 0400)")


# --- create ------------------------------------------------------------------------------


def create(args: argparse.Namespace, deps: Deps) -> int:
    """Launch the dev instance (idempotent: an identical live one is reported, not doubled)."""
    cx = _connect(args, deps)
    arch = args.arch
    instance_type = args.instance_type or DEFAULT_INSTANCE_TYPES[arch]
    if args.root_gb < 8:
        raise UsageError(f"ROOT_GB={args.root_gb} is too small for Ubuntu: use 8 or more")
    live = aws.find_instances(cx, states=LIVE_STATES)
    if live:
        return _report_existing(live, arch, instance_type)
    aws.check_instance_type(cx, instance_type, arch)
    ami = deps.ami_lookup(partial(aws.ssm_parameter, cx), arch, args.stack)
    image = aws.describe_image(cx, ami.image_id)
    if image.arch != arch:
        raise Conflict(f"AMI {image.id} from {ami.parameter} is {image.arch}, not {arch}")
    say(f"AMI {image.id} ({'baked' if ami.baked else 'stock Ubuntu 24.04'}, {ami.parameter})")
    if not aws.key_pair_exists(cx):
        raise NotFound(f"key pair {NAME} not found in {cx.region}: run `make aws-setup` first")
    profile = None if args.instance_profile == NO_PROFILE else args.instance_profile
    if profile and not aws.instance_profile_exists(cx, profile):
        hint = "run `make aws-setup` first" if profile == DEVBOX_PROFILE else "check its name"
        raise NotFound(
            f"instance profile {profile} not found: {hint} (INSTANCE_PROFILE={NO_PROFILE} "
            "launches without one, and the service then reads no secret from SSM)"
        )
    vpc_id = aws.default_vpc_id(cx)
    group_id = aws.find_security_group(cx, vpc_id)
    if group_id is None:
        if args.dry_run:
            plan(f"create security group {NAME} in {vpc_id}")
            group_id = f"<new security group {NAME}>"
        else:
            group_id = aws.create_security_group(cx, vpc_id)
            say(f"created security group {NAME} ({group_id}) in {vpc_id}")
    spec = LaunchSpec(
        image_id=image.id,
        root_device=image.root_device,
        instance_type=instance_type,
        root_gb=args.root_gb,
        security_group_id=group_id,
        # One token per `create`, reused by its retries (see aws.run_instance); a script
        # may pass its own to make reruns of the same launch idempotent too.
        client_token=args.client_token or f"{NAME}-{uuid.uuid4()}",
        instance_profile=profile,
    )
    request = aws.run_request(spec)
    if args.dry_run:
        plan("run instance " + json.dumps(request, indent=2, sort_keys=True))
        return 0
    instance_id = aws.run_instance(cx, request)
    say(f"launched {instance_id} ({arch}, {instance_type}); waiting until it runs")
    aws.wait(cx, "instance_running", instance_id)
    _print_instance(aws.describe_instance(cx, instance_id))
    return 0


def _report_existing(live: list[Instance], arch: str, instance_type: str) -> int:
    same = [i for i in live if i.arch == arch and i.type == instance_type]
    if len(live) == 1 and same:
        say(f"{NAME} instance {same[0].id} already exists ({same[0].state}); not launching another")
        _print_instance(same[0])
        return 0
    described = ", ".join(f"{i.id} ({i.arch}, {i.type}, {i.state})" for i in live)
    raise Conflict(
        f"{NAME} instance(s) already exist: {described}; `make delete` first to launch "
        f"{arch}/{instance_type}"
    )


def _print_instance(instance: Instance) -> None:
    print(f"{instance.id} {instance.public_ip or '-'}")


# --- conn --------------------------------------------------------------------------------


def conn(args: argparse.Namespace, deps: Deps) -> int:
    """Open SSH and the service port to the caller, sync the repo, log in."""
    cx = _connect(args, deps)
    instance = select(cx, args.instance_id, ("running",), "connect to")
    if instance.state != "running":
        raise Conflict(f"{instance.id} is {instance.state}: `make start` first")
    if not instance.public_ip:
        raise NotFound(f"{instance.id} has no public IP (is its subnet's auto-assign off?)")
    rules = _rules(args, deps)
    group_id = _group_of(instance)
    missing = [r for r in rules if r not in aws.existing_rules(cx, group_id)]
    # The caller's previous rules (another IP, another CIDR) on the same ports go: one caller
    # at a time. Rules someone added by hand carry no marker and stay.
    ports = {r.port for r in rules}
    stale = sorted(
        (
            r
            for r in aws.existing_rules(cx, group_id, marker=CONN_RULE_MARKER)
            if r.port in ports and r not in rules
        ),
        key=lambda r: (r.port, r.cidr),
    )
    key_path = deps.key_path
    rsync = remote.rsync_command(deps.repo_root, key_path, args.user, instance.public_ip)
    ssh = remote.ssh_command(key_path, args.user, instance.public_ip)
    if args.dry_run:
        for rule in stale:
            plan(f"revoke tcp/{rule.port} from {rule.cidr} in {group_id}")
        for rule in missing:
            plan(f"allow tcp/{rule.port} from {rule.cidr} in {group_id}")
        if not args.no_sync:
            plan("run " + shlex.join(rsync))
        if not args.no_ssh:
            plan("run " + shlex.join(ssh))
        return 0
    if missing:
        aws.authorize(cx, group_id, missing)
        say("allowed " + ", ".join(f"tcp/{r.port} from {r.cidr}" for r in missing))
    if stale:
        aws.revoke(cx, group_id, stale)
        say("revoked " + ", ".join(f"tcp/{r.port} from {r.cidr}" for r in stale))
    if not key_path.exists():
        raise NotFound(f"{key_path} not found: run `make aws-setup` (or copy the key here)")
    if not args.no_sync:
        _sync(rsync, deps)
    if not args.no_ssh:
        status = deps.run(ssh)
        # Any other status is the remote shell's last command's: the session itself worked.
        if status == remote.SSH_CONNECT_FAILED:
            raise _command_failed("ssh", status)
    return 0


def _rules(args: argparse.Namespace, deps: Deps) -> list[Rule]:
    ip: list[str] = []

    def caller() -> str:
        if not ip:  # asked at most once, and only when a CIDR is left to default
            ip.append(remote.host_cidr(deps.caller_ip()))
        return ip[0]

    ssh_cidr = remote.normalize_cidr(args.ssh_cidr) if args.ssh_cidr else caller()
    app_cidr = remote.normalize_cidr(args.app_cidr) if args.app_cidr else caller()
    return [Rule(SSH_PORT, ssh_cidr), Rule(DEFAULT_PORT, app_cidr)]


def _group_of(instance: Instance) -> str:
    for group_id, name in instance.security_groups:
        if name == NAME:
            return group_id
    raise NotFound(f"{instance.id} is not in security group {NAME}")


def _sync(rsync: Sequence[str], deps: Deps) -> None:
    t = deps.timing
    for attempt in range(1, t.ssh_attempts + 1):
        status = deps.run(rsync)
        if status == 0:
            return
        if status != remote.SSH_CONNECT_FAILED or attempt == t.ssh_attempts:
            raise _command_failed("rsync", status)
        # A just-started instance is "running" some seconds before sshd accepts connections.
        say(f"ssh not reachable yet; retrying in {t.ssh_retry_s:g} s")
        t.sleep(t.ssh_retry_s)


def _command_failed(name: str, status: int) -> Exception:
    return CommandFailed(f"{name} exited with status {status}")


# --- list, start, stop, reboot, delete ---------------------------------------------------


def list_(args: argparse.Namespace, deps: Deps) -> int:
    """A table of every rlm-py instance in the region, terminated ones included."""
    cx = _connect(args, deps)
    instances = aws.find_instances(cx)
    if not instances:
        say(f"no {NAME} instances in {cx.region}")
        return 0
    print(table(instances))
    return 0


def table(instances: Sequence[Instance]) -> str:
    header = ("INSTANCE", "STATE", "TYPE", "ARCH", "PUBLIC IP", "ZONE", "LAUNCHED")
    rows = [header] + [
        (i.id, i.state, i.type, i.arch, i.public_ip or "-", i.az, i.launched) for i in instances
    ]
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def select(cx: Aws, instance_id: str | None, states: Sequence[str], verb: str) -> Instance:
    """The rlm-py instance to act on: `instance_id` if given, else the only one in `states`.

    NotFound when the id isn't an rlm-py instance or none is in `states`; Ambiguous (with
    the candidates listed) when several are.
    """
    if instance_id:
        found = aws.find_instances(cx, instance_id=instance_id)
        if not found or found[0].state == "terminated":
            raise NotFound(f"{instance_id} is not a live {NAME} instance in {cx.region}")
        return found[0]
    found = aws.find_instances(cx, states=states)
    if len(found) > 1:
        say(table(found))
        raise Ambiguous(f"{len(found)} {NAME} instances to {verb}: pass one instance id")
    if not found:
        raise NotFound(f"no {'/'.join(states)} {NAME} instance in {cx.region} to {verb}")
    return found[0]


@dataclass(frozen=True)
class Transition:
    """A state change: which states it starts from, which mean it's already done."""

    verb: str
    from_states: tuple[str, ...]
    done_states: tuple[str, ...]
    call: Callable[[Aws, str], None]
    waiter: str | None


TRANSITIONS = {
    "start": Transition(
        "start", ("stopped",), ("pending", "running"), aws.start, "instance_running"
    ),
    "stop": Transition(
        "stop", ("pending", "running"), ("stopping", "stopped"), aws.stop, "instance_stopped"
    ),
    # No waiter: a rebooting instance stays "running" throughout.
    "reboot": Transition("reboot", ("running",), (), aws.reboot, None),
    "delete": Transition(
        "delete", LIVE_STATES, ("shutting-down",), aws.terminate, "instance_terminated"
    ),
}


def transition(args: argparse.Namespace, deps: Deps) -> int:
    """start, stop, reboot or delete one rlm-py instance, then wait for the new state."""
    t = TRANSITIONS[args.command]
    cx = _connect(args, deps)
    instance = _select_for(cx, args.instance_id, t)
    if instance.state in t.done_states:
        say(f"{instance.id} is already {instance.state}")
    elif instance.state not in t.from_states:
        raise Conflict(f"{instance.id} is {instance.state}: can't {t.verb} it now")
    elif args.dry_run:
        plan(f"{t.verb} {instance.id}")
        return 0
    else:
        t.call(cx, instance.id)
        say(f"{t.verb}: {instance.id}" + (" (waiting)" if t.waiter else ""))
    if args.dry_run:
        return 0
    if t.waiter:
        aws.wait(cx, t.waiter, instance.id)
    final = aws.describe_instance(cx, instance.id)
    print(f"{final.id} {final.state} {final.public_ip or '-'}")
    return 0


def _select_for(cx: Aws, instance_id: str | None, t: Transition) -> Instance:
    if instance_id:
        return select(cx, instance_id, t.from_states, t.verb)
    # Prefer an instance the verb applies to; else one where it is already done.
    try:
        return select(cx, None, t.from_states, t.verb)
    except NotFound:
        if not t.done_states:
            raise
        return select(cx, None, t.done_states, t.verb)


COMMANDS: dict[str, Callable[[argparse.Namespace, Deps], int]] = {
    "aws-setup": aws_setup,
    "create": create,
    "conn": conn,
    "list": list_,
    **dict.fromkeys(TRANSITIONS, transition),
}


def run(args: argparse.Namespace, deps: Deps) -> int:
    """Run one AWS command, with botocore's exceptions translated to the CLI's."""
    with aws.aws_errors():
        return COMMANDS[args.command](args, deps)
