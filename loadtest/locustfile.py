"""Locust scenarios against ``POST /v1/chat/completions`` (a deployed ALB or a local service).

User classes (pick some by name on the command line, default all, weights 3:1:1):

* ``NeedleUser``: the seed's load test. Every request carries a 10,000-line haystack with a
  random magic number in ``rlm.context`` and ``rlm.reset: true``; an answer without the
  number is a failure. It names its session (``x-rlm-session-id``, from the first answer) in
  every later request, so a sandbox is reused per user; the ``rlm_session`` cookie the
  service sets keeps the load balancer's stickiness.
* ``MultiTurnUser``: turn 1 asks the RLM to keep a random code word in a variable and in
  ``state``; turn 2 names the session (``x-rlm-session-id``) and asks for it back. A wrong
  word fails (deployed behind an ALB with the cookie this also proves stickiness). The
  queries are plain words, so a real model can follow them; the scripted upstream
  (``loadtest.policies.multi_turn_policy``) recognises them.
* ``StreamingUser``: the needle task with ``stream: true``; records time to first byte and
  time to the first content chunk as extra entries of type ``METRIC`` (``ttfb``,
  ``ttfc``) in Locust's statistics.

Environment: ``RLM_API_KEY`` (Bearer key, optional), ``RLM_MODEL`` (default ``rlm``),
``RLM_LOADTEST_LINES`` (haystack lines, default 10000), ``RLM_LOADTEST_WAIT_S`` (think time
per task, default 0). Network timeout 1800 s: an RLM run can take minutes.
"""

from __future__ import annotations

import json
import os
import random
import string
import time
from typing import Any

from locust import HttpUser, between, task
from locust.contrib.fasthttp import FastHttpUser

from loadtest.haystack import NEEDLE_QUERY, filler, magic_number, with_needle
from service.constants import SESSION_HEADER

API_KEY = os.environ.get("RLM_API_KEY", "")
MODEL = os.environ.get("RLM_MODEL", "rlm")
LINES = int(os.environ.get("RLM_LOADTEST_LINES", "10000"))
WAIT_S = float(os.environ.get("RLM_LOADTEST_WAIT_S", "0"))
NETWORK_TIMEOUT_S = 1800.0
CONNECT_TIMEOUT_S = 10.0
ENDPOINT = "/v1/chat/completions"

# Built once per process: a request only copies it and inserts its needle.
_FILLER = filler(LINES)


def headers() -> dict[str, str]:
    h = {"content-type": "application/json"}
    if API_KEY:
        h["authorization"] = f"Bearer {API_KEY}"
    return h


def needle_body(stream: bool = False) -> tuple[dict[str, Any], str]:
    """A needle request with a fresh magic number somewhere in the haystack, and the number."""
    number = magic_number()
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": NEEDLE_QUERY}],
        "rlm": {"reset": True, "context": with_needle(_FILLER, number)},
    }
    if stream:
        body["stream"] = True
    return body, number


def answer_of(payload: Any) -> str:
    try:
        return str(payload["choices"][0]["message"]["content"] or "")
    except (KeyError, IndexError, TypeError):
        return ""


def error_of(payload: Any) -> str:
    if isinstance(payload, dict) and isinstance(payload.get("error"), dict):
        return str(payload["error"].get("message", ""))[:300]
    return ""


def fire_metric(environment: Any, name: str, ms: float) -> None:
    """One sample of a custom timing, shown in Locust's tables as type METRIC."""
    environment.events.request.fire(
        request_type="METRIC", name=name, response_time=ms, response_length=0,
        exception=None, context={},
    )  # fmt: skip


def _check_json(resp: Any) -> dict[str, Any] | None:
    """The JSON body of a 200, or None after marking the request failed."""
    if resp.status_code != 200:
        try:
            detail = error_of(resp.json()) or resp.text[:300]
        except Exception:  # noqa: BLE001 - a failure message only
            detail = (resp.text or "")[:300]
        resp.failure(f"HTTP {resp.status_code}: {detail}")
        return None
    try:
        payload: dict[str, Any] = resp.json()
    except Exception:  # noqa: BLE001
        resp.failure("response is not JSON")
        return None
    return payload


