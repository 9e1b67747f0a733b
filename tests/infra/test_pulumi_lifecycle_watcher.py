"""The lifecycle watcher the boot script installs, run for real: it waits for the instance
metadata service to report `Terminated`, stops the service (a fake `systemctl` on PATH),
and only then completes the lifecycle action through boto3 (against a loopback endpoint
that records the request as Auto Scaling would receive it)."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.components.userdata import LIFECYCLE_HOOK, SERVICE_UNIT, lifecycle_watcher

INSTANCE = "i-0123456789abcdef0"
GROUP = "rlm-py-test-mixed"
ARGS = ["--region", "eu-west-1", "--group", GROUP, "--hook", LIFECYCLE_HOOK]


class _Fake(http.server.BaseHTTPRequestHandler):
    """IMDSv2 (token, lifecycle state, instance id) and the Auto Scaling query API."""

    states: list[str]
    calls: list[tuple[float, dict[str, list[str]]]]
    auth: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: str) -> None:
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self) -> None:
        assert self.path == "/latest/api/token"
        assert self.headers["X-aws-ec2-metadata-token-ttl-seconds"]
        self._answer(200, "token-1")

    def do_GET(self) -> None:
        if self.headers.get("X-aws-ec2-metadata-token") != "token-1":
            self._answer(401, "")  # IMDSv2 only
        elif self.path == "/latest/meta-data/autoscaling/target-lifecycle-state":
            state = self.states.pop(0) if len(self.states) > 1 else self.states[0]
            self._answer(200, state)
        elif self.path == "/latest/meta-data/instance-id":
            self._answer(200, INSTANCE)
        else:
            self._answer(404, "")

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        form = urllib.parse.parse_qs(self.rfile.read(length).decode())
        self.calls.append((time.time(), form))
        self.auth.append(self.headers.get("Authorization", ""))
        self._answer(
            200,
            '<CompleteLifecycleActionResponse xmlns="http://autoscaling.amazonaws.com/doc/'
            '2011-01-01/"><CompleteLifecycleActionResult/><ResponseMetadata><RequestId>1'
            "</RequestId></ResponseMetadata></CompleteLifecycleActionResponse>",
        )


@pytest.fixture
def fake_aws() -> Iterator[tuple[str, type[_Fake]]]:
    handler = type("Handler", (_Fake,), {"states": ["InService", "InService", "Terminated"]})
    handler.calls = []
    handler.auth = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def test_the_watcher_drains_then_completes_the_termination(tmp_path: Path, fake_aws):
    url, handler = fake_aws
    watcher = tmp_path / "rlm-py-lifecycle"
    watcher.write_text(lifecycle_watcher())
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stopped = tmp_path / "stopped"
    # The drain takes a moment; the lifecycle action must come after it, not before.
    (bin_dir / "systemctl").write_text(
        f'#!/bin/sh\nsleep 0.5\necho "$@" > {stopped}\ndate +%s.%N >> {stopped}\n'
    )
    (bin_dir / "systemctl").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RLM_IMDS_URL": url,
        "AWS_ENDPOINT_URL": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [sys.executable, str(watcher), *ARGS],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    args, stopped_at = stopped.read_text().splitlines()
    assert args == f"stop {SERVICE_UNIT}"
    [(called_at, form)] = handler.calls
    assert form["Action"] == ["CompleteLifecycleAction"]
    assert form["AutoScalingGroupName"] == [GROUP]
    assert form["LifecycleHookName"] == [LIFECYCLE_HOOK]
    assert form["InstanceId"] == [INSTANCE]
    assert form["LifecycleActionResult"] == ["CONTINUE"]
    assert called_at >= float(stopped_at)
    assert "draining" in done.stdout
    # Signed for the region it was given (the endpoint is the test's).
    assert "eu-west-1" in handler.auth[0]


def test_the_watcher_keeps_waiting_while_the_host_is_in_service(tmp_path: Path, fake_aws):
    url, handler = fake_aws
    handler.states = ["InService"]
    watcher = tmp_path / "rlm-py-lifecycle"
    watcher.write_text(lifecycle_watcher())
    env = {**os.environ, "RLM_IMDS_URL": url, "AWS_ENDPOINT_URL": url}
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, str(watcher), *ARGS],
            env=env,
            capture_output=True,
            timeout=7,
        )
    assert handler.calls == []
