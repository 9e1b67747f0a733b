"""Runs infra/__main__.py under Pulumi's mocks and records the planned resources.

No Pulumi CLI and no AWS: `pulumi.runtime.set_mocks` stands in for the engine, the mocks
echo each resource's inputs back as its state (plus the few computed outputs the program
reads), and `plan_stack` returns every registered resource with its resolved inputs, its
parent and the stack's exports. Config is given exactly as `pulumi config set` stores it.
"""

from __future__ import annotations

import json
import runpy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
from pulumi.runtime.mocks import MockMonitor
from pulumi.runtime.settings import ROOT
from pulumi.runtime.stack import run_pulumi_func
from pulumi.runtime.sync_await import _sync_await

PROGRAM = Path(__file__).resolve().parents[2] / "infra" / "__main__.py"
PROJECT = "rlm-py"
STACK = "test"
REGION = "eu-west-1"
ACCOUNT = "123456789012"
# eu-west-1's Elastic Load Balancing account (writes ALB access logs in older regions).
ELB_ACCOUNT_ARN = "arn:aws:iam::156460612806:root"
# The certificate most tests deploy with (plain HTTP to the world is refused by default).
CERT = f"arn:aws:acm:{REGION}:{ACCOUNT}:certificate/0f0f0f0f"
DEFAULT_VPC = "vpc-default"
DEFAULT_SUBNETS = ["subnet-default-a", "subnet-default-b", "subnet-default-c"]
# Values never to be seen outside their SecureString parameters.
SECRETS = {"openaiApiKey": "sk-test-openai-0123456789", "rlmApiKeys": "client-key-a,client-key-b"}

LAUNCH_TEMPLATE = "aws:ec2/launchTemplate:LaunchTemplate"
GROUP = "aws:autoscaling/group:Group"
TARGET_GROUP = "aws:lb/targetGroup:TargetGroup"
ALB = "aws:lb/loadBalancer:LoadBalancer"
LISTENER = "aws:lb/listener:Listener"
SECURITY_GROUP = "aws:ec2/securityGroup:SecurityGroup"
INGRESS_RULE = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
EGRESS_RULE = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
PARAMETER = "aws:ssm/parameter:Parameter"
ROLE = "aws:iam/role:Role"
ROLE_POLICY = "aws:iam/rolePolicy:RolePolicy"
ROLE_POLICY_ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"
INSTANCE_PROFILE = "aws:iam/instanceProfile:InstanceProfile"
BUCKET = "aws:s3/bucket:Bucket"
BUCKET_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
BUCKET_VERSIONING = "aws:s3/bucketVersioning:BucketVersioning"
BUCKET_LIFECYCLE = "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration"
BUCKET_PUBLIC_ACCESS = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
BUCKET_ENCRYPTION = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
)
BUCKET_OWNERSHIP = "aws:s3/bucketOwnershipControls:BucketOwnershipControls"
TABLE = "aws:dynamodb/table:Table"
LOG_GROUP = "aws:cloudwatch/logGroup:LogGroup"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
DASHBOARD = "aws:cloudwatch/dashboard:Dashboard"
LIFECYCLE_HOOK = "aws:autoscaling/lifecycleHook:LifecycleHook"
SCALING_POLICY = "aws:autoscaling/policy:Policy"
CERTIFICATE = "aws:acm/certificate:Certificate"
CERTIFICATE_VALIDATION = "aws:acm/certificateValidation:CertificateValidation"
RECORD = "aws:route53/record:Record"
TOPIC = "aws:sns/topic:Topic"
SUBSCRIPTION = "aws:sns/topicSubscription:TopicSubscription"
GET_AMI_PARAMETER = "aws:ssm/getParameter:getParameter"


def baked_ami(name: str) -> str:
    """The AMI id the mocks answer for a bake parameter: derived from its name, so a test
    can tell which parameter (which stack, which arch) a launch template was given."""
    return "ami-" + format(abs(hash(name)) % 16**17, "017x")


