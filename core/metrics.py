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

import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from . import __version__

if TYPE_CHECKING:
    from .collector.cycle import CycleReport

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

    def enable_export_metrics(self, storages: Sequence[str], outbox: str) -> None:
        """Counters fed by each collection cycle, and the backlog measured at scrape time."""
        self.archives_exported = Counter(
            "lightspeed_export_archives",
            "Archives accepted by the receiver.",
            registry=self.registry,
        )
        self.records_exported = Counter(
            "lightspeed_export_records",
            "Records in archives accepted by the receiver.",
            registry=self.registry,
        )
        self.bytes_exported = Counter(
            "lightspeed_export_bytes",
            "Compressed bytes of archives accepted by the receiver.",
            registry=self.registry,
        )
        self.export_failures = Counter(
            "lightspeed_export_failures",
            "Failed upload attempts, by reason (unavailable, too_large, misconfigured, "
            "rejected, exporter_error, unreadable).",
            ["reason"],
            registry=self.registry,
        )
        self.register(ExportBacklog(storages, outbox))

    def observe_export(self, report: CycleReport) -> None:
        self.archives_exported.inc(report.archives_sent)
        self.records_exported.inc(report.records_sent)
        self.bytes_exported.inc(report.bytes_sent)
        for reason, count in report.failures.items():
            self.export_failures.labels(reason=reason).inc(count)

    def register(self, collector: Collector) -> None:
        """Add a collector whose values are computed at each scrape."""
        self.registry.register(collector)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition in the format the scraper asked for (``Accept``), and its content
        type: the Prometheus text format unless OpenMetrics is requested."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


@dataclass(frozen=True)
class _Backlog:
    files: int
    bytes: int
    oldest_mtime: float | None
    outbox_archives: int
    outbox_bytes: int


class ExportBacklog(Collector):
    """What is not exported yet: records still in the storages and archives in the outbox.

    Measured by walking the folders when Prometheus scrapes (read-only: it never prunes or
    locks anything), at most once per ``max_age`` seconds so frequent scrapes of a large
    backlog stay cheap.
    """

    def __init__(self, storages: Sequence[str], outbox: str, max_age: float = 2.0) -> None:
        self._storages = tuple(storages)
        self._outbox = outbox
        self._max_age = max_age
        self._lock = threading.Lock()
        self._cached: tuple[float, _Backlog] | None = None

    def collect(self) -> Iterable[Metric]:
        backlog = self._measure()
        yield GaugeMetricFamily(
            "lightspeed_export_backlog_files",
            "Records stored and not yet packed into an archive.",
            value=backlog.files,
        )
        yield GaugeMetricFamily(
            "lightspeed_export_backlog_bytes",
            "Bytes of records stored and not yet packed into an archive.",
            value=backlog.bytes,
        )
        yield GaugeMetricFamily(
            "lightspeed_export_outbox_archives",
            "Archives packed and waiting to be accepted by the receiver.",
            value=backlog.outbox_archives,
        )
        yield GaugeMetricFamily(
            "lightspeed_export_outbox_bytes",
            "Bytes of archives waiting in the outbox.",
            value=backlog.outbox_bytes,
        )
        age = 0.0 if backlog.oldest_mtime is None else max(0.0, time.time() - backlog.oldest_mtime)
        yield GaugeMetricFamily(
            "lightspeed_export_oldest_unexported_age_seconds",
            "Age of the oldest record or archive not yet accepted by the receiver (0 when none).",
            value=age,
        )

    def _measure(self) -> _Backlog:
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and now - self._cached[0] < self._max_age:
                return self._cached[1]
            files = size = 0
            oldest: float | None = None
            for stat in _finished_records(self._storages):
                files += 1
                size += stat.st_size
                oldest = stat.st_mtime if oldest is None else min(oldest, stat.st_mtime)
            archives = outbox_bytes = 0
            for state in ("new", "ready"):
                for archive_dir in _subfolders(os.path.join(self._outbox, state)):
                    archives += 1
                    for stat in _regular_files(archive_dir):
                        outbox_bytes += stat.st_size
                        oldest = stat.st_mtime if oldest is None else min(oldest, stat.st_mtime)
            backlog = _Backlog(files, size, oldest, archives, outbox_bytes)
            self._cached = (now, backlog)
            return backlog


def _finished_records(roots: Iterable[str]) -> Iterator[os.stat_result]:
    stack = [root for root in roots if os.path.isdir(root)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif (
                            entry.name.endswith(".json")
                            and not entry.name.startswith(".")
                            and entry.is_file(follow_symlinks=False)
                        ):
                            yield entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
        except OSError:
            continue


def _subfolders(path: str) -> list[str]:
    try:
        with os.scandir(path) as entries:
            return [entry.path for entry in entries if entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _regular_files(path: str) -> Iterator[os.stat_result]:
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    yield entry.stat(follow_symlinks=False)
    except OSError:
        return
