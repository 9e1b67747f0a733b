"""Time and money in the viewer, in real headless Chromium against the real service.

A scripted run fans out a batch of three sub-calls whose answers arrive in reverse input
order, calls a model without a price, and opens a recursive run. Its page must draw the
timeline's lanes with one bar per call, the batch in input order and running at once,
tooltips naming kind, duration, model and cost, and the cost by model from the service's
meter (the unpriced model "unknown", never $0); the sessions list shows each run's cost.
The same events opened as a file (no summary: the live path) give the same lanes and the
events' own cost sums.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.ui.conftest import (
    PRICED_QUERY,
    TIMELINE_QUERY,
    UNPRICED_MODEL,
    Service,
    Tab,
)
from tests.ui.test_viewer import assert_inert, sign_in

NOT_REPORTED = "\u2013"  # an en dash: the events carry no cached-token counts
LANES = "main .timeline-panel .tl-lane[data-lane]"


def fmt_usd(value: float | None) -> str:
    """timeline.js's fmtUsd, for the figures the page must show."""
    if value is None:
        return "unknown"
    if value == 0:
        return "$0.00"
    if value >= 1:
        return f"${value:.2f}"
    if value >= 0.01:
        return f"${value:.4f}"
    return f"${value:.6f}" if value >= 0.000001 else "< $0.000001"


def lane_rows(page: Any, lane: str) -> list[list[str]]:
    """Each row of a lane: its bars as kind + batch index, left to right in the DOM."""
    return page.evaluate(
        """(lane) => [...document.querySelectorAll(
            `main .timeline-panel .tl-lane[data-lane='${lane}'] .tl-track`)]
            .map((t) => [...t.querySelectorAll('.tl-bar')]
            .map((b) => b.dataset.kind + (b.dataset.index ?? '')))""",
        lane,
    )