@dataclass
class Planned:
    """One registered resource: type token, logical name, parent URN, resolved inputs, and
    its state as the mocks answered (the inputs plus invented computed outputs)."""

    type: str
    name: str
    parent: str
    inputs: dict[str, Any]
    outputs: dict[str, Any] = field(default_factory=dict)
    ignore_changes: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)


@dataclass
class Plan:
    resources: list[Planned]
    exports: dict[str, Any]
    invokes: list[str]
    invoke_args: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def of_type(self, type_: str) -> list[Planned]:
        return [r for r in self.resources if r.type == type_]

    def one(self, type_: str) -> Planned:
        found = self.of_type(type_)
        assert len(found) == 1, f"expected one {type_}, planned {[r.name for r in found]}"
        return found[0]

    def by_output(self, type_: str, key: str, value: Any) -> Planned:
        """The resource of `type_` whose (mocked) output `key` equals `value`."""
        found = [r for r in self.of_type(type_) if r.outputs.get(key) == value]
        assert len(found) == 1, f"no single {type_} with {key}={value!r}"
        return found[0]


class _Mocks(pulumi.runtime.Mocks):
    """Echo inputs as state; invent the computed outputs the program depends on."""

    def __init__(self, amis: dict[str, str] | None = None) -> None:
        self.amis = amis or {}
        self.inputs: dict[tuple[str, str], dict[str, Any]] = {}
        self.outputs: dict[tuple[str, str], dict[str, Any]] = {}
        self.invokes: list[str] = []
        self.invoke_args: list[tuple[str, dict[str, Any]]] = []

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        self.inputs[(args.typ, args.name)] = args.inputs
        state = dict(args.inputs)
        resource_id = f"{args.name}-id"
        state.setdefault("arn", f"arn:aws:mock:{REGION}:{ACCOUNT}:{args.name}")
        if args.typ == PARAMETER:
            state["arn"] = f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter{args.inputs['name']}"
            state["version"] = 1
        elif args.typ == LAUNCH_TEMPLATE:
            resource_id = f"lt-{args.name}"
            state["latestVersion"] = 1
        elif args.typ == ALB:
            state["dnsName"] = f"{args.name}-123.{REGION}.elb.amazonaws.com"
            state["zoneId"] = "Z32O12XQLNTSW2"
            state["arnSuffix"] = f"app/{args.name}/50dc6c495c0c9188"
        elif args.typ == TARGET_GROUP:
            state["arnSuffix"] = f"targetgroup/{args.name}/73e2d6bc24d8a067"
        elif args.typ == BUCKET:
            # AWS completes the prefix with a unique suffix.
            state["bucket"] = f"{args.inputs['bucketPrefix']}20261130"
            state["arn"] = f"arn:aws:s3:::{state['bucket']}"
        elif args.typ == TABLE:
            state["arn"] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{args.inputs['name']}"
        elif args.typ == LOG_GROUP:
            state["arn"] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{args.inputs['name']}"
        elif args.typ == CERTIFICATE:
            state["domainValidationOptions"] = [
                {
                    "domainName": args.inputs["domainName"],
                    "resourceRecordName": f"_x1.{args.inputs['domainName']}.",
                    "resourceRecordType": "CNAME",
                    "resourceRecordValue": "_x2.acm-validations.aws.",
                }
            ]
        elif args.typ == RECORD:
            state["fqdn"] = args.inputs["name"].rstrip(".")
        elif args.typ == TOPIC:
            state["arn"] = f"arn:aws:sns:{REGION}:{ACCOUNT}:{args.inputs['name']}"
        elif args.typ in (ROLE, INSTANCE_PROFILE) and "namePrefix" in args.inputs:
            state["name"] = f"{args.inputs['namePrefix']}20261130"
        if args.typ in (GROUP, ROLE, INSTANCE_PROFILE, SECURITY_GROUP):
            # AWS auto-names these; the mocks name them after the logical name.
            state.setdefault("name", f"{args.name}-auto")
        self.outputs[(args.typ, args.name)] = state
        return resource_id, state

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        self.invokes.append(args.token)
        self.invoke_args.append((args.token, dict(args.args)))
        if args.token == "aws:ec2/getVpc:getVpc":
            return {"id": DEFAULT_VPC, "default": True, "cidrBlock": "172.31.0.0/16"}
        if args.token == "aws:ec2/getSubnets:getSubnets":
            return {"id": DEFAULT_VPC, "ids": DEFAULT_SUBNETS}
        if args.token == "aws:index/getRegion:getRegion":
            return {"id": REGION, "name": REGION, "region": REGION}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            return {"id": ACCOUNT, "accountId": ACCOUNT, "arn": f"arn:aws:iam::{ACCOUNT}:root"}
        if args.token == "aws:elb/getServiceAccount:getServiceAccount":
            return {"id": "156460612806", "arn": ELB_ACCOUNT_ARN}
        if args.token == GET_AMI_PARAMETER:
            name = args.args["name"]
            ami = self.amis.get(name) or baked_ami(name)
            return {"id": name, "name": name, "type": "String", "value": ami, "insecureValue": ami}
        raise AssertionError(f"the program made an unexpected call: {args.token}")


