"""The data collector: stored records → archives → durable outbox → exporter → cleanup.

- ``scan``: finding finished records and removing them once archived;
- ``archive``: streaming ``tar.gz`` writer held under a compressed-size limit, manifests;
- ``outbox``: archive states as folders, each move one durable rename;
- ``journal``: receipts, so a restart never re-sends what was accepted;
- ``lock``: one collector at a time per state folder and storage;
- ``backoff``: retry timing, ``Retry-After``, stop requests with a deadline;
- ``cycle``: one collection cycle; ``runner``: once, in a loop, or inside ``serve``;
- ``fsutil``: the durable file steps; ``progress``: the terminal progress line.

The collector knows exporters only through the public ``Exporter`` protocol.
"""

from .cycle import Collector, CollectorSettings, CycleReport
from .runner import BackgroundCollector, background_collector, run_export

__all__ = [
    "BackgroundCollector",
    "Collector",
    "CollectorSettings",
    "CycleReport",
    "background_collector",
    "run_export",
]
