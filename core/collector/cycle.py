"""One collection cycle: recover, pack, make durable, remove sources, upload, clean up.

```
 storage folders           outbox (state_dir/outbox)                      receiver
 *.json ──scan──> tmp/<id> ──fsync, rename──> new/<id> ──sources removed──> ready/<id> ──export──> 202
                                                                                  │
                                       journal.jsonl <── receipt (fsync) <────────┘
                                                                                  │
                                                   removed, or moved to sent/<id> <┘
```

Every arrow is one durable step, so a crash anywhere leaves each record in exactly one
place: still in the storage, or in exactly one archive of the outbox. The only window in
which a record can reach the receiver twice is between the receiver accepting an archive
and the receipt reaching the journal; the archive then goes again under the same id, which
is how a receiver can tell (see docs/export.md).

The whole cycle runs under the collector lock, so a second collector waits or skips.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import secrets
import time
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from ..config import Config
from ..errors import (
    ArchiveTooLarge,
    ConfigError,
    ExportFailed,
    ExportMisconfigured,
    ExportUnavailable,
)
from ..types import Archive, Exporter, Receipt
from . import fsutil
from .archive import (
    ArchiveWriter,
    BuiltArchive,
    ShortRead,
    UnreadableMember,
    archive_members,
    manifest_entries,
    manifest_names,
    manifest_summary,
)
from .backoff import Backoff, StopSignal, retry_after_seconds
from .journal import Journal
from .lock import CollectorLock
from .outbox import Outbox
from .scan import (
    FolderIdentity,
    SourceFile,
    SourceRemover,
    Storage,
    file_digest,
    open_source,
    scan,
    source_path,
)

log = logging.getLogger("lightspeed_collector.collector")

SETTINGS_PATH = "user_data_collection.data_collector"
_IMPLAUSIBLY_FAR_AHEAD_NS = 24 * 3600 * 1_000_000_000
_UNREADABLE_EXAMPLES = 5

ExportedCallback = Callable[[Archive, Receipt], None]


class Progress(Protocol):
    """What a terminal progress display is told; the default tells nobody."""

    def packed(self, records: int, size: int) -> None: ...

    def uploaded(self, done: int, total: int) -> None: ...

    def done(self) -> None: ...


class _Silent:
    def packed(self, records: int, size: int) -> None:
        pass

    def uploaded(self, done: int, total: int) -> None:
        pass

    def done(self) -> None:
        pass


@dataclass(frozen=True)
class CollectorSettings:
    storages: tuple[Storage, ...]
    state_dir: Path
    exporter: str
    max_archive_bytes: int
    compression_level: int
    cleanup_after_send: bool
    upload_attempts: int
    retry_base_seconds: float
    collection_interval: float
    lock_wait_seconds: float
    shutdown_timeout_seconds: float
    min_record_age_seconds: float = 0.0
    """Records modified more recently than this are left for a later cycle: a writer that
    writes in place, with no temporary name, may not have finished them."""

    @classmethod
    def from_config(cls, config: Config) -> CollectorSettings:
        collection = config.section("user_data_collection")
        collector = config.section("user_data_collection", "data_collector")
        storages: list[Storage] = []
        for folder, key in (
            ("feedback", "feedback_storage"),
            ("transcripts", "transcripts_storage"),
        ):
            # Configured folders are exported even when collecting that kind is switched
            # off: what was stored earlier still has to leave.
            if collection.get(key):
                root = os.path.realpath(collection[key])
                if all(existing.root != root for existing in storages):
                    storages.append(Storage(folder, root))
        return cls(
            storages=tuple(storages),
            state_dir=Path(config.section("service")["state_dir"]).absolute(),
            exporter=collector["exporter"],
            max_archive_bytes=collector["max_archive_bytes"],
            compression_level=collector["compression_level"],
            cleanup_after_send=collector["cleanup_after_send"],
            upload_attempts=collector["upload_attempts"],
            retry_base_seconds=collector["retry_base_seconds"],
            collection_interval=collector["collection_interval"],
            lock_wait_seconds=collector["lock_wait_seconds"],
            shutdown_timeout_seconds=collector["shutdown_timeout_seconds"],
            min_record_age_seconds=collector["min_record_age_seconds"],
        )


@dataclass
class UnreadableRecords:
    """How many records of a scan could not be read, and the first few with why."""

    count: int = 0
    examples: list[tuple[str, str]] = field(default_factory=list)

    def add(self, path: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < _UNREADABLE_EXAMPLES:
            self.examples.append((path, reason))

    def describe(self) -> str:
        shown = "; ".join(f"{path} ({why})" for path, why in self.examples)
        more = self.count - len(self.examples)
        return f"{shown}; and {more} more" if more else shown


@dataclass
class CycleReport:
    skipped: bool = False
    records_packed: int = 0
    bytes_packed: int = 0
    archives_built: int = 0
    archives_sent: int = 0
    records_sent: int = 0
    bytes_sent: int = 0
    archives_failed: int = 0
    archives_split: int = 0
    quarantined: list[str] = field(default_factory=list)
    records_too_recent: int = 0
    """Records left in the storage because they were modified too recently to be sure their
    writer had finished; a later cycle takes them."""
    unreadable: UnreadableRecords = field(default_factory=UnreadableRecords)
    """Records that are there but could not be read (no permission, a name too long, a disk
    error); they stay in the storage, and every cycle reports them again."""
    misconfigured: str | None = None
    """The setting to check when the receiver or the exporter reported a configuration
    problem; the exit status of ``export`` is 2 then."""
    waiting: int = 0
    """Archives still in the outbox when the cycle ended."""
    seconds: float = 0.0
    failures: dict[str, int] = field(default_factory=dict)
    """Failed upload attempts by reason (unavailable, too_large, misconfigured, rejected,
    exporter_error, unreadable), for the export failure metrics."""

    def failed(self, reason: str) -> None:
        self.failures[reason] = self.failures.get(reason, 0) + 1

    def summary(self) -> str:
        parts = [
            f"packed {_plural(self.records_packed, 'record')} into "
            f"{_plural(self.archives_built, 'archive')}",
            f"sent {_plural(self.archives_sent, 'archive')} "
            f"({_plural(self.records_sent, 'record')}, {_human(self.bytes_sent)})",
            f"{self.waiting} waiting in the outbox",
        ]
        if self.archives_split:
            parts.append(f"{self.archives_split} split")
        if self.quarantined:
            parts.append(f"{len(self.quarantined)} quarantined")
        if self.records_too_recent:
            parts.append(
                f"{_plural(self.records_too_recent, 'record')} too recent, left for the next cycle"
            )
        if self.unreadable.count:
            parts.append(
                f"{_plural(self.unreadable.count, 'record')} unreadable, left in the storage"
            )
        if self.misconfigured:
            parts.append(f"stopped by a configuration problem ({self.misconfigured})")
        return f"export cycle: {', '.join(parts)}; {self.seconds:.2f} s"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB"):
        if value < 1024 or unit == "MiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def new_archive_id() -> str:
    """Sortable by creation time, unique without coordination: ``20240101T120000Z-<12 hex>``."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(6)}"


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Collector:
    """Runs cycles against one exporter. Everything that touches time is injectable: the
    monotonic ``clock``, the ``sleep`` between retries (by default a wait that a stop request
    cuts short), the ``wall_clock`` stamped into manifests, ids and the jitter source."""

    def __init__(
        self,
        settings: CollectorSettings,
        exporter: Exporter,
        *,
        on_exported: ExportedCallback | None = None,
        stop: StopSignal | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] | None = None,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        new_id: Callable[[], str] = new_archive_id,
        rng: random.Random | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.settings = settings
        self.exporter = exporter
        self.outbox = Outbox(settings.state_dir)
        self.journal = Journal(self.outbox.journal_path)
        self.stop = stop or StopSignal(clock)
        self.lock = CollectorLock(
            settings.state_dir, [storage.root for storage in settings.storages], clock=clock
        )
        self.backoff = Backoff(settings.retry_base_seconds, settings.collection_interval, rng)
        self._on_exported = on_exported
        self._clock = clock
        self._sleep = sleep or self.stop.wait
        self._wall_clock = wall_clock
        self._new_id = new_id
        self._progress: Progress = progress or _Silent()

    # -- the cycle -------------------------------------------------------------------------

    def run_cycle(self, *, last: bool = False) -> CycleReport:
        """One cycle. ``last`` is the run's last cycle (``export --once``, or the final cycle
        of a stop): it waits, once and within the stop deadline, for records held back as
        too recent, so what was stored just before it still leaves."""
        started = self._clock()
        report = CycleReport()
        fsutil.make_dirs(self.settings.state_dir)
        with self.lock.hold(self.settings.lock_wait_seconds) as held:
            if not held:
                report.skipped = True
                report.waiting = self.outbox.pending_count()
                log.info(
                    "export cycle skipped: another collector holds %s (%d archives waiting "
                    "in the outbox)",
                    self.lock.path,
                    report.waiting,
                )
                return report
            log.debug(
                "export cycle started: storages %s, %d archives waiting in the outbox",
                ", ".join(f"{s.folder}={s.root}" for s in self.settings.storages) or "none",
                self.outbox.pending_count(),
            )
            self.outbox.prepare()
            self._recover()
            try:
                self._pack(report, last=last)
            except OSError as exc:
                # Typically a full state volume. What is already in the outbox can still
                # go, and sending it frees the space the next cycle needs.
                log.error("packing stopped: %s; uploading what is in the outbox", exc)
            self._upload(report)
            report.waiting = self.outbox.pending_count()
        self._progress.done()
        report.seconds = self._clock() - started
        log.info("%s", report.summary())
        return report

    # -- recovery --------------------------------------------------------------------------

    def _recover(self) -> None:
        """Finish what a crash interrupted: sources of committed archives, splits."""
        for archive_id in self.outbox.ids(self.outbox.new):
            differing = 0
            with SourceRemover(self.settings.storages) as remover:
                for entry in manifest_entries(self.outbox.manifest(self.outbox.new, archive_id)):
                    path = source_path(self.settings.storages, entry.name)
                    if path is None:
                        continue
                    found = file_digest(path)
                    if found is None:
                        continue
                    if found == (entry.size, entry.sha256):
                        remover.remove(path)
                    else:
                        differing += 1
                remover.finish()
            _report_kept(archive_id, remover)
            self.outbox.release(archive_id)
            log.debug(
                "recovered archive %s: %d source files removed after an interruption",
                archive_id,
                remover.removed,
            )
            if differing:
                log.warning(
                    "archive %s: %d source files differ from the archived copy and were kept",
                    archive_id,
                    differing,
                )
        ready = set(self.outbox.ids(self.outbox.ready))
        for parent in sorted(ready):
            children = [child for child in (f"{parent}.1", f"{parent}.2") if child in ready]
            if len(children) == 2:
                self.outbox.remove(self.outbox.ready, parent)
                log.debug("finished interrupted split of archive %s", parent)
            elif children:
                self.outbox.remove(self.outbox.ready, children[0])
                log.debug("undid half-done split of archive %s", parent)

    # -- packing ---------------------------------------------------------------------------

    def _pack(self, report: CycleReport, *, last: bool) -> None:
        self._pack_all(report, last=last)
        if report.unreadable.count:
            log.warning(
                "%s could not be read, left in the storage: %s",
                _plural(report.unreadable.count, "record"),
                report.unreadable.describe(),
            )

    def _pack_all(self, report: CycleReport, *, last: bool) -> None:
        youngest_ns = self._pack_settled(report)
        if youngest_ns is None or not last:
            return
        age = self.settings.min_record_age_seconds
        # Never longer than the age itself: a modification time in the future (a writer's
        # clock ahead of ours) would otherwise hold the run up for as long as it is ahead.
        wait = min(age, (youngest_ns - self._wall_clock_ns()) / 1e9 + age)
        log.debug(
            "waiting %.2f s for %s modified in the last %g s",
            wait,
            _plural(report.records_too_recent, "record"),
            age,
        )
        if self._pause(wait):
            report.records_too_recent = 0
            self._pack_settled(report)

    def _wall_clock_ns(self) -> int:
        return int(self._wall_clock().timestamp() * 1e9)

    def _pack_settled(self, report: CycleReport) -> int | None:
        """Pack every record old enough to be finished; answer the modification time of the
        youngest one held back as too recent (``None`` when none was)."""
        settings = self.settings
        roots = [storage.root for storage in settings.storages]
        changing: set[str] = set()
        # Records modified after this are held back; so are those up to a day in the future
        # (a writer's clock ahead of ours). A time further ahead than that is no writer's
        # clock, and trusting it would keep the record from leaving for as long.
        now_ns = self._wall_clock_ns()
        settled_ns = now_ns - int(settings.min_record_age_seconds * 1e9)
        implausible_ns = now_ns + _IMPLAUSIBLY_FAR_AHEAD_NS
        check_age = settings.min_record_age_seconds > 0
        youngest_ns: int | None = None
        too_recent = 0
        # Each scan meets every record still in the storage, so the last one's count is the
        # cycle's; records that failed part way through are left out of later scans, so
        # they are kept apart.
        unreadable = UnreadableRecords()
        failed_midway: list[tuple[str, str]] = []

        def records() -> Iterator[SourceFile]:
            found = scan(settings.storages, exclude=[str(settings.state_dir), *roots])
            return (source for source in found if source.member not in changing)

        files = records()
        carried: SourceFile | None = None
        exhausted = False
        found = 0
        while not exhausted and not self.stop.expired():
            writer: ArchiveWriter | None = None
            first: SourceFile | None = None
            # Each packed file's inode and its folder's identity, in packing order (the
            # manifest's): the commit removes only files that are still the ones packed, in
            # the folders that were listed.
            inodes = array("Q")
            folders: list[FolderIdentity] = []
            packed_since_ns = time.time_ns()
            try:
                while True:
                    source = carried if carried is not None else next(files, None)
                    carried = None
                    if source is None:
                        exhausted = True
                        break
                    try:
                        opened = open_source(source)
                    except OSError as exc:
                        unreadable.add(source.path, exc.strerror or str(exc))
                        continue
                    if opened is None:
                        continue
                    try:
                        if check_age and settled_ns < opened.mtime_ns <= implausible_ns:
                            too_recent += 1
                            youngest_ns = max(youngest_ns or 0, opened.mtime_ns)
                            continue
                        if opened.size > settings.max_archive_bytes:
                            self._quarantine_record(source, opened.size, report)
                            continue
                        if writer is None:
                            writer = self._new_writer()
                            first = source
                        elif not writer.room_for(source.member, opened.size):
                            carried = source
                            break
                        writer.add(
                            source.member,
                            opened.size,
                            opened.mtime_ns // 1_000_000_000,
                            functools.partial(os.read, opened.fd),
                        )
                        inodes.append(opened.inode)
                        folders.append(source.folder_identity)
                    finally:
                        os.close(opened.fd)
                    found += 1
                    self._progress.packed(found, writer.total_bytes)
                    if self.stop.expired():
                        break
                if writer is None:
                    break
                built = writer.finish()
            except (ShortRead, UnreadableMember) as exc:
                # A record shrank while it was read (something rewrote it in place), or
                # reading it failed. What is in this archive so far is still on disk: start
                # again without it, so one bad record never holds back the rest.
                assert writer is not None and source is not None
                writer.abort()
                changing.add(exc.member)
                if isinstance(exc, ShortRead):
                    log.warning(
                        "record %s changed while it was being packed; it is left for the "
                        "next cycle and the archive is built again without it",
                        exc.member,
                    )
                else:
                    failed_midway.append((source.path, exc.reason))
                    log.debug("archive built again without unreadable record %s", exc.member)
                # The new scan meets the records held back so far again.
                files, carried, too_recent = records(), None, 0
                unreadable = UnreadableRecords()
                continue
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            if built.size > settings.max_archive_bytes and first is not None:
                # Only a lone record can get here: it compresses past the limit by itself.
                writer.abort()
                self._quarantine_record(first, built.size, report, compressed=True)
                continue
            self._commit(built, inodes, folders, packed_since_ns, report)
        log.debug(
            "scan finished: %d records packed this cycle, %d modified too recently to pack",
            found,
            too_recent,
        )
        report.records_too_recent += too_recent
        for path, reason in failed_midway:
            unreadable.add(path, reason)
        report.unreadable = unreadable
        return youngest_ns

    def _new_writer(self) -> ArchiveWriter:
        archive_id = self._new_id()
        now = self._wall_clock()
        return ArchiveWriter(
            self.outbox.building(archive_id),
            archive_id,
            limit=self.settings.max_archive_bytes,
            level=self.settings.compression_level,
            created=_rfc3339(now),
            mtime=int(now.timestamp()),
        )

    def _commit(
        self,
        built: BuiltArchive,
        inodes: array[int],
        folders: list[FolderIdentity],
        packed_since_ns: int,
        report: CycleReport,
    ) -> None:
        self.outbox.commit(built.archive_id)
        log.debug(
            "archive %s built: %d bytes, %d members (%s)",
            built.archive_id,
            built.size,
            built.record_count,
            ", ".join(f"{count} {folder}" for folder, count in sorted(built.counts.items())),
        )
        manifest = self.outbox.manifest(self.outbox.new, built.archive_id)
        packed = (
            (path, inode, folder)
            for name, inode, folder in zip(manifest_names(manifest), inodes, folders, strict=True)
            if (path := source_path(self.settings.storages, name)) is not None
        )
        with SourceRemover(self.settings.storages) as remover:
            remover.remove_all(packed, packed_since_ns=packed_since_ns)
            remover.finish()
        _report_kept(built.archive_id, remover)
        self.outbox.release(built.archive_id)
        log.debug(
            "archive %s: %d source files removed, %d empty folders pruned",
            built.archive_id,
            remover.removed,
            remover.pruned,
        )
        report.archives_built += 1
        report.records_packed += built.record_count
        report.bytes_packed += built.size

    def _quarantine_record(
        self, source: SourceFile, size: int, report: CycleReport, *, compressed: bool = False
    ) -> None:
        what = "compresses to" if compressed else "is"
        try:
            target = self.outbox.quarantine_record(source.path, source.member)
        except OSError as exc:
            # Typically a state volume too small for the record. It stays where it is, and
            # the rest of the backlog still leaves.
            log.warning(
                "record %s %s %d bytes, more than %s.max_archive_bytes (%d), and could not "
                "be moved to quarantine (%s); it stays in the storage",
                source.member,
                what,
                size,
                SETTINGS_PATH,
                self.settings.max_archive_bytes,
                exc.strerror or exc,
            )
            return
        log.warning(
            "record %s %s %d bytes, more than %s.max_archive_bytes (%d): moved to %s; it "
            "will not be exported",
            source.member,
            what,
            size,
            SETTINGS_PATH,
            self.settings.max_archive_bytes,
            target,
        )
        self.journal.append(
            {
                "event": "quarantined",
                "member": source.member,
                "size": size,
                "path": str(target),
                "time": _rfc3339(self._wall_clock()),
            }
        )
        report.quarantined.append(source.member)

    # -- uploading -------------------------------------------------------------------------

    def _upload(self, report: CycleReport) -> None:
        sent_before = self.journal.sent_ids()
        queue = deque(self.outbox.ids(self.outbox.ready))
        total = len(queue)
        done = 0
        failures = 0
        attempts = self.settings.upload_attempts
        while queue:
            retry: list[str] = []
            wait_at_least: float | None = None
            while queue:
                if self.stop.expired():
                    log.warning(
                        "shutdown deadline reached: %s kept in the outbox",
                        _plural(len(queue) + len(retry), "archive"),
                    )
                    return
                archive_id = queue.popleft()
                if archive_id in sent_before:
                    # Accepted before an interruption; only the cleanup was missing.
                    self._clean_up_sent(archive_id)
                    continue
                try:
                    archive = self.outbox.load(archive_id)
                except (OSError, ValueError, KeyError) as exc:
                    log.error(
                        "archive %s in %s cannot be read (%s); it is left there for an operator",
                        archive_id,
                        self.outbox.ready,
                        exc,
                    )
                    report.archives_failed += 1
                    report.failed("unreadable")
                    continue
                log.debug(
                    "uploading archive %s (%d bytes, %d records) with exporter '%s'",
                    archive_id,
                    archive.size,
                    archive.record_count,
                    self.exporter.name,
                )
                try:
                    receipt = self.exporter.export(archive)
                    if not 200 <= receipt.status < 300:
                        raise ExportFailed(
                            f"exporter returned status {receipt.status}", status=receipt.status
                        )
                except ExportUnavailable as exc:
                    report.failed("unavailable")
                    seconds = retry_after_seconds(exc.retry_after)
                    if seconds is not None:
                        wait_at_least = max(wait_at_least or 0.0, seconds)
                    log.warning(
                        "archive %s not accepted (attempt %d of %d): %s",
                        archive_id,
                        failures + 1,
                        attempts,
                        _describe(exc),
                    )
                    retry.append(archive_id)
                    continue
                except ArchiveTooLarge as exc:
                    report.failed("too_large")
                    children = self._split(archive, exc, report)
                    total += len(children) - 1
                    queue.extendleft(reversed(children))
                    continue
                except ExportMisconfigured as exc:
                    report.failed("misconfigured")
                    self._misconfigured(archive_id, _describe(exc), exc.setting, report)
                    return
                except ConfigError as exc:
                    report.failed("misconfigured")
                    setting = exc.path if "." in exc.path else f"{SETTINGS_PATH}.{exc.path}"
                    self._misconfigured(archive_id, exc.problem, setting, report)
                    return
                except ExportFailed as exc:
                    log.warning(
                        "archive %s not accepted: %s; it stays in the outbox for the next cycle",
                        archive_id,
                        _describe(exc),
                    )
                    report.archives_failed += 1
                    report.failed("rejected")
                    continue
                except Exception as exc:
                    log.error(
                        "exporter '%s' failed on archive %s: %s: %s; it stays in the outbox",
                        self.exporter.name,
                        archive_id,
                        type(exc).__name__,
                        exc,
                    )
                    log.debug("exporter failure", exc_info=True)
                    report.archives_failed += 1
                    report.failed("exporter_error")
                    continue
                self._accepted(archive, receipt, report)
                done += 1
                self._progress.uploaded(done, total)
            if not retry:
                return
            failures += 1
            if failures >= attempts:
                log.warning(
                    "%s still not accepted after %d attempts; kept in the outbox for the "
                    "next cycle",
                    _plural(len(retry), "archive"),
                    attempts,
                )
                report.archives_failed += len(retry)
                return
            delay = self.backoff.delay(failures, wait_at_least)
            if self.stop.deadline is not None and self._clock() + delay > self.stop.deadline:
                log.warning("shutting down: %s kept in the outbox", _plural(len(retry), "archive"))
                report.archives_failed += len(retry)
                return
            log.warning(
                "retrying %s in %.1f s (attempt %d of %d)",
                _plural(len(retry), "archive"),
                delay,
                failures + 1,
                attempts,
            )
            if not self._pause(delay):
                log.warning("shutting down: %s kept in the outbox", _plural(len(retry), "archive"))
                report.archives_failed += len(retry)
                return
            queue.extend(retry)

    def _pause(self, seconds: float) -> bool:
        """Wait before a retry; ``False`` when a stop request leaves no time for it."""
        until = self._clock() + seconds
        while (remaining := until - self._clock()) > 0:
            if self.stop.deadline is not None and until > self.stop.deadline:
                return False
            self._sleep(remaining)
        return True

    def _accepted(self, archive: Archive, receipt: Receipt, report: CycleReport) -> None:
        try:
            self.journal.append(
                {
                    "event": "sent",
                    "archive_id": archive.archive_id,
                    "request_id": receipt.request_id,
                    "status": receipt.status,
                    "size": archive.size,
                    "records": archive.record_count,
                    "sha256": archive.sha256,
                    "time": _rfc3339(self._wall_clock()),
                }
            )
        except OSError as exc:
            # Typically a full state volume. The receipt only guards the moment between
            # here and the cleanup; stopping now would send this archive again every cycle
            # and never free the space it holds.
            log.error(
                "archive %s was accepted but its receipt could not be journaled (%s); "
                "cleaning it up all the same",
                archive.archive_id,
                exc,
            )
        log.debug(
            "archive %s accepted: status %d, request id %s",
            archive.archive_id,
            receipt.status,
            receipt.request_id or "(none)",
        )
        if self._on_exported is not None:
            try:
                self._on_exported(archive, receipt)
            except Exception as exc:
                log.error("archive_exported observer failed: %s: %s", type(exc).__name__, exc)
        self._clean_up_sent(archive.archive_id)
        report.archives_sent += 1
        report.records_sent += archive.record_count
        report.bytes_sent += archive.size

    def _clean_up_sent(self, archive_id: str) -> None:
        if self.settings.cleanup_after_send:
            self.outbox.remove(self.outbox.ready, archive_id)
            log.debug("archive %s removed from the outbox", archive_id)
        else:
            self.outbox.keep_sent(archive_id)
            log.debug("archive %s moved to %s", archive_id, self.outbox.sent / archive_id)

    def _misconfigured(
        self, archive_id: str, detail: str, setting: str, report: CycleReport
    ) -> None:
        log.error(
            "archive %s refused: %s. This is a configuration problem: check %s. Uploads stop "
            "until the next cycle; the outbox keeps every archive.",
            archive_id,
            detail,
            setting,
        )
        report.misconfigured = setting

    def _split(self, archive: Archive, problem: ArchiveTooLarge, report: CycleReport) -> list[str]:
        """Replace a refused archive by two halves; a lone record goes to quarantine."""
        summary = manifest_summary(self.outbox.manifest(self.outbox.ready, archive.archive_id))
        if summary.record_count <= 1:
            target = self.outbox.quarantine_archive(archive.archive_id)
            log.error(
                "archive %s (%d bytes, 1 record) refused as too large: %s; it cannot be split "
                "and was moved to %s",
                archive.archive_id,
                archive.size,
                _describe(problem),
                target,
            )
            self.journal.append(
                {
                    "event": "quarantined",
                    "archive_id": archive.archive_id,
                    "size": archive.size,
                    "path": str(target),
                    "time": _rfc3339(self._wall_clock()),
                }
            )
            report.quarantined.append(archive.archive_id)
            return []
        half = (summary.record_count + 1) // 2
        ids = [f"{archive.archive_id}.1", f"{archive.archive_id}.2"]
        now = self._wall_clock()
        writers = [
            ArchiveWriter(
                self.outbox.building(child),
                child,
                limit=self.settings.max_archive_bytes,
                level=self.settings.compression_level,
                created=_rfc3339(now),
                mtime=int(now.timestamp()),
                split_from=archive.archive_id,
            )
            for child in ids
        ]
        try:
            for index, (member, reader) in enumerate(archive_members(archive.path)):
                writers[0 if index < half else 1].add(
                    member.name, member.size, int(member.mtime), reader.read
                )
            halves = [writer.finish() for writer in writers]
        except BaseException:
            for writer in writers:
                with contextlib.suppress(OSError):
                    writer.abort()
            raise
        for child in ids:
            self.outbox.publish(child)
        self.outbox.remove(self.outbox.ready, archive.archive_id)
        self.journal.append(
            {
                "event": "split",
                "archive_id": archive.archive_id,
                "into": ids,
                "time": _rfc3339(now),
            }
        )
        log.warning(
            "archive %s (%d bytes, %d records) refused as too large: %s; split into %s "
            "(%d bytes) and %s (%d bytes)",
            archive.archive_id,
            archive.size,
            summary.record_count,
            _describe(problem),
            ids[0],
            halves[0].size,
            ids[1],
            halves[1].size,
        )
        report.archives_split += 1
        return ids


def _report_kept(archive_id: str, remover: SourceRemover) -> None:
    """Files an archive holds that stay in the storage: each will go out with a later cycle,
    as it now is, so an operator should know why it stayed."""
    if remover.kept_count:
        shown = "; ".join(f"{path} ({why})" for path, why in remover.kept)
        more = remover.kept_count - len(remover.kept)
        log.warning(
            "archive %s: %d source files were kept in the storage: %s%s",
            archive_id,
            remover.kept_count,
            shown,
            f"; and {more} more" if more else "",
        )


def _describe(problem: ExportFailed) -> str:
    if problem.status is None or str(problem.status) in problem.detail:
        return problem.detail
    return f"status {problem.status}: {problem.detail}"
