"""Prometheus metrics: request counts and latency histograms by route template and status."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector

# When this variable names a directory as prometheus_client is imported, every value is kept
# in a file there (one per process), so the workers of one service (WORKERS > 1: shopkit.workers
# sets it for them) can answer a scrape with the sum over all of them.
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"


class Metrics:
    """One registry per app (no process-wide globals, so tests can build many apps)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, service: str, multiprocess_dir: str | None = None) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["service", "method", "route", "status"]
        self.requests = Counter(
            "http_requests", "HTTP requests answered", labels, registry=self.registry
        )
        self.latency = Histogram(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            labels,
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.service = service
        # (method, route, status) -> its counter and histogram: .labels() is costly per call.
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            labels = (self.service, method, route, str(status))
            children = self._children[key] = (
                self.requests.labels(*labels),
                self.latency.labels(*labels),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self) -> bytes:
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        # A scrape lands on one worker: answer with every worker's values (dead ones' too, so
        # counters never go back), read from their files, as prometheus_client documents.
        every_worker = CollectorRegistry()
        MultiProcessCollector(every_worker, self.multiprocess_dir)
        return generate_latest(every_worker)
