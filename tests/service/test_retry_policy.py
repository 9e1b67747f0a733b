"""The upstream retry policy (service/rlm/upstream.py) and the translation of failures.

``should_retry`` decides which failures get another try, ``backoff_s`` how long to wait
(full jitter, or the server's Retry-After when it is sane), ``status_error`` reads an error
answer (message, delay), ``_describe`` / ``_completion`` turn failures and bodies into
``UpstreamError``. The last tests drive ``Upstream.complete`` with a fake ``post`` and no
sleeping, to check that the loop applies the policy (attempt count, delays, the raised
error). tests/service/test_upstream_http.py drives the same client over real HTTP.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from service.errors import UpstreamError
from service.rlm import upstream
from service.rlm.upstream import (
    BACKOFF_BASE_S,
    BACKOFF_MAX_S,
    RETRY_STATUSES,
    AttemptError,
    MalformedResponse,
    StatusError,
    TimedOut,
    Unreachable,
    Upstream,
    backoff_s,
    should_retry,
)

HTTP_DATE = "Wed, 21 Oct 2015 07:28:00 GMT"


def status_error(
    status: int, headers: dict[str, str] | None = None, message: str = "upstream said no"
) -> StatusError:
    body = json.dumps({"error": {"message": message, "type": "x"}}).encode()
    return upstream.status_error(status, body, headers)


def timeout_error() -> TimedOut:
    return TimedOut("no answer within 5 s")


def connection_error() -> Unreachable:
    return Unreachable("Cannot connect to host upstream.example:443")


def jitter_cap(attempt: int) -> float:
    return min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2**attempt)


@pytest.fixture
def seed() -> Iterator[Callable[[int], None]]:
    """Seeds the global random (what backoff_s draws from) and restores it afterwards."""
    state = random.getstate()
    yield random.seed
    random.setstate(state)


# ---- should_retry -----------------------------------------------------------------------

SHOULD_RETRY = [
    pytest.param(lambda: status_error(400), False, id="400-bad-request"),
    pytest.param(lambda: status_error(401), False, id="401-unauthorized"),
    pytest.param(lambda: status_error(403), False, id="403-forbidden"),
    pytest.param(lambda: status_error(404), False, id="404-not-found"),
    pytest.param(lambda: status_error(408), True, id="408-request-timeout"),
    pytest.param(lambda: status_error(409), True, id="409-conflict"),
    pytest.param(lambda: status_error(413), False, id="413-too-large"),
    pytest.param(lambda: status_error(422), False, id="422-unprocessable"),
    pytest.param(lambda: status_error(429), True, id="429-rate-limited"),
    pytest.param(lambda: status_error(500), True, id="500-internal"),
    pytest.param(lambda: status_error(501), False, id="501-not-implemented"),
    pytest.param(lambda: status_error(502), True, id="502-bad-gateway"),
    pytest.param(lambda: status_error(503), True, id="503-unavailable"),
    pytest.param(lambda: status_error(504), True, id="504-gateway-timeout"),
    pytest.param(lambda: status_error(505), False, id="505-version"),
    # Transport failures.
    pytest.param(timeout_error, True, id="timed-out"),
    pytest.param(connection_error, True, id="unreachable"),
    pytest.param(lambda: MalformedResponse("<html>"), True, id="malformed"),
    # Everything else: no retry (foreign errors are not caught by the loop at all).
    pytest.param(lambda: AttemptError("boom"), False, id="bare-attempt-error"),
    pytest.param(lambda: ValueError("x"), False, id="ValueError"),
    pytest.param(lambda: TimeoutError(), False, id="builtin-TimeoutError"),
    pytest.param(lambda: ConnectionResetError(), False, id="builtin-ConnectionResetError"),
    pytest.param(lambda: asyncio.CancelledError(), False, id="CancelledError"),
]


@pytest.mark.parametrize(("make", "expected"), SHOULD_RETRY)
def test_should_retry(make: Callable[[], BaseException], expected: bool) -> None:
    assert should_retry(make()) is expected


def test_retry_statuses_are_exactly_the_transient_ones() -> None:
    assert frozenset({408, 409, 429, 500, 502, 503, 504}) == RETRY_STATUSES
    assert all(400 <= s < 600 for s in RETRY_STATUSES)


# ---- backoff_s --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "cap"),
    [
        pytest.param(0, 0.5, id="attempt-0"),
        pytest.param(1, 1.0, id="attempt-1"),
        pytest.param(2, 2.0, id="attempt-2"),
        pytest.param(3, 4.0, id="attempt-3"),
        pytest.param(4, 8.0, id="attempt-4-reaches-max"),
        pytest.param(5, 8.0, id="attempt-5-capped"),
        pytest.param(10, 8.0, id="attempt-10-capped"),
    ],
)
def test_backoff_is_full_jitter_up_to_the_exponential_cap(
    attempt: int, cap: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert jitter_cap(attempt) == cap
    seen: list[tuple[float, float]] = []

    def uniform(a: float, b: float) -> float:
        seen.append((a, b))
        return b

    monkeypatch.setattr(upstream.random, "uniform", uniform)
    assert backoff_s(attempt) == cap
    assert seen == [(0, cap)]


@pytest.mark.parametrize("attempt", [0, 1, 2, 3, 4, 7, 10])
def test_backoff_samples_stay_in_bounds_and_vary(attempt: int, seed: Callable[[int], None]) -> None:
    seed(20240601 + attempt)  # deterministic: never flaky
    samples = [backoff_s(attempt) for _ in range(200)]
    assert all(0 <= s <= jitter_cap(attempt) for s in samples)
    assert len(set(samples)) > 150  # jittered, not a fixed delay
    assert max(samples) > 0.8 * jitter_cap(attempt)  # spans the range


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [
        pytest.param(0.0, 0.0, id="zero"),
        pytest.param(1.0, 1.0, id="one-second"),
        pytest.param(2.5, 2.5, id="fraction"),
        pytest.param(30.0, 30.0, id="thirty"),
        pytest.param(60.0, 60.0, id="sixty-inclusive"),
    ],
)
@pytest.mark.parametrize("attempt", [0, 3, 10])
def test_sane_retry_after_wins_over_backoff(
    retry_after: float, expected: float, attempt: int
) -> None:
    assert backoff_s(attempt, retry_after) == expected


@pytest.mark.parametrize(
    "retry_after",
    [
        pytest.param(60.001, id="just-over-60"),
        pytest.param(3600.0, id="an-hour"),
        pytest.param(1e9, id="huge"),
        pytest.param(float("inf"), id="inf"),
        pytest.param(float("nan"), id="nan"),
        pytest.param(-1.0, id="negative"),
        pytest.param(None, id="absent"),
    ],
)
@pytest.mark.parametrize("attempt", [0, 2, 6])
def test_insane_retry_after_falls_back_to_bounded_backoff(
    retry_after: float | None, attempt: int, seed: Callable[[int], None]
) -> None:
    seed(7)
    delays = [backoff_s(attempt, retry_after) for _ in range(50)]
    assert all(0 <= d <= jitter_cap(attempt) <= BACKOFF_MAX_S for d in delays)


# ---- _retry_after: the header, as the loop reads it -------------------------------------

RETRY_AFTER_HEADERS = [
    pytest.param({"Retry-After": "5"}, 5.0, id="seconds"),
    pytest.param({"retry-after": "5"}, 5.0, id="lower-case-name"),
    pytest.param({"RETRY-AFTER": "0"}, 0.0, id="upper-case-name-zero"),
    pytest.param({"Retry-After": "1.5"}, 1.5, id="fraction"),
    pytest.param({"Retry-After": " 7 "}, 7.0, id="padded"),
    pytest.param({"Retry-After": "-3"}, -3.0, id="negative-read-as-is"),
    pytest.param({"Retry-After": "86400"}, 86400.0, id="a-day-read-as-is"),
    pytest.param({"Retry-After": HTTP_DATE}, None, id="http-date-not-read"),
    pytest.param({"Retry-After": "soon"}, None, id="garbage"),
    pytest.param({"Retry-After": "5s"}, None, id="unit-suffix"),
    pytest.param({"Retry-After": ""}, None, id="empty"),
    pytest.param({}, None, id="absent"),
    pytest.param({"retry-after-ms": "500"}, 0.5, id="openai-ms-header"),
    pytest.param({"Retry-After-Ms": "1500", "Retry-After": "9"}, 1.5, id="ms-header-first"),
    pytest.param({"retry-after-ms": "soon", "Retry-After": "9"}, 9.0, id="bad-ms-then-seconds"),
]


@pytest.mark.parametrize(("headers", "expected"), RETRY_AFTER_HEADERS)
def test_retry_after_header(headers: dict[str, str], expected: float | None) -> None:
    assert upstream._retry_after(status_error(429, headers)) == expected


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(timeout_error, id="timeout"),
        pytest.param(connection_error, id="connection"),
        pytest.param(lambda: ValueError("5"), id="foreign"),
    ],
)
def test_retry_after_only_from_a_status_error(make: Callable[[], BaseException]) -> None:
    assert upstream._retry_after(make()) is None


@pytest.mark.parametrize(
    ("header", "exact"),
    [
        pytest.param("5", 5.0, id="seconds-honoured"),
        pytest.param("60", 60.0, id="sixty-honoured"),
        pytest.param("0", 0.0, id="zero-honoured"),
        pytest.param("61", None, id="over-sixty-ignored"),
        pytest.param("86400", None, id="huge-ignored"),
        pytest.param("-3", None, id="negative-ignored"),
        pytest.param("nan", None, id="nan-ignored"),
        pytest.param(HTTP_DATE, None, id="http-date-ignored"),
        pytest.param("soon", None, id="garbage-ignored"),
    ],
)
@pytest.mark.parametrize("attempt", [0, 4])
def test_delay_from_a_429(
    header: str, exact: float | None, attempt: int, seed: Callable[[int], None]
) -> None:
    seed(11)
    delay = backoff_s(attempt, upstream._retry_after(status_error(429, {"Retry-After": header})))
    if exact is not None:
        assert delay == exact
    else:
        assert 0 <= delay <= jitter_cap(attempt)


# ---- translation into UpstreamError -----------------------------------------------------

DESCRIBE = [
    pytest.param(timeout_error, ["'m1'", "timed out", "RLM_UPSTREAM_TIMEOUT_S"], id="timeout"),
    pytest.param(
        connection_error, ["unreachable", "OPENAI_BASE_URL", "Cannot connect"], id="connection"
    ),
    pytest.param(
        lambda: status_error(429, message="Rate limit reached"),
        ["'m1'", "answered 429", "Rate limit reached"],
        id="status-429",
    ),
    pytest.param(
        lambda: status_error(401, message="Incorrect API key"),
        ["'m1'", "answered 401", "Incorrect API key"],
        id="status-401",
    ),
    pytest.param(
        lambda: MalformedResponse("not JSON"),
        ["'m1'", "malformed completion", "not JSON"],
        id="malformed",
    ),
    pytest.param(
        lambda: AttemptError("weird"), ["upstream model call failed", "weird"], id="other"
    ),
]


@pytest.mark.parametrize(("make", "parts"), DESCRIBE)
def test_describe(make: Callable[[], AttemptError], parts: list[str]) -> None:
    text = upstream._describe(make(), "m1")
    for part in parts:
        assert part in text


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: status_error(500, message="x" * 5000), id="status"),
        pytest.param(lambda: Unreachable("z" * 5000), id="unreachable"),
        pytest.param(lambda: AttemptError("y" * 5000), id="other"),
    ],
)
def test_describe_bounds_the_upstream_message(make: Callable[[], AttemptError]) -> None:
    assert len(upstream._describe(make(), "m1")) < 400


def _body(content: Any = "hi", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "choices": [{"message": {"content": content}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5},
    }
    body.update(extra)
    return body


COMPLETIONS = [
    pytest.param(_body(), ("hi", "stop", 3, 5), id="plain"),
    pytest.param(
        _body([{"type": "text", "text": "a"}, "junk", {"type": "text", "text": "b"}]),
        ("ab", "stop", 3, 5),
        id="content-parts",
    ),
    pytest.param(_body(None), ("", "stop", 3, 5), id="null-content"),
    pytest.param(_body(usage=None), ("hi", "stop", 0, 0), id="no-usage"),
    pytest.param(_body(usage=[1]), ("hi", "stop", 0, 0), id="usage-a-list-is-no-usage"),
]


@pytest.mark.parametrize(("resp", "expected"), COMPLETIONS)
def test_completion_reads_the_body(resp: Any, expected: tuple[str, Any, int, int]) -> None:
    c = upstream._completion(resp, "m1", 0.25)
    assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens) == expected
    assert c.model == "m1" and c.latency_s == 0.25


MALFORMED = [
    pytest.param(None, id="null"),
    pytest.param("<html>502 Bad Gateway</html>", id="html-string"),
    pytest.param([1, 2], id="list"),
    pytest.param({"choices": 5}, id="choices-not-a-list"),
    pytest.param({"choices": [None]}, id="choice-null"),
    pytest.param({"choices": [{"message": "hi"}]}, id="message-a-string"),
    pytest.param(_body(usage={"prompt_tokens": "many"}), id="usage-not-a-number"),
    pytest.param({"choices": []}, id="no-choices"),
    pytest.param({}, id="empty-object"),
    pytest.param({"error": {"message": "quota"}}, id="200-with-an-error-object"),
]


@pytest.mark.parametrize("resp", MALFORMED)
def test_malformed_completion_is_refused(resp: Any) -> None:
    with pytest.raises(upstream.MalformedResponse):
        upstream._completion(resp, "m1", 0.0)
    assert upstream.should_retry(upstream.MalformedResponse("x"))


# ---- the loop applies the policy (fake transport, no sleeping) -------------------------


class FakePost:
    """Stands in for ``Upstream.post`` (one attempt): raises the scripted errors, then
    answers."""

    def __init__(self, outcomes: list[BaseException | dict[str, Any]]) -> None:
        self.outcomes = outcomes
        self.calls = 0
        self.timeouts: list[float] = []

    async def __call__(self, body: dict[str, Any], timeout_s: float) -> Any:
        assert body["model"] == "m1" and body["messages"][0]["content"] == "q"
        self.timeouts.append(timeout_s)
        outcome = self.outcomes[min(self.calls, len(self.outcomes) - 1)]
        self.calls += 1
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float | None]]:
    """Records each backoff the loop asks for and makes it zero."""
    seen: list[tuple[int, float | None]] = []

    def record(attempt: int, retry_after: float | None = None) -> float:
        seen.append((attempt, retry_after))
        return 0.0

    monkeypatch.setattr(upstream, "backoff_s", record)
    return seen


@pytest.fixture(scope="module")
async def shared_upstream() -> AsyncIterator[Upstream]:
    """One client for the module."""
    u = Upstream(
        api_key="sk-x", base_url="http://127.0.0.1:9/v1", timeout_s=5, retries=0, concurrency=4
    )
    yield u
    await u.close()


@pytest.fixture
def make_upstream(
    shared_upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> Callable[..., Upstream]:
    def make(outcomes: list[BaseException | dict[str, Any]], retries: int = 3) -> Upstream:
        monkeypatch.setattr(shared_upstream, "retries", retries)
        monkeypatch.setattr(shared_upstream, "post", FakePost(outcomes))
        return shared_upstream

    return make


LOOP = [
    pytest.param([_body()], 3, 1, [], id="first-try"),
    pytest.param(
        [status_error(503), timeout_error(), _body()], 3, 3, [(0, None), (1, None)], id="recovers"
    ),
    pytest.param(
        [status_error(429, {"Retry-After": "2"}), _body()], 3, 2, [(0, 2.0)], id="retry-after"
    ),
    pytest.param([connection_error(), _body()], 1, 2, [(0, None)], id="one-retry-enough"),
]


@pytest.mark.parametrize(("outcomes", "retries", "calls", "expected_delays"), LOOP)
async def test_loop_retries_then_answers(
    make_upstream: Callable[..., Upstream],
    delays: list[tuple[int, float | None]],
    outcomes: list[Any],
    retries: int,
    calls: int,
    expected_delays: list[tuple[int, float | None]],
) -> None:
    u = make_upstream(outcomes, retries)
    comp = await u.complete("m1", [{"role": "user", "content": "q"}])
    assert comp.text == "hi"
    assert u.post.calls == calls  # type: ignore[attr-defined]
    assert delays == expected_delays
    assert u.in_flight == 0


GIVE_UP = [
    pytest.param(status_error(503), 3, 4, "answered 503", id="retryable-exhausted"),
    pytest.param(timeout_error(), 2, 3, "timed out", id="timeouts-exhausted"),
    pytest.param(status_error(503), 0, 1, "answered 503", id="no-retries-configured"),
    pytest.param(status_error(400), 3, 1, "answered 400", id="400-never-retried"),
    pytest.param(status_error(401), 3, 1, "answered 401", id="401-never-retried"),
    pytest.param(status_error(404), 3, 1, "answered 404", id="404-never-retried"),
    pytest.param(MalformedResponse("<html>"), 2, 3, "malformed completion", id="garbage"),
    pytest.param(connection_error(), 1, 2, "unreachable", id="unreachable"),
    pytest.param(AttemptError("odd"), 3, 1, "upstream model call failed", id="other-failure"),
]


@pytest.mark.parametrize(("error", "retries", "calls", "message"), GIVE_UP)
async def test_loop_gives_up_with_an_upstream_error(
    make_upstream: Callable[..., Upstream],
    delays: list[tuple[int, float | None]],
    error: AttemptError,
    retries: int,
    calls: int,
    message: str,
) -> None:
    u = make_upstream([error], retries)
    with pytest.raises(UpstreamError, match=message) as info:
        await u.complete("m1", [{"role": "user", "content": "q"}])
    assert info.value.__cause__ is error
    assert u.post.calls == calls  # type: ignore[attr-defined]
    assert [a for a, _ in delays] == list(range(calls - 1))
    assert u.in_flight == 0


async def test_malformed_body_is_retried_like_a_5xx(
    make_upstream: Callable[..., Upstream], delays: list[tuple[int, float | None]]
) -> None:
    u = make_upstream([{"choices": 5}, _body()], 3)
    c = await u.complete("m1", [{"role": "user", "content": "q"}])
    assert c.text == "hi" and u.post.calls == 2  # type: ignore[attr-defined]
    assert len(delays) == 1


async def test_malformed_body_past_the_retries_is_a_502(
    make_upstream: Callable[..., Upstream], delays: list[tuple[int, float | None]]
) -> None:
    u = make_upstream([{"choices": 5}] * 3, 2)
    with pytest.raises(UpstreamError, match="malformed") as info:
        await u.complete("m1", [{"role": "user", "content": "q"}])
    assert info.value.status == 502 and u.post.calls == 3  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("call_timeout", "used"),
    [
        pytest.param(None, 5.0, id="the-client's"),
        pytest.param(2.0, 2.0, id="a-shorter-deadline-wins"),
        pytest.param(50.0, 5.0, id="never-longer-than-the-client's"),
    ],
)
async def test_each_attempt_gets_the_call_timeout(
    make_upstream: Callable[..., Upstream], call_timeout: float | None, used: float
) -> None:
    u = make_upstream([_body()], 0)
    await u.complete("m1", [{"role": "user", "content": "q"}], timeout_s=call_timeout)
    assert u.post.timeouts == [used]  # type: ignore[attr-defined]


# ---- status_error: what an error answer says ------------------------------------------

STATUS_BODIES = [
    pytest.param(b'{"error": {"message": "Rate limit reached", "type": "x"}}', "Rate limit reached",
                 id="openai-error-object"),
    pytest.param(b'{"error": "plain string"}', "plain string", id="error-a-string"),
    pytest.param(b'{"message": "flat"}', "flat", id="flat-object"),
    pytest.param(b"<html><body>\n  502 Bad Gateway\n</body></html>",
                 "<html><body> 502 Bad Gateway </body></html>", id="html-whitespace-folded"),
    pytest.param(b"", "(no message)", id="empty"),
    pytest.param(b"\xff\xfe bad bytes", "\ufffd\ufffd bad bytes", id="not-utf8"),
    pytest.param(b'{"error": {"code": 5}}', '{"error": {"code": 5}}', id="no-message-field"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), STATUS_BODIES)
def test_status_error_reads_the_message(body: bytes, message: str) -> None:
    err = upstream.status_error(503, body)
    assert (err.status, err.message, err.retry_after) == (503, message, None)


def test_status_error_bounds_the_message() -> None:
    err = upstream.status_error(500, json.dumps({"error": {"message": "x" * 10**6}}).encode())
    assert len(err.message) == upstream.MESSAGE_MAX_CHARS
