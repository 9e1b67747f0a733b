"""The trajectory events' one definition (service/rlm/events.py) against their readers.

The viewer's JavaScript cannot import the Python types, so this reads what it reads: every
event kind its dispatcher handles and every field it takes from an event must be declared.
A field renamed on one side only fails here, not in a browser.
"""

from __future__ import annotations

import re
from typing import get_args, get_type_hints

import pytest

from service.rlm import events
from service.rlm.trajectory import Redactor, TrajectoryWriter
from service.ui.routes import STATIC_DIR

VIEWER = (STATIC_DIR / "trajectory.js").read_text(encoding="utf-8")


def test_every_kind_has_a_type_and_a_literal_tag() -> None:
    for kind, cls in events.TYPES.items():
        (tag,) = get_args(get_type_hints(cls)["event"])
        assert tag == kind
        assert {"event", "t"} <= events.fields(kind)


def test_the_viewer_handles_exactly_the_declared_kinds() -> None:
    cases = set(re.findall(r'case "([a-z_]+)":', VIEWER))
    assert cases == set(events.TYPES)


def test_the_viewer_reads_only_declared_fields() -> None:
    read = set(re.findall(r"\bev\.([a-z_]+)", VIEWER))
    assert read, "the viewer's event parameter is no longer called ev: update this test"
    assert read - events.all_fields() == set()


@pytest.mark.parametrize(
    ("kind", "field"),
    [
        ("run_start", "parent"),
        ("iteration", "forced"),
        ("code", "changed"),
        ("sub_call", "child_run"),
        ("final", "stopped_by"),
        ("run_end", "summary"),
    ],
)
def test_fields_belong_to_their_kind(kind: str, field: str) -> None:
    assert field in events.fields(kind)
    others = [k for k in events.TYPES if k != kind]
    assert any(field not in events.fields(k) for k in others)


def test_the_writer_takes_typed_events(tmp_path) -> None:
    writer = TrajectoryWriter(str(tmp_path), "traj-1", Redactor(["sk-secret-value"]))
    writer(
        events.RunStart(
            event="run_start", run="r1", depth=0, ns="root", model="m", query="q",
            context={"type": "str"}, max_depth=1, max_iterations=3, parent=None,
            parent_iteration=None, parent_block=None, t=1.0,
        )
    )  # fmt: skip
    writer(
        events.Iteration(
            event="iteration", run="r1", iteration=0, response="sk-secret-value",
            finish_reason="stop", ms=5.0, usage=events.Usage(prompt_tokens=1, completion_tokens=2),
        )
    )  # fmt: skip
    writer(
        events.Code(
            event="code", run="r1", iteration=0, block=0, code="x = 1", stdout="", stderr="",
            error=None, changed=[{"name": "x", "type": "int", "repr": "1"}], ms=1.0,
        )
    )  # fmt: skip
    writer(
        events.Final(
            event="final", run="r1", depth=0, answer="42", how="final", stopped_by=None,
            iterations=1, ms=9.0,
        )
    )  # fmt: skip
    writer.write()
    text = (tmp_path / "traj-1.jsonl").read_text()
    assert "sk-secret-value" not in text and "[redacted]" in text
    lines = text.splitlines()
    assert (
        len(lines) == 2
        and '"final_answer": "42"' in lines[1]
        and '"locals": {"x": "1"}' in lines[1]
    )
