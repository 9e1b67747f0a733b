"""First-deploy smoke test: ``make smoke HOST=https://rlm.example.com KEY=...``.

Checks what a user meets through the load balancer, one line per check, and exits 1 if any
fails:

* ``tls``: the URL is https and its certificate verifies (``--allow-http`` for a local run);
* ``healthz`` and ``readyz``: the process is alive, and this host can start sandboxes (a
  host still warming its pool is waited for, up to ``--ready-timeout``);
* ``models``: the key is accepted and the served models are listed;
* ``needle``: a needle-in-a-haystack query (about 2,000 lines) comes back with the number:
  the whole path (sandbox, upstream, answer) works; on a real fleet it spends a few cents;
* ``session``: a second turn naming the first turn's session continues it
  (``rlm.session_created`` false, the session's view counts two turns), with the cookies the
  first answer set, as an SDK client keeps them;
* ``stickiness``: the first answer set the ``rlm_session`` cookie and, behind an ALB, its
  ``AWSALBAPP-*`` cookie (``--expect-alb``; without it a missing one is only reported).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from loadtest.haystack import NEEDLE_QUERY, filler, magic_number, with_needle
from service.constants import HEALTH_PATH, READY_PATH, SESSION_COOKIE, SESSION_HEADER

ALB_COOKIE_PREFIX = "AWSALBAPP"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float


class Smoke:
    def __init__(
        self, base: str, key: str, *, allow_http: bool = False, expect_alb: bool = False,
        timeout_s: float = 300.0, model: str = "rlm", ready_timeout_s: float = 60.0,
    ) -> None:  # fmt: skip
        self.base = base.rstrip("/")
        self.key = key
        self.allow_http = allow_http
        self.expect_alb = expect_alb
        self.model = model
        self.ready_timeout_s = ready_timeout_s
        # One client with a cookie jar, like the openai SDK's.
        self.http = httpx.Client(
            base_url=self.base, timeout=timeout_s, headers={"Authorization": f"Bearer {key}"}
        )
        self.checks: list[Check] = []
        self.first: httpx.Response | None = None

    def run(self) -> list[Check]:
        steps: list[tuple[str, Callable[[], str]]] = [
            ("tls", self.tls),
            ("healthz", lambda: self.status(HEALTH_PATH)),
            ("readyz", self.ready),
            ("models", self.models),
            ("needle", self.needle),
            ("session", self.session),
            ("stickiness", self.stickiness),
        ]
        for name, step in steps:
            t0 = time.perf_counter()
            try:
                detail, ok = step(), True
            except (AssertionError, httpx.HTTPError, ValueError, KeyError) as exc:
                detail, ok = f"{type(exc).__name__}: {exc}"[:400], False
            self.checks.append(Check(name, ok, detail, time.perf_counter() - t0))
        self.http.close()
        return self.checks

    # ---- the checks --------------------------------------------------------------------

    def tls(self) -> str:
        if self.base.startswith("https://"):
            self.http.get(HEALTH_PATH)  # raises when the certificate does not verify
            return "https, certificate verified"
        assert self.allow_http, "the URL is not https (pass --allow-http for a local service)"
        return "plain http (allowed)"

    def status(self, path: str) -> str:
        r = self.http.get(path)
        assert r.status_code == 200, f"{path} answered {r.status_code}: {r.text[:200]}"
        return f"{path} 200"

    def ready(self) -> str:
        """``/readyz`` 200, waiting while the host warms up (503 with Retry-After)."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            r = self.http.get(READY_PATH)
            if r.status_code == 200 or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        assert r.status_code == 200, f"{READY_PATH} answered {r.status_code}: {r.text[:200]}"
        return f"{READY_PATH} 200"

    def models(self) -> str:
        r = self.http.get("/v1/models")
        assert r.status_code == 200, f"/v1/models answered {r.status_code}: {r.text[:200]}"
        ids = [m["id"] for m in r.json()["data"]]
        assert self.model in ids, f"{self.model!r} is not served (served: {ids})"
        return "served: " + ", ".join(ids)

    def _chat(self, query: str, **extra: Any) -> httpx.Response:
        body = {"model": self.model, "messages": [{"role": "user", "content": query}], **extra}
        return self.http.post("/v1/chat/completions", json=body)

    def needle(self) -> str:
        number = magic_number()
        context = with_needle(filler(2000), number)
        r = self._chat(NEEDLE_QUERY, rlm={"context": context})
        assert r.status_code == 200, f"answered {r.status_code}: {r.text[:300]}"
        self.first = r
        answer = r.json()["choices"][0]["message"]["content"] or ""
        assert number in answer, f"the answer {answer[:200]!r} does not hold {number}"
        cost = r.json().get("rlm", {}).get("cost_usd")
        return f"found {number}" + (f" for ${cost:.4f}" if isinstance(cost, int | float) else "")

    def session(self) -> str:
        assert self.first is not None, "no first turn (the needle check failed)"
        sid = self.first.json()["rlm"]["session_id"]
        r = self.http.post(
            "/v1/chat/completions",
            json={
                "model": self.model,
                "messages": [{"role": "user", "content": NEEDLE_QUERY}],
                "rlm": {"context": "The magic number is 1234567."},
            },
            headers={SESSION_HEADER: sid},
        )
        assert r.status_code == 200, f"the second turn answered {r.status_code}: {r.text[:300]}"
        rlm = r.json()["rlm"]
        assert rlm["session_id"] == sid, f"the second turn ran in session {rlm['session_id']}"
        assert rlm.get("session_created") is False, "the second turn started a new session"
        view = self.http.get(f"/v1/sessions/{sid}")
        assert view.status_code == 200, f"the session's view answered {view.status_code}"
        turns = view.json().get("turns")
        assert turns == 2, f"the session's view counts {turns} turns, not 2"
        return f"session {sid[:8]}... continued (2 turns)"

    def stickiness(self) -> str:
        assert self.first is not None, "no first turn (the needle check failed)"
        names = set(self.first.cookies.keys()) | set(self.http.cookies.keys())
        assert SESSION_COOKIE in names, f"no {SESSION_COOKIE} cookie was set"
        alb = sorted(n for n in names if n.startswith(ALB_COOKIE_PREFIX))
        if self.expect_alb:
            assert alb, f"no {ALB_COOKIE_PREFIX}* cookie: is app-cookie stickiness on?"
        return f"cookies: {SESSION_COOKIE}" + (", " + ", ".join(alb) if alb else " (no ALB cookie)")


def report(checks: list[Check]) -> str:
    lines = ["| check | result | seconds | detail |", "|---|---|---|---|"]
    for c in checks:
        detail = c.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {c.name} | {'ok' if c.ok else 'FAIL'} | {c.seconds:.2f} | {detail} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smoke-test a deployed rlm-py (see the docstring)")
    p.add_argument("--host", required=True, help="base URL, e.g. https://rlm.example.com")
    p.add_argument("--key", default=os.environ.get("RLM_SMOKE_KEY", ""), help="an API key "
                   "(default: $RLM_SMOKE_KEY)")  # fmt: skip
    p.add_argument("--allow-http", action="store_true", help="accept a plain-http URL")
    p.add_argument("--expect-alb", action="store_true", help="require the ALB's cookie")
    p.add_argument("--model", default="rlm")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for /readyz")
    args = p.parse_args(argv)
    if not args.key:
        p.error("an API key is needed: --key or RLM_SMOKE_KEY")
    smoke = Smoke(args.host, args.key, allow_http=args.allow_http, expect_alb=args.expect_alb,
                  model=args.model, ready_timeout_s=args.ready_timeout)  # fmt: skip
    checks = smoke.run()
    print(report(checks))
    return 0 if all(c.ok for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
