"""Prometheus metrics of a server: requests, latency and tokens by model and status, and the engine's load.

Labels take a bounded set of values: a model the server serves is counted under its id, any other name a client
sends under "unknown" (each distinct label is a time series kept for ever).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from specialize.monitor.request_log import ServedRequest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64)


class ServerMetrics:
    """One server's metrics, in a registry of its own (two servers in one process do not share counters)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, engine: Any, known: Callable[[str], bool]) -> None:
        """`known(model)`: whether the server serves a model of that id."""
        self.known = known
        self.registry = CollectorRegistry()
        labels = ("endpoint", "model", "status")
        self.requests = Counter("specialize_requests", "Requests answered", labels, registry=self.registry)
        self.latency = Histogram(
            "specialize_request_seconds",
            "Time from request to the last byte of the answer",
            ("endpoint", "model"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tokens = Counter(
            "specialize_tokens", "Tokens read and written", ("model", "kind"), registry=self.registry
        )
        for name, doc, read in (
            (
                "specialize_queued_requests",
                "Requests waiting for a place in the batch",
                lambda: engine.queue_depth,
            ),
            ("specialize_active_rows", "Requests being decoded", lambda: engine.active_rows),
            ("specialize_loaded_adapters", "Adapters in memory", lambda: engine.loaded_adapters),
        ):
            Gauge(name, doc, registry=self.registry).set_function(read)

    def observe(self, served: ServedRequest) -> None:
        model = served.model or ""
        if model and not self.known(model):
            model = "unknown"
        self.requests.labels(served.endpoint, model, str(served.status_code)).inc()
        if served.status_code < 400:
            self.latency.labels(served.endpoint, model).observe(served.latency_ms / 1000)
            self.tokens.labels(model, "prompt").inc(served.prompt_tokens)
            self.tokens.labels(model, "completion").inc(served.completion_tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)
