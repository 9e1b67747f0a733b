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
        self.cost = Counter(
            "rlm_cost_usd_total", "Upstream cost in USD of priced models, by model", ["model"],
            registry=r,
        )  # fmt: skip
        self.unpriced_calls = Counter(
            "rlm_unpriced_calls_total", "Upstream calls to models without a price (RLM_PRICES)",
            ["model"], registry=r,
        )  # fmt: skip
        # By key id: the key's owner tag (a hash), never the key.
        self.key_cost = Counter(
            "rlm_key_cost_usd_total", "Upstream cost in USD, by key id", ["key_id"], registry=r
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
        self.sandbox_reused = Counter(
            "rlm_sandbox_reused_total",
            "New sessions served by a sandbox kept for their key (RLM_SANDBOX_KEEP), not a start",
            registry=r,
        )

    def sandbox_faults_total(self) -> float:
        """Every sandbox fault so far, of any kind."""
        return _total(self.sandbox_faults)

    def upstream_errors_total(self) -> float:
        """Requests that ended in an upstream error (502) so far."""
        return _total(self.errors, type="upstream_error")

    def bind_gauges(self, *, sessions: Callable[[], int], idle: Callable[[], int],
                    busy: Callable[[], int], starting: Callable[[], int], kept: Callable[[], int],
                    queued: Callable[[], int], running: Callable[[], int],
                    upstream_in_flight: Callable[[], int]) -> None:  # fmt: skip
        """Gauges read live values at scrape time."""
        self.sessions.set_function(sessions)
        self.sandboxes.labels("idle").set_function(idle)
        self.sandboxes.labels("busy").set_function(busy)
        self.sandboxes.labels("starting").set_function(starting)
        self.sandboxes.labels("kept").set_function(kept)
        self.queue_depth.set_function(queued)
        self.running.set_function(running)
        self.upstream_in_flight.set_function(upstream_in_flight)

    def observe_completion(
        self,
        model: str,
        prompt_tokens: int,
        completion_tokens: int,
        *,
        cached_tokens: int = 0,
        cost_usd: float | None = None,
    ) -> None:
        """One upstream call finished (root, sub-call or recursive run alike); ``cost_usd``
        None: the model has no price."""
        self.upstream_calls.labels(model).inc()
        self.tokens.labels(model, "prompt").inc(prompt_tokens)
        self.tokens.labels(model, "cached_prompt").inc(cached_tokens)
        self.tokens.labels(model, "completion").inc(completion_tokens)
        if cost_usd is None:
            self.unpriced_calls.labels(model).inc()
        else:
            self.cost.labels(model).inc(cost_usd)

    def observe_key_cost(self, key_id: str, cost_usd: float) -> None:
        """What one request of the key ``key_id`` (its owner tag) spent on priced models."""
        self.key_cost.labels(key_id).inc(cost_usd)


def _total(counter: Counter, **labels: str) -> float:
    """A counter's sum over its label sets (those matching ``labels``)."""
    return sum(
        sample.value
        for metric in counter.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
        and all(sample.labels.get(k) == v for k, v in labels.items())
    )
