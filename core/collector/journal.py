"""A small append-only journal of what left the outbox: receipts, splits, quarantines.

It is what makes a restart safe after the receiver accepted an archive: the receipt is
flushed to the journal before the archive is removed, so an archive found in ``ready/``
whose id the journal lists as sent is cleaned up, not uploaded again. It stays small: past
``max_bytes`` the file is rotated once (``journal.jsonl.1``) and the older one dropped; an
archive's receipt only needs to outlive the few steps between upload and cleanup.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from . import fsutil

DEFAULT_MAX_BYTES = 1024 * 1024


class Journal:
    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.rotated = path.with_name(path.name + ".1")
        self.max_bytes = max_bytes

    def append(self, entry: Mapping[str, Any]) -> None:
        """Add one line and flush it to disk before returning."""
        line = (json.dumps(entry, sort_keys=True) + "\n").encode()
        try:
            if self.path.stat().st_size + len(line) > self.max_bytes:
                os.replace(self.path, self.rotated)
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                # A crash tore the last line; start a fresh one so this entry stays readable.
                line = b"\n" + line
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsutil.fsync_dir(self.path.parent)

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every readable line, oldest first; a torn last line (a crash mid-append) is skipped."""
        for path in (self.rotated, self.path):
            try:
                handle = path.open("rb")
            except FileNotFoundError:
                continue
            with handle:
                for line in handle:
                    try:
                        entry = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(entry, dict):
                        yield entry

    def sent_ids(self) -> set[str]:
        return {
            str(entry["archive_id"])
            for entry in self.entries()
            if entry.get("event") == "sent" and "archive_id" in entry
        }
