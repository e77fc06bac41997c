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

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import Forbidden, NotFound, ServiceUnavailable

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
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite gives its -wal and -shm files the database file's mode, so creating the
        # database owner-only first keeps all three private from the very first start.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        path.chmod(0o600)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._owners: dict[str, str] = {}

    def create(self, conversation_id: str, user_key: str, created_at: str) -> None:
        with self._database() as db:
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
        with self._database() as db:
            db.execute("SELECT 1").fetchone()

    @contextmanager
    def _database(self) -> Iterator[sqlite3.Connection]:
        """The connection, to one thread at a time, with SQLite's failures made a 503."""
        with self._lock:
            try:
                yield self._db
            except sqlite3.Error as exc:
                raise ServiceUnavailable(
                    f"The conversations database {self._path} cannot be used: {exc}",
                    response="Conversations database unavailable",
                ) from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()
