"""Reading a root model's response: ```repl blocks and the text forms of a final answer."""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

_FENCE = re.compile(r"^[ \t]*```[ \t]*repl[ \t]*\n(.*?)^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_OPEN_FENCE = re.compile(r"^[ \t]*```[ \t]*repl[ \t]*$", re.MULTILINE)
_ANY_FENCE = re.compile(r"^[ \t]*```[^\n]*\n.*?^[ \t]*```[ \t]*$", re.DOTALL | re.MULTILINE)
_FINAL_VAR = re.compile(
    r"^[ \t]*FINAL_VAR\(\s*['\"]?([A-Za-z_][A-Za-z0-9_]*)['\"]?\s*\)", re.MULTILINE
)
_FINAL = re.compile(r"^[ \t]*FINAL\(", re.MULTILINE)
_FENCE_LINE = re.compile(r"^[ \t]*```", re.MULTILINE)


def _lines(text: str) -> str:
    """Models and proxies may send \\r\\n (or lone \\r) line ends: read them as \\n."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def code_blocks(text: str) -> list[str]:
    """Every complete ```repl block, in order, dedented (a fence indented in a list item
    indents its code too, which Python would refuse)."""
    return [textwrap.dedent(m.group(1)) for m in _FENCE.finditer(_lines(text))]


def has_unclosed_block(text: str) -> bool:
    """A ```repl fence opened and never closed: a cut-off response."""
    text = _lines(text)
    return len(_OPEN_FENCE.findall(text)) > len(_FENCE.findall(text))


def _fence_spans(text: str) -> list[tuple[int, int]]:
    """Where the fenced blocks are: each closed one, and a last one opened and never closed
    (a cut-off response), which runs to the end."""
    spans = [(m.start(), m.end()) for m in _ANY_FENCE.finditer(text)]
    opened = _FENCE_LINE.search(text, spans[-1][1] if spans else 0)
    if opened is not None:
        spans.append((opened.start(), len(text)))
    return spans


@dataclass(frozen=True, slots=True)
class FinalInText:
    kind: str  # "final" | "final_var"
    value: str  # the answer text, or the variable name


def final_in_text(text: str) -> FinalInText | None:
    """``FINAL(...)`` (multi-line, nested parentheses) or ``FINAL_VAR(name)`` at a line start,
    outside code fences (closed or cut off: code that never ran is no answer). An answer may
    itself hold fenced code. ``FINAL_VAR`` wins when it comes first."""
    text = _lines(text)
    spans = _fence_spans(text)

    def outside(m: re.Match[str]) -> bool:
        return not any(a <= m.start() < b for a, b in spans)

    fv = next((m for m in _FINAL_VAR.finditer(text) if outside(m)), None)
    fm = next((m for m in _FINAL.finditer(text) if outside(m)), None)
    if fv and (not fm or fv.start() <= fm.start()):
        return FinalInText("final_var", fv.group(1))
    if fm:
        inner = _balanced(text, fm.end())
        if inner is not None:
            return FinalInText("final", _unquote(inner.strip()))
    return None


def _unquote(value: str) -> str:
    """FINAL("text") means the text, not its quotes."""
    for q in ('"""', "'''", '"', "'"):
        if len(value) >= 2 * len(q) and value.startswith(q) and value.endswith(q):
            inner = value[len(q) : -len(q)]
            if q not in inner:
                return inner
    return value


def _balanced(text: str, start: int) -> str | None:
    """The text from ``start`` up to the parenthesis closing the one just before it.

    Unbalanced (a cut-off answer): everything to the end, which is the best answer there is.
    """
    depth = 1
    i = start
    quote: str | None = None
    while i < len(text):
        ch = text[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = None
        elif ch in "\"'" and _starts_string(text, i):
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return text[start:i]
        i += 1
    rest = text[start:].rstrip()
    return rest or None


def _starts_string(text: str, i: int) -> bool:
    """Quotes only count as Python string delimiters right after '(' ',' '=' or a space,
    so apostrophes in prose ("it's") do not swallow the closing parenthesis."""
    prev = text[i - 1] if i > 0 else " "
    if prev not in "(,= \n\t":
        return False
    close = text.find(text[i], i + 1)
    return close != -1 and "\n" not in text[i:close] and ")" in text[close:]


def strip_code(text: str) -> str:
    """The prose of a response without its code fences (a partial answer's best form)."""
    return _ANY_FENCE.sub("", _lines(text)).strip()
