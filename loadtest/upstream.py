"""A scripted OpenAI-compatible upstream on loopback: one implementation for the tests, the
demo, the local load test and the benchmarks.

It serves ``POST /v1/chat/completions`` (non-streaming) and ``GET /v1/models``. What it
answers is decided by a *policy*: ``policy(request_body) -> str | Reply``. Policies here:

* ``needle_policy``: plays an RLM root model on the needle-in-a-haystack task (search the
  context in a ```repl block, then ``FINAL(...)`` the number it printed), and answers
  sub-model calls with a short deterministic text;
* ``Script([...])``: replies in order (strings, ``Reply`` objects or callables).

Token usage is deterministic (about four characters a token), so tests can check sums.
Run standalone: ``python -m loadtest.upstream --port 8900 --latency 0.2``.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response


@dataclass
class Reply:
    """A scripted answer: text, or an HTTP error status to send instead, or ``raw`` bytes
    sent as the body with ``status`` (a misbehaving upstream or proxy)."""

    text: str = ""
    status: int = 200
    finish_reason: str = "stop"
    delay_s: float = 0.0
    raw: bytes | None = None
    content_type: str = "application/json"


Policy = Callable[[dict[str, Any]], "str | Reply"]


def count_tokens(text: str) -> int:
    return max(1, (len(text) + 3) // 4)


def text_of(message: dict[str, Any]) -> str:
    """A chat message's text: its string content, or its text parts joined."""
    content = message.get("content")
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content or ""


def is_root_request(body: dict[str, Any]) -> bool:
    """Root-loop calls carry the RLM system prompt; sub-calls are a bare user message."""
    msgs = body.get("messages") or []
    return bool(msgs) and msgs[0].get("role") == "system" and "```repl" in text_of(msgs[0])


NEEDLE_CODE = """```repl
import re
hits = [line for line in context.splitlines() if "magic number" in line] if isinstance(context, str) else []
match = re.search(r"magic number is (\\d+)", hits[0]) if hits else None
print("FOUND", match.group(1) if match else "nothing")
```"""


def sub_answer(body: dict[str, Any]) -> str:
    """The scripted sub-model's reply: a short deterministic echo of the prompt."""
    prompt = text_of((body.get("messages") or [{}])[-1])
    return f"sub-answer: {prompt[:60]}"


def needle_policy(body: dict[str, Any]) -> str:
    """Find 'the magic number is N' in ``context``: one search iteration, then FINAL(N)."""
    if not is_root_request(body):
        return sub_answer(body)
    msgs = body["messages"]
    for msg in reversed(msgs):
        text = text_of(msg)
        found = re.search(r"FOUND (\d+|nothing)", text)
        if msg.get("role") == "user" and found:
            return f"The search printed the number.\nFINAL({found.group(1)})"
    if "final answer" in text_of(msgs[-1]).lower() and "provide" in text_of(msgs[-1]).lower():
        return "FINAL(unknown)"
    return "Let me search the context for the magic number.\n" + NEEDLE_CODE


class Script:
    """Replies in order; each item is a str, a Reply, or a callable taking the request body."""

    def __init__(self, items: Iterable[Any], then: Policy | None = None) -> None:
        self._items = list(items)
        self._then = then
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> str | Reply:
        with self._lock:
            item = self._items.pop(0) if self._items else None
        if item is None:
            if self._then is None:
                return Reply(status=500, text="script exhausted")
            return self._then(body)
        return item(body) if callable(item) else item


@dataclass
class Stats:
    calls: int = 0
    in_flight: int = 0
    max_in_flight: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: list[dict[str, Any]] = field(default_factory=list)


