"""The load-test stack: its clean-up finds what a killed service left of runsc sandboxes, and
its sessions live in a store of its own."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import httpx

from loadtest.haystack import NEEDLE_QUERY, filler, with_needle
from loadtest.stack import LocalStack, StackConfig, remove_containers
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


def test_a_stack_keeps_its_sessions_in_a_store_of_its_own() -> None:
    # A benchmark's sessions (hundreds of MB of snapshots) must neither outlive its stack nor
    # meet the next run's: a reused id would restore them, or answer 410.
    with LocalStack(StackConfig(sandbox="local", policy="needle-answer", pool_size=0)) as stack:
        store = stack.store_dir
        assert store is not None and store.is_dir()
        body = {
            "model": "rlm",
            "messages": [{"role": "user", "content": NEEDLE_QUERY}],
            "rlm": {"context": with_needle(filler(50), "4242", at=10)},
        }
        r = httpx.post(
            f"{stack.base_url}/v1/chat/completions", json=body, timeout=60,
            headers={"authorization": f"Bearer {stack.api_key}", "x-rlm-session-id": "mine"},
        )  # fmt: skip
        assert r.status_code == 200, r.text
        assert "4242" in r.json()["choices"][0]["message"]["content"]
        assert [p.name for p in store.rglob("mine.*")]  # its lease is in the stack's store
    assert not store.exists()
