"""One collection cycle in-process: real files, a scripted exporter, a clock that does not wait.

The exporter is a real object implementing the public ``Exporter`` protocol; what it is told
to do on each call stands for the receiver's answers.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import tarfile
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lightspeed_collector.collector import cycle as cycle_module
from lightspeed_collector.collector.backoff import StopSignal
from lightspeed_collector.collector.cycle import Collector, CollectorSettings
from lightspeed_collector.collector.journal import Journal
from lightspeed_collector.collector.lock import CollectorLock
from lightspeed_collector.collector.outbox import Outbox
from lightspeed_collector.collector.scan import (
    STALE_EMPTY_DIR_SECONDS,
    STALE_TEMP_FILE_SECONDS,
    OpenedFile,
    SourceFile,
    Storage,
)
from lightspeed_collector.types import (
    Archive,
    ArchiveTooLarge,
    ConfigError,
    ExportFailed,
    ExportMisconfigured,
    ExportUnavailable,
    Receipt,
)

USER = "a" * 64
WALL_EPOCH = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


class FakeClock:
    """Monotonic time that only moves when the collector sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


Outcome = Exception | Callable[[Archive], Exception | None] | None


@dataclass
class ScriptedExporter:
    """Answers each call with the next scripted outcome (``None`` is success), then succeeds."""

    script: list[Outcome] = field(default_factory=list)
    name: str = "scripted"
    received: list[tuple[str, dict[str, bytes]]] = field(default_factory=list)
    calls: int = 0
    keep: bool = True
    """False keeps nothing of what arrives (for measuring the collector's own memory)."""

    def export(self, archive: Archive) -> Receipt:
        self.calls += 1
        outcome = self.script.pop(0) if self.script else None
        if callable(outcome) and not isinstance(outcome, Exception):
            outcome = outcome(archive)
        if outcome is not None:
            raise outcome
        assert archive.path.stat().st_size == archive.size
        if not self.keep:
            return Receipt(status=202, request_id=f"req-{self.calls}")
        members = read_records(archive.path)
        assert len(members) == archive.record_count
        self.received.append((archive.archive_id, members))
        return Receipt(status=202, request_id=f"req-{self.calls}")

    def records(self) -> dict[str, bytes]:
        merged: dict[str, bytes] = {}
        for _, members in self.received:
            for name, data in members.items():
                assert name not in merged, f"{name} exported twice"
                merged[name] = data
        return merged


def read_records(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive
            if member.name != "manifest.json"
        }


