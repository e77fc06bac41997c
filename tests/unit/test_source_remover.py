"""Removing the sources of a committed archive: every file goes, emptied folders are pruned
on the removal threads, the roots and busy folders stay, and what remains is flushed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from lightspeed_collector.collector import scan
from lightspeed_collector.collector.scan import FolderIdentity, PackedFile, SourceRemover, Storage


@pytest.fixture
def flushed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The folders the remover flushes, in the order it flushes them (really flushed too)."""
    calls: list[str] = []
    real = scan.fsutil.fsync_existing_dir

    def record(path: str) -> None:
        calls.append(path)
        real(path)

    monkeypatch.setattr(scan.fsutil, "fsync_existing_dir", record)
    return calls


def storages(root: Path) -> list[Storage]:
    feedback, transcripts = root / "feedback", root / "transcripts"
    feedback.mkdir()
    transcripts.mkdir()
    return [Storage("feedback", str(feedback)), Storage("transcripts", str(transcripts))]


def make_records(root: Path, users: int, conversations: int, per_conversation: int) -> list[str]:
    """Files in the order an archive lists them: folder by folder."""
    paths: list[str] = []
    for user in range(users):
        for conversation in range(conversations):
            folder = root / "transcripts" / f"user-{user}" / f"conversation-{conversation}"
            folder.mkdir(parents=True)
            for record in range(per_conversation):
                path = folder / f"{record}.json"
                path.write_bytes(b"{}")
                paths.append(str(path))
    for record in range(per_conversation):
        path = root / "feedback" / f"{record}.json"
        path.write_bytes(b"{}")
        paths.append(str(path))
    return paths


def packed(paths: list[str]) -> list[PackedFile]:
    """Each path with its inode and its folder's identity now, as packing records them."""
    return [(path, os.lstat(path).st_ino, identity(os.path.dirname(path))) for path in paths]


def identity(folder: str) -> FolderIdentity:
    found = os.stat(folder)
    return found.st_dev, found.st_ino


def everything_below(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def test_a_large_removal_prunes_every_emptied_folder_and_flushes_the_roots(
    tmp_path: Path, flushed: list[str]
) -> None:
    roots = storages(tmp_path)
    # 7 files per folder against batches of 256: many folders straddle two batches, so
    # some are emptied by a batch that did not see their first files.
    paths = make_records(tmp_path, users=12, conversations=9, per_conversation=7)
    assert len(paths) > 2 * scan._REMOVE_BATCH

    with SourceRemover(roots, workers=4) as remover:
        remover.remove_all(packed(paths))
        remover.finish()

    assert everything_below(tmp_path) == ["feedback", "transcripts"]
    assert remover.removed == len(paths)
    assert remover.pruned == 12 * 9 + 12
    assert sorted(flushed) == sorted(root.root for root in roots)


def test_busy_folders_and_their_parents_stay_and_are_flushed(
    tmp_path: Path, flushed: list[str]
) -> None:
    roots = storages(tmp_path)
    paths = make_records(tmp_path, users=3, conversations=40, per_conversation=4)
    busy = tmp_path / "transcripts" / "user-1" / "conversation-7"
    (busy / ".in-flight.tmp").write_bytes(b"the sink is writing this")

    with SourceRemover(roots, workers=4) as remover:
        remover.remove_all(packed(paths))
        remover.finish()

    assert everything_below(tmp_path) == [
        "feedback",
        "transcripts",
        "transcripts/user-1",
        "transcripts/user-1/conversation-7",
        "transcripts/user-1/conversation-7/.in-flight.tmp",
    ]
    assert remover.pruned == 3 * 40 - 1 + 2
    assert str(busy) in flushed
    assert os.path.join(roots[1].root) in flushed


def test_files_already_gone_are_not_counted(tmp_path: Path, flushed: list[str]) -> None:
    roots = storages(tmp_path)
    paths = make_records(tmp_path, users=1, conversations=2, per_conversation=3)
    files = packed(paths)
    os.unlink(paths[0])

    with SourceRemover(roots) as remover:
        remover.remove_all(files)
        remover.finish()

    assert remover.removed == len(paths) - 1
    assert everything_below(tmp_path) == ["feedback", "transcripts"]


def test_a_file_replaced_since_it_was_packed_is_kept(tmp_path: Path, flushed: list[str]) -> None:
    roots = storages(tmp_path)
    paths = make_records(tmp_path, users=1, conversations=1, per_conversation=3)
    files = packed(paths)
    replacement = Path(paths[0]).with_name(".new.tmp")
    replacement.write_bytes(b'{"newer": true}')
    replacement.rename(paths[0])

    with SourceRemover(roots) as remover:
        remover.remove_all(files)
        remover.finish()

    assert remover.removed == len(paths) - 1
    assert remover.kept == [(paths[0], "it was replaced after it was packed")]
    assert Path(paths[0]).read_bytes() == b'{"newer": true}'


def test_a_replacement_marks_its_folder_as_changed_since_packing(
    tmp_path: Path, flushed: list[str]
) -> None:
    roots = storages(tmp_path)
    paths = make_records(tmp_path, users=1, conversations=2, per_conversation=300)
    for folder in {os.path.dirname(path) for path in paths}:
        os.utime(folder, ns=(0, 0))  # long untouched: its files need no look each
    packing_began = time.time_ns()
    files = packed(paths)
    replacement = Path(paths[7]).with_name(".new.tmp")
    replacement.write_bytes(b'{"newer": true}')
    replacement.rename(paths[7])

    with SourceRemover(roots) as remover:
        remover.remove_all(files, packed_since_ns=packing_began)
        remover.finish()

    assert remover.kept == [(paths[7], "it was replaced after it was packed")]
    assert remover.removed == len(paths) - 1


def test_a_folder_replaced_since_it_was_listed_is_left_alone_and_what_it_leads_to_too(
    tmp_path: Path, flushed: list[str]
) -> None:
    """The folder's path may be followed, since what it leads to must be the folder the
    scan listed: a symlink put in its place leads elsewhere and is refused."""
    roots = storages(tmp_path)
    paths = make_records(tmp_path, users=1, conversations=2, per_conversation=3)
    files = packed(paths)
    listed = Path(paths[0]).parent
    moved = tmp_path / "moved-away"
    listed.rename(moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("0.json", "1.json", "2.json"):
        (elsewhere / name).write_bytes(b"not ours")
    listed.symlink_to(elsewhere)

    with SourceRemover(roots) as remover:
        remover.remove_all(files, packed_since_ns=time.time_ns())
        remover.finish()

    assert sorted(p.name for p in elsewhere.iterdir()) == ["0.json", "1.json", "2.json"]
    assert sorted(p.name for p in moved.iterdir()) == ["0.json", "1.json", "2.json"]
    assert remover.kept_count == 3
    assert remover.kept[0] == (paths[0], "its folder was replaced after it was packed")
    assert remover.removed == len(paths) - 3
