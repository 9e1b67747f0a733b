"""Fixtures for the viewer tests: the real service on loopback, a scripted model, Chromium.

The service runs as ``python -m service`` (local sandbox, one warm sandbox, API key
``test-key``) against a scripted upstream whose root model writes hostile markup and code
that sleeps, so a browser can watch iterations arrive. Chromium is Debian's: when it or the
Playwright package is missing the tests fail and say what to install; they never skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from loadtest.upstream import (
    NotUp,
    Reply,
    ScriptedUpstream,
    free_port,
    is_root_request,
    text_of,
    wait_until_up,
)

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
CHROMIUM = os.environ.get("RLM_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip

HOSTILE = '<script>alert(1)</script><img src=x onerror="window.__pwned=1;alert(2)">'
FINAL_HOSTILE = "<script>alert('final')</script> the context holds 30 characters"
ROOT_QUERY = "How many characters does the context hold?"
CHILD_QUERY = "child task: count the letters"
TIMELINE_QUERY = "Where does the time go? (timeline)"
PRICED_QUERY = "Answer at once (priced)"
UNPRICED_MODEL = "local-llama"  # callable (RLM_SUB_MODELS) but without a price
# The batch's sub-model delays by input: the first input answers last.
BATCH_DELAYS_S = (0.9, 0.6, 0.3)


def timeline_policy(query: str, step: int) -> Reply:
    """The timeline run: a batch of three (answers arrive in reverse input order), a call
    to a model without a price, a recursive run, then the answer."""
    if step == 0:
        code = (
            "parts = llm_query_batched(['batch item 0', 'batch item 1', 'batch item 2'])\n"
            f"extra = llm_query('an unpriced call', model='{UNPRICED_MODEL}')\n"
            f"child = rlm_query('{CHILD_QUERY}', context)\n"
            "print(parts, extra, child)"
        )
        return Reply(f"Fan out.\n```repl\n{code}\n```", delay_s=0.3)
    return Reply("FINAL(the time went to the batch)", delay_s=0.2)


def viewer_policy(body: dict[str, Any]) -> str | Reply:
    """A root model that takes a few seconds over four code iterations, then answers.

    Iteration 1 writes hostile markup and prints 40 lines (collapsed with "show more");
    iteration 2 makes an llm_query and a recursive rlm_query; each block sleeps so the
    iterations arrive one by one. A query containing "fast" skips the sleeps.
    """
    messages = body.get("messages") or []
    if not is_root_request(body):
        prompt = text_of(messages[-1])
        if prompt.startswith("batch item "):
            return Reply(f"item {prompt[-1]} done", delay_s=BATCH_DELAYS_S[int(prompt[-1])])
        return f"sub-model answer to: {prompt[:40]}"
    query = text_of(messages[-1])
    step = sum(1 for m in messages if m.get("role") == "assistant")
    if TIMELINE_QUERY in query:
        return timeline_policy(query, step)
    if PRICED_QUERY in query:
        return "FINAL(42)"
    if CHILD_QUERY in query:
        if step == 0:
            return "The child looks.\n```repl\nprint('child sees', len(context), 'characters')\n```"
        return "FINAL(child-done <b>3</b>)"
    nap = "" if "fast" in query else "import time; time.sleep(1)\n"
    if step == 0:
        code = f"{nap}for i in range(40):\n    print('line', i)"
        return Reply(
            f"Let me look at the context first. {HOSTILE}\n```repl\n{code}\n```", delay_s=0.2
        )
    if step == 1:
        code = (
            f"{nap}summary = llm_query('summarize <b>this</b>: ' + context[:10])\n"
            f"counted = rlm_query('{CHILD_QUERY}', context)\n"
            "print(summary)\nprint(counted)"
        )
        return Reply(f"Ask a sub-model and a recursive run.\n```repl\n{code}\n```", delay_s=0.2)
    if step in (2, 3):
        return Reply(
            f"Step {step + 1}.\n```repl\n{nap}n = len(context)\nprint('n =', n)\n```", delay_s=0.2
        )
    return Reply(f"FINAL({FINAL_HOSTILE})", delay_s=0.2)


@dataclass
class Service:
    base_url: str
    log_path: Path

    def chat(self, query: str, session_id: str, timeout_s: float = 90) -> dict[str, Any]:
        """One RLM turn through the real HTTP API; returns the JSON response body."""
        response = httpx.post(
            f"{self.base_url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {API_KEY}", "x-rlm-session-id": session_id},
            json={
                "model": "rlm",
                "messages": [{"role": "user", "content": query}],
                "rlm": {"context": "abc" * 10},
            },
            timeout=timeout_s,
        )
        response.raise_for_status()
        return response.json()

    def chat_in_thread(
        self, query: str, session_id: str
    ) -> tuple[threading.Thread, dict[str, Any]]:
        out: dict[str, Any] = {}

        def work() -> None:
            try:
                out["body"] = self.chat(query, session_id)
            except Exception as exc:  # noqa: BLE001 - reported by the test that waits for it
                out["error"] = exc

        thread = threading.Thread(target=work, name="viewer-chat", daemon=True)
        thread.start()
        return thread, out

    def get(self, path: str) -> Any:
        response = httpx.get(
            f"{self.base_url}{path}", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
        )
        response.raise_for_status()
        return response.json()


@pytest.fixture(scope="session")
def viewer_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """``python -m service`` on a free loopback port, against the scripted upstream."""
    workdir = tmp_path_factory.mktemp("viewer-service")
    log_path = workdir / "service.log"
    port = free_port()
    with ScriptedUpstream(viewer_policy, record=False) as upstream:
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "RLM_HOST": "127.0.0.1",
            "RLM_PORT": str(port),
            "RLM_SANDBOX": "local",
            "RLM_SANDBOX_POOL_SIZE": "1",
            "RLM_API_KEYS": API_KEY,
            "OPENAI_BASE_URL": upstream.base_url,
            "OPENAI_API_KEY": "x",
            "RLM_MAX_DEPTH": "1",
            "RLM_SUB_MODELS": f"gpt-5-mini,gpt-5,{UNPRICED_MODEL}",
            "RLM_LOG_LEVEL": "warning",
            # A store of this test run's own: sessions of earlier runs never come back here.
            "RLM_SESSION_STORE": f"file://{workdir / 'store'}",
        }
        env.pop("RLM_TRAJECTORY_DIR", None)
        # The shipped prices of the default models (the cost table's figures), no caps.
        env.update(RLM_ROOT_MODEL="gpt-5", RLM_SUB_MODEL="gpt-5-mini")
        for name in ("RLM_PRICES", "RLM_PRICES_FILE", "RLM_MAX_COST_USD", "RLM_KEY_DAILY_USD"):
            env.pop(name, None)
        with log_path.open("wb") as log:
            # cwd is an empty directory so no stray .env file changes the configuration.
            proc = subprocess.Popen(
                [sys.executable, "-m", "service"], cwd=workdir, env=env, stdout=log, stderr=log
            )
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, base_url, log_path)
            yield Service(base_url, log_path)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    try:
        wait_until_up(f"{base_url}/readyz", timeout_s=60, proc=proc, name="the service")
    except NotUp as exc:
        pytest.fail(f"{exc}:\n{log_path.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's headless Chromium driven by Playwright (never a downloaded browser)."""
    if shutil.which(CHROMIUM) is None and not Path(CHROMIUM).exists():
        pytest.fail(
            f"Chromium not found at {CHROMIUM}: apt-get install chromium chromium-driver "
            "(the viewer tests need a real browser; they do not skip)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "the Playwright package is missing: pip install playwright (do not run `playwright install`)"
        )
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@dataclass
class Tab:
    """A page plus what it must never do: open a dialog or log a page error."""

    page: Any
    dialogs: list[str]
    errors: list[str]


@pytest.fixture
def tab(browser: Any) -> Iterator[Tab]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(20_000)
    dialogs: list[str] = []
    errors: list[str] = []

    def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "console",
        lambda msg: (
            errors.append(msg.text) if msg.type == "error" and not _benign(msg.text) else None
        ),
    )
    try:
        yield Tab(page, dialogs, errors)
    finally:
        context.close()


def _benign(text: str) -> bool:
    # The key form's first request is expected to be refused before a key is entered.
    return bool(re.search(r"401 \(Unauthorized\)", text))