class _ChatUser(FastHttpUser):
    """What the non-streaming users share: think time, timeouts, one way to post a request."""

    abstract = True
    wait_time = between(WAIT_S, WAIT_S)
    network_timeout = NETWORK_TIMEOUT_S
    connection_timeout = CONNECT_TIMEOUT_S

    def post(self, body: dict[str, Any], name: str, session: str | None = None) -> Any:
        """POST ``body`` as ``name`` (on ``session`` when given: sessions are explicit); the
        caller marks the response (``catch_response``)."""
        extra = {SESSION_HEADER: session} if session else {}
        return self.client.post(
            ENDPOINT,
            data=json.dumps(body),
            headers={**headers(), **extra},
            name=name,
            catch_response=True,
        )


class NeedleUser(_ChatUser):
    """The seed's needle-in-a-haystack request, over and over, on one session."""

    weight = 3

    session: str | None = None

    @task
    def needle(self) -> None:
        body, number = needle_body()
        with self.post(body, "needle", self.session) as resp:
            payload = _check_json(resp)
            if payload is None:
                return
            self.session = (payload.get("rlm") or {}).get("session_id") or self.session
            answer = answer_of(payload)
            if number not in answer:
                resp.failure(f"magic number {number} not in the answer: {answer[:200]!r}")


class MultiTurnUser(_ChatUser):
    """Two turns on one session: store a code word, then read it back by the session id."""

    weight = 1

    @task
    def remember_and_recall(self) -> None:
        word = "cw-" + "".join(random.choices(string.ascii_lowercase + string.digits, k=10))
        turn1 = {
            "model": MODEL,
            "messages": [{"role": "user", "content": (
                f"Remember the code word {word}: store it in a variable named code_word and "
                f"in state['code_word'], then answer 'stored {word}'."
            )}],
            "rlm": {"reset": True},
        }  # fmt: skip
        with self.post(turn1, "multi-turn 1") as resp:
            first = _check_json(resp)
        if first is None:
            return
        session = (first.get("rlm") or {}).get("session_id")
        turn2 = {
            "model": MODEL,
            "messages": [{"role": "user", "content": (
                "Which code word did the previous turn store? Print the variable code_word "
                "and state['code_word'], then answer with the variable's value only."
            )}],
        }  # fmt: skip
        with self.post(turn2, "multi-turn 2", session) as resp:
            second = _check_json(resp)
            if second is None:
                return
            answer = answer_of(second)
            rlm = second.get("rlm") or {}
            if session and rlm.get("session_id") != session:
                resp.failure(f"turn 2 ran on session {rlm.get('session_id')}, not {session}")
            elif word not in answer:
                resp.failure(f"code word {word} not recalled: {answer[:200]!r}")


class StreamingUser(HttpUser):
    """The needle task over SSE, timing the first byte and the first content chunk."""

    weight = 1
    wait_time = between(WAIT_S, WAIT_S)
    session: str | None = None

    @task
    def needle_stream(self) -> None:
        body, number = needle_body(stream=True)
        t0 = time.perf_counter()
        extra = {SESSION_HEADER: self.session} if self.session else {}
        with self.client.post(
            ENDPOINT, data=json.dumps(body), headers={**headers(), **extra}, name="needle (stream)",
            catch_response=True, stream=True, timeout=(CONNECT_TIMEOUT_S, NETWORK_TIMEOUT_S),
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:300]}")
                return
            first_byte: float | None = None
            first_content: float | None = None
            parts: list[str] = []
            done = False
            error = ""
            for line in resp.iter_lines(decode_unicode=True):
                if first_byte is None:
                    first_byte = time.perf_counter()
                if not line or not line.startswith("data: "):
                    continue  # blank separators and ": keep-alive" comments
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                error = error or error_of(chunk)
                for choice in chunk.get("choices") or []:
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        if first_content is None:
                            first_content = time.perf_counter()
                        parts.append(content)
            self.session = resp.headers.get(SESSION_HEADER) or self.session
            # With stream=True Locust stops the clock at the headers; count the whole stream.
            resp.request_meta["response_time"] = (time.perf_counter() - t0) * 1000
            if first_byte is not None:
                fire_metric(self.environment, "ttfb", (first_byte - t0) * 1000)
            if first_content is not None:
                fire_metric(self.environment, "ttfc", (first_content - t0) * 1000)
            answer = "".join(parts)
            if error:
                resp.failure(f"error in stream: {error}")
            elif not done:
                resp.failure("stream ended without [DONE]")
            elif number not in answer:
                resp.failure(f"magic number {number} not in the streamed answer: {answer[:200]!r}")
