"""The filesystem sink against real files: layout, modes, atomicity, confinement, caps."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import threading
import uuid
from pathlib import Path
from typing import Any

import pytest

from lightspeed_collector.config import build_config
from lightspeed_collector.errors import ConfigError
from lightspeed_collector.plugins import filesystem
from lightspeed_collector.plugins.filesystem import FilesystemSink
from lightspeed_collector.types import Record, StorageFailed, StorageFull

USER_KEY = "ab" * 32
CONVERSATION_ID = "12345678-1234-4234-8234-123456789abc"


def feedback(text: str = "Très bien 👍", record_id: str | None = None) -> Record:
    return Record(
        kind="feedback",
        record_id=record_id or str(uuid.uuid4()),
        user_key=USER_KEY,
        conversation_id=CONVERSATION_ID,
        data={"user_id": USER_KEY, "conversation_id": CONVERSATION_ID, "user_feedback": text},
    )


def transcript(
    user_key: str = USER_KEY, conversation_id: str = CONVERSATION_ID, record_id: str | None = None
) -> Record:
    return Record(
        kind="transcript",
        record_id=record_id or str(uuid.uuid4()),
        user_key=user_key,
        conversation_id=conversation_id,
        data={"metadata": {"user_id": user_key}, "query": "wie geht's?", "llm_response": "gut"},
    )


def encoded(record: Record) -> bytes:
    return (json.dumps(record.data, ensure_ascii=False) + "\n").encode("utf-8")


def all_files(root: Path) -> list[Path]:
    return sorted(Path(d, name) for d, _, names in os.walk(root) for name in names)


class FsyncCounter:
    """Records what kind of file each flush was for; ``fail_on`` makes that call fail."""

    def __init__(self, fail_on: int | None = None, error: int = errno.ENOSPC) -> None:
        self.kinds: list[str] = []
        self.fail_on = fail_on
        self.error = error
        self.lock = threading.Lock()

    def __call__(self, fd: int) -> None:
        mode = os.fstat(fd).st_mode
        with self.lock:
            self.kinds.append("dir" if stat.S_ISDIR(mode) else "file")
            if self.fail_on is not None and len(self.kinds) == self.fail_on:
                raise OSError(self.error, os.strerror(self.error))
        os.fsync(fd)


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "store" / "feedback", tmp_path / "store" / "transcripts"


@pytest.fixture
def sink(roots: tuple[Path, Path]) -> FilesystemSink:
    return ready(FilesystemSink(*roots))


def ready(sink: FilesystemSink) -> FilesystemSink:
    """Create the roots as the readiness probe (or the first write) would."""
    sink.describe()
    return sink


def test_feedback_is_one_utf8_json_file_named_after_the_record(
    sink: FilesystemSink, roots: tuple[Path, Path]
) -> None:
    record = feedback()

    location = sink.write(record)

    assert location == str(roots[0] / f"{record.record_id}.json")
    assert Path(location).read_bytes() == encoded(record)
    assert json.loads(Path(location).read_text("utf-8")) == record.data
    assert "Très bien 👍" in Path(location).read_text("utf-8")


def test_text_utf8_cannot_carry_is_stored_exactly_as_json_escapes(
    sink: FilesystemSink, roots: tuple[Path, Path]
) -> None:
    record = feedback("half an emoji \ud83d, and é")

    location = sink.write(record)

    raw = Path(location).read_bytes()
    assert raw.isascii()
    assert b"\\ud83d" in raw
    assert json.loads(raw.decode("utf-8")) == record.data


def test_transcript_lives_under_user_and_conversation(
    sink: FilesystemSink, roots: tuple[Path, Path]
) -> None:
    record = transcript()

    location = sink.write(record)

    expected = roots[1] / USER_KEY / CONVERSATION_ID / f"{record.record_id}.json"
    assert location == str(expected)
    assert expected.read_bytes() == encoded(record)
    assert sink.write(transcript()) != location
    assert len(all_files(roots[1])) == 2


def test_relative_roots_are_taken_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    sink = FilesystemSink("fb", "tr")
    monkeypatch.chdir("/")

    location = sink.write(feedback())

    assert Path(location).parent == tmp_path / "fb"


@pytest.mark.parametrize("umask", [0o000, 0o277])
def test_modes_are_owner_only_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    old = os.umask(umask)
    try:
        roots = tmp_path / "a" / "feedback", tmp_path / "a" / "transcripts"
        sink = FilesystemSink(*roots)
        locations = [sink.write(feedback()), sink.write(transcript())]
    finally:
        os.umask(old)

    directories = [
        tmp_path / "a",
        *roots,
        roots[1] / USER_KEY,
        roots[1] / USER_KEY / CONVERSATION_ID,
    ]
    for directory in directories:
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory
    for location in locations:
        assert stat.S_IMODE(os.stat(location).st_mode) == 0o600, location


def test_no_temporary_file_is_left_behind(sink: FilesystemSink, roots: tuple[Path, Path]) -> None:
    for _ in range(20):
        sink.write(feedback())
        sink.write(transcript())

    names = [path.name for root in roots for path in all_files(root)]
    assert len(names) == 40
    assert all(name.endswith(".json") and not name.startswith(".") for name in names)


def test_fsync_flushes_the_file_then_its_directory(roots: tuple[Path, Path]) -> None:
    counter = FsyncCounter()
    sink = FilesystemSink(*roots, fsync_function=counter)
    # Building the sink touches nothing (so `config check` has no side effects).
    assert counter.kinds == [] and not roots[0].exists()
    assert sink.describe().ready
    # Creating the roots flushed their parents.
    assert counter.kinds and set(counter.kinds) == {"dir"}

    counter.kinds.clear()
    sink.write(feedback())
    assert counter.kinds == ["file", "dir"]

    counter.kinds.clear()
    sink.write(transcript())
    # A new user folder and a new conversation folder: each parent is flushed first.
    assert counter.kinds == ["dir", "dir", "file", "dir"]

    counter.kinds.clear()
    sink.write(transcript())
    assert counter.kinds == ["file", "dir"]


def test_fsync_off_never_flushes(roots: tuple[Path, Path]) -> None:
    counter = FsyncCounter()
    sink = FilesystemSink(*roots, fsync=False, fsync_function=counter)

    sink.write(feedback())
    sink.write(transcript())

    assert counter.kinds == []
    assert len(all_files(roots[0])) == len(all_files(roots[1])) == 1


def test_a_failed_flush_leaves_nothing_and_reports_full_storage(roots: tuple[Path, Path]) -> None:
    counter = FsyncCounter()
    sink = ready(FilesystemSink(*roots, fsync_function=counter))
    before = sink.describe().details["feedback"]["bytes_used"]
    counter.fail_on = len(counter.kinds) + 1

    with pytest.raises(StorageFull) as caught:
        sink.write(feedback())

    assert str(roots[0]) in caught.value.cause
    assert all_files(roots[0]) == []
    assert sink.describe().details["feedback"]["bytes_used"] == before


def test_other_failures_name_the_directory_never_the_content(roots: tuple[Path, Path]) -> None:
    counter = FsyncCounter(error=errno.EIO)
    sink = ready(FilesystemSink(*roots, fsync_function=counter))
    counter.fail_on = len(counter.kinds) + 1
    record = feedback(text="my secret feedback")

    with pytest.raises(StorageFailed) as caught:
        sink.write(record)

    assert caught.value.cause == (
        f"Failed to store feedback at directory: {roots[0]}: Input/output error"
    )
    assert "secret" not in str(caught.value)
    assert all_files(roots[0]) == []


def test_a_failed_directory_flush_removes_the_record(roots: tuple[Path, Path]) -> None:
    counter = FsyncCounter(error=errno.EIO)
    sink = ready(FilesystemSink(*roots, fsync_function=counter))
    counter.fail_on = len(counter.kinds) + 2

    with pytest.raises(StorageFailed):
        sink.write(feedback())

    assert counter.kinds[-2:] == ["file", "dir"]
    assert all_files(roots[0]) == []


@pytest.mark.parametrize(
    "record",
    [
        transcript(conversation_id="../x"),
        transcript(user_key="a/b"),
        transcript(user_key=".."),
        transcript(user_key=""),
        transcript(conversation_id="abc\n"),
        transcript(conversation_id="x" * 129),
        transcript(record_id="../../escaped"),
        feedback(record_id="../escaped"),
        feedback(record_id="/tmp/escaped"),
    ],
    ids=[
        "conversation-parent",
        "user-slash",
        "user-dotdot",
        "user-empty",
        "conversation-newline",
        "conversation-too-long",
        "transcript-record-id",
        "feedback-record-id",
        "feedback-absolute",
    ],
)
def test_unsafe_path_components_are_refused(
    tmp_path: Path, sink: FilesystemSink, record: Record
) -> None:
    with pytest.raises(StorageFailed):
        sink.write(record)

    assert all_files(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


@pytest.mark.parametrize("planted", ["conversation", "user"])
def test_a_symlink_out_of_the_root_is_refused(
    tmp_path: Path, sink: FilesystemSink, roots: tuple[Path, Path], planted: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    if planted == "conversation":
        (roots[1] / USER_KEY).mkdir()
        (roots[1] / USER_KEY / CONVERSATION_ID).symlink_to(outside)
    else:
        (roots[1] / USER_KEY).symlink_to(outside)

    with pytest.raises(StorageFailed):
        sink.write(transcript())

    assert list(outside.iterdir()) == []
    assert all_files(roots[1]) == []


@pytest.mark.parametrize("swapped", ["conversation", "user"])
def test_a_checked_folder_swapped_for_a_symlink_out_of_the_root_is_refused(
    tmp_path: Path, sink: FilesystemSink, roots: tuple[Path, Path], swapped: str
) -> None:
    sink.write(transcript())
    outside = tmp_path / "outside"
    (outside / CONVERSATION_ID).mkdir(parents=True)
    folder = roots[1] / USER_KEY if swapped == "user" else roots[1] / USER_KEY / CONVERSATION_ID
    shutil.rmtree(folder)
    folder.symlink_to(outside)

    with pytest.raises(StorageFailed) as caught:
        sink.write(transcript())

    assert "leads outside" in caught.value.cause
    assert all_files(outside) == []


def test_a_symlink_inside_the_root_is_followed(
    sink: FilesystemSink, roots: tuple[Path, Path]
) -> None:
    target = roots[1] / "elsewhere"
    target.mkdir()
    (roots[1] / USER_KEY).symlink_to(target)

    location = sink.write(transcript())

    assert Path(location).resolve().parent.parent == target


def test_cap_refuses_new_records_keeps_old_ones_and_recovers(roots: tuple[Path, Path]) -> None:
    size = len(encoded(feedback()))
    sink = FilesystemSink(*roots, feedback_max_bytes=3 * size, rescan_interval=0)
    stored = [Path(sink.write(feedback())) for _ in range(3)]
    contents = [path.read_bytes() for path in stored]

    with pytest.raises(StorageFull) as caught:
        sink.write(feedback())

    assert "feedback" in caught.value.cause
    assert str(3 * size) in caught.value.cause
    assert [path.read_bytes() for path in stored] == contents
    assert len(all_files(roots[0])) == 3
    # Transcripts have their own (absent) cap.
    sink.write(transcript())

    stored[0].unlink()  # what the exporter does with what it shipped
    sink.write(feedback())
    assert len(all_files(roots[0])) == 3
    with pytest.raises(StorageFull):
        sink.write(feedback())


def test_a_full_storage_is_not_rescanned_on_every_request(roots: tuple[Path, Path]) -> None:
    size = len(encoded(feedback()))
    sink = FilesystemSink(*roots, feedback_max_bytes=size, rescan_interval=3600)
    first = Path(sink.write(feedback()))
    first.unlink()

    with pytest.raises(StorageFull):
        sink.write(feedback())


def test_existing_files_count_against_the_cap(roots: tuple[Path, Path]) -> None:
    roots[0].mkdir(parents=True)
    (roots[0] / "old.json").write_bytes(b"x" * 100)

    sink = FilesystemSink(*roots, feedback_max_bytes=100, rescan_interval=0)

    assert sink.describe().details["feedback"]["bytes_used"] == 100
    with pytest.raises(StorageFull):
        sink.write(feedback())
    assert (roots[0] / "old.json").read_bytes() == b"x" * 100


def test_transcripts_cap_names_transcripts(roots: tuple[Path, Path]) -> None:
    sink = FilesystemSink(*roots, transcripts_max_bytes=1)

    with pytest.raises(StorageFull, match=r"transcripts.*1 bytes"):
        sink.write(transcript())
    sink.write(feedback())


def test_disabled_storage_refuses_its_records(tmp_path: Path) -> None:
    sink = FilesystemSink(tmp_path / "feedback", None)

    with pytest.raises(StorageFailed):
        sink.write(transcript())
    sink.write(feedback())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["feedback"]


def test_concurrent_writers_store_every_record_whole(roots: tuple[Path, Path]) -> None:
    counter = FsyncCounter()
    sink = ready(FilesystemSink(*roots, fsync_function=counter))
    counter.kinds.clear()
    written: list[str] = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for n in range(100):
                if n % 2:
                    written.append(sink.write(feedback(text=f"{index}-{n} " * 50)))
                else:
                    record = transcript(conversation_id=f"conversation-{n % 6}")
                    written.append(sink.write(record))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    files = all_files(roots[0]) + all_files(roots[1])
    assert len(files) == len(set(written)) == 800
    assert sorted(map(str, files)) == sorted(written)
    for path in files:
        assert path.read_bytes().endswith(b"\n")
        json.loads(path.read_text("utf-8"))
    assert counter.kinds.count("file") == 800
    expected_bytes = sum(path.stat().st_size for path in all_files(roots[0]))
    assert sink.describe().details["feedback"]["bytes_used"] == expected_bytes


def test_concurrent_writers_never_overshoot_the_cap(roots: tuple[Path, Path]) -> None:
    size = len(encoded(feedback()))
    sink = FilesystemSink(*roots, fsync=False, feedback_max_bytes=50 * size, rescan_interval=0)
    results: list[str] = []

    def worker() -> None:
        for _ in range(20):
            try:
                sink.write(feedback())
                results.append("stored")
            except StorageFull:
                results.append("full")

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results.count("stored") == 50
    assert results.count("full") == 110
    assert len(all_files(roots[0])) == 50


def test_describe_reports_ready_with_details(roots: tuple[Path, Path]) -> None:
    sink = FilesystemSink(*roots, fsync=False, transcripts_max_bytes=10_000)
    sink.write(transcript())

    status = sink.describe()

    assert status.ready
    assert status.problem is None
    assert status.details["fsync"] is False
    assert status.details["feedback"] == {
        "path": str(roots[0]),
        "bytes_used": 0,
        "max_bytes": None,
    }
    assert status.details["transcripts"]["bytes_used"] == len(encoded(transcript()))
    assert status.details["transcripts"]["max_bytes"] == 10_000
    assert all_files(roots[0]) == []  # the probe cleaned up


def test_describe_is_not_ready_when_a_root_is_not_a_directory(
    sink: FilesystemSink, roots: tuple[Path, Path]
) -> None:
    roots[0].rmdir()
    roots[0].write_text("not a folder")

    status = sink.describe()

    assert not status.ready
    assert status.problem is not None
    assert str(roots[0]) in status.problem
    assert "not a directory" in status.problem
    with pytest.raises(StorageFailed):
        sink.write(feedback())


def test_a_root_that_cannot_be_created_is_reported_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    sink = FilesystemSink(tmp_path / "file" / "feedback", None)

    status = sink.describe()

    assert not status.ready
    assert status.problem is not None
    assert "feedback" in status.problem


def test_a_removed_root_is_created_again(sink: FilesystemSink, roots: tuple[Path, Path]) -> None:
    sink.write(feedback())
    for path in all_files(roots[0]):
        path.unlink()
    roots[0].rmdir()

    location = sink.write(feedback())

    assert Path(location).parent == roots[0]
    assert stat.S_IMODE(roots[0].stat().st_mode) == 0o700
    roots[0].joinpath(Path(location).name).unlink()
    roots[0].rmdir()
    assert sink.describe().ready


class PruningBetweenLevels:
    """A real folder pruner racing the sink: removes the user folder the first time the
    sink flushes its parent (that is, right after creating it, before the conversation
    folder), as the exporter pruning emptied folders could."""

    def __init__(self, user_folder: Path) -> None:
        self.user_folder = user_folder
        self.pruned = False

    def __call__(self, fd: int) -> None:
        os.fsync(fd)
        if not self.pruned and self.user_folder.is_dir() and not any(self.user_folder.iterdir()):
            self.user_folder.rmdir()
            self.pruned = True


def test_folders_pruned_while_being_created_are_made_again(roots: tuple[Path, Path]) -> None:
    pruner = PruningBetweenLevels(roots[1] / USER_KEY)
    sink = ready(FilesystemSink(*roots, fsync_function=pruner))

    location = sink.write(transcript())

    assert pruner.pruned
    assert Path(location).is_file()
    assert Path(location).parent.parent == roots[1] / USER_KEY


def test_cached_folders_removed_by_the_exporter_are_made_again(
    sink: FilesystemSink, roots: tuple[Path, Path]
) -> None:
    first = Path(sink.write(transcript()))
    first.unlink()
    first.parent.rmdir()
    first.parent.parent.rmdir()

    second = Path(sink.write(transcript()))

    assert second.parent == first.parent and second.is_file()


def test_settings_schema_documents_every_property() -> None:
    schema = filesystem.SETTINGS_SCHEMA
    (entry,) = filesystem.register_plugin_config_schema()

    assert (entry.section, entry.name, entry.schema) == ("plugin", "filesystem", schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"fsync", "feedback_max_bytes", "transcripts_max_bytes"}
    assert all(prop["description"] for prop in schema["properties"].values())


def config_for(tmp_path: Path, **plugin_settings: Any) -> Any:
    return build_config(
        {
            "service": {"state_dir": str(tmp_path / "state")},
            "user_data_collection": {
                "feedback_storage": str(tmp_path / "feedback"),
                "transcripts_storage": str(tmp_path / "transcripts"),
            },
            "plugins": {"filesystem": plugin_settings},
        }
    )


def test_register_record_sinks_reads_the_configuration(tmp_path: Path) -> None:
    config = config_for(tmp_path, fsync=False, feedback_max_bytes=123)

    (sink,) = filesystem.register_record_sinks(config)

    assert isinstance(sink, FilesystemSink)
    status = sink.describe()
    assert status.ready
    assert status.details["fsync"] is False
    assert status.details["feedback"]["path"] == str(tmp_path / "feedback")
    assert status.details["feedback"]["max_bytes"] == 123
    assert status.details["transcripts"]["max_bytes"] is None


def test_register_record_sinks_skips_disabled_storage(tmp_path: Path) -> None:
    config = build_config(
        {
            "service": {"state_dir": str(tmp_path / "state")},
            "user_data_collection": {
                "feedback_storage": str(tmp_path / "feedback"),
                "transcripts_enabled": False,
                "transcripts_storage": str(tmp_path / "transcripts"),
            },
        }
    )

    (sink,) = filesystem.register_record_sinks(config)

    assert "transcripts" not in sink.describe().details
    assert not (tmp_path / "transcripts").exists()
    with pytest.raises(StorageFailed):
        sink.write(transcript())


def test_plugin_manager_collects_the_sink(tmp_path: Path) -> None:
    pytest.importorskip("lightspeed_collector.plugins.regex", reason="regex plugin not written yet")
    from lightspeed_collector.plugin_manager import (
        collect_components,
        get_plugin_manager,
        validate_plugin_settings,
    )

    config = config_for(tmp_path, fsync=True, transcripts_max_bytes=1_000_000)
    pm = get_plugin_manager(config)
    validate_plugin_settings(config, pm)

    sink = collect_components(config, pm).sinks["filesystem"]

    assert isinstance(sink, FilesystemSink)
    location = sink.write(transcript())
    assert location.startswith(str(tmp_path / "transcripts"))


@pytest.mark.parametrize("settings", [{"fsynk": True}, {"fsync": "yes"}, {"feedback_max_bytes": 0}])
def test_plugin_manager_rejects_bad_settings(tmp_path: Path, settings: dict[str, Any]) -> None:
    pytest.importorskip("lightspeed_collector.plugins.regex", reason="regex plugin not written yet")
    from lightspeed_collector.plugin_manager import get_plugin_manager, validate_plugin_settings

    config = config_for(tmp_path, **settings)
    pm = get_plugin_manager(config)

    with pytest.raises(ConfigError, match=r"plugins\.filesystem"):
        validate_plugin_settings(config, pm)
