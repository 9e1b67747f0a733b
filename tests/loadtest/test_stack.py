"""The load-test stack's clean-up finds what a killed service left of runsc sandboxes."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from loadtest.stack import remove_containers
from sandbox.config import SandboxConfig


def test_a_bundle_without_a_sandbox_is_reported_and_removed(docker_ready: None) -> None:
    instance = f"rlm-test-stack-{uuid.uuid4().hex[:8]}"
    bundle = Path(SandboxConfig().state_dir) / "bundles" / f"rlm-{instance}-0123abcd"
    bundle.mkdir(parents=True)
    (bundle / "rootfs").mkdir()
    try:
        assert remove_containers(instance) == [bundle.name]
        assert not bundle.exists()
        assert remove_containers(instance) == []
    finally:
        shutil.rmtree(bundle, ignore_errors=True)
