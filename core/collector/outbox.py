"""The outbox: archives on their way out, each in exactly one state, named by its folder.

```
<state_dir>/outbox/
  tmp/<id>/      being written; garbage after a crash (its sources were never touched)
  new/<id>/      complete and flushed; its sources may still be in the storage folders
  ready/<id>/    its sources are gone; waiting for (another) upload
  sent/<id>/     accepted by the receiver, kept because cleanup_after_send is false
  journal.jsonl  receipts: one line per archive sent, split or quarantined
<state_dir>/quarantine/
  records/...    records too large for any archive, under their member names
  archives/<id>/ archives the receiver refuses for their size that cannot be split further
```

Each folder holds ``archive.tar.gz`` and its ``manifest.json``. Moving a folder between
states is one rename, flushed before the next step, so a crash at any point leaves every
archive in a state from which the next cycle knows what to do.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from ..types import Archive
from . import fsutil
from .archive import ARCHIVE_FILE, MANIFEST_FILE, manifest_summary

_HASH_CHUNK = 128 * 1024


class Outbox:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "outbox"
        self.tmp = self.root / "tmp"
        self.new = self.root / "new"
        self.ready = self.root / "ready"
        self.sent = self.root / "sent"
        self.journal_path = self.root / "journal.jsonl"
        self.quarantine = state_dir / "quarantine"

    def prepare(self) -> None:
        """Create the folders and drop half-written archives left by a crash."""
        for folder in (self.tmp, self.new, self.ready):
            fsutil.make_dirs(folder)
        for leftover in self.tmp.iterdir():
            fsutil.remove_tree(leftover)

    def ids(self, state: Path) -> list[str]:
        """Archive ids in a state folder, oldest first (ids start with their creation time)."""
        try:
            return sorted(entry.name for entry in os.scandir(state) if entry.is_dir())
        except FileNotFoundError:
            return []

    def pending_count(self) -> int:
        """Archives not yet accepted by the receiver."""
        return len(self.ids(self.new)) + len(self.ids(self.ready))

    def building(self, archive_id: str) -> Path:
        return self.tmp / archive_id

    def commit(self, archive_id: str) -> None:
        """tmp → new: the archive is durable; only now may its sources be removed."""
        fsutil.rename(self.tmp / archive_id, self.new / archive_id)

    def release(self, archive_id: str) -> None:
        """new → ready: the sources are gone; the archive alone holds its records."""
        fsutil.rename(self.new / archive_id, self.ready / archive_id)

    def publish(self, archive_id: str) -> None:
        """tmp → ready, for archives made from other archives (splits): no sources to remove."""
        fsutil.rename(self.tmp / archive_id, self.ready / archive_id)

    def load(self, archive_id: str) -> Archive:
        """The ``Archive`` an exporter gets, with its size, record count and SHA-256."""
        folder = self.ready / archive_id
        path = folder / ARCHIVE_FILE
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
            size = handle.tell()
        summary = manifest_summary(folder / MANIFEST_FILE)
        return Archive(
            archive_id=archive_id,
            path=path,
            size=size,
            record_count=summary.record_count,
            sha256=digest.hexdigest(),
        )

    def manifest(self, state: Path, archive_id: str) -> Path:
        return state / archive_id / MANIFEST_FILE

    def archive_file(self, state: Path, archive_id: str) -> Path:
        return state / archive_id / ARCHIVE_FILE

    def remove(self, state: Path, archive_id: str) -> None:
        fsutil.remove_tree(state / archive_id)

    def keep_sent(self, archive_id: str) -> None:
        fsutil.move_tree(self.ready / archive_id, self.sent / archive_id)

    def quarantine_archive(self, archive_id: str) -> Path:
        target = self.quarantine / "archives" / archive_id
        fsutil.move_tree(self.ready / archive_id, target)
        return target

    def quarantine_record(self, source: str, member: str) -> Path:
        """Move a record into quarantine under its member name, or next to an earlier one
        of the same name (``<name>.1.json``, ...): a quarantined record is never replaced."""
        first = self.quarantine.joinpath("records", *member.split("/"))
        target, copy = first, 0
        while target.exists():
            copy += 1
            target = first.with_name(f"{first.stem}.{copy}{first.suffix}")
        fsutil.move_file(Path(source), target)
        return target
