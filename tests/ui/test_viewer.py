"""The trajectory viewer in real headless Chromium against the real service.

One live run is watched from the session list as its iterations arrive, its collapsed
output is expanded, the finished run is reopened from the list (a replay), hostile model
output is checked to stay text, and official-format JSONL files are opened by upload and
by paste.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rlm.core.types import (
    CodeBlock,
    ModelUsageSummary,
    REPLResult,
    RLMChatCompletion,
    RLMIteration,
    RLMMetadata,
    UsageSummary,
)
from rlm.logger.rlm_logger import RLMLogger

from service.rlm.trajectory import Redactor, TrajectoryWriter
from tests.ui.conftest import API_KEY, CHILD_QUERY, FINAL_HOSTILE, HOSTILE, ROOT_QUERY, Service, Tab

ROOT_ITERATIONS = "main .trajectory > .run-body > .run > .iterations > .iteration"


def sign_in(tab: Tab, service: Service) -> None:
    page = tab.page
    page.goto(f"{service.base_url}/ui")
    page.locator("#api-key").fill(API_KEY)
    page.locator("#key-form button[type=submit]").click()
    page.locator("h2", has_text="Sessions").wait_for()


def assert_inert(tab: Tab) -> None:
    """Hostile text stayed text: no dialog, no injected element, no handler ran."""
    page = tab.page
    assert tab.dialogs == [], f"a dialog opened: {tab.dialogs}"
    scripts = page.evaluate(
        "[...document.querySelectorAll('script')].map(s => s.getAttribute('src'))"
    )
    assert scripts == ["/ui/static/app.js"], scripts
    assert page.evaluate("document.querySelectorAll('img, iframe, object, embed, b').length") == 0
    assert page.evaluate("window.__pwned === undefined")
    assert tab.errors == [], f"page errors: {tab.errors}"


def test_live_run_then_replay(viewer_service: Service, tab: Tab, tmp_path: Path) -> None:
    page = tab.page
    sign_in(tab, viewer_service)
    assert page.evaluate("sessionStorage.length") == 1  # the key, kept for this tab only

    thread, out = viewer_service.chat_in_thread(ROOT_QUERY, "viewer-live")
    # The list refreshes itself; the running run appears and opens from it.
    row = page.locator("section[data-session='viewer-live'] tr.run-row").first
    row.locator(".badge", has_text="running").wait_for()
    row.locator("a").click()
    status = page.locator(".run-title .badge")
    status.filter(has_text="running").wait_for()
    page.locator(ROOT_ITERATIONS).first.wait_for()
    seen = page.locator(ROOT_ITERATIONS).count()
    assert thread.is_alive() and seen < 5, (
        f"the run finished before the page saw it live ({seen} iterations)"
    )
    page.evaluate("window.__view = document.querySelector('main .trajectory')")
    # More iterations arrive into the same page: streamed in, not reloaded.
    page.locator(ROOT_ITERATIONS).nth(seen).wait_for()
    assert page.evaluate("window.__view === document.querySelector('main .trajectory')")
    status.filter(has_text="done").wait_for(timeout=60_000)
    thread.join(timeout=30)
    assert "error" not in out, out.get("error")
    rlm = out["body"]["rlm"]
    assert page.url.endswith(f"#/run/viewer-live/{rlm['trajectory_id']}")
    assert page.locator(ROOT_ITERATIONS).count() == 5

    # Iteration 1 printed 40 lines: collapsed until "show more".
    first = page.locator(ROOT_ITERATIONS).first
    stdout = first.locator(".block .long.stdout")
    assert "line 39" not in stdout.inner_text()
    stdout.locator("button.show-more").click()
    assert "line 39" in stdout.inner_text()
    assert "show less" in stdout.locator("button.show-more").inner_text()

    # Hostile markup is shown as the text it is.
    assert HOSTILE in first.locator(".long.response").first.inner_text()
    assert FINAL_HOSTILE in page.locator(".run-body > .run > .final").inner_text()
    assert_inert(tab)

    # Open the finished run from the list: a replay of the same events.
    page.locator("nav.crumbs a", has_text="Sessions").click()
    done_row = page.locator("section[data-session='viewer-live'] tr.run-row").first
    done_row.locator(".badge", has_text="done").wait_for()
    page.screenshot(path=str(tmp_path / "sessions.png"), full_page=True)
    done_row.locator("a").click()
    status.filter(has_text="done").wait_for()
    assert page.locator(ROOT_ITERATIONS).count() == 5
    totals = {
        key: page.locator(f".totals [data-total='{key}'] dd").inner_text()
        for key in ("iterations", "sub-calls", "model calls", "tokens", "wall time")
    }
    assert totals["iterations"] == "5"
    assert totals["sub-calls"] == str(rlm["sub_calls"]) == "2"
    assert totals["tokens"].startswith(f"{out['body']['usage']['total_tokens']:,}")
    assert totals["wall time"].endswith(" s")
    # The recursive run is nested under the code block that started it, with its own iterations.
    second = page.locator(ROOT_ITERATIONS).nth(1)
    assert (
        second.locator(".call.kind-llm .long.prompt")
        .inner_text()
        .endswith("summarize <b>this</b>: abcabcabca")
    )
    child = second.locator(".call.kind-rlm .child-run .run.depth-1")
    assert CHILD_QUERY in second.locator(".call.kind-rlm .long.prompt").first.inner_text()
    assert child.locator(".iteration").count() == 2
    assert "child sees 30 characters" in child.locator(".long.stdout").inner_text()
    assert "child-done <b>3</b>" in child.locator(".final").inner_text()
    assert "2 iterations" in second.locator(".call.kind-rlm > .call-head .meta").inner_text()
    assert_inert(tab)

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\nviewer screenshot: {shot}")


def official_jsonl(service: Service) -> str:
    """A finished run written by the service's TrajectoryWriter (the official JSONL shape)."""
    body = service.chat(f"{ROOT_QUERY} (fast)", "viewer-file")
    run = service.get(f"/v1/sessions/viewer-file/runs/{body['rlm']['trajectory_id']}")
    return "".join(_writer_lines(run["events"]))


