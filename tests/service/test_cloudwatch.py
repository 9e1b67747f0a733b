"""Host metrics to CloudWatch (service/cloudwatch.py) against a moto server, and the group name
from a loopback stand-in for the instance metadata service (IMDSv2, instance tags)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import botocore.config
import httpx
import pytest

from loadtest.upstream import ScriptedUpstream
from service.cloudwatch import (
    ASG_TAG_PATH,
    INSTANCE_ID_PATH,
    CloudWatchPublisher,
    Readings,
    instance_metadata,
)
from service.constants import (
    CLOUDWATCH_NAMESPACE,
    METRIC_LIVE_SESSIONS,
    METRIC_RUNNING_REQUESTS,
    METRIC_SANDBOX_FAULTS,
    METRIC_UPSTREAM_ERRORS,
)
from tests.service.conftest import Router, ServiceServer, service_env
from tests.service.fake_aws import REGION, free_port


@pytest.fixture
def cloudwatch(moto_endpoint: str) -> Any:
    return boto3.client("cloudwatch", endpoint_url=moto_endpoint, region_name=REGION)


def points(
    cw: Any, namespace: str, name: str, group: str, instance: str | None = None
) -> list[float]:
    """Every value published for (name, group[, instance]), oldest first (one-minute sums)."""
    now = dt.datetime.now(dt.UTC)
    dims = [{"Name": "AutoScalingGroupName", "Value": group}]
    if instance:
        dims.append({"Name": "InstanceId", "Value": instance})
    out = cw.get_metric_statistics(
        Namespace=namespace,
        MetricName=name,
        Dimensions=dims,
        StartTime=now - dt.timedelta(minutes=10),
        EndTime=now + dt.timedelta(minutes=1),
        Period=60,
        Statistics=["Sum", "SampleCount"],
    )
    return [p["Sum"] for p in sorted(out["Datapoints"], key=lambda p: p["Timestamp"])]


class Counter:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


async def test_publishes_gauges_and_fault_deltas_per_group(cloudwatch: Any) -> None:
    faults, upstream = Counter(), Counter()
    faults.value = 4.0  # faults before the publisher started are not this host's news
    pub = CloudWatchPublisher(
        "rlm-test-a",
        Readings(lambda: 3, lambda: 2, faults, upstream),
        group="asg-a",
        client=cloudwatch,
        metadata=lambda: (None, None),  # off EC2: no instance id, group series only
    )
    assert await pub.publish_once()
    faults.value, upstream.value = 9.0, 2.0
    assert await pub.publish_once()
    assert pub.published == 2 and pub.last_error is None
    assert sum(points(cloudwatch, "rlm-test-a", METRIC_LIVE_SESSIONS, "asg-a")) == 6
    assert sum(points(cloudwatch, "rlm-test-a", METRIC_RUNNING_REQUESTS, "asg-a")) == 4
    assert sum(points(cloudwatch, "rlm-test-a", METRIC_SANDBOX_FAULTS, "asg-a")) == 5
    assert sum(points(cloudwatch, "rlm-test-a", METRIC_UPSTREAM_ERRORS, "asg-a")) == 2


async def test_on_ec2_each_value_is_also_published_per_host(cloudwatch: Any) -> None:
    pub = CloudWatchPublisher(
        "rlm-test-h", Readings(lambda: 3, lambda: 2, Counter()), group="asg-h",
        client=cloudwatch, metadata=lambda: ("asg-from-tags", "i-0abc"),
    )  # fmt: skip
    assert await pub.publish_once()
    assert pub.group == "asg-h"  # RLM_ASG_NAME wins over the instance's tag
    listed = cloudwatch.list_metrics(Namespace="rlm-test-h", MetricName=METRIC_LIVE_SESSIONS)
    dimension_sets = sorted(
        sorted((d["Name"], d["Value"]) for d in m["Dimensions"]) for m in listed["Metrics"]
    )
    assert dimension_sets == [
        [("AutoScalingGroupName", "asg-h")],  # what the scaling policies track
        [("AutoScalingGroupName", "asg-h"), ("InstanceId", "i-0abc")],  # the dashboard's
    ]
    per_host = points(cloudwatch, "rlm-test-h", METRIC_LIVE_SESSIONS, "asg-h", "i-0abc")
    assert per_host == [3]
    # Another group's series is another series.
    assert points(cloudwatch, "rlm-test-a", METRIC_LIVE_SESSIONS, "asg-b") == []


async def test_a_failed_publication_is_logged_and_its_faults_sent_with_the_next(
    cloudwatch: Any, caplog: pytest.LogCaptureFixture
) -> None:
    dead = boto3.client(
        "cloudwatch",
        endpoint_url=f"http://127.0.0.1:{free_port()}",  # nothing listens there
        region_name=REGION,
        config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1),
    )
    faults = Counter()
    pub = CloudWatchPublisher(
        "rlm-test-b", Readings(lambda: 1, lambda: 0, faults), group="g",
        metadata=lambda: (None, None),
    )  # fmt: skip
    pub._client = dead
    faults.value = 2.0
    assert not await pub.publish_once()
    assert pub.last_error and "Connect" in pub.last_error
    assert "publishing failed" in caplog.text
    pub._client = cloudwatch  # CloudWatch is back
    faults.value = 3.0
    assert await pub.publish_once()
    assert sum(points(cloudwatch, "rlm-test-b", METRIC_SANDBOX_FAULTS, "g")) == 3


async def test_no_group_name_means_no_publication(cloudwatch: Any) -> None:
    pub = CloudWatchPublisher(
        "rlm-test-c", Readings(lambda: 1, lambda: 0, Counter()), client=cloudwatch,
        metadata=lambda: (None, None),
    )  # fmt: skip
    assert not await pub.publish_once()
    assert "no Auto Scaling group name" in (pub.last_error or "")


class _Imds(BaseHTTPRequestHandler):
    token = "tok-123"
    group = "rlm-py-dev-x86_64"

    def do_PUT(self) -> None:
        ok = self.path == "/latest/api/token" and self.headers.get(
            "X-aws-ec2-metadata-token-ttl-seconds"
        )
        self._answer(200 if ok else 400, self.token if ok else "")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != self.token:
            self._answer(401, "")
        elif self.path == ASG_TAG_PATH and self.group:
            self._answer(200, self.group)
        elif self.path == INSTANCE_ID_PATH:
            self._answer(200, "i-0123456789abcdef0")
        else:
            self._answer(404, "")

    def _answer(self, code: int, text: str) -> None:
        body = text.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_: Any) -> None:
        pass


@pytest.fixture
def imds() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Imds)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_group_and_instance_from_the_metadata_service(
    imds: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert instance_metadata(imds) == ("rlm-py-dev-x86_64", "i-0123456789abcdef0")
    monkeypatch.setattr(_Imds, "group", "")  # instance metadata tags off: 404
    assert instance_metadata(imds) == (None, "i-0123456789abcdef0")
    nothing = f"http://127.0.0.1:{free_port()}"  # not on EC2
    assert instance_metadata(nothing, timeout_s=0.5) == (None, None)


def test_the_service_publishes_its_sessions(
    up: ScriptedUpstream, moto_endpoint: str, cloudwatch: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real app with RLM_CLOUDWATCH_NAMESPACE: one session open, one point published."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    up.policy = Router(["FINAL(ok)"])
    env = service_env(
        up, rlm_sandbox="local", rlm_sandbox_pool_size=0,
        rlm_cloudwatch_namespace=CLOUDWATCH_NAMESPACE, rlm_asg_name="asg-live",
        rlm_cloudwatch_interval_s=1,
    )  # fmt: skip
    with ServiceServer(**env) as svc:
        r = httpx.post(
            svc.url + "/v1/chat/completions",
            headers={"Authorization": "Bearer key-alpha"},
            json={"model": "rlm", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert r.status_code == 200, r.text
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = points(cloudwatch, CLOUDWATCH_NAMESPACE, METRIC_LIVE_SESSIONS, "asg-live")
            if got and max(got) >= 1:
                break
            time.sleep(0.5)
        assert got and max(got) >= 1, got
