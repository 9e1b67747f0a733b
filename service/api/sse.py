"""Server-Sent Events framing (the only place that knows it).

Each event is one ``data:`` line of compact JSON (or a bare string such as ``[DONE]``);
comments keep a silent stream alive through proxies and load balancers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# A comment this often keeps idle streams open behind proxies (the ALB closes idle ones).
KEEPALIVE_S = 15.0
KEEPALIVE = b": keep-alive\n\n"
MEDIA_TYPE = "text/event-stream"
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One Server-Sent Event ``data:`` line."""
    payload = (
        data
        if isinstance(data, str)
        else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    )
    return f"data: {payload}\n\n".encode()


def named(event: str, data: Mapping[str, Any]) -> bytes:
    """One named Server-Sent Event (``event:`` then ``data:``), as the Responses API sends."""
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return f"event: {event}\ndata: {payload}\n\n".encode()