def _writer_lines(events: list[dict[str, Any]]) -> list[str]:
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        writer = TrajectoryWriter(d, "run", Redactor([API_KEY]))
        for ev in events:
            writer(ev)
        writer.write()
        return writer.path.read_text(encoding="utf-8").splitlines(keepends=True)


def library_jsonl(directory: Path) -> str:
    """A trajectory written by the official RLM library's own logger, with a recursive call
    whose child trajectory rides in the call's ``metadata`` (as the library records it)."""
    child_log = RLMLogger()
    child_log.log_metadata(_metadata("gpt-5-mini"))
    child_log.log(
        RLMIteration(
            prompt=[{"role": "user", "content": "count the words"}],
            response="FINAL(7 words)",
            code_blocks=[],
            final_answer="7 words",
            iteration_time=0.4,
        )
    )
    sub_llm = RLMChatCompletion(
        root_model="gpt-5-mini", prompt="hi", response="hello from the sub-model",
        usage_summary=_usage("gpt-5-mini", 5, 7), execution_time=0.7,
    )  # fmt: skip
    sub_rlm = RLMChatCompletion(
        root_model="gpt-5-mini", prompt="count the words", response="7 words",
        usage_summary=_usage("gpt-5-mini", 20, 3), execution_time=0.5,
        metadata=child_log.get_trajectory(),
    )  # fmt: skip
    code = "x = llm_query('hi')\nn = rlm_query('count the words')\nprint(x, n)"
    logger = RLMLogger(log_dir=str(directory))
    logger.log_metadata(_metadata("gpt-5"))
    logger.log(
        RLMIteration(
            prompt=[{"role": "system", "content": "..."}, {"role": "user", "content": "count"}],
            response=f"Peek first. </pre><script>alert(3)</script>\n```repl\n{code}\n```",
            code_blocks=[
                CodeBlock(
                    code=code,
                    result=REPLResult(
                        stdout="hello from the sub-model 7 words\n", stderr="",
                        locals={"x": "hello from the sub-model"}, execution_time=1.25,
                        rlm_calls=[sub_llm, sub_rlm],
                    ),
                )
            ],
            iteration_time=2.5,
        )
    )  # fmt: skip
    logger.log(
        RLMIteration(
            prompt=[], response="FINAL(42)", code_blocks=[], final_answer="42", iteration_time=1.0
        )
    )
    assert logger.log_file_path is not None
    return Path(logger.log_file_path).read_text(encoding="utf-8")


