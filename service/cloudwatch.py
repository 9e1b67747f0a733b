"""Host metrics to CloudWatch, for the fleet's scaling policies and alarms (infra/).

Every ``RLM_CLOUDWATCH_INTERVAL_S`` the host publishes, under ``RLM_CLOUDWATCH_NAMESPACE``
with the dimension ``AutoScalingGroupName``, what limits it: live sessions and running
requests (gauges), and the sandbox faults and upstream errors since the last publication
(counts). CloudWatch averages the gauges over the group's hosts, which is what target
tracking wants. On EC2 each value is also published per host (``AutoScalingGroupName`` and
``InstanceId``), for the dashboard's per-host lines.

The group's name is ``RLM_ASG_NAME``, else the instance's ``aws:autoscaling:groupName`` tag
read from the instance metadata service (IMDSv2, with instance metadata tags on). A host that
cannot publish (no credentials, throttling, CloudWatch down) logs it and tries again at the
next interval: metrics never hold up requests, and nothing here raises into the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.constants import (
    METRIC_LIVE_SESSIONS,
    METRIC_RUNNING_REQUESTS,
    METRIC_SANDBOX_FAULTS,
    METRIC_UPSTREAM_ERRORS,
)

log = logging.getLogger(__name__)

IMDS = "http://169.254.169.254"
ASG_TAG_PATH = "/latest/meta-data/tags/instance/aws:autoscaling:groupName"
INSTANCE_ID_PATH = "/latest/meta-data/instance-id"


@dataclass(frozen=True)
class Readings:
    """What the host reads at each publication."""

    live_sessions: Callable[[], int]
    running_requests: Callable[[], int]
    sandbox_faults_total: Callable[[], float]  # counters: the publisher sends deltas
    upstream_errors_total: Callable[[], float] = lambda: 0.0


def instance_metadata(base: str = IMDS, timeout_s: float = 1.0) -> tuple[str | None, str | None]:
    """(Auto Scaling group from the instance's tags, instance id) from IMDSv2; None for each
    that cannot be read (not on EC2, instance metadata tags off)."""
    try:
        put = urllib.request.Request(  # noqa: S310 - the metadata service's fixed URL
            base + "/latest/api/token",
            method="PUT",
            headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
        )
        with urllib.request.urlopen(put, timeout=timeout_s) as r:  # noqa: S310 - fixed URL
            token = r.read().decode()
    except (OSError, ValueError):
        return None, None
    found: list[str | None] = []
    for path in (ASG_TAG_PATH, INSTANCE_ID_PATH):
        get = urllib.request.Request(  # noqa: S310 - the metadata service's fixed URL
            base + path, headers={"X-aws-ec2-metadata-token": token}
        )
        try:
            with urllib.request.urlopen(get, timeout=timeout_s) as r:  # noqa: S310 - fixed URL
                found.append(r.read().decode().strip() or None)
        except (OSError, ValueError):
            found.append(None)
    return found[0], found[1]


class CloudWatchPublisher:
    def __init__(
        self,
        namespace: str,
        readings: Readings,
        *,
        group: str | None = None,
        interval_s: float = 60.0,
        client: Any = None,
        metadata: Callable[[], tuple[str | None, str | None]] = instance_metadata,
    ) -> None:
        self.namespace = namespace
        self.readings = readings
        self.group = group
        self.instance: str | None = None
        self.interval_s = interval_s
        self._client = client
        self._metadata = metadata
        self._looked_up = False
        self._seen = {
            METRIC_SANDBOX_FAULTS: readings.sandbox_faults_total(),
            METRIC_UPSTREAM_ERRORS: readings.upstream_errors_total(),
        }
        self._task: asyncio.Task[None] | None = None
        self.published = 0  # successful publications (tests and /metrics readers)
        self.last_error: str | None = None

    def client(self) -> Any:
        if self._client is None:
            import boto3  # the aws extra; only hosts that publish need it

            self._client = boto3.client("cloudwatch")
        return self._client

    def values(self) -> dict[str, float]:
        """This interval's values (the counts are the change since the last publication)."""
        out = {
            METRIC_LIVE_SESSIONS: float(self.readings.live_sessions()),
            METRIC_RUNNING_REQUESTS: float(self.readings.running_requests()),
        }
        totals = {
            METRIC_SANDBOX_FAULTS: self.readings.sandbox_faults_total(),
            METRIC_UPSTREAM_ERRORS: self.readings.upstream_errors_total(),
        }
        for name, total in totals.items():
            out[name] = max(0.0, total - self._seen[name])
            self._seen[name] = total
        return out

    def metric_data(self, values: dict[str, float]) -> list[dict[str, Any]]:
        """The data points: per group (scaling, alarms) and, on EC2, per host too."""
        group = [{"Name": "AutoScalingGroupName", "Value": self.group or ""}]
        dimension_sets = [group]
        if self.instance:
            dimension_sets.append([*group, {"Name": "InstanceId", "Value": self.instance}])
        return [
            {"MetricName": name, "Dimensions": dims, "Value": value, "Unit": "Count"}
            for name, value in values.items()
            for dims in dimension_sets
        ]

    async def publish_once(self) -> bool:
        """One publication; False (logged) when it could not be made."""
        if not self._looked_up:
            group, self.instance = await asyncio.to_thread(self._metadata)
            self.group = self.group or group
            self._looked_up = self.group is not None
            if self.group is None:
                self.last_error = "no Auto Scaling group name (RLM_ASG_NAME, instance tags)"
                log.warning("cloudwatch: %s; not publishing", self.last_error)
                return False
        values = self.values()
        try:
            await asyncio.to_thread(
                self.client().put_metric_data,
                Namespace=self.namespace,
                MetricData=self.metric_data(values),
            )
        except Exception as exc:  # noqa: BLE001 - any fault of CloudWatch or the credentials
            self.last_error = f"{type(exc).__name__}: {exc}"[:300]
            # This interval's counts are sent with the next one.
            for name in (METRIC_SANDBOX_FAULTS, METRIC_UPSTREAM_ERRORS):
                self._seen[name] -= values[name]
            log.warning(
                "cloudwatch: publishing failed (%s); retrying next interval", self.last_error
            )
            return False
        self.published += 1
        self.last_error = None
        return True

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="cloudwatch")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.publish_once()

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
