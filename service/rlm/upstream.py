"""The upstream model API: one chat-completions client on aiohttp, with our retry policy, a
per-call timeout and one process-wide limit on concurrent calls.

The service needs one endpoint of the OpenAI API (``POST {base}/chat/completions``, not
streamed), so it speaks it directly instead of through the ``openai`` SDK. Measured at 20
concurrent calls against the scripted upstream, the SDK cost 1.1-1.6 ms of the service's
CPU per call on its aiohttp transport (1.5-2.2 ms on httpx2), about half of it building the
request; this client costs about a third of that. What the SDK did for us is here, tested
over real HTTP (tests/service/test_upstream_http.py): the bearer key, ``OpenAI-Organization``
and ``OpenAI-Project``, proxies from the environment (``HTTPS_PROXY``, ``NO_PROXY``), error
statuses with the server's message and ``Retry-After``, timeouts, dropped connections.

Every failure of one attempt is an ``AttemptError``; the retry policy is two small pure
functions (``should_retry``, ``backoff_s``), and ``_describe`` turns the last failure into the
``UpstreamError`` the API answers 502 with.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import yarl
from aiohttp.helpers import get_env_proxy_for_url

from service.errors import UpstreamError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
USER_AGENT = "rlm-py/0.1"
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# A chat completion is text and a few counters; a body past this is not one (and is not
# buffered whole).
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
# How much of an upstream's error message reaches our own error.
MESSAGE_MAX_CHARS = 300


class AttemptError(Exception):
    """One attempt at the upstream failed; the loop decides whether to try again."""


class StatusError(AttemptError):
    """The upstream answered an error status."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.retry_after = retry_after


class TimedOut(AttemptError):
    """No whole answer within the call's timeout."""


class Unreachable(AttemptError):
    """No connection, or the connection dropped before an answer."""


class MalformedResponse(AttemptError):
    """The upstream answered 200 with something that is not a chat completion (a proxy's
    HTML error page, a truncated body, an error object): retried like a 5xx."""


