"""The streaming archive writer: readable by tar and Python, exact manifests, size limits."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lightspeed_collector.collector.archive import (
    ArchiveWriter,
    manifest_entries,
    manifest_summary,
    tar_header,
)


def write_archive(
    folder: Path, members: dict[str, bytes], *, limit: int = 10**9, level: int = 1
) -> tuple[list[str], ArchiveWriter]:
    """Add members while they fit; answers the names that went in."""
    writer = ArchiveWriter(
        folder,
        "20240101T000000Z-abcdef012345",
        limit=limit,
        level=level,
        created="2024-01-01T00:00:00.000000Z",
        mtime=1_700_000_000,
    )
    added = []
    for name, data in members.items():
        if not writer.room_for(name, len(data)):
            break
        writer.add(name, len(data), 1_700_000_000, io.BytesIO(data).read)
        added.append(name)
    return added, writer


def read_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as archive:
        return {
            member.name: archive.extractfile(member).read()  # type: ignore[union-attr]
            for member in archive
        }


NAMES = {
    "feedback/0b8c4d2e-6a1f-4c3b-9d5e-7f0a1b2c3d4e.json": b'{"a": 1}\n',
    # 155 characters: needs the ustar prefix field.
    "transcripts/"
    + "a" * 64
    + "/5b0d3c2a-1e4f-4a6b-8c9d-0e1f2a3b4c5d/e41b2c3d-4e5f-4a6b-8c9d-0e1f2a3b4c5d.json": b"{}\n",
    # Not ASCII: needs a PAX header.
    "feedback/zürich-ü.json": '{"ü": true}\n'.encode(),
    # Too long for ustar even with the prefix: PAX again.
    "transcripts/" + "b" * 200 + "/x.json": b"[]\n",
    "feedback/empty.json": b"",
    "feedback/exactly-a-block.json": b"x" * 512,
}


def test_archive_is_read_back_identically_by_python_and_by_tar(tmp_path: Path) -> None:
    added, writer = write_archive(tmp_path / "a", NAMES)
    built = writer.finish()
    assert added == list(NAMES)
    members = read_members(built.path)
    manifest = json.loads(members.pop("manifest.json"))
    assert members == NAMES
    assert built.record_count == len(NAMES)
    assert built.size == built.path.stat().st_size
    assert built.sha256 == hashlib.sha256(built.path.read_bytes()).hexdigest()
    assert manifest["archive_id"] == "20240101T000000Z-abcdef012345"
    assert manifest["created"] == "2024-01-01T00:00:00.000000Z"
    assert manifest["split_from"] is None
    assert manifest["record_counts"] == {"feedback": 4, "transcripts": 2}
    assert manifest["total_files"] == 6
    assert manifest["total_bytes"] == sum(map(len, NAMES.values()))
    assert [entry["name"] for entry in manifest["files"]] == list(NAMES)
    for entry in manifest["files"]:
        assert entry["size"] == len(NAMES[entry["name"]])
        assert entry["sha256"] == hashlib.sha256(NAMES[entry["name"]]).hexdigest()
    # The manifest kept beside the archive is the member, byte for byte.
    assert (built.folder / "manifest.json").read_bytes() == read_members(built.path)[
        "manifest.json"
    ]

    if shutil.which("tar"):
        target = tmp_path / "unpacked"
        target.mkdir()
        subprocess.run(["tar", "xzf", str(built.path), "-C", str(target)], check=True)
        for name, data in NAMES.items():
            assert (target / name).read_bytes() == data
        mode = (target / "feedback/empty.json").stat().st_mode & 0o777
        assert mode & 0o077 == 0, "members are owner-only"


def test_manifest_is_read_line_by_line(tmp_path: Path) -> None:
    _, writer = write_archive(tmp_path / "a", NAMES)
    built = writer.finish()
    entries = list(manifest_entries(built.folder / "manifest.json"))
    assert [entry.name for entry in entries] == list(NAMES)
    summary = manifest_summary(built.folder / "manifest.json")
    assert (summary.archive_id, summary.record_count) == ("20240101T000000Z-abcdef012345", 6)
    assert summary.counts == {"feedback": 4, "transcripts": 2}


def test_empty_manifest_is_valid(tmp_path: Path) -> None:
    _, writer = write_archive(tmp_path / "a", {})
    built = writer.finish()
    manifest = json.loads(read_members(built.path)["manifest.json"])
    assert manifest["files"] == [] and manifest["total_files"] == 0
    assert manifest_summary(built.folder / "manifest.json").record_count == 0


def test_ustar_header_matches_what_tarfile_reads() -> None:
    header = tar_header("feedback/x.json", 1234, 1_700_000_000)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
    assert (info.name, info.size, info.mtime, info.mode) == (
        "feedback/x.json",
        1234,
        1_700_000_000,
        0o600,
    )
    assert info.type == tarfile.REGTYPE


def test_ustar_checksum_holds_for_the_largest_byte_sum_a_header_can_have() -> None:
    # Every name and prefix byte at the top of ASCII, every digit of size and mtime a 7.
    name = "\x7f" * 155 + "/" + "\x7f" * 100
    header = tar_header(name, 8**11 - 1, 8**11 - 1)
    info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")  # checks the sum
    assert (info.name, info.size, info.mtime) == (name, 8**11 - 1, 8**11 - 1)


@settings(max_examples=60, deadline=None)
@given(
    limit=st.integers(min_value=1024, max_value=200_000),
    sizes=st.lists(st.integers(min_value=0, max_value=6000), min_size=2, max_size=60),
    random_share=st.floats(min_value=0.0, max_value=1.0),
    level=st.sampled_from([1, 6, 9]),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_an_archive_of_two_or_more_records_never_passes_the_limit(
    tmp_path_factory: pytest.TempPathFactory,
    limit: int,
    sizes: list[int],
    random_share: float,
    level: int,
    seed: int,
) -> None:
    """The limit holds for any mix of compressible and incompressible records."""
    rng = random.Random(seed)
    members = {}
    for n, size in enumerate(sizes):
        random_part = int(size * random_share)
        data = rng.randbytes(random_part) + b"a" * (size - random_part)
        members[f"feedback/{n:04d}-{rng.getrandbits(32):08x}.json"] = data
    folder = tmp_path_factory.mktemp("limit") / "a"
    added, writer = write_archive(folder, members, limit=limit, level=level)
    built = writer.finish()
    if len(added) >= 2:
        assert built.size <= limit
    assert read_members(built.path).keys() - {"manifest.json"} == set(added)


def test_archives_fill_up_close_to_the_limit(tmp_path: Path) -> None:
    """The worst-case reserve costs a little room, not most of it."""
    rng = random.Random(7)
    words = [rng.randbytes(4).hex() for _ in range(400)]
    members = {
        f"transcripts/{n:06d}.json": " ".join(rng.choice(words) for _ in range(200)).encode()
        for n in range(3000)
    }
    limit = 256 * 1024
    added, writer = write_archive(tmp_path / "a", members, limit=limit)
    built = writer.finish()
    assert len(added) < len(members)
    assert 0.95 * limit <= built.size <= limit


def test_abort_leaves_nothing_behind(tmp_path: Path) -> None:
    _, writer = write_archive(tmp_path / "a", NAMES)
    writer.abort()
    assert not (tmp_path / "a").exists()


def test_files_are_owner_only(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        _, writer = write_archive(tmp_path / "a", NAMES)
        built = writer.finish()
    finally:
        os.umask(old)
    for path in (built.path, built.folder / "manifest.json"):
        assert path.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
