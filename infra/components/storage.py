"""Where sessions outlive their host: snapshots in S3, leases in DynamoDB (issue 13).

The service reads both from its settings: `RLM_SESSION_STORE=s3://<bucket>/<prefix>` and
`RLM_SESSION_LEASE_TABLE=<table>` (service/store/factory.py), which the boot script writes
from this component's outputs `store_url` and `table_name`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.components.naming import StackNames

# service/store/aws.py: one item per session, string partition key "pk", nothing else in
# the key schema.
LEASE_HASH_KEY = "pk"
# S3 deletes uploads that never completed after this many days (a crash mid-upload).
ABORT_INCOMPLETE_UPLOAD_DAYS = 1


@dataclass
class SessionStorageArgs:
    """`expiry_days`: age after which S3 deletes a snapshot (the session TTL plus margin)."""

    names: StackNames
    prefix: str
    expiry_days: int


class SessionStorage(pulumi.ComponentResource):
    """A private, encrypted, unversioned bucket and a pay-per-request lease table.

    Versioning stays off: every snapshot write replaces the object under a fencing token
    (a conditional PutObject), so old versions would only keep deleted sessions' state and
    pay for it; a deleted session must be gone. The lease table has no TTL attribute: a
    lease item is the session's fencing high-water mark (service/store/aws.py never deletes
    one), and letting DynamoDB expire it on `expires` would restart the session's tokens at
    1 below a snapshot's newer token, so every later write of that session would be refused.

    Outputs: `bucket_arn`, `table_arn`, `table_name`, `store_url`.
    """

    bucket: aws.s3.Bucket
    table: aws.dynamodb.Table

    def __init__(
        self, name: str, args: SessionStorageArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("rlm-py:infra:SessionStorage", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self.bucket = private_bucket(
            f"{name}-snapshots", args.names.bucket_prefix("sessions"), child
        )
        bucket_policy(f"{name}-snapshots-policy", self.bucket, [], child)
        aws.s3.BucketVersioning(
            f"{name}-snapshots-versioning",
            bucket=self.bucket.id,
            versioning_configuration={"status": "Disabled"},
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            f"{name}-snapshots-expiry",
            bucket=self.bucket.id,
            rules=[
                {
                    "id": "expire-sessions",
                    "status": "Enabled",
                    "filter": {"prefix": f"{args.prefix}/"},
                    "expiration": {"days": args.expiry_days},
                    "abort_incomplete_multipart_upload": {
                        "days_after_initiation": ABORT_INCOMPLETE_UPLOAD_DAYS
                    },
                }
            ],
            opts=child,
        )
        self.table = aws.dynamodb.Table(
            f"{name}-leases",
            name=args.names.lease_table,
            billing_mode="PAY_PER_REQUEST",
            hash_key=LEASE_HASH_KEY,
            attributes=[{"name": LEASE_HASH_KEY, "type": "S"}],
            # Encrypted at rest by default (AWS-owned key). Point-in-time recovery: the items
            # are the sessions' fencing marks, and the table is a few kilobytes.
            point_in_time_recovery={"enabled": True},
            opts=child,
        )
        self.bucket_arn = self.bucket.arn
        self.table_arn = self.table.arn
        self.table_name = self.table.name
        self.store_url = self.bucket.bucket.apply(lambda bucket: f"s3://{bucket}/{args.prefix}")
        self.register_outputs(
            {
                "bucket_arn": self.bucket_arn,
                "table_arn": self.table_arn,
                "table_name": self.table_name,
                "store_url": self.store_url,
            }
        )


def private_bucket(name: str, bucket_prefix: str, opts: pulumi.ResourceOptions) -> aws.s3.Bucket:
    """A bucket no one outside the account can reach: every public access path blocked,
    objects owned by the bucket owner (no ACLs), SSE-S3 by default, TLS-only access."""
    bucket = aws.s3.Bucket(name, bucket_prefix=bucket_prefix, force_destroy=False, opts=opts)
    aws.s3.BucketPublicAccessBlock(
        f"{name}-public-access",
        bucket=bucket.id,
        block_public_acls=True,
        block_public_policy=True,
        ignore_public_acls=True,
        restrict_public_buckets=True,
        opts=opts,
    )
    aws.s3.BucketOwnershipControls(
        f"{name}-ownership",
        bucket=bucket.id,
        rule={"object_ownership": "BucketOwnerEnforced"},
        opts=opts,
    )
    # SSE-S3: what the service asks for on each PutObject (service/store/aws.py) and the
    # only encryption ALB access logs support.
    aws.s3.BucketServerSideEncryptionConfiguration(
        f"{name}-encryption",
        bucket=bucket.id,
        rules=[{"apply_server_side_encryption_by_default": {"sse_algorithm": "AES256"}}],
        opts=opts,
    )
    return bucket


def tls_only_statement(bucket_arn: str) -> dict[str, object]:
    """Deny any request to the bucket that does not use TLS."""
    return {
        "Sid": "TlsOnly",
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [bucket_arn, f"{bucket_arn}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }


def bucket_policy(
    name: str,
    bucket: aws.s3.Bucket,
    statements: pulumi.Input[list[dict[str, object]]],
    opts: pulumi.ResourceOptions,
) -> aws.s3.BucketPolicy:
    """The bucket's policy: `statements` plus the TLS-only denial."""
    document = pulumi.Output.all(bucket.arn, statements).apply(
        lambda v: json.dumps(
            {"Version": "2012-10-17", "Statement": [*v[1], tls_only_statement(v[0])]}
        )
    )
    return aws.s3.BucketPolicy(name, bucket=bucket.id, policy=document, opts=opts)