def should_retry(exc: BaseException) -> bool:
    """429, the transient 5xx, timeouts, dropped connections and garbage bodies are worth
    another try; other statuses are not."""
    if isinstance(exc, (TimedOut, Unreachable, MalformedResponse)):
        return True
    if isinstance(exc, StatusError):
        return exc.status in RETRY_STATUSES
    return False


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After (bounded) wins."""
    if retry_after is not None and 0 <= retry_after <= 60:
        return retry_after
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))


def status_error(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> StatusError:
    """An error answer: the message of OpenAI's ``{"error": {"message": ...}}``, else the
    body's text, bounded; the delay asked for (``retry-after-ms``, else ``Retry-After``)."""
    text = body[: 64 * 1024].decode("utf-8", "replace")
    message = text
    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        detail = err.get("message") if isinstance(err, dict) else err
        if detail:
            message = str(detail)
    message = " ".join(message.split())[:MESSAGE_MAX_CHARS] or "(no message)"
    return StatusError(status, message, retry_after_s(headers or {}))


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The delay an answer asks for, in seconds as sent (the policy bounds it): OpenAI's
    ``retry-after-ms`` first, else ``Retry-After`` in seconds (an HTTP date is not read)."""
    lowered = {k.lower(): v for k, v in headers.items() if k.lower().startswith("retry-after")}
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        try:
            return float(lowered[name]) / scale
        except (KeyError, ValueError):
            continue
    return None


@dataclass(slots=True)
class Completion:
    text: str
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    model: str
    # Of prompt_tokens, those the upstream served from its prompt cache (priced lower).
    cached_tokens: int = 0


class Upstream:
    """One shared client for the whole process."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        timeout_s: float,
        retries: int,
        concurrency: int,
        organization: str | None = None,
        project: str | None = None,
    ) -> None:
        base = yarl.URL((base_url or DEFAULT_BASE_URL).rstrip("/"))
        if base.scheme not in ("http", "https") or not base.host:
            raise ValueError(f"OPENAI_BASE_URL must be an http(s) URL, not {base_url!r}")
        self.url = base / "chat" / "completions"
        headers = {
            "Content-Type": "application/json",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        if organization:
            headers["OpenAI-Organization"] = organization
        if project:
            headers["OpenAI-Project"] = project
        # Sent with each request, never as the session's defaults: aiohttp copies a
        # session's default headers into what it sends a proxy, and so would hand the
        # proxy our key as Proxy-Authorization (even in an HTTPS tunnel's CONNECT).
        self._headers = headers
        # HTTP(S)_PROXY / NO_PROXY, read once: aiohttp's trust_env would look them (and
        # ~/.netrc) up in a thread on every request, two thread hops per call.
        self._proxy: yarl.URL | None = None
        self._proxy_headers: dict[str, str] | None = None
        try:
            self._proxy, proxy_auth = get_env_proxy_for_url(self.url)
        except LookupError:
            pass
        else:
            if proxy_auth is not None:
                # Through a tunnel (https upstream) the proxy reads it from the CONNECT;
                # for plain http it reads the request itself.
                if self.url.scheme == "https":
                    self._proxy_headers = {"Proxy-Authorization": proxy_auth.encode()}
                else:
                    headers["Proxy-Authorization"] = proxy_auth.encode()
        self._session: aiohttp.ClientSession | None = None
        self.timeout_s = timeout_s
        self.retries = retries
        self.concurrency = concurrency
        self.gate = asyncio.Semaphore(concurrency)
        self.in_flight = 0
        # Told of every completion (metrics by model); must not raise.
        self.on_completion: Callable[[Completion], None] | None = None

    def _client(self) -> aiohttp.ClientSession:
        # Made on the first call, inside the running loop (aiohttp binds to it).
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                # Idle connections are dropped before the 5 s of common servers (uvicorn
                # under vLLM): reusing one the server is closing costs a retry.
                connector=aiohttp.TCPConnector(limit=self.concurrency, keepalive_timeout=4),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def post(self, body: dict[str, Any], timeout_s: float) -> Any:
        """One attempt: the decoded JSON of a 2xx answer; any failure is an AttemptError."""
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        try:
            async with self._client().post(
                self.url,
                data=data,
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                proxy=self._proxy,
                proxy_headers=self._proxy_headers,
                allow_redirects=False,  # a redirected POST is a misconfigured base URL
            ) as resp:
                raw = await _read_bounded(resp)
                if resp.status >= 300:
                    raise status_error(resp.status, raw, resp.headers)
        except TimeoutError as exc:  # aiohttp's timeouts are TimeoutError subclasses
            raise TimedOut(f"no answer within {timeout_s:g} s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise MalformedResponse(f"the body broke off: {exc}") from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise Unreachable("the upstream closed the connection before answering") from exc
        except aiohttp.ClientResponseError as exc:  # not HTTP (bad status line, headers)
            raise MalformedResponse(f"not an HTTP answer: {exc.message}") from exc
        except aiohttp.ClientError as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:  # UnicodeDecodeError included
            raise MalformedResponse(f"not JSON: {str(exc)[:100]}") from exc

    async def complete(
        self, model: str, messages: list[dict[str, str]], *, timeout_s: float | None = None
    ) -> Completion:
        """One chat completion with retries; raises UpstreamError when it can't be had."""
        attempt = 0
        timeout = min(self.timeout_s, timeout_s) if timeout_s else self.timeout_s
        while True:
            t0 = time.perf_counter()
            try:
                async with self.gate:
                    self.in_flight += 1
                    try:
                        raw = await self.post({"model": model, "messages": messages}, timeout)
                        comp = _completion(raw, model, time.perf_counter() - t0)
                    finally:
                        self.in_flight -= 1
            except AttemptError as exc:
                if attempt < self.retries and should_retry(exc):
                    await asyncio.sleep(backoff_s(attempt, _retry_after(exc)))
                    attempt += 1
                    continue
                raise UpstreamError(_describe(exc, model)) from exc
            if self.on_completion is not None:
                self.on_completion(comp)
            return comp

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_bounded(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > MAX_RESPONSE_BYTES:
        raise MalformedResponse(f"a body of {resp.content_length} bytes")
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise MalformedResponse(f"a body over {MAX_RESPONSE_BYTES} bytes")
        parts.append(chunk)
    return b"".join(parts)


def _completion(resp: Any, model: str, latency_s: float) -> Completion:
    """Read a chat.completion body; anything else raises MalformedResponse."""
    if not isinstance(resp, dict):
        raise MalformedResponse(f"a {type(resp).__name__} instead of a JSON object")
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        err = resp.get("error")
        if err is not None:  # some servers answer 200 with an error object
            detail = err.get("message") if isinstance(err, dict) else err
            raise MalformedResponse(f"an error object: {str(detail)[:MESSAGE_MAX_CHARS]}")
        raise MalformedResponse("no choices")
    choice = choices[0]
    message = choice.get("message")
    if not isinstance(message, dict):
        raise MalformedResponse("a choice without a message")
    content = message.get("content")
    if isinstance(content, list):  # content parts
        content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    usage = resp.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    finish = choice.get("finish_reason")
    try:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("prompt_tokens_details")
        cached = int(details.get("cached_tokens") or 0) if isinstance(details, dict) else 0
    except (TypeError, ValueError):
        raise MalformedResponse("token counts that are not numbers") from None
    return Completion(
        text=content if isinstance(content, str) else "",
        finish_reason=finish if isinstance(finish, str) else None,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        latency_s=latency_s,
        model=model,
        cached_tokens=min(max(cached, 0), prompt_tokens),
    )


def _retry_after(exc: BaseException) -> float | None:
    return exc.retry_after if isinstance(exc, StatusError) else None


def _describe(exc: AttemptError, model: str) -> str:
    if isinstance(exc, MalformedResponse):
        return f"upstream model {model!r} sent a malformed completion: {exc}"
    if isinstance(exc, TimedOut):
        return f"upstream model {model!r} timed out (RLM_UPSTREAM_TIMEOUT_S)"
    if isinstance(exc, Unreachable):
        return f"upstream model API unreachable (OPENAI_BASE_URL): {str(exc)[:MESSAGE_MAX_CHARS]}"
    if isinstance(exc, StatusError):
        return f"upstream model {model!r} answered {exc.status}: {exc.message}"
    return f"upstream model call failed: {str(exc)[:MESSAGE_MAX_CHARS]}"
