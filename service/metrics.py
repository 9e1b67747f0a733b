"""Prometheus metrics, on a registry of the app's own (several apps may live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "rlm_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "rlm_http_request_duration_seconds", "HTTP request latency", ["route", "status"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.sessions = Gauge("rlm_sessions_active", "Open sessions", registry=r)
        self.sandboxes = Gauge("rlm_sandboxes", "Sandboxes by state", ["state"], registry=r)
        self.queue_depth = Gauge("rlm_queue_depth", "Requests waiting for a run slot", registry=r)
        self.running = Gauge("rlm_requests_running", "RLM requests running", registry=r)
        self.upstream_calls = Counter(
            "rlm_upstream_calls_total", "Upstream model calls, by model", ["model"], registry=r
        )
        self.upstream_in_flight = Gauge(
            "rlm_upstream_in_flight", "Upstream model calls in flight", registry=r
        )
        self.tokens = Counter(
            "rlm_tokens_total", "Upstream tokens, by model and kind", ["model", "kind"], registry=r
        )
        self.errors = Counter("rlm_errors_total", "Errors returned, by type", ["type"], registry=r)
        self.sandbox_faults = Counter(
            "rlm_sandbox_faults_total", "Sandbox faults by kind", ["kind"], registry=r
        )
        self.runs = Counter(
            "rlm_runs_total", "Finished RLM runs by how they ended", ["how"], registry=r
        )
        self.iterations = Histogram(
            "rlm_iterations",
            "Root iterations per request",
            buckets=(1, 2, 3, 5, 8, 13, 20, 50, 100),
            registry=r,
        )
        self.hibernations = Counter(
            "rlm_session_hibernations_total", "Sessions snapshotted and closed", registry=r
        )
        self.restores = Counter(
            "rlm_session_restores_total", "Sessions restored from a snapshot", registry=r
        )
        self.sandbox_start = Histogram(
            "rlm_sandbox_start_seconds", "Sandbox start time",
            buckets=(0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10), registry=r,
        )  # fmt: skip

    def bind_gauges(self, *, sessions: Callable[[], int], idle: Callable[[], int],
                    busy: Callable[[], int], starting: Callable[[], int],
                    queued: Callable[[], int], running: Callable[[], int],
                    upstream_in_flight: Callable[[], int]) -> None:  # fmt: skip
        """Gauges read live values at scrape time."""
        self.sessions.set_function(sessions)
        self.sandboxes.labels("idle").set_function(idle)
        self.sandboxes.labels("busy").set_function(busy)
        self.sandboxes.labels("starting").set_function(starting)
        self.queue_depth.set_function(queued)
        self.running.set_function(running)
        self.upstream_in_flight.set_function(upstream_in_flight)

    def observe_completion(self, model: str, prompt_tokens: int, completion_tokens: int) -> None:
        """One upstream call finished (root, sub-call or recursive run alike)."""
        self.upstream_calls.labels(model).inc()
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
