"""Run the scripted upstream with any policy of ``loadtest.policies`` in the foreground.

``python -m loadtest.serve_upstream --port 8900 --latency 0.2 --policy scenarios``
(``loadtest.upstream``'s own ``main`` always serves ``needle_policy``).
"""

from __future__ import annotations

import argparse

import uvicorn

from loadtest.policies import POLICIES
from loadtest.upstream import ScriptedUpstream, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="scripted OpenAI-compatible upstream")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8900)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    parser.add_argument("--policy", choices=sorted(POLICIES), default="scenarios")
    args = parser.parse_args(argv)
    up = ScriptedUpstream(
        POLICIES[args.policy], latency_s=args.latency, port=args.port, record=False
    )
    config = uvicorn.Config(
        build_app(up), host=args.host, port=args.port, log_level="warning",
        access_log=False, backlog=4096,
    )  # fmt: skip
    print(
        f"scripted upstream on {up.base_url} (policy {args.policy}, latency {args.latency}s)",
        flush=True,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
