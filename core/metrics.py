"""The service's Prometheus metrics, one registry per service instance.

A registry per instance (not the process-global one) lets tests and embedders run several
services in one process without their counters colliding. Every family is named
``lightspeed_*``; counters gain ``_total`` in the exposition.

prometheus-client's metrics are safe to update from many threads at once (each child holds
its own lock), which is what waitress's worker threads do.

Adding a family: create it here on ``self.registry`` for values the code updates as things
happen (the data collector's archives and bytes exported, export failures by reason), or
``register`` a collector for values best measured when Prometheus scrapes (the backlog of
unexported files and bytes, the age of the oldest unexported record), so a scrape never sees
a number older than the scrape itself.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from . import __version__

# Answers from a model take seconds, streamed ones up to minutes: the default buckets (which
# stop at 10 s) would put every slow answer in +Inf.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "lightspeed_requests",
            "HTTP requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "lightspeed_request_duration_seconds",
            "Time from receiving a request to its response status and headers, by route "
            "(a streamed answer's body keeps flowing after that).",
            ["route"],
            buckets=LATENCY_BUCKETS,
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
        self.build_info = Info(
            "lightspeed_build", "The running lightspeed-collector.", registry=self.registry
        )
        self.build_info.info({"version": __version__})
        # CPU, memory, open files and start time of this process, as every exporter offers.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def register(self, collector: Collector) -> None:
        """Add a collector whose values are computed at each scrape."""
        self.registry.register(collector)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (``Accept``), and its content
        type: the Prometheus text format unless OpenMetrics is requested."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type