def test_run_page_shows_timeline_and_cost_by_model(
    viewer_service: Service, tab: Tab, tmp_path: Path
) -> None:
    page = tab.page
    body = viewer_service.chat(TIMELINE_QUERY, "viewer-timeline")
    rlm = body["rlm"]
    run_id = rlm["trajectory_id"]
    by_model = rlm["usage_by_model"]
    assert set(by_model) == {"gpt-5", "gpt-5-mini", UNPRICED_MODEL}
    assert rlm["cost_usd"] is None and by_model[UNPRICED_MODEL]["priced"] is False
    priced = viewer_service.chat(PRICED_QUERY, "viewer-timeline")["rlm"]
    assert priced["cost_usd"] > 0
    # The batch's answers arrived last input first: the page's order is its own doing.
    run = viewer_service.get(f"/v1/sessions/viewer-timeline/runs/{run_id}")
    arrived = [e["batch_index"] for e in run["events"] if "batch_index" in e]
    assert arrived == [2, 1, 0]

    # The sessions list: cost per run, "unknown" when a model has no price.
    sign_in(tab, viewer_service)
    section = page.locator("section[data-session='viewer-timeline']")
    cost = section.locator(f"tr.run-row[data-run='{priced['trajectory_id']}'] td.cost")
    cost.wait_for()
    assert cost.inner_text() == fmt_usd(priced["cost_usd"])
    assert cost.inner_text().startswith("$0.0") and cost.inner_text() != "$0.00"
    unknown = section.locator(f"tr.run-row[data-run='{run_id}'] td.cost")
    assert unknown.inner_text() == "unknown"
    assert f"{UNPRICED_MODEL}: 1 call, unknown (no price)" in unknown.get_attribute("title")
    assert [h.strip() for h in section.locator("th").all_inner_texts()][6] == "cost"

    section.locator(f"tr.run-row[data-run='{run_id}'] a").click()
    page.locator(".run-title .badge", has_text="done").wait_for()

    # Lanes: root model calls, code, sub-calls, then the recursive run's model and code.
    page.locator(f"{LANES}[data-lane='code-1'] .tl-bar").wait_for()
    lanes = page.locator(LANES)
    assert [lanes.nth(i).get_attribute("data-lane") for i in range(lanes.count())] == [
        "model-0", "code-0", "calls-1", "model-1", "code-1",
    ]  # fmt: skip
    assert lanes.nth(0).locator(".tl-label").inner_text() == "root model calls"
    counts = {
        lane: page.locator(f"{LANES}[data-lane='{lane}'] .tl-bar").count()
        for lane in ("model-0", "code-0", "calls-1", "model-1", "code-1")
    }
    assert counts == {"model-0": 2, "code-0": 1, "calls-1": 5, "model-1": 2, "code-1": 1}
    # The batch in input order, one row each (they ran at once); the later calls reuse row 1.
    assert lane_rows(page, "calls-1") == [["llm0", "llm", "rlm"], ["llm1"], ["llm2"]]
    bar = {i: page.locator(f".tl-bar[data-kind='llm'][data-index='{i}']") for i in range(3)}
    boxes = {i: b.bounding_box() for i, b in bar.items()}
    assert max(b["x"] for b in boxes.values()) < min(b["x"] + b["width"] for b in boxes.values())
    assert boxes[0]["width"] > boxes[1]["width"] > boxes[2]["width"]  # 0.9 s, 0.6 s, 0.3 s
    code_box = page.locator(f"{LANES}[data-lane='code-0'] .tl-bar").bounding_box()
    assert code_box["x"] <= boxes[0]["x"] and code_box["width"] > boxes[0]["width"]

    # Tooltips: kind, duration, model, cost.
    tip = bar[0].get_attribute("title")
    assert tip.startswith("sub-call llm_query") and "input 1 of 3" in tip
    assert "duration " in tip and "model gpt-5-mini" in tip and "cost $0.0" in tip
    unpriced = page.locator(
        f"{LANES}[data-lane='calls-1'] .tl-bar[data-kind='llm']:not([data-batch])"
    )
    assert f"model {UNPRICED_MODEL}" in unpriced.get_attribute("title")
    assert "cost unknown" in unpriced.get_attribute("title")
    root_call = page.locator(f"{LANES}[data-lane='model-0'] .tl-bar").first.get_attribute("title")
    assert root_call.startswith("model call · iteration 1")
    assert "model gpt-5\n" in root_call and "cost $0.0" in root_call
    code_tip = page.locator(f"{LANES}[data-lane='code-0'] .tl-bar").get_attribute("title")
    assert code_tip.startswith("code block · iteration 1, block 1") and "cost" not in code_tip
    child_tip = page.locator(".tl-bar[data-kind='rlm']").get_attribute("title")
    assert "recursive run" in child_tip and "2 iterations" in child_tip
    assert "model gpt-5-mini" in child_tip and "cost $0.0" in child_tip

    # The tree lists the batch in input order too.
    first = page.locator("main .trajectory > .run-body > .run > .iterations > .iteration").first
    batch_calls = first.locator(".call.kind-llm[data-batch]")
    assert [batch_calls.nth(i).get_attribute("data-index") for i in range(3)] == ["0", "1", "2"]
    assert "item 0 done" in batch_calls.nth(0).locator(".long.answer").inner_text()

    # Cost by model: the service's meter.
    table = page.locator(".cost-panel table.costs")
    assert page.locator(".cost-panel h3 .meta").inner_text() == "the service's meter"
    rows = table.locator("tbody tr.cost-row")
    assert [rows.nth(i).get_attribute("data-model") for i in range(rows.count())] == sorted(
        by_model
    )
    for i, model in enumerate(sorted(by_model)):
        cells = rows.nth(i).locator("td").all_inner_texts()
        u = by_model[model]
        assert cells == [
            model, f"{u['calls']:,}", f"{u['input_tokens']:,}", f"{u['cached_input_tokens']:,}",
            f"{u['output_tokens']:,}", fmt_usd(u["cost_usd"]),
        ]  # fmt: skip
    assert by_model["gpt-5"]["calls"] == 2 and by_model["gpt-5-mini"]["calls"] == 5
    assert rows.nth(2).locator("td.cost").inner_text() == "unknown"
    assert rows.nth(0).locator("td.cost").inner_text().startswith("$0.0")
    assert table.locator("tfoot td.cost").inner_text() == "unknown"
    assert page.locator(".totals [data-total='cost'] dd").inner_text() == "unknown"
    assert_inert(tab)
    shot = tmp_path / "timeline.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"\ntimeline screenshot: {shot}")

    # The same events as a file: no summary, so the table sums the events (the live path).
    page.locator("header.top a", has_text="Open file").click()
    page.locator("#paste").fill(json.dumps(run["events"]))
    page.locator("#open-paste").click()
    view = page.locator(".file-result .trajectory")
    view.locator(".cost-panel tr.cost-row").first.wait_for()
    assert lane_rows(page, "calls-1") == [["llm0", "llm", "rlm"], ["llm1"], ["llm2"]]
    assert view.locator(".cost-panel h3 .meta").inner_text() == "so far, from the run's events"
    file_rows = view.locator(".cost-panel tbody tr.cost-row")
    assert file_rows.count() == 3
    for i, model in enumerate(sorted(by_model)):
        cells = file_rows.nth(i).locator("td").all_inner_texts()
        u = by_model[model]
        assert cells[:3] == [model, f"{u['calls']:,}", f"{u['input_tokens']:,}"], cells
        assert cells[3] == NOT_REPORTED and cells[4] == f"{u['output_tokens']:,}"
        # Each event's cost is the meter's own figure for that call: the sums agree.
        assert cells[5] == fmt_usd(u["cost_usd"])
    assert view.locator(".cost-panel tfoot td.cost").inner_text() == "unknown"
    assert_inert(tab)