@dataclass
class World:
    root: Path
    feedback: Path
    transcripts: Path
    state: Path
    clock: FakeClock

    def settings(self, **overrides: Any) -> CollectorSettings:
        base = CollectorSettings(
            storages=(
                Storage("feedback", os.path.realpath(self.feedback)),
                Storage("transcripts", os.path.realpath(self.transcripts)),
            ),
            state_dir=self.state,
            exporter="scripted",
            max_archive_bytes=10 * 1024 * 1024,
            compression_level=1,
            cleanup_after_send=True,
            upload_attempts=3,
            retry_base_seconds=1.0,
            collection_interval=60.0,
            lock_wait_seconds=0.0,
            shutdown_timeout_seconds=5.0,
        )
        return replace(base, **overrides)

    def collector(
        self,
        exporter: ScriptedExporter,
        progress: Any = None,
        *,
        wall_clock: Callable[[], datetime] = lambda: datetime(2024, 1, 1, tzinfo=UTC),
        **overrides: Any,
    ) -> Collector:
        stop = StopSignal(self.clock)
        return Collector(
            self.settings(**overrides),
            exporter,
            stop=stop,
            clock=self.clock,
            sleep=self.clock.sleep,
            wall_clock=wall_clock,
            progress=progress,
        )

    def wall_clock(self) -> datetime:
        """Wall time that moves with the fake clock, from an epoch of 2024-01-01."""
        return datetime.fromtimestamp(WALL_EPOCH + self.clock.now, UTC)

    def modified(self, member: str, seconds_ago: float) -> None:
        """Set a record's modification time relative to :meth:`wall_clock`."""
        folder, _, relative = member.partition("/")
        path = (self.feedback if folder == "feedback" else self.transcripts) / relative
        when = int((self.wall_clock().timestamp() - seconds_ago) * 1e9)
        os.utime(path, ns=(when, when))

    def feedback_record(self, content: bytes | None = None) -> str:
        record_id = str(uuid.uuid4())
        write_finished(self.feedback / f"{record_id}.json", content or record_bytes(record_id))
        return f"feedback/{record_id}.json"

    def transcript(self, conversation: str, content: bytes | None = None) -> str:
        record_id = str(uuid.uuid4())
        folder = self.transcripts / USER / conversation
        write_finished(folder / f"{record_id}.json", content or record_bytes(record_id))
        return f"transcripts/{USER}/{conversation}/{record_id}.json"

    def on_disk(self) -> dict[str, bytes]:
        found = {}
        for folder, base in (("feedback", self.feedback), ("transcripts", self.transcripts)):
            for path in base.rglob("*.json"):
                if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                    found[f"{folder}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
        return found

    def ready(self) -> list[str]:
        folder = self.state / "outbox" / "ready"
        return sorted(os.listdir(folder)) if folder.exists() else []


def record_bytes(record_id: str) -> bytes:
    return (json.dumps({"id": record_id, "text": "some words " * 40}) + "\n").encode()


def write_finished(path: Path, content: bytes) -> None:
    """As the sink does: a temporary name, then the final one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temp = path.with_name(f".{path.stem}.tmp")
    temp.write_bytes(content)
    os.rename(temp, path)


@pytest.fixture
def world(tmp_path: Path) -> World:
    feedback = tmp_path / "data" / "feedback"
    transcripts = tmp_path / "data" / "transcripts"
    feedback.mkdir(parents=True)
    transcripts.mkdir(parents=True)
    return World(tmp_path, feedback, transcripts, tmp_path / "state", FakeClock())


def fill(world: World, count: int) -> dict[str, bytes]:
    for n in range(count):
        if n % 3 == 0:
            world.feedback_record()
        else:
            world.transcript(f"conv-{n % 4}")
    return world.on_disk()


# -- what gets collected ---------------------------------------------------------------------


def test_only_finished_records_inside_the_roots_are_collected(world: World, tmp_path: Path) -> None:
    finished = fill(world, 6)
    (world.feedback / ".0c6e.tmp").write_bytes(b"half a rec")
    (world.feedback / "notes.txt").write_bytes(b"not a record")
    outside = tmp_path / "outside.json"
    outside.write_bytes(b'{"secret": "outside the root"}')
    (world.feedback / "link.json").symlink_to(outside)
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "x.json").write_bytes(b"{}")
    (world.transcripts / "linked-dir").symlink_to(outside_dir)

    exporter = ScriptedExporter()
    report = world.collector(exporter).run_cycle()

    assert exporter.records() == finished
    assert report.records_packed == len(finished) and report.archives_sent == 1
    assert (world.feedback / ".0c6e.tmp").read_bytes() == b"half a rec"
    assert (world.feedback / "notes.txt").exists()
    assert (world.feedback / "link.json").is_symlink()
    assert outside.exists() and (outside_dir / "x.json").exists()


# -- records a writer may still be writing -----------------------------------------------------


def test_records_modified_too_recently_are_left_for_a_later_cycle(world: World) -> None:
    old = world.feedback_record()
    world.modified(old, 60)
    fresh = world.feedback_record()
    world.modified(fresh, 0.5)
    skewed = world.transcript("conv-1")
    world.modified(skewed, -300)  # a writer whose clock runs five minutes ahead
    nonsense = world.transcript("conv-2")
    world.modified(nonsense, -3 * 86400)  # no writer's clock: it would never leave
    exporter = ScriptedExporter()

    report = world.collector(
        exporter, wall_clock=world.wall_clock, min_record_age_seconds=2.0
    ).run_cycle()

    assert set(exporter.records()) == {old, nonsense}
    assert set(world.on_disk()) == {fresh, skewed}
    assert report.records_too_recent == 2
    assert "2 records too recent, left for the next cycle" in report.summary()
    assert world.clock.sleeps == []  # only a run's last cycle waits for them

    world.clock.now += 2.0
    world.modified(skewed, 60)
    later = world.collector(
        ScriptedExporter(), wall_clock=world.wall_clock, min_record_age_seconds=2.0
    )
    assert later.run_cycle().records_packed == 2
    assert world.on_disk() == {}


def test_the_last_cycle_waits_for_recent_records_then_packs_them(world: World) -> None:
    written = fill(world, 5)
    for member in written:
        world.modified(member, 30)
    youngest = world.feedback_record()
    world.modified(youngest, 0.5)
    written[youngest] = world.on_disk()[youngest]
    exporter = ScriptedExporter()

    report = world.collector(
        exporter, wall_clock=world.wall_clock, min_record_age_seconds=2.0
    ).run_cycle(last=True)

    assert world.clock.sleeps == [pytest.approx(1.5)]
    assert exporter.records() == written
    assert report.records_too_recent == 0 and world.on_disk() == {}


def test_the_last_cycle_waits_no_longer_than_the_age_nor_past_the_stop(world: World) -> None:
    ahead = world.feedback_record()
    world.modified(ahead, -3600)  # an hour ahead: waiting until then is not on
    exporter = ScriptedExporter()
    collector = world.collector(exporter, wall_clock=world.wall_clock, min_record_age_seconds=2.0)

    report = collector.run_cycle(last=True)

    assert world.clock.sleeps == [pytest.approx(2.0)]
    assert report.records_too_recent == 1 and set(world.on_disk()) == {ahead}

    fresh = world.feedback_record()
    world.modified(fresh, 0.5)
    world.clock.sleeps.clear()
    collector.stop.request(1.0)  # a stop leaves 1 s; settling needs 1.5 s
    report = collector.run_cycle(last=True)

    assert world.clock.sleeps == []
    assert report.records_too_recent == 2 and set(world.on_disk()) == {ahead, fresh}


def test_temporary_files_left_by_a_dead_writer_are_removed_once_stale(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """A write takes milliseconds; a temporary file ten minutes old lost its writer, and
    would keep what a user typed, unsent and counted against the cap, for good."""
    member = world.transcript("conv-1")
    folder = world.transcripts / USER / "conv-1"
    abandoned = folder / f".{uuid.uuid4()}.tmp"
    abandoned.write_bytes(b'{"half": "a rec')
    in_progress = world.feedback / f".{uuid.uuid4()}.tmp"
    in_progress.write_bytes(b'{"being": "writ')
    long_ago = time.time() - STALE_TEMP_FILE_SECONDS - 60
    os.utime(abandoned, (long_ago, long_ago))
    not_ours = world.feedback / ".notes.txt"
    not_ours.write_bytes(b"keep")
    os.utime(not_ours, (long_ago, long_ago))
    exporter = ScriptedExporter()

    with caplog.at_level(logging.INFO, logger="lightspeed_collector.collector"):
        world.collector(exporter).run_cycle()

    assert set(exporter.records()) == {member}
    assert not abandoned.exists()
    assert in_progress.exists() and not_ours.exists()
    assert f"removed 1 temporary files in {folder}" in caplog.text


def test_a_state_folder_inside_a_storage_root_is_never_packed(world: World) -> None:
    fill(world, 3)
    exporter = ScriptedExporter()
    world.collector(exporter, state_dir=world.feedback / "state").run_cycle()
    world.feedback_record()
    world.collector(exporter, state_dir=world.feedback / "state").run_cycle()
    assert all(not name.startswith("feedback/state/") for name in exporter.records())
    assert len(exporter.records()) == 4


def test_sources_go_and_emptied_folders_are_pruned_but_never_the_roots(world: World) -> None:
    fill(world, 6)
    busy = world.transcripts / USER / "busy"
    busy.mkdir(parents=True)
    (busy / ".in-flight.tmp").write_bytes(b"the sink is writing this")
    world.collector(ScriptedExporter()).run_cycle()
    assert world.on_disk() == {}
    assert sorted(
        p.relative_to(world.root).as_posix() for p in world.root.joinpath("data").rglob("*")
    ) == [
        "data/feedback",
        "data/transcripts",
        f"data/transcripts/{USER}",
        f"data/transcripts/{USER}/busy",
        f"data/transcripts/{USER}/busy/.in-flight.tmp",
    ]


def test_empty_folders_left_long_ago_are_pruned_young_ones_kept(world: World) -> None:
    old = world.transcripts / "u1" / "c1"
    young = world.transcripts / "u2" / "c2"
    old.mkdir(parents=True)
    young.mkdir(parents=True)
    long_ago = time.time() - STALE_EMPTY_DIR_SECONDS - 60
    os.utime(old, (long_ago, long_ago))
    world.collector(ScriptedExporter()).run_cycle()
    assert not old.exists()
    assert young.is_dir()


def test_the_exporter_gets_the_archive_facts(world: World) -> None:
    fill(world, 5)
    seen: list[Archive] = []

    def check(archive: Archive) -> None:
        seen.append(archive)
        return None

    world.collector(ScriptedExporter([check])).run_cycle()
    [archive] = seen
    assert archive.record_count == 5
    assert archive.archive_id.startswith("2") and "-" in archive.archive_id


def test_memory_does_not_grow_with_the_backlog(world: World) -> None:
    """Files are streamed and lists of them never built: ten times the records, same peak."""

    def peak_for(records: int) -> int:
        for path in list(world.feedback.iterdir()):
            path.unlink()
        for n in range(records):
            world.feedback_record(f'{{"n": {n}, "text": "{"words " * 200}"}}'.encode())
        collector = world.collector(ScriptedExporter(keep=False))
        tracemalloc.start()
        try:
            report = collector.run_cycle()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert report.records_packed == records
        return peak

    small, large = peak_for(100), peak_for(2000)
    assert large < small + 512 * 1024, (small, large)


# -- failures and retries --------------------------------------------------------------------


def test_retry_after_is_a_floor_for_the_backoff(world: World) -> None:
    originals = fill(world, 4)
    exporter = ScriptedExporter([ExportUnavailable("busy", status=503, retry_after="4")] * 2)
    report = world.collector(exporter, upload_attempts=5).run_cycle()
    assert report.archives_sent == 1
    assert len(world.clock.sleeps) == 2
    assert all(4.0 <= delay <= 60.0 for delay in world.clock.sleeps)
    assert exporter.records() == originals


def test_backoff_is_jittered_exponential_and_capped_at_the_interval(world: World) -> None:
    fill(world, 2)
    exporter = ScriptedExporter([ExportUnavailable("down")] * 8)
    report = world.collector(
        exporter, upload_attempts=8, retry_base_seconds=1.0, collection_interval=10.0
    ).run_cycle()
    assert report.archives_sent == 0 and report.archives_failed == 1 and report.waiting == 1
    assert len(world.clock.sleeps) == 7
    for failures, delay in enumerate(world.clock.sleeps, start=1):
        assert 0 <= delay <= min(10.0, 2 ** (failures - 1))


def test_a_huge_retry_after_waits_no_longer_than_the_interval(world: World) -> None:
    fill(world, 2)
    exporter = ScriptedExporter([ExportUnavailable("later", retry_after=86400)])
    world.collector(exporter, collection_interval=30.0).run_cycle()
    assert world.clock.sleeps == [30.0]


def test_one_failing_archive_does_not_stop_the_others(world: World) -> None:
    originals = fill(world, 30)
    failed: list[str] = []

    def fail_the_second(archive: Archive) -> Exception | None:
        failed.append(archive.archive_id)
        return ExportFailed("broken archive", status=400)

    def crash(archive: Archive) -> Exception:
        return RuntimeError("a bug in the exporter")

    exporter = ScriptedExporter([None, fail_the_second, crash])
    report = world.collector(exporter, max_archive_bytes=2048).run_cycle()
    assert report.archives_built > 4
    assert report.archives_failed == 2
    assert report.archives_sent == report.archives_built - 2
    assert len(world.ready()) == 2
    later = ScriptedExporter()
    world.collector(later).run_cycle()
    assert world.ready() == []
    assert {**exporter.records(), **later.records()} == originals
    assert not exporter.records().keys() & later.records().keys()


def test_all_records_arrive_exactly_once_across_many_archives(world: World) -> None:
    originals = fill(world, 40)
    exporter = ScriptedExporter()
    report = world.collector(exporter, max_archive_bytes=2048).run_cycle()
    assert report.archives_built == len(exporter.received) > 5
    assert exporter.records() == originals
    for archive_id, _ in exporter.received:
        assert not (world.state / "outbox" / "ready" / archive_id).exists()


def test_too_large_archives_are_split_until_they_pass(world: World) -> None:
    originals = fill(world, 20)
    refused: list[int] = []

    def refuse_big(archive: Archive) -> Exception | None:
        if archive.record_count > 3:
            refused.append(archive.record_count)
            return ArchiveTooLarge("File exceeds maximum file size", status=413)
        return None

    exporter = ScriptedExporter([refuse_big] * 100)
    report = world.collector(exporter).run_cycle()
    assert refused[0] == 20
    assert all(count <= 3 for _, members in exporter.received for count in [len(members)])
    assert exporter.records() == originals
    assert report.archives_split == len(refused)
    ids = [archive_id for archive_id, _ in exporter.received]
    assert all(archive_id.count(".") >= 2 for archive_id in ids)
    events = [
        entry["event"] for entry in Journal(world.state / "outbox" / "journal.jsonl").entries()
    ]
    assert events.count("split") == len(refused)
    assert world.ready() == []


def test_a_single_record_refused_as_too_large_goes_to_quarantine(world: World) -> None:
    [name] = fill(world, 1)
    exporter = ScriptedExporter([ArchiveTooLarge("too big", status=413)])
    report = world.collector(exporter).run_cycle()
    assert report.quarantined and report.waiting == 0
    [kept] = (world.state / "quarantine" / "archives").iterdir()
    assert name in read_records(kept / "archive.tar.gz")


@pytest.mark.parametrize(
    ("problem", "setting"),
    [
        (
            ExportMisconfigured("refused", setting="x.ingress_server_auth_token", status=401),
            "x.ingress_server_auth_token",
        ),
        (
            ConfigError("ingress_server_auth_token_file", "cannot read /t"),
            "user_data_collection.data_collector.ingress_server_auth_token_file",
        ),
    ],
)
def test_a_configuration_problem_stops_uploads_and_names_the_setting(
    world: World, problem: Exception, setting: str, caplog: pytest.LogCaptureFixture
) -> None:
    fill(world, 30)
    exporter = ScriptedExporter([problem])
    report = world.collector(exporter, max_archive_bytes=2048).run_cycle()
    assert exporter.calls == 1
    assert report.misconfigured == setting
    assert len(world.ready()) == report.archives_built > 1
    assert f"check {setting}" in caplog.text


# -- records too large -----------------------------------------------------------------------


def test_a_record_larger_than_the_limit_is_quarantined_never_deleted(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    name = world.feedback_record(b"x" * 5000)
    others = fill(world, 3)
    del others[name]
    exporter = ScriptedExporter()
    report = world.collector(exporter, max_archive_bytes=4096).run_cycle()
    assert report.quarantined == [name]
    assert (world.state / "quarantine" / "records" / name).read_bytes() == b"x" * 5000
    assert name not in world.on_disk()
    assert exporter.records() == others
    assert f"record {name} is 5000 bytes, more than" in caplog.text


def test_a_record_that_compresses_past_the_limit_alone_is_quarantined(world: World) -> None:
    name = world.feedback_record(os.urandom(2000))
    report = world.collector(ScriptedExporter(), max_archive_bytes=2048).run_cycle()
    assert report.quarantined == [name]
    assert (world.state / "quarantine" / "records" / name).stat().st_size == 2000
    assert list((world.state / "outbox" / "tmp").iterdir()) == []


# -- crashes and restarts --------------------------------------------------------------------


def test_after_a_crash_between_commit_and_cleanup_sources_go_and_nothing_is_sent_twice(
    world: World,
) -> None:
    originals = fill(world, 6)
    world.collector(ScriptedExporter([ExportUnavailable("down")]), upload_attempts=1).run_cycle()
    [archive_id] = world.ready()
    # Back to the state right after the commit: archive in new/, sources still present.
    (world.state / "outbox" / "ready" / archive_id).rename(
        world.state / "outbox" / "new" / archive_id
    )
    for name, data in originals.items():
        folder, _, relative = name.partition("/")
        write_finished(
            (world.feedback if folder == "feedback" else world.transcripts) / relative, data
        )
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()
    assert [archive for archive, _ in exporter.received] == [archive_id]
    assert exporter.records() == originals
    assert world.on_disk() == {}


def test_a_changed_file_under_an_archived_name_is_kept(world: World) -> None:
    originals = fill(world, 2)
    world.collector(ScriptedExporter([ExportUnavailable("down")]), upload_attempts=1).run_cycle()
    [archive_id] = world.ready()
    (world.state / "outbox" / "ready" / archive_id).rename(
        world.state / "outbox" / "new" / archive_id
    )
    name = sorted(originals)[0]
    folder, _, relative = name.partition("/")
    write_finished(
        (world.feedback if folder == "feedback" else world.transcripts) / relative, b"other"
    )
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()
    received = sorted((members for _, members in exporter.received), key=len)
    assert received == [{name: b"other"}, originals]


def test_an_archive_the_journal_lists_as_sent_is_cleaned_up_not_sent_again(world: World) -> None:
    fill(world, 3)
    exporter = ScriptedExporter()
    world.collector(exporter, cleanup_after_send=False).run_cycle()
    [archive_id] = os.listdir(world.state / "outbox" / "sent")
    # As if the process died between the receipt reaching the journal and the cleanup.
    (world.state / "outbox" / "sent" / archive_id).rename(
        world.state / "outbox" / "ready" / archive_id
    )
    again = ScriptedExporter()
    world.collector(again, cleanup_after_send=False).run_cycle()
    assert again.calls == 0
    assert os.listdir(world.state / "outbox" / "sent") == [archive_id]
    assert world.ready() == []


def test_a_split_interrupted_after_both_halves_drops_the_parent(world: World) -> None:
    originals = fill(world, 4)
    world.collector(ScriptedExporter([ExportUnavailable("down")]), upload_attempts=1).run_cycle()
    [parent] = world.ready()
    ready = world.state / "outbox" / "ready"
    for child in (f"{parent}.1", f"{parent}.2"):
        (ready / child).mkdir()
        for item in (ready / parent).iterdir():
            (ready / child / item.name).write_bytes(item.read_bytes())
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()
    assert sorted(archive for archive, _ in exporter.received) == [f"{parent}.1", f"{parent}.2"]
    assert exporter.received[0][1] == originals


def test_a_split_interrupted_after_one_half_is_undone(world: World) -> None:
    originals = fill(world, 4)
    world.collector(ScriptedExporter([ExportUnavailable("down")]), upload_attempts=1).run_cycle()
    [parent] = world.ready()
    ready = world.state / "outbox" / "ready"
    (ready / f"{parent}.1").mkdir()
    for item in (ready / parent).iterdir():
        (ready / f"{parent}.1" / item.name).write_bytes(item.read_bytes())
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()
    assert [archive for archive, _ in exporter.received] == [parent]
    assert exporter.records() == originals


def test_half_written_archives_are_dropped_and_their_sources_kept(world: World) -> None:
    originals = fill(world, 3)
    partial = world.state / "outbox" / "tmp" / "20240101T000000Z-000000000000"
    partial.mkdir(parents=True)
    (partial / "archive.tar.gz").write_bytes(b"\x1f\x8b half")
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()
    assert not partial.exists()
    assert exporter.records() == originals


def test_cleanup_after_send_false_keeps_archives_under_sent(world: World) -> None:
    fill(world, 2)
    world.collector(ScriptedExporter(), cleanup_after_send=False).run_cycle()
    [kept] = (world.state / "outbox" / "sent").iterdir()
    assert (kept / "archive.tar.gz").exists() and (kept / "manifest.json").exists()


# -- locking and stopping --------------------------------------------------------------------


def test_a_cycle_skips_while_another_collector_holds_the_lock(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    originals = fill(world, 3)
    world.state.mkdir()
    caplog.set_level(logging.INFO)
    with CollectorLock(world.state).hold(0) as held:
        assert held
        exporter = ScriptedExporter()
        report = world.collector(exporter).run_cycle()
    assert report.skipped and exporter.calls == 0
    assert world.on_disk() == originals
    assert "export cycle skipped: another collector holds" in caplog.text


def test_a_storage_folder_is_locked_even_for_a_collector_with_its_own_state(
    world: World, tmp_path: Path
) -> None:
    originals = fill(world, 3)
    other_state = tmp_path / "other-state"
    other_state.mkdir()
    with CollectorLock(other_state, [os.path.realpath(world.feedback)]).hold(0) as held:
        assert held
        report = world.collector(ScriptedExporter()).run_cycle()
    assert report.skipped
    assert world.on_disk() == originals


def test_collectors_whose_storage_folders_nest_exclude_each_other(
    world: World, tmp_path: Path
) -> None:
    """Another service's feedback folder inside this one's transcripts folder, each with its
    own state folder: the same files are records to both, so the two cycles must not run
    at once, whichever holds its locks first. Collectors of side-by-side folders still do."""
    fill(world, 6)
    nested = os.path.realpath(world.transcripts / USER / "conv-1")
    side_by_side = tmp_path / "data" / "other-feedback"
    side_by_side.mkdir()
    for other_state, other_root, skipped in (
        (tmp_path / "nested-state", nested, True),
        (tmp_path / "outer-state", os.path.realpath(tmp_path / "data"), True),
        (tmp_path / "side-state", str(side_by_side), False),
    ):
        other_state.mkdir()
        with CollectorLock(other_state, [other_root]).hold(0) as held:
            assert held
            report = world.collector(ScriptedExporter()).run_cycle()
        assert report.skipped is skipped, other_root
    assert world.on_disk() == {}
    with world.collector(ScriptedExporter()).lock.hold(0) as held:
        assert held
        with CollectorLock(tmp_path / "nested-state", [nested]).hold(0) as other_held:
            assert not other_held


def test_a_storage_folder_replaced_by_a_file_does_not_stop_the_other_storage_or_the_outbox(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    """The configuration is checked at start; at run time, a storage folder may become
    anything. What else is stored, and what waits in the outbox, must still leave."""
    first = fill(world, 6)
    exporter = ScriptedExporter([ExportFailed("refused", status=400)])
    world.collector(exporter).run_cycle()
    assert len(world.ready()) == 1
    world.feedback.rename(world.root / "feedback-elsewhere")
    world.feedback.write_bytes(b"not a folder")
    later = world.transcript("conv-9")

    with caplog.at_level(logging.WARNING, logger="lightspeed_collector.collector"):
        report = world.collector(exporter).run_cycle()

    assert exporter.records() == {**first, later: exporter.records()[later]}
    assert report.archives_sent == 2 and world.ready() == []
    assert f"storage folder {world.feedback} is not a folder" in caplog.text


def test_a_cycle_waits_for_the_lock_when_told_to(world: World) -> None:
    originals = fill(world, 3)
    world.state.mkdir()
    holding = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with CollectorLock(world.state).hold(0):
            holding.set()
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    holding.wait(5)
    threading.Timer(0.3, release.set).start()
    exporter = ScriptedExporter()
    collector = Collector(
        world.settings(lock_wait_seconds=5.0), exporter, wall_clock=lambda: datetime.now(UTC)
    )
    report = collector.run_cycle()
    holder.join()
    assert not report.skipped
    assert exporter.records() == originals


def test_a_stop_with_no_time_left_touches_nothing(world: World) -> None:
    originals = fill(world, 3)
    exporter = ScriptedExporter()
    collector = world.collector(exporter)
    collector.stop.request(0)
    report = collector.run_cycle()
    assert report.records_packed == 0 and exporter.calls == 0
    assert world.on_disk() == originals


def test_a_stop_during_backoff_ends_the_retries_within_the_deadline(world: World) -> None:
    fill(world, 2)
    exporter = ScriptedExporter([ExportUnavailable("down", retry_after=30)] * 5)
    collector = world.collector(exporter, upload_attempts=5)

    def stop_then_sleep(seconds: float) -> None:
        collector.stop.request(5.0)
        world.clock.sleep(seconds)

    collector._sleep = stop_then_sleep  # the stop arrives while the first retry waits
    report = collector.run_cycle()
    assert exporter.calls == 1
    assert report.waiting == 1


# -- logs ------------------------------------------------------------------------------------


def test_logs_carry_no_record_content(world: World, caplog: pytest.LogCaptureFixture) -> None:
    secret = b'{"user_question": "my password is hunter2-zebra"}\n'
    world.feedback_record(secret)
    world.transcript("c1", secret)
    caplog.set_level(logging.DEBUG)
    exporter = ScriptedExporter([ExportUnavailable("busy", status=503)])
    world.collector(exporter).run_cycle()
    assert "hunter2" not in caplog.text
    info = [r for r in caplog.records if r.levelno == logging.INFO and r.name.endswith("collector")]
    assert len(info) == 1, "one info line per cycle; problems are warnings"
    assert info[0].getMessage().startswith("export cycle: packed 2 records into 1 archive")


def test_journal_survives_a_torn_line(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl")
    journal.append({"event": "sent", "archive_id": "a"})
    with (tmp_path / "journal.jsonl").open("ab") as handle:
        handle.write(b'{"event": "sent", "archi')
    journal.append({"event": "sent", "archive_id": "b"})
    assert journal.sent_ids() == {"a", "b"}


def test_journal_rotates_and_still_remembers_recent_receipts(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "journal.jsonl", max_bytes=200)
    for n in range(20):
        journal.append({"event": "sent", "archive_id": f"id-{n:02d}"})
    assert (tmp_path / "journal.jsonl.1").exists()
    assert (tmp_path / "journal.jsonl").stat().st_size <= 200
    assert {"id-18", "id-19"} <= journal.sent_ids()
    assert "id-00" not in journal.sent_ids()


@pytest.fixture(autouse=True)
def _no_stray_threads() -> Iterator[None]:
    before = threading.active_count()
    yield
    assert threading.active_count() <= before + 1


class JournalOnAFullDisk(Journal):
    """A journal whose volume is full: every receipt fails to be written."""

    def append(self, entry: Mapping[str, Any]) -> None:
        if entry.get("event") == "sent":
            raise OSError(errno.ENOSPC, "No space left on device")
        super().append(entry)


def test_a_receipt_that_cannot_be_journaled_still_frees_the_outbox(world: World) -> None:
    """Otherwise the accepted archive is sent again every cycle and its space never freed."""
    originals = fill(world, 6)
    exporter = ScriptedExporter()
    for _ in range(3):
        collector = world.collector(exporter)
        collector.journal = JournalOnAFullDisk(collector.journal.path)
        collector.run_cycle()
    assert exporter.calls == 1
    assert exporter.records() == originals
    assert world.ready() == [] and world.on_disk() == {}


class ReplaceAfterPacking:
    """A progress display that, once the first record is packed, does what an operator or
    another program might: puts new content under every record's name."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.replaced = False

    def packed(self, records: int, size: int) -> None:
        if not self.replaced:
            for path in self.world.feedback.glob("*.json"):
                write_finished(path, b'{"newer": true}\n')
            self.replaced = True

    def uploaded(self, done: int, total: int) -> None:
        pass

    def done(self) -> None:
        pass


def test_a_record_replaced_while_its_archive_is_built_is_kept_for_the_next_cycle(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        world.feedback_record()
    exporter = ScriptedExporter()
    world.collector(exporter, progress=ReplaceAfterPacking(world)).run_cycle()

    # The first record was packed before it was replaced: its new content is not in the
    # archive, so it stays. The other two were packed as replaced, and went.
    [(kept, content)] = world.on_disk().items()
    assert content == b'{"newer": true}\n'
    assert "1 source files were kept in the storage" in caplog.text
    assert "it was replaced after it was packed" in caplog.text
    assert exporter.records()[kept] != content
    world.collector(exporter).run_cycle()
    assert exporter.received[-1][1] == {kept: content}
    assert world.on_disk() == {}


def test_a_record_that_shrinks_while_read_is_left_and_the_rest_still_go(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    originals = fill(world, 9)
    victim = sorted(originals)[4]
    real_open = cycle_module.open_source

    def open_then_truncate(source: SourceFile) -> OpenedFile | None:
        opened = real_open(source)
        if source.member == victim and opened is not None:
            os.truncate(source.path, 3)  # after the size was taken, before it is read
        return opened

    monkeypatch.setattr(cycle_module, "open_source", open_then_truncate)
    exporter = ScriptedExporter()
    report = world.collector(exporter).run_cycle()

    assert f"record {victim} changed while it was being packed" in caplog.text
    assert report.archives_sent == 1
    assert exporter.records() == {k: v for k, v in originals.items() if k != victim}
    assert list(world.on_disk()) == [victim]


def test_a_record_whose_reading_fails_part_way_is_left_and_the_rest_still_go(
    world: World, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk error in the middle of a record cannot be made on a healthy disk; reading a
    folder's handle fails the same way, with an ``OSError`` from the read itself."""
    originals = fill(world, 9)
    victim = sorted(originals)[4]
    real_open = cycle_module.open_source

    def open_failing_read(source: SourceFile) -> OpenedFile | None:
        opened = real_open(source)
        if source.member == victim and opened is not None:
            os.close(opened.fd)
            opened.fd = os.open(os.path.dirname(source.path), os.O_RDONLY | os.O_DIRECTORY)
        return opened

    monkeypatch.setattr(cycle_module, "open_source", open_failing_read)
    exporter = ScriptedExporter()
    for _ in range(2):  # and the next cycle is not stopped by it either
        report = world.collector(exporter).run_cycle()
        assert report.unreadable.count == 1
        assert "1 record could not be read, left in the storage" in caplog.text
        assert "Is a directory" in caplog.text
        caplog.clear()

    assert exporter.records() == {k: v for k, v in originals.items() if k != victim}
    assert list(world.on_disk()) == [victim]


def test_a_second_oversized_record_of_the_same_name_never_replaces_the_first(
    world: World,
) -> None:
    name = world.feedback_record(b"1" * 5000)
    world.collector(ScriptedExporter(), max_archive_bytes=4096).run_cycle()
    write_finished(world.feedback / name.partition("/")[2], b"2" * 5000)
    world.collector(ScriptedExporter(), max_archive_bytes=4096).run_cycle()
    quarantined = world.state / "quarantine" / "records" / "feedback"
    kept = {path.name: path.read_bytes()[:1] for path in quarantined.iterdir()}
    stem = name.partition("/")[2].removesuffix(".json")
    assert kept == {f"{stem}.json": b"1", f"{stem}.1.json": b"2"}


def test_a_folder_that_cannot_be_listed_is_reported_not_skipped_silently(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    originals = fill(world, 3)
    # A record deeper than PATH_MAX (4096): 40 folders of 120 characters, made step by step.
    fd = os.open(world.transcripts / USER, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(40):
            os.mkdir("d" * 120, dir_fd=fd)
            inner = os.open("d" * 120, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = inner
        record = os.open("x.json", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd)
        os.write(record, b"{}")
        os.close(record)
    finally:
        os.close(fd)
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()
    assert exporter.records() == originals
    assert "cannot list" in caplog.text and "File name too long" in caplog.text


def test_a_folder_swapped_for_a_symlink_during_the_scan_is_not_followed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever may write in the storage could swap a user folder, listed but not yet
    walked, for a symlink to anywhere; the collector (perhaps more privileged) must not
    follow it, to read files there or to delete them."""
    inside = fill(world, 6)
    other_user = world.transcripts / ("b" * 64)
    write_finished(other_user / "conv-1" / "kept.json", b'{"kept": true}\n')
    outside = tmp_path / "outside"
    secret = outside / "conv-1" / "secret.json"
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b'{"secret": "outside every storage"}\n')
    real_open = cycle_module.open_source
    swapped: list[Path] = []

    def swap_then_open(source: SourceFile) -> OpenedFile | None:
        # At the first transcript, the other user's folder is listed but not yet walked.
        if source.member.startswith("transcripts/") and not swapped:
            unwalked = other_user if f"/{USER}/" in source.member else world.transcripts / USER
            unwalked.rename(tmp_path / "parked")
            unwalked.symlink_to(outside)
            swapped.append(unwalked)
        return real_open(source)

    monkeypatch.setattr(cycle_module, "open_source", swap_then_open)
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()

    assert swapped
    assert secret.read_bytes() == b'{"secret": "outside every storage"}\n'
    assert not any(name.endswith("/secret.json") for name in exporter.records())
    assert set(exporter.records()) <= set(inside) | {f"transcripts/{'b' * 64}/conv-1/kept.json"}


def test_a_folder_swapped_for_a_symlink_before_the_sources_go_is_not_followed(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between packing and removal, a user folder swapped for a symlink to a place with the
    same names must not make the removal delete the files there."""
    inside = fill(world, 6)
    outside = tmp_path / "outside"
    shutil.copytree(world.transcripts / USER, outside)
    untouched = {path: path.read_bytes() for path in outside.rglob("*.json")}
    long_ago = time.time() - 3600
    for path in outside.rglob("*"):
        os.utime(path, (long_ago, long_ago))
    real_commit = Outbox.commit

    def commit_then_swap(outbox: Outbox, archive_id: str) -> None:
        real_commit(outbox, archive_id)
        (world.transcripts / USER).rename(tmp_path / "parked")
        (world.transcripts / USER).symlink_to(outside)

    monkeypatch.setattr(Outbox, "commit", commit_then_swap)
    exporter = ScriptedExporter()
    world.collector(exporter).run_cycle()

    assert exporter.records() == inside
    assert {path: path.read_bytes() for path in outside.rglob("*.json")} == untouched
