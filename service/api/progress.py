"""What a streaming client sees while an RLM works: short, readable progress text.

Each root iteration becomes ``delta.reasoning_content`` text (the field chat front-ends and
LiteLLM show as the model's thinking): the iteration number, the model's text, each code
block, a short head of its output, and the sub-calls it made (count, models, time). Never
the context, never a whole output: every piece is cut to a few hundred characters. Sandbox
output is untrusted text; it travels as a JSON string and is never interpreted.
"""

from __future__ import annotations

from collections import Counter

from service.rlm.events import Event

RESPONSE_CHARS = 1200
CODE_CHARS = 800
OUTPUT_CHARS = 400


def _head(text: str, n: int) -> str:
    text = text.strip()
    return text if len(text) <= n else text[:n] + f" [... {len(text) - n} more characters]"


class Progress:
    """Turns one request's events into progress text (root run only; recursive runs show
    as sub-calls of the block that made them)."""

    def __init__(self) -> None:
        self._root: str | None = None
        self._calls: Counter[str] = Counter()
        self._calls_ms = 0.0

    def text(self, ev: Event) -> str | None:
        """The progress text for one event, or None when it adds nothing."""
        if ev["event"] == "run_start":
            if ev["depth"] == 0:
                self._root = ev["run"]
            return None
        if ev["event"] == "run_end" or ev["run"] != self._root:
            return None
        if ev["event"] == "iteration":
            label = "Final answer call" if ev.get("forced") else f"Iteration {ev['iteration'] + 1}"
            return f"\n\n### {label}\n{_head(ev.get('response', ''), RESPONSE_CHARS)}\n"
        if ev["event"] == "sub_call":
            self._calls[ev.get("model", "?") if ev.get("kind") != "rlm" else "recursive RLM"] += 1
            self._calls_ms += ev.get("ms", 0.0)
            return None
        if ev["event"] == "code":
            out = ev["stdout"] + (("\n" + ev["stderr"]) if ev["stderr"] else "")
            if ev["error"]:
                out += f"\n{ev['error'].get('type', 'Error')}: {ev['error'].get('message', '')}"
            lines = [
                f"\n```python\n{_head(ev['code'], CODE_CHARS)}\n```",
                f"Output ({ev['ms']:.0f} ms): {_head(out, OUTPUT_CHARS) or '(none)'}",
            ]
            if self._calls:
                n = sum(self._calls.values())
                models = ", ".join(f"{m} x{c}" for m, c in self._calls.most_common())
                lines.append(f"Sub-calls: {n} ({models}), {self._calls_ms / 1000:.1f} s")
                self._calls.clear()
                self._calls_ms = 0.0
            return "\n".join(lines) + "\n"
        return None
