"""``lightspeed-collector export --once`` against storage trees that hold more, or other,
than the records the service writes: the real exporter process, the ingress stub as the
receiver, real files. Whatever the tree holds, every record is delivered or stays on disk,
the rest of the backlog still leaves, and the log says what stayed and why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import NOBODY, unprivileged
from tests.export_support import (
    Stub,
    archive_records,
    export_command,
    storage_records,
    write_export_config,
)

USER = "a" * 64
LONG_AGO = 1_000_000_000


@pytest.fixture
def small_volume(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB filesystem of its own (a tmpfs), for a state folder on another volume than
    the storage, and one that fills up."""
    folder = tmp_path / "small-volume"
    folder.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a filesystem needs root and mount(8)")
    mounted = subprocess.run(
        [mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode(errors='replace')}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def write_record(path: Path, size: int = 0) -> bytes:
    """A finished record, modified long ago, so its age never holds it back."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    content = json.dumps({"id": path.stem, "text": "x" * size}).encode()
    path.write_bytes(content)
    path.chmod(0o600)
    os.utime(path, (LONG_AGO, LONG_AGO))
    return content


def backlog(data: Path, count: int = 4) -> dict[str, bytes]:
    """Feedback and transcripts in the layout the service writes, by member name."""
    records: dict[str, bytes] = {}
    for _ in range(count):
        name = f"{uuid.uuid4()}.json"
        records[f"feedback/{name}"] = write_record(data / "feedback" / name)
        member = f"transcripts/{USER}/conv-1/{name}"
        records[member] = write_record(data / "transcripts" / USER / "conv-1" / name)
    return records


def delivered(stub: Stub) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    for upload in stub.uploads():
        found, _ = archive_records(Path(upload["stored_as"]))
        assert not set(found) & set(records), "a record was delivered twice"
        records.update(found)
    return records


def test_a_record_that_cannot_be_read_is_reported_and_the_rest_still_leave(
    shared_tmp: Path, stubs: Callable[..., Stub]
) -> None:
    data = shared_tmp / "data"
    originals = backlog(data)
    locked = data / "feedback" / f"{uuid.uuid4()}.json"
    locked_content = write_record(locked)
    stub = stubs()
    config = write_export_config(shared_tmp, data, stub.url)
    prefix = unprivileged()
    if prefix:
        (shared_tmp / "state").mkdir(mode=0o700)
        for path in [shared_tmp / "state", data, *data.rglob("*")]:
            os.chown(path, NOBODY, NOBODY)
    locked.chmod(0)

    for _ in range(2):
        result = subprocess.run(
            [*prefix, *export_command(config, "--once")], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert f"1 record could not be read, left in the storage: {locked}" in result.stderr
        assert "Permission denied" in result.stderr
        assert "1 record unreadable, left in the storage" in result.stderr

    assert delivered(stub) == originals
    locked.chmod(0o600)
    assert storage_records(data) == {f"feedback/{locked.name}": locked_content}


def test_a_record_too_large_even_for_the_quarantine_stays_and_the_rest_still_leave(
    tmp_path: Path, small_volume: Path, stubs: Callable[..., Stub]
) -> None:
    """Quarantine is a copy when the state folder is another volume; one that does not fit
    must neither stop the backlog nor leave a partial copy filling the state volume."""
    data = tmp_path / "data"
    originals = backlog(data)
    huge = data / "feedback" / f"{uuid.uuid4()}.json"
    with huge.open("wb") as sparse:
        sparse.truncate(8 * 1024 * 1024)
    os.utime(huge, (LONG_AGO, LONG_AGO))
    stub = stubs()
    config = write_export_config(
        tmp_path, data, stub.url, state_dir=small_volume / "state", max_archive_bytes=1024 * 1024
    )

    for _ in range(2):
        result = subprocess.run(
            export_command(config, "--once"), capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "Traceback" not in result.stderr
        assert f"record feedback/{huge.name} is 8388608 bytes" in result.stderr
        assert "could not be moved to quarantine (No space left on device)" in result.stderr

    assert delivered(stub) == originals
    assert os.listdir(data / "feedback") == [huge.name]
    assert huge.stat().st_size == 8 * 1024 * 1024
    assert not [path for path in small_volume.rglob("*") if path.name.endswith(".part")]


def test_json_files_outside_the_record_layout_are_left_alone_and_reported(
    tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    """The receiver expects ``feedback/<id>.json`` and
    ``transcripts/<user>/<conversation>/<id>.json``; a file anywhere else is no record of
    this service (another storage nested in this one, a file dropped by hand)."""
    data = tmp_path / "data"
    originals = backlog(data)
    misplaced = [
        data / "feedback" / "nested" / "a.json",
        data / "transcripts" / "b.json",
        data / "transcripts" / USER / "c.json",
        data / "transcripts" / USER / "conv-1" / "deeper" / "d.json",
    ]
    contents = {path: write_record(path) for path in misplaced}
    stub = stubs()
    config = write_export_config(tmp_path, data, stub.url)

    result = subprocess.run(
        export_command(config, "--once"), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert delivered(stub) == originals
    assert {path: path.read_bytes() for path in misplaced} == contents
    feedback_warning = f"1 file named *.json in {data / 'feedback'} not where its records lie"
    assert feedback_warning in result.stderr
    assert f"3 files named *.json in {data / 'transcripts'} not where" in result.stderr
    assert str(misplaced[0]) in result.stderr
