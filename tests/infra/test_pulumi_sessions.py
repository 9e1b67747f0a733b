"""Sessions storage (issue 13): a private snapshot bucket and a lease table, exactly as
service/store/aws.py uses them, and a host role that reaches only those."""

from __future__ import annotations

import json
import math

import pytest

from infra.config import DEFAULT_SESSION_TTL_S
from tests.infra.pulumi_harness import (
    BUCKET,
    BUCKET_ENCRYPTION,
    BUCKET_LIFECYCLE,
    BUCKET_OWNERSHIP,
    BUCKET_POLICY,
    BUCKET_PUBLIC_ACCESS,
    BUCKET_VERSIONING,
    ROLE_POLICY,
    STACK,
    TABLE,
    Plan,
    Planned,
    plan_stack,
)


def sessions_bucket(plan: Plan) -> Planned:
    [bucket] = [b for b in plan.of_type(BUCKET) if "-sessions-" in b.inputs["bucketPrefix"]]
    return bucket


def attached(plan: Plan, type_: str, bucket: Planned) -> list[Planned]:
    return [r for r in plan.of_type(type_) if r.inputs["bucket"] == f"{bucket.name}-id"]


def statements(plan: Plan, name: str) -> list[dict]:
    [policy] = [p for p in plan.of_type(ROLE_POLICY) if p.name == name]
    return json.loads(policy.inputs["policy"])["Statement"]


def test_the_snapshot_bucket_is_private_encrypted_and_unversioned():
    plan = plan_stack()
    bucket = sessions_bucket(plan)
    assert bucket.inputs["bucketPrefix"] == f"rlm-py-{STACK}-sessions-"
    [block] = attached(plan, BUCKET_PUBLIC_ACCESS, bucket)
    assert all(
        block.inputs[k] is True
        for k in (
            "blockPublicAcls",
            "blockPublicPolicy",
            "ignorePublicAcls",
            "restrictPublicBuckets",
        )
    )
    [ownership] = attached(plan, BUCKET_OWNERSHIP, bucket)
    assert ownership.inputs["rule"] == {"objectOwnership": "BucketOwnerEnforced"}
    [encryption] = attached(plan, BUCKET_ENCRYPTION, bucket)
    assert encryption.inputs["rules"] == [
        {"applyServerSideEncryptionByDefault": {"sseAlgorithm": "AES256"}}
    ]
    [versioning] = attached(plan, BUCKET_VERSIONING, bucket)
    assert versioning.inputs["versioningConfiguration"] == {"status": "Disabled"}
    [policy] = attached(plan, BUCKET_POLICY, bucket)
    [deny] = json.loads(policy.inputs["policy"])["Statement"]
    assert deny["Effect"] == "Deny"
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}


@pytest.mark.parametrize(("ttl", "days"), [(None, 2), (3600, 2), (7 * 86400, 8)])
def test_snapshots_expire_after_the_session_ttl_plus_a_margin(ttl, days):
    plan = plan_stack({} if ttl is None else {"sessionTtlSeconds": ttl})
    [lifecycle] = attached(plan, BUCKET_LIFECYCLE, sessions_bucket(plan))
    [rule] = lifecycle.inputs["rules"]
    assert rule["status"] == "Enabled"
    assert rule["filter"] == {"prefix": "sessions/"}
    assert rule["expiration"] == {"days": days}
    assert days * 86400 > (ttl or DEFAULT_SESSION_TTL_S)
    assert days == math.ceil((ttl or DEFAULT_SESSION_TTL_S) / 86400) + 1


def test_the_lease_table_has_the_key_the_store_uses_and_no_ttl():
    table = plan_stack().one(TABLE).inputs
    assert table["name"] == f"rlm-py-{STACK}-session-leases"
    assert table["billingMode"] == "PAY_PER_REQUEST"
    assert table["hashKey"] == "pk"
    assert table["attributes"] == [{"name": "pk", "type": "S"}]
    assert "rangeKey" not in table
    # A lease item is the session's fencing high-water mark: never expired by DynamoDB.
    assert not table.get("ttl", {}).get("enabled")


def test_hosts_reach_only_their_prefix_and_their_table():
    plan = plan_stack()
    bucket_arn = sessions_bucket(plan).outputs["arn"]
    table_arn = plan.one(TABLE).outputs["arn"]
    grants = statements(plan, "host-sessions")
    assert grants == [
        {
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"],
            "Resource": f"{bucket_arn}/sessions/*",
        },
        {"Effect": "Allow", "Action": "s3:ListBucket", "Resource": bucket_arn},
        {
            "Effect": "Allow",
            "Action": ["dynamodb:GetItem", "dynamodb:PutItem"],
            "Resource": table_arn,
        },
    ]
    # Nothing else in any host policy touches S3 or DynamoDB, and no policy is a wildcard.
    for policy in plan.of_type(ROLE_POLICY):
        for statement in json.loads(policy.inputs["policy"])["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            assert not any(a.endswith(":*") or a == "*" for a in actions)
            if policy.name != "host-sessions":
                assert not any(a.startswith(("s3:", "dynamodb:")) for a in actions)
            if statement["Resource"] == "*":
                assert actions[0].startswith(("ssm", "cloudwatch:PutMetricData")), statement


def test_the_store_url_matches_what_the_service_parses():
    from service.store.factory import open_store

    plan = plan_stack()
    url, table = plan.exports["sessionStore"], plan.exports["leaseTable"]
    store, leases = open_store(url, lease_table=table, region="eu-west-1", max_blob_bytes=2**20)
    assert repr(store) == f"S3Store('{url}')"
    assert repr(leases) == f"DynamoLeases({table!r})"