def _metadata(model: str) -> RLMMetadata:
    return RLMMetadata(
        root_model=model, max_depth=1, max_iterations=10, backend="openai",
        backend_kwargs={"model_name": model}, environment_type="local", environment_kwargs={},
    )  # fmt: skip


def _usage(model: str, prompt: int, completion: int) -> UsageSummary:
    return UsageSummary({model: ModelUsageSummary(1, prompt, completion)})


def test_open_official_jsonl_by_upload_and_paste(
    viewer_service: Service, tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    path = tmp_path / "run.jsonl"
    path.write_text(official_jsonl(viewer_service), encoding="utf-8")
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["type"] == "metadata" and len(lines) == 6

    sign_in(tab, viewer_service)
    page.locator("header.top a", has_text="Open file").click()
    page.locator("#file-input").set_input_files(str(path))
    view = page.locator(".file-result .trajectory")
    view.wait_for()
    assert view.locator(".run-body > .run > .iterations > .iteration").count() == 5
    assert HOSTILE in view.locator(".long.response").first.inner_text()
    stdout = view.locator(".long.stdout").first
    stdout.locator("button.show-more").click()
    assert "line 39" in stdout.inner_text()
    # The sub-calls recorded in rlm_calls hang under their code block.
    second = view.locator(".iteration").nth(1)
    assert second.locator(".call").count() == 2
    assert FINAL_HOSTILE in view.locator(".final").inner_text()
    assert view.locator(".run-title .badge").inner_text() == "done"

    page.locator("#paste").fill(library_jsonl(tmp_path / "library"))
    page.locator("#open-paste").click()
    view.locator(".run-body > .run > .run-meta", has_text="model gpt-5 · run file").wait_for()
    root = view.locator(".run-body > .run > .iterations > .iteration")
    assert root.count() == 2
    assert view.locator(".run-query").inner_text().endswith("count")  # from the first prompt
    assert (
        "</pre><script>alert(3)</script>" in root.first.locator(".long.response").first.inner_text()
    )
    call = root.first.locator(".call.kind-llm")
    assert "5 → 7 tok" in call.locator(".meta").inner_text()
    assert "hello from the sub-model" in call.locator(".long.answer").inner_text()
    child = root.first.locator(".call.kind-rlm .child-run .run.depth-1")
    assert "FINAL(7 words)" in child.locator(".iteration").inner_text()
    assert "7 words" in child.locator(".final").inner_text()
    assert "42" in view.locator(".run-body > .run > .final").inner_text()
    assert page.locator(".totals [data-total='tokens'] dd").inner_text().startswith("35 ")
    assert page.locator(".totals [data-total='wall time'] dd").inner_text() == "3.50 s"
    assert_inert(tab)
    page.screenshot(path=str(tmp_path / "file.png"), full_page=True)
    print(f"\nfile view screenshot: {tmp_path / 'file.png'}")

    page.locator("#paste").fill("{not json")
    page.locator("#open-paste").click()
    page.locator(".file-result .problem", has_text="not JSON").wait_for()


def test_bad_key_is_refused_and_asked_again(viewer_service: Service, tab: Tab) -> None:
    page = tab.page
    page.goto(f"{viewer_service.base_url}/ui")
    page.locator("#api-key").fill("wrong-key")
    page.locator("#key-form button[type=submit]").click()
    page.locator("#key-form .problem", has_text="valid API key").wait_for()
    assert page.evaluate("sessionStorage.length") == 0
    t0 = time.monotonic()
    sign_in(tab, viewer_service)
    assert time.monotonic() - t0 < 10
