"""Where the stack's signals go: the service's log group, and the ALB's access-log bucket.

Created before the load balancer and the fleet, which write into them; the alarms and the
dashboard that read the signals are in monitoring.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.naming import ALB_LOGS_PREFIX, StackNames
from infra.components.storage import bucket_policy, private_bucket

# The service principal that writes ALB access logs in regions opened since August 2022; the
# older regions use their own Elastic Load Balancing account (elb.get_service_account).
ALB_LOG_DELIVERY = "logdelivery.elasticloadbalancing.amazonaws.com"


@dataclass
class TelemetryArgs:
    """`retention_days`: how long CloudWatch Logs keeps the service's log and S3 keeps the
    ALB's access logs."""

    names: StackNames
    retention_days: int


class Telemetry(pulumi.ComponentResource):
    """Log group `/rlm-py/<stack>/service` and the access-log bucket with its policy.

    Outputs: `log_group_name`, `log_group_arn`, `access_logs_bucket` (name),
    `access_logs_prefix`, and `access_logs_policy` (the ALB must be created after it: AWS
    checks that it may write when logging is turned on).
    """

    log_group: aws.cloudwatch.LogGroup
    access_logs_policy: aws.s3.BucketPolicy

    def __init__(
        self, name: str, args: TelemetryArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:Telemetry", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.log_group = aws.cloudwatch.LogGroup(
            f"{name}-service",
            name=args.names.log_group,
            retention_in_days=args.retention_days,
            opts=child,
        )
        bucket = private_bucket(f"{name}-alb-logs", args.names.bucket_prefix("alb-logs"), child)
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-alb-logs-expiry",
            bucket=bucket.id,
            rules=[
                {
                    "id": "expire-access-logs",
                    "status": "Enabled",
                    "filter": {"prefix": f"{ALB_LOGS_PREFIX}/"},
                    "expiration": {"days": args.retention_days},
                }
            ],
            opts=child,
        )
        invoke = pulumi.InvokeOutputOptions(parent=self)
        account = aws.get_caller_identity_output(opts=invoke).account_id
        elb_account = aws.elb.get_service_account_output(opts=invoke).arn
        statements = pulumi.Output.all(bucket.arn, account, elb_account).apply(
            lambda v: _delivery_statements(v[0], v[1], v[2])
        )
        self.access_logs_policy = bucket_policy(
            f"{name}-alb-logs-policy", bucket, statements, child
        )
        self.log_group_name = self.log_group.name
        self.log_group_arn = self.log_group.arn
        self.access_logs_bucket = bucket.bucket
        self.access_logs_prefix = ALB_LOGS_PREFIX
        self.register_outputs(
            {
                "log_group_name": self.log_group_name,
                "log_group_arn": self.log_group_arn,
                "access_logs_bucket": self.access_logs_bucket,
            }
        )


def _delivery_statements(bucket_arn: str, account: str, elb_account_arn: str) -> list[dict]:
    """Who may write access logs: only under `<prefix>/AWSLogs/<this account>/`."""
    logs = f"{bucket_arn}/{ALB_LOGS_PREFIX}/AWSLogs/{account}/*"
    return [
        {
            "Sid": "AlbLogDeliveryRegionalAccount",
            "Effect": "Allow",
            "Principal": {"AWS": elb_account_arn},
            "Action": "s3:PutObject",
            "Resource": logs,
        },
        {
            "Sid": "AlbLogDeliveryService",
            "Effect": "Allow",
            "Principal": {"Service": ALB_LOG_DELIVERY},
            "Action": "s3:PutObject",
            "Resource": logs,
        },
    ]
