"""The scripted upstream's helpers: waiting for a server that a test or the stack started."""

from __future__ import annotations

import subprocess
import sys

import pytest

from loadtest.upstream import NotUp, ScriptedUpstream, free_port, wait_until_up


def test_wait_until_up_returns_once_the_server_answers() -> None:
    with ScriptedUpstream() as up:
        wait_until_up(f"{up.base_url}/models", timeout_s=5)


def test_wait_until_up_names_a_process_that_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait(timeout=30)
    with pytest.raises(NotUp, match="the upstream exited with 3"):
        wait_until_up(
            f"http://127.0.0.1:{free_port()}/", timeout_s=30, proc=proc, name="the upstream"
        )


def test_wait_until_up_gives_up_after_its_timeout() -> None:
    url = f"http://127.0.0.1:{free_port()}/readyz"
    with pytest.raises(NotUp, match=r"not ready at .*/readyz after 0 s"):
        wait_until_up(url, timeout_s=0.3, interval_s=0.05)
