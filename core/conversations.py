"""Who owns which conversation, in an embedded SQLite database under ``service.state_dir``.

Only pseudonyms are stored, never user ids. One connection guarded by a lock serves all of
waitress's worker threads: the statements are tiny, so a lock is simpler and as fast as a
connection per thread. Ownership never changes once recorded, so owners already seen are
answered from memory: every feedback checks ownership, and a database round trip per request
costs more than the rest of the check.

The database can fail under a running service (another process holding its write lock, a
full disk, a damaged file): every such failure is a ``ServiceUnavailable`` naming the
database and SQLite's reason, so clients get a 503 they may retry instead of an unexplained
500, and the operator reads in the log what to fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Forbidden, NotFound, ServiceUnavailable

log = logging.getLogger(__name__)

CACHED_OWNERS = 100_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    conversation_id TEXT PRIMARY KEY,
    user_key TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""


class ConversationStore:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db, file_id = _open(path)
        # The file the connection writes to; None while the database is held in memory
        # because its file was removed and could not be written again yet.
        self._file_id: tuple[int, int] | None = file_id
        self._owners: dict[str, str] = {}

    def create(self, conversation_id: str, user_key: str, created_at: str) -> None:
        with self._database(writing=True) as db:
            db.execute(
                "INSERT OR IGNORE INTO conversations VALUES (?, ?, ?)",
                (conversation_id, user_key, created_at),
            )
        self._remember(conversation_id, self.owner(conversation_id, cached=False))

    def owner(self, conversation_id: str, *, cached: bool = True) -> str | None:
        if cached and (known := self._owners.get(conversation_id)) is not None:
            return known
        with self._database() as db:
            row = db.execute(
                "SELECT user_key FROM conversations WHERE conversation_id = ?", (conversation_id,)
            ).fetchone()
        owner = None if row is None else str(row[0])
        self._remember(conversation_id, owner)
        return owner

    def _remember(self, conversation_id: str, owner: str | None) -> None:
        # Unknown conversations are not remembered: another process may create them.
        if owner is None:
            return
        if len(self._owners) >= CACHED_OWNERS:
            self._owners.clear()
        self._owners[conversation_id] = owner

    def check_access(self, conversation_id: str, user_key: str) -> None:
        """404 for a conversation nobody started, 403 for someone else's."""
        owner = self.owner(conversation_id)
        if owner is None:
            raise NotFound(
                f"Conversation with ID {conversation_id} does not exist",
                response="Conversation not found",
            )
        if owner != user_key:
            raise Forbidden(
                f"User does not have permission to access conversation {conversation_id}"
            )

    def ping(self) -> None:
        """Readiness: the database answers, and from the file a restart will read."""
        with self._database(writing=True) as db:
            db.execute("SELECT 1").fetchone()

    @contextmanager
    def _database(self, *, writing: bool = False) -> Iterator[sqlite3.Connection]:
        """The connection, to one thread at a time, with SQLite's failures made a 503.

        ``writing`` first makes sure the connection still writes to the file at our path.
        """
        with self._lock:
            try:
                if writing:
                    self._keep_on_disk()
                yield self._db
            except sqlite3.Error as exc:
                raise self._unavailable(str(exc)) from exc

    def _keep_on_disk(self) -> None:
        """Make sure what is written lands in the file the next start will open.

        An open SQLite connection goes on writing to a database file that was deleted (alone
        or with its folder), and all of it vanishes at the next start: every conversation
        begun since would answer 404. So a missing file is written again from what the
        connection still holds. A file someone put in its place is not ours to write over.
        """
        try:
            found = os.stat(self._path)
        except (FileNotFoundError, NotADirectoryError):
            self._restore()
            return
        except OSError as exc:
            raise self._unavailable(exc.strerror or str(exc)) from exc
        if (found.st_dev, found.st_ino) != self._file_id:
            raise self._unavailable(
                "another file was put in its place while the service ran; restart the "
                "service to use it"
            )

    def _restore(self) -> None:
        """Write the database again at its path from the open connection.

        The old connection is closed first: the new file must not share its -wal and -shm
        files. Until the file can be written the conversations are held in memory, so
        nothing is forgotten while the folder is missing or the disk refuses.
        """
        if self._file_id is not None:
            log.warning(
                "conversations database %s was removed while the service ran; "
                "writing it again from the open connection",
                self._path,
            )
            held = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
            self._db.backup(held)
            self._db.close()
            self._db, self._file_id = held, None
        restored: sqlite3.Connection | None = None
        try:
            _remove_files(_companions(self._path))
            restored, file_id = _open(self._path)
            self._db.backup(restored)
            restored.execute("PRAGMA journal_mode=WAL")
        except (OSError, sqlite3.Error) as exc:
            if restored is not None:
                restored.close()
            # A half-written file would be taken for the database at the next start.
            _remove_files((self._path, *_companions(self._path)))
            raise self._unavailable(f"it was removed and cannot be written again: {exc}") from exc
        self._db.close()
        self._db, self._file_id = restored, file_id
        log.warning("conversations database %s written again", self._path)

    def _unavailable(self, reason: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            f"The conversations database {self._path} cannot be used: {reason}",
            response="Conversations database unavailable",
        )

    def close(self) -> None:
        with self._lock:
            if self._file_id is None:
                # Held in memory only: a last chance to keep it, or say what is lost.
                try:
                    self._restore()
                except ServiceUnavailable as exc:
                    log.error("conversation owners not kept for the next start: %s", exc.cause)
            self._db.close()


def _open(path: Path) -> tuple[sqlite3.Connection, tuple[int, int]]:
    """A connection to the database at ``path`` (created when missing) and the identity of
    the file it opened."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    # SQLite gives its -wal and -shm files the database file's mode, so creating the
    # database owner-only first keeps all three private from the very first start.
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
    path.chmod(0o600)
    opened = os.stat(path)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(_SCHEMA)
    except BaseException:
        db.close()
        raise
    return db, (opened.st_dev, opened.st_ino)


def _companions(path: Path) -> tuple[Path, ...]:
    """SQLite's write-ahead log and its index, which live next to the database."""
    return (path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm"))


def _remove_files(paths: Iterable[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            path.unlink()