def build_app(upstream: ScriptedUpstream) -> FastAPI:
    app = FastAPI(title="scripted upstream")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": m, "object": "model", "owned_by": "scripted"} for m in upstream.models],
        }

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        body = await request.json()
        stats = upstream.stats
        stats.calls += 1
        stats.in_flight += 1
        stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
        if upstream.record:
            stats.requests.append(body)
        try:
            reply = upstream.policy(body)
            if isinstance(reply, str):
                reply = Reply(text=reply)
            delay = upstream.latency_s + reply.delay_s
            if delay:
                await asyncio.sleep(delay)
        finally:
            stats.in_flight -= 1
        if reply.raw is not None:
            return Response(reply.raw, status_code=reply.status, media_type=reply.content_type)
        if reply.status != 200:
            return JSONResponse(
                {
                    "error": {
                        "message": reply.text or "scripted failure",
                        "type": "server_error",
                        "param": None,
                        "code": None,
                    }
                },
                status_code=reply.status,
            )
        prompt_tokens = sum(count_tokens(text_of(m)) for m in body.get("messages") or [])
        completion_tokens = count_tokens(reply.text)
        stats.prompt_tokens += prompt_tokens
        stats.completion_tokens += completion_tokens
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:16]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "scripted"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": reply.text},
                        "finish_reason": reply.finish_reason,
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt_tokens,
                    "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            }
        )

    return app


class ThreadedServer:
    """An ASGI app under uvicorn on a loopback port, on its own thread and event loop.

    One implementation for the scripted upstream, the test service and the demo.
    """

    def __init__(
        self, app: Any, port: int, *, name: str, start_timeout_s: float = 30, **config: Any
    ) -> None:
        self.server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=port, log_level="warning", access_log=False, **config
            )
        )
        self.thread = threading.Thread(target=self.server.run, name=name, daemon=True)
        self._name = name
        self._start_timeout_s = start_timeout_s

    def start(self) -> None:
        """Start serving; raise RuntimeError when the server dies or does not come up."""
        self.thread.start()
        deadline = time.monotonic() + self._start_timeout_s
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"{self._name} did not start")
            time.sleep(0.01)

    def stop(self, timeout_s: float = 30) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NotUp(RuntimeError):
    """A server did not answer in time, or its process exited before it did."""


def wait_until_up(
    url: str,
    *,
    timeout_s: float,
    proc: subprocess.Popen[Any] | None = None,
    headers: dict[str, str] | None = None,
    name: str = "the server",
    interval_s: float = 0.1,
) -> None:
    """Poll ``GET url`` until it answers 200 (a server started as a subprocess).

    Raises NotUp when ``proc`` exits first or ``timeout_s`` passes; the message names the
    server, its exit code or the URL. One loop for the local stack, the benchmarks and the
    tests that start ``python -m service``.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if proc is not None and proc.poll() is not None:
            raise NotUp(f"{name} exited with {proc.returncode}")
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise NotUp(f"{name} not ready at {url} after {timeout_s:.0f} s")
        time.sleep(interval_s)


class ScriptedUpstream:
    """The upstream on its own thread and event loop; use as a context manager."""

    def __init__(
        self,
        policy: Policy = needle_policy,
        *,
        latency_s: float = 0.0,
        port: int = 0,
        models: tuple[str, ...] = ("gpt-5", "gpt-5-mini"),
        record: bool = True,
    ) -> None:
        self.policy = policy
        self.latency_s = latency_s
        self.port = port or free_port()
        self.models = models
        self.record = record
        self.stats = Stats()
        self._server: ThreadedServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reset_stats(self) -> None:
        self.stats = Stats()

    def start(self) -> ScriptedUpstream:
        self._server = ThreadedServer(
            build_app(self), self.port, name="scripted upstream", start_timeout_s=10,
            lifespan="off", backlog=2048,
        )  # fmt: skip
        self._server.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(timeout_s=10)

    def __enter__(self) -> ScriptedUpstream:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="scripted OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    args = parser.parse_args()
    up = ScriptedUpstream(latency_s=args.latency, port=args.port, record=False)
    config = uvicorn.Config(
        build_app(up), host="127.0.0.1", port=args.port, log_level="info", backlog=2048
    )
    print(f"scripted upstream on {up.base_url} (latency {args.latency}s)")
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
