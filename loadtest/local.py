"""``make loadtest-local``: the scenarios against a service on loopback, without a real model.

Starts the scripted upstream (``--latency`` per call, default 0) and the service with the
real sandboxes (``RLM_SANDBOX=docker``, ``RLM_SANDBOX_RUNTIME=runsc`` unless told
otherwise), runs Locust headless for a bounded time, prints the summary, stops everything
and checks that no sandbox container is left. Exit code 1 on any failed request or leftover.
"""

from __future__ import annotations

import argparse
import sys

from loadtest.run import USER_CLASSES, new_log_dir, run_locust
from loadtest.stack import LocalStack, StackConfig


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--spawn-rate", type=float, default=10)
    p.add_argument("--run-time", default="60s")
    p.add_argument("--latency", type=float, default=0.0, help="scripted upstream seconds per call")
    p.add_argument("--sandbox", default="docker", choices=["docker", "local"])
    p.add_argument("--runtime", default="runsc", choices=["runsc", "runc"])
    p.add_argument("--classes", nargs="*", default=[], choices=USER_CLASSES)
    args = p.parse_args(argv)

    out_dir = new_log_dir()
    cfg = StackConfig(
        sandbox=args.sandbox, runtime=args.runtime, latency_s=args.latency,
        pool_size=min(args.users, 32), log_dir=out_dir,
    )  # fmt: skip
    print(f"starting scripted upstream (latency {args.latency}s) and service "
          f"(sandbox {args.sandbox}/{args.runtime}); logs in {out_dir}", flush=True)  # fmt: skip
    with LocalStack(cfg) as stack:
        result = run_locust(
            stack.base_url, users=args.users, spawn_rate=args.spawn_rate, run_time=args.run_time,
            out_dir=out_dir, classes=tuple(args.classes), api_key=stack.api_key, progress=False,
        )  # fmt: skip
    print(
        f"\nloadtest-local: {result.requests} requests, {result.failures} failed, "
        f"{result.rps:.1f} req/s with {args.users} users; report in {out_dir}/report.html"
    )
    if stack.leftovers:
        print(
            f"loadtest-local: {len(stack.leftovers)} sandbox containers were left behind and removed"
        )
        return 1
    if result.failures or result.requests == 0:
        return 1
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
