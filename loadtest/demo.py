"""``make demo`` (``python -m loadtest.demo``): one needle-in-a-haystack query end to end, offline.

Starts the scripted upstream (it plays the root model: search the context, then answer)
and the service on loopback with the configured sandbox (runsc by default), sends one
request through the official ``openai`` client, and prints the trajectory and the answer.
It lives with the load-test tooling it is built from (the scripted upstream, the haystack),
so the service never imports ``loadtest``.
"""

from __future__ import annotations

import os
import sys
import textwrap
import time

import openai

from loadtest.haystack import filler, magic_number, with_needle
from loadtest.upstream import ScriptedUpstream, ThreadedServer, free_port
from service.app import create_app
from service.config import Settings

LINES = 10_000


def _show(ev: dict, width: int = 100) -> None:
    kind = ev["event"]
    pad = "  " * int(ev.get("depth", 0) or 0)
    if kind == "run_start":
        print(
            f"{pad}▶ run {ev['run']} (depth {ev['depth']}, model {ev['model']}): context {ev['context']}"
        )
    elif kind == "iteration":
        print(f"{pad}● iteration {ev['iteration'] + 1} ({ev['ms']} ms, {ev['usage']})")
        print(textwrap.indent(ev["response"].strip(), pad + "  │ "))
    elif kind == "code":
        out = (ev["stdout"] + ev["stderr"]).strip() or "(no output)"
        print(f"{pad}  ⤷ code block {ev['block'] + 1} ran in {ev['ms']:.2f} ms, printed:")
        print(textwrap.indent(textwrap.shorten(out, width * 3), pad + "    "))
    elif kind == "sub_call":
        print(f"{pad}  ⤷ {ev['kind']} → {ev['model']}: {ev['answer'][:width]!r}")
    elif kind == "final":
        print(f"{pad}■ final answer ({ev['how']}, {ev['iterations']} iterations, {ev['ms']} ms)")


def main() -> int:
    magic = magic_number()
    context = with_needle(filler(LINES), magic)
    with ScriptedUpstream() as upstream:
        port = free_port()
        settings = Settings(
            openai_base_url=upstream.base_url,
            openai_api_key="scripted",
            rlm_port=port,
            rlm_api_keys="",
            rlm_sandbox_pool_size=1,
            rlm_sandbox=os.environ.get("RLM_SANDBOX", "docker"),
        )
        server = ThreadedServer(create_app(settings), port, name="the service")
        try:
            server.start()
        except RuntimeError as exc:
            print(exc, file=sys.stderr)
            return 1
        try:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="demo")
            print(f"Query: what is the magic number? Context: {LINES:,} lines ({len(context):,} chars), "
                  f"sandbox: {settings.rlm_sandbox}/{settings.rlm_sandbox_runtime}\n")  # fmt: skip
            t0 = time.perf_counter()
            resp = client.chat.completions.create(
                model="rlm",
                messages=[{"role": "user", "content": "What is the magic number in the context?"}],
                extra_body={"rlm": {"context": context, "include_trajectory": True}},
            )
            elapsed = time.perf_counter() - t0
            for ev in (resp.model_extra or {})["rlm"]["trajectory"]:
                _show(ev)
            answer = resp.choices[0].message.content
            print(
                f"\nAnswer: {answer}   (expected {magic}; {elapsed * 1000:.0f} ms; usage {resp.usage})"
            )
            return 0 if answer == magic else 1
        finally:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
