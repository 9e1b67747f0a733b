"""The upstream model API: ``openai.AsyncOpenAI`` with our retry policy, a per-call timeout
and one process-wide limit on concurrent calls.

The client runs on the SDK's aiohttp transport (``openai.DefaultAioHttpClient``): the same
SDK, errors and timeouts, with aiohttp's connection pool and C-accelerated HTTP parser
under it. On the default transport (httpx2 over anyio) an upstream call cost about 1.5-2.2
ms of the service's CPU; on aiohttp about 1.1-1.6 ms (measured, 20 concurrent calls).

Retry policy is two small pure functions (``should_retry``, ``backoff_s``); the SDK's own
retries are off so there is exactly one policy. OpenAI SDK exceptions are translated into
``UpstreamError`` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from service.errors import UpstreamError

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0


class MalformedResponse(Exception):
    """The upstream answered 200 with something that is not a chat completion (a proxy's
    HTML error page, a truncated body, an error object): retried like a 5xx."""


def should_retry(exc: BaseException) -> bool:
    """429, 5xx, timeouts, dropped connections and garbage bodies are worth another try;
    4xx are not."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError, MalformedResponse)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in RETRY_STATUSES
    return False


def backoff_s(attempt: int, retry_after: float | None = None) -> float:
    """Exponential backoff with full jitter; a server's Retry-After (bounded) wins."""
    if retry_after is not None and 0 <= retry_after <= 60:
        return retry_after
    return random.uniform(0, min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt))


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
    ) -> None:
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "not-set",
            base_url=base_url,
            max_retries=0,
            timeout=timeout_s,
            http_client=openai.DefaultAioHttpClient(timeout=timeout_s),
        )
        self.timeout_s = timeout_s
        self.retries = retries
        self.gate = asyncio.Semaphore(concurrency)
        self.in_flight = 0
        # Told of every completion (metrics by model); must not raise.
        self.on_completion: Callable[[Completion], None] | None = None

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
                        # The client's raw POST: the same auth, errors and timeouts as
                        # chat.completions.create(), without its request transforms and
                        # response models, which cost about half of a call's CPU (measured).
                        raw = await self.client.post(
                            "/chat/completions",
                            body={"model": model, "messages": messages},
                            cast_to=object,
                            options={"timeout": timeout},
                        )
                        comp = _completion(raw, model, time.perf_counter() - t0)
                    except (ValueError, httpx2.HTTPError) as exc:
                        # A body that is not JSON (ValueError) or that broke off mid-read.
                        raise MalformedResponse(f"not a chat completion: {exc}") from exc
                    finally:
                        self.in_flight -= 1
            except (openai.OpenAIError, MalformedResponse) as exc:
                if attempt < self.retries and should_retry(exc):
                    await asyncio.sleep(backoff_s(attempt, _retry_after(exc)))
                    attempt += 1
                    continue
                raise UpstreamError(_describe(exc, model)) from exc
            if self.on_completion is not None:
                self.on_completion(comp)
            return comp

    async def close(self) -> None:
        await self.client.close()


def _completion(resp: Any, model: str, latency_s: float) -> Completion:
    """Read a chat.completion body; anything else raises MalformedResponse."""
    if not isinstance(resp, dict):
        raise MalformedResponse(f"a {type(resp).__name__} instead of a JSON object")
    choices = resp.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        err = resp.get("error")
        if err is not None:  # some servers answer 200 with an error object
            detail = err.get("message") if isinstance(err, dict) else err
            raise MalformedResponse(f"an error object: {str(detail)[:300]}")
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
    if isinstance(exc, openai.APIStatusError):
        value = exc.response.headers.get("retry-after")
        try:
            return float(value) if value else None
        except ValueError:
            return None
    return None


def _describe(exc: openai.OpenAIError | MalformedResponse, model: str) -> str:
    if isinstance(exc, MalformedResponse):
        return f"upstream model {model!r} sent a malformed completion: {exc}"
    if isinstance(exc, openai.APITimeoutError):
        return f"upstream model {model!r} timed out (RLM_UPSTREAM_TIMEOUT_S)"
    if isinstance(exc, openai.APIConnectionError):
        return f"upstream model API unreachable (OPENAI_BASE_URL): {exc}"
    if isinstance(exc, openai.APIStatusError):
        return f"upstream model {model!r} answered {exc.status_code}: {str(exc.message)[:300]}"
    return f"upstream model call failed: {str(exc)[:300]}"
