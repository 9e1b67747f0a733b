"""The upstream client over real HTTP on loopback: what it sends, and what it makes of every
way an upstream (or a proxy in front of it) can answer badly.

A raw asyncio server plays the upstream byte for byte, so the tests can also send what no
well-behaved server would: a connection closed before the answer, a body cut short, bytes
that are not HTTP, a body past the client's bound. The policy itself (which failures are
retried, how long to wait) is tests/service/test_retry_policy.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from service.errors import UpstreamError
from service.rlm import upstream
from service.rlm.upstream import Upstream

MESSAGES = [{"role": "user", "content": "où est l'aiguille?"}]


def completion(text: str = "found it") -> bytes:
    return json.dumps(
        {
            "choices": [{"message": {"content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 2},
        }
    ).encode()


def answer(status: int, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    head = [f"HTTP/1.1 {status} X", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {"Content-Type": "application/json"}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@dataclass
class Seen:
    request_line: str
    headers: dict[str, str]
    body: bytes


Handler = Callable[[Seen, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class RawUpstream:
    """Answers each request with the next handler (the last one repeats)."""

    handlers: list[Handler] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)  # set at each request
    port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                headers = {
                    k.strip().lower(): v.strip()
                    for k, _, v in (line.partition(":") for line in lines[1:] if line)
                }
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                seen = Seen(lines[0], headers, body)
                self.seen.append(seen)
                self.arrived.set()
                handler = self.handlers[min(len(self.seen), len(self.handlers)) - 1]
                await handler(seen, writer)
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def reply(data: bytes, *, close: bool = False, delay_s: float = 0.0) -> Handler:
    async def handle(seen: Seen, writer: asyncio.StreamWriter) -> None:
        if delay_s:
            await asyncio.sleep(delay_s)
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return handle


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    up = RawUpstream()
    server = await asyncio.start_server(up.serve, "127.0.0.1", 0)
    up.port = server.sockets[0].getsockname()[1]
    yield up
    server.close()


@pytest.fixture
def no_backoff(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """Records the delay each retry was told to honour, and does not wait."""
    asked: list[float | None] = []

    def record(attempt: int, retry_after: float | None = None) -> float:
        asked.append(retry_after)
        return 0.0

    monkeypatch.setattr(upstream, "backoff_s", record)
    return asked


@pytest.fixture
async def client(raw: RawUpstream) -> AsyncIterator[Callable[..., Upstream]]:
    made: list[Upstream] = []

    def make(**kw: Any) -> Upstream:
        args: dict[str, Any] = {"api_key": "sk-test-key", "base_url": raw.base_url}
        args |= {"timeout_s": 5, "retries": 0, "concurrency": 4} | kw
        made.append(Upstream(**args))
        return made[-1]

    yield make
    for u in made:
        await u.close()


async def test_what_the_client_sends(raw: RawUpstream, client: Callable[..., Upstream]) -> None:
    raw.handlers = [reply(answer(200, completion()))]
    u = client(organization="org-1", project="proj-2", base_url=raw.base_url + "/")
    c = await u.complete("gpt-x", MESSAGES)
    assert (c.text, c.prompt_tokens, c.completion_tokens, c.model) == ("found it", 7, 2, "gpt-x")
    (seen,) = raw.seen
    assert seen.request_line == "POST /v1/chat/completions HTTP/1.1"
    h = seen.headers
    assert h["authorization"] == "Bearer sk-test-key"
    assert (h["openai-organization"], h["openai-project"]) == ("org-1", "proj-2")
    assert h["content-type"] == "application/json" and h["user-agent"].startswith("rlm-py/")
    assert json.loads(seen.body) == {"model": "gpt-x", "messages": MESSAGES}
    assert "où" in seen.body.decode()  # UTF-8 on the wire, not \\u escapes


async def test_no_key_sends_no_authorization(
    raw: RawUpstream, client: Callable[..., Upstream]
) -> None:
    raw.handlers = [reply(answer(200, completion()))]
    await client(api_key=None).complete("m", MESSAGES)
    assert "authorization" not in raw.seen[0].headers
    assert "openai-organization" not in raw.seen[0].headers


async def test_one_connection_serves_calls_in_turn(
    raw: RawUpstream, client: Callable[..., Upstream]
) -> None:
    raw.handlers = [reply(answer(200, completion()))]
    u = client()
    for _ in range(3):
        await u.complete("m", MESSAGES)
    assert len(raw.seen) == 3  # all on one kept-alive connection: the server loop saw them


@pytest.mark.parametrize(
    ("headers", "honoured"),
    [
        pytest.param({"Retry-After": "0"}, 0.0, id="retry-after"),
        pytest.param({"retry-after-ms": "20", "Retry-After": "9"}, 0.02, id="retry-after-ms"),
        pytest.param({}, None, id="none-asked"),
    ],
)
async def test_a_429_is_retried_with_the_delay_it_asks(
    raw: RawUpstream,
    client: Callable[..., Upstream],
    no_backoff: list[float | None],
    headers: dict[str, str],
    honoured: float | None,
) -> None:
    body = json.dumps({"error": {"message": "Rate limit reached for gpt-x"}}).encode()
    raw.handlers = [reply(answer(429, body, headers)), reply(answer(200, completion()))]
    c = await client(retries=2).complete("m", MESSAGES)
    assert c.text == "found it" and len(raw.seen) == 2
    assert no_backoff == [honoured]


async def test_an_error_status_carries_the_upstream_message(
    raw: RawUpstream, client: Callable[..., Upstream], no_backoff: list[float | None]
) -> None:
    body = json.dumps({"error": {"message": "Incorrect API key provided", "type": "x"}})
    raw.handlers = [reply(answer(401, body.encode()))]
    with pytest.raises(UpstreamError, match="answered 401: Incorrect API key provided") as info:
        await client(retries=3).complete("m", MESSAGES)
    assert info.value.status == 502 and len(raw.seen) == 1 and no_backoff == []


async def test_a_redirect_is_not_followed(
    raw: RawUpstream, client: Callable[..., Upstream]
) -> None:
    raw.handlers = [reply(answer(307, b"", {"Location": "http://127.0.0.1:9/elsewhere"}))]
    with pytest.raises(UpstreamError, match="answered 307"):
        await client(retries=3).complete("m", MESSAGES)
    assert len(raw.seen) == 1


async def test_no_answer_within_the_timeout(
    raw: RawUpstream, client: Callable[..., Upstream]
) -> None:
    raw.handlers = [reply(answer(200, completion()), delay_s=30)]
    t0 = time.monotonic()
    with pytest.raises(UpstreamError, match="timed out") as info:
        await client(timeout_s=0.3).complete("m", MESSAGES)
    assert time.monotonic() - t0 < 5
    assert isinstance(info.value.__cause__, upstream.TimedOut)


async def test_nobody_listening(client: Callable[..., Upstream]) -> None:
    u = client(base_url="http://127.0.0.1:9/v1", retries=1)
    with pytest.raises(UpstreamError, match=r"unreachable \(OPENAI_BASE_URL\)"):
        await u.complete("m", MESSAGES)


# Every way the bytes can go wrong, then a good answer: each is retried and the call succeeds.
BROKEN = [
    pytest.param(reply(b"", close=True), upstream.Unreachable, "closed the connection",
                 id="closed-before-answering"),
    pytest.param(reply(answer(200, completion())[:-10], close=True), upstream.MalformedResponse,
                 "broke off", id="body-cut-short"),
    pytest.param(reply(b"SSH-2.0-OpenSSH_9.2\r\n\r\n", close=True), upstream.MalformedResponse,
                 "not an HTTP answer", id="not-http"),
    pytest.param(reply(answer(200, b"<html>502 Bad Gateway</html>", {"Content-Type": "text/html"})),
                 upstream.MalformedResponse, "not JSON", id="html-page"),
    pytest.param(reply(answer(200, b'{"error": {"message": "quota"}}')),
                 upstream.MalformedResponse, "an error object: quota", id="200-error-object"),
    pytest.param(reply(answer(503, b"overloaded")), upstream.StatusError, "overloaded",
                 id="503"),
]  # fmt: skip


@pytest.mark.parametrize(("broken", "kind", "said"), BROKEN)
async def test_a_broken_answer_is_retried(
    raw: RawUpstream,
    client: Callable[..., Upstream],
    no_backoff: list[float | None],
    broken: Handler,
    kind: type[Exception],
    said: str,
) -> None:
    raw.handlers = [broken, reply(answer(200, completion()))]
    c = await client(retries=1).complete("m", MESSAGES)
    assert c.text == "found it" and len(raw.seen) == 2
    # The same failure past the retries is the UpstreamError the API answers 502 with.
    raw.seen.clear()
    raw.handlers = [broken]
    with pytest.raises(UpstreamError, match=said) as info:
        await client(retries=0).complete("m", MESSAGES)
    assert isinstance(info.value.__cause__, kind) and info.value.status == 502


async def test_a_body_past_the_bound_is_not_buffered(
    raw: RawUpstream, client: Callable[..., Upstream], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "MAX_RESPONSE_BYTES", 4096)
    big = completion("x" * 10_000)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in (big[:3000], big[3000:]))
    chunked += b"0\r\n\r\n"
    for data, said in ((answer(200, big), "a body of"), (chunked, "a body over 4096")):
        raw.seen.clear()
        raw.handlers = [reply(data)]
        with pytest.raises(UpstreamError, match=said):
            await client().complete("m", MESSAGES)


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in ("NO", "HTTP", "HTTPS", "ALL"):
        monkeypatch.delenv(f"{name}_PROXY", raising=False)
        monkeypatch.delenv(f"{name.lower()}_proxy", raising=False)
    return monkeypatch


async def test_the_environment_proxy_is_used(
    raw: RawUpstream, client: Callable[..., Upstream], proxy_env: pytest.MonkeyPatch
) -> None:
    proxy_env.setenv("HTTP_PROXY", f"http://user:pw@127.0.0.1:{raw.port}")
    raw.handlers = [reply(answer(200, completion()))]
    c = await client(base_url="http://upstream.invalid/v1").complete("m", MESSAGES)
    assert c.text == "found it"
    (seen,) = raw.seen
    assert seen.request_line == "POST http://upstream.invalid/v1/chat/completions HTTP/1.1"
    assert seen.headers["proxy-authorization"] == "Basic dXNlcjpwdw=="  # user:pw
    assert seen.headers["authorization"] == "Bearer sk-test-key"  # for the upstream


@pytest.mark.parametrize("creds", ["", "user:pw@"])
async def test_a_proxy_never_gets_the_key_for_an_https_upstream(
    raw: RawUpstream, client: Callable[..., Upstream], proxy_env: pytest.MonkeyPatch, creds: str
) -> None:
    proxy_env.setenv("HTTPS_PROXY", f"http://{creds}127.0.0.1:{raw.port}")
    raw.handlers = [reply(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", close=True)]
    with pytest.raises(UpstreamError):
        await client(base_url="https://upstream.invalid/v1").complete("m", MESSAGES)
    (seen,) = raw.seen  # the tunnel's CONNECT: all the proxy ever sees
    assert seen.request_line.startswith("CONNECT upstream.invalid:443 ")
    assert "sk-test-key" not in repr(seen)
    assert seen.headers.get("proxy-authorization") == ("Basic dXNlcjpwdw==" if creds else None)


async def test_no_proxy_is_honoured(
    raw: RawUpstream, client: Callable[..., Upstream], proxy_env: pytest.MonkeyPatch
) -> None:
    proxy_env.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nobody: used, it would fail
    proxy_env.setenv("NO_PROXY", "localhost,127.0.0.1")
    raw.handlers = [reply(answer(200, completion()))]
    assert (await client().complete("m", MESSAGES)).text == "found it"
    assert raw.seen[0].request_line.startswith("POST /v1/chat/completions ")


@pytest.mark.parametrize("url", ["ftp://host/v1", "not a url", "http:///v1"])
def test_a_base_url_that_is_not_http_is_refused_at_start(url: str) -> None:
    with pytest.raises(ValueError, match="OPENAI_BASE_URL"):
        Upstream(api_key=None, base_url=url, timeout_s=1, retries=0, concurrency=1)


async def test_a_closed_client_opens_again(
    raw: RawUpstream, client: Callable[..., Upstream]
) -> None:
    raw.handlers = [reply(answer(200, completion()))]
    u = client()
    await u.complete("m", MESSAGES)
    await u.close()
    assert (await u.complete("m", MESSAGES)).text == "found it"


async def test_a_cancelled_call_ends_at_once_and_frees_its_slot(
    raw: RawUpstream, client: Callable[..., Upstream]
) -> None:
    raw.handlers = [reply(answer(200, completion()), delay_s=30), reply(answer(200, completion()))]
    u = client(concurrency=1)
    call = asyncio.create_task(u.complete("m", MESSAGES))
    await asyncio.wait_for(raw.arrived.wait(), 5)
    t0 = time.monotonic()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert time.monotonic() - t0 < 1 and u.in_flight == 0
    # The one slot (gate and connection pool alike) serves the next call.
    assert (await asyncio.wait_for(u.complete("m", MESSAGES), 5)).text == "found it"
