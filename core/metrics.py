"""The service's Prometheus metrics, one registry per service instance.

A registry per instance (not the process-global one) lets tests and embedders run several
services in one process without their counters colliding.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "lightspeed_requests",
            "HTTP requests answered, by route and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lightspeed_request_duration_seconds",
            "Time to answer an HTTP request, by route.",
            ["route"],
            registry=self.registry,
        )
        self.records_stored = Counter(
            "lightspeed_records_stored",
            "Records written by the sinks, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.redactions = Counter(
            "lightspeed_redactions",
            "Replacements made by redactors, by redactor and rule.",
            ["redactor", "rule"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