class _Monitor(MockMonitor):
    """Also remembers each registration's parent, which the mocks' arguments omit."""

    def __init__(self, mocks: _Mocks) -> None:
        super().__init__(mocks)
        self.registrations: list[tuple[str, str, str]] = []
        self.options: dict[tuple[str, str], tuple[list[str], list[str]]] = {}

    def RegisterResource(self, request):  # noqa: N802 (gRPC method name)
        self.registrations.append((request.type, request.name, request.parent))
        self.options[(request.type, request.name)] = (
            list(request.ignoreChanges),
            list(request.dependencies),
        )
        return super().RegisterResource(request)


def encode(value: Any) -> str:
    """A config value as the Pulumi CLI hands it to the program (always a string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def plan_stack(
    config: dict[str, Any] | None = None,
    *,
    secrets: dict[str, str] | None = None,
    plain: dict[str, str] | None = None,
    stack: str = STACK,
    tls: bool = True,
    amis: dict[str, str] | None = None,
) -> Plan:
    """Run the program once as stack `stack` with `config` (keys without `rlm-py:`).

    `secrets` are set as with `pulumi config set --secret` (defaults to `SECRETS`), `plain`
    as ordinary values (to check that credentials in plain config are refused). With `tls`
    (the default) the stack gets `certificateArn: CERT` unless `config` says otherwise;
    `tls=False` runs the program with exactly `config`. `amis` answers bake parameters
    (by name) with given ids, as after a bake; others get `baked_ami(name)`.
    """
    mocks = _Mocks(amis)
    monitor = _Monitor(mocks)
    ROOT.set(None)  # a fresh root Stack, so exports from an earlier run don't leak in
    pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    secrets = SECRETS if secrets is None else secrets
    defaults = {"certificateArn": CERT} if tls else {}
    values = {**defaults, **(config or {}), **(plain or {}), **secrets}
    pulumi.runtime.set_all_config(
        {f"{PROJECT}:{k}": encode(v) for k, v in values.items()},
        secret_keys=[f"{PROJECT}:{k}" for k in secrets],
    )
    exports: dict[str, Any] = {}

    async def program() -> None:
        runpy.run_path(str(PROGRAM), run_name="__main__")
        root = pulumi.runtime.get_root_resource()
        for key, value in root.outputs.items():
            exports[key] = await pulumi.Output.from_input(value).future()

    _sync_await(run_pulumi_func(program))
    resources = [
        Planned(
            type=type_,
            name=name,
            parent=parent,
            inputs=mocks.inputs.get((type_, name), {}),
            outputs=mocks.outputs.get((type_, name), {}),
            ignore_changes=monitor.options[(type_, name)][0],
            depends_on=monitor.options[(type_, name)][1],
        )
        for type_, name, parent in monitor.registrations
        if type_ != "pulumi:pulumi:Stack"
    ]
    return Plan(
        resources=resources,
        exports=exports,
        invokes=mocks.invokes,
        invoke_args=mocks.invoke_args,
    )
