"""Trajectory events of a run, and the JSONL file they are written to.

Events (``service.rlm.events``, one typed definition) are delivered to a callback
(streaming, the viewer, metrics). With ``RLM_TRAJECTORY_DIR`` set, the root run is
also written as JSONL in the official RLM library's shape: one ``metadata`` line, then one
``iteration`` line per root iteration with its code blocks, their results and the sub-calls
they made. Secrets are redacted from everything written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.rlm.events import Event

log = logging.getLogger(__name__)

PREVIEW_CHARS = 500


def _iso(t: float | None) -> str:
    """Timestamps as the official library writes them (ISO 8601)."""
    return datetime.fromtimestamp(t if t is not None else time.time(), tz=UTC).isoformat()


def preview(text: str, n: int = PREVIEW_CHARS) -> str:
    return text if len(text) <= n else text[:n] + f"... [{len(text) - n} more chars]"


class Redactor:
    """Replaces secret values (API keys) with a marker."""

    def __init__(self, secrets: list[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text


class TrajectoryWriter:
    """Collects a request's events and writes the official-shaped JSONL at the end."""

    def __init__(self, directory: str, trajectory_id: str, redact: Redactor) -> None:
        self.path = Path(directory) / f"{trajectory_id}.jsonl"
        self._redact = redact
        self._meta: dict[str, Any] = {}
        self._iterations: dict[int, dict[str, Any]] = {}
        self._root_run: str | None = None
        self._calls: list[dict[str, Any]] = []

    def __call__(self, ev: Event) -> None:
        if ev["event"] == "run_start":
            if ev["depth"] == 0:
                self._root_run = ev["run"]
                self._meta = {
                    "type": "metadata",
                    "root_model": ev["model"],
                    "max_depth": ev["max_depth"],
                    "max_iterations": ev["max_iterations"],
                    "backend": "openai",
                    "environment_type": "rlm-py-sandbox",
                    "query": ev["query"],
                    "context": ev["context"],
                    "timestamp": _iso(ev.get("t")),
                }
            return
        if ev["event"] == "run_end" or ev["run"] != self._root_run:
            return  # child runs appear as the root's rlm sub-calls
        if ev["event"] == "iteration" and ev.get("forced"):
            # The forced final answer's call: recorded on the last iteration it closes.
            if self._iterations:
                last = self._iterations[max(self._iterations)]
                last["forced_final_response"] = ev.get("response", "")
        elif ev["event"] == "iteration":
            self._iterations[ev["iteration"]] = {
                "type": "iteration",
                "iteration": ev["iteration"] + 1,
                "timestamp": _iso(ev.get("t")),
                "response": ev.get("response", ""),
                "code_blocks": [],
                "final_answer": None,
                "iteration_time": ev.get("ms", 0) / 1000,
                "usage": ev.get("usage"),
            }
        elif ev["event"] == "code":
            it = self._iterations.get(ev["iteration"])
            if it is not None:
                it["code_blocks"].append(
                    {
                        "code": ev["code"],
                        "result": {
                            "stdout": ev["stdout"],
                            "stderr": ev["stderr"],
                            "locals": {c["name"]: c["repr"] for c in ev["changed"]},
                            "execution_time": ev["ms"] / 1000,
                            "rlm_calls": self._calls,
                        },
                    }
                )
                self._calls = []
        elif ev["event"] == "sub_call":
            self._calls.append(
                {
                    "root_model": ev.get("model"),
                    "prompt": ev.get("prompt", ""),
                    "response": ev.get("answer", ""),
                    "kind": ev.get("kind"),
                    "depth": ev.get("depth"),
                    "execution_time": ev.get("ms", 0) / 1000,
                }
            )
        elif ev["event"] == "final" and self._iterations:
            last = self._iterations[max(self._iterations)]
            last["final_answer"] = ev["answer"]

    def write(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lines = [self._meta] + [self._iterations[k] for k in sorted(self._iterations)]
            text = "".join(
                self._redact(json.dumps(line, ensure_ascii=False, default=str)) + "\n"
                for line in lines
            )
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("could not write trajectory %s: %s", self.path, exc)
