"""The lock that keeps two collectors from exporting the same files.

``flock`` on ``<state_dir>/collector.lock`` for the whole cycle, so collectors sharing a
state folder (the service and a sidecar, two sidecars) take turns. Each storage root is
locked too, through its directory handle, which leaves no file behind in the storage and
also covers collectors that share the storage but not the state folder. Filesystems that
cannot lock a directory (NFS emulates ``flock`` with byte-range locks, which need a writable
handle) fall back to the state-folder lock alone.

Storage roots of two services may nest (one's feedback folder inside the other's
transcripts folder): files below the inner root are then records to both. So each folder
above a root is locked too, shared: the collector of an outer root, which locks it
exclusively, and the collector of an inner one exclude each other, while collectors of
side-by-side folders, sharing only their common parents, do not.

The kernel drops the locks when the process dies, however it dies, so a killed collector
never leaves a stale lock.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_FILE = "collector.lock"
_RETRY_EVERY = 0.1
_UNSUPPORTED = frozenset({errno.EBADF, errno.EINVAL, errno.ENOLCK, errno.EOPNOTSUPP})


class CollectorLock:
    def __init__(
        self,
        state_dir: Path,
        storage_roots: Sequence[str] = (),
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.path = state_dir / LOCK_FILE
        self._roots = sorted(storage_roots)
        self._parents = sorted(
            {parent for root in self._roots for parent in _parents(root)} - set(self._roots)
        )
        self._clock = clock
        self._sleep = sleep

    @contextlib.contextmanager
    def hold(self, wait: float) -> Iterator[bool]:
        """Yield ``True`` with every lock held, or ``False`` if they stayed busy for ``wait``
        seconds; the locks are released when the block ends."""
        deadline = self._clock() + wait
        while True:
            held = self._try_all()
            if held is not None or self._clock() >= deadline:
                break
            self._sleep(min(_RETRY_EVERY, max(0.0, deadline - self._clock())))
        try:
            yield held is not None
        finally:
            for fd in held or ():
                os.close(fd)

    def _try_all(self) -> list[int] | None:
        held: list[int] = []
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            held.append(fd)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            for folder, mode in [
                *((root, fcntl.LOCK_EX) for root in self._roots),
                *((parent, fcntl.LOCK_SH) for parent in self._parents),
            ]:
                self._lock_folder(folder, mode, held)
        except BlockingIOError:
            for fd in held:
                os.close(fd)
            return None
        except BaseException:
            for fd in held:
                os.close(fd)
            raise
        return held

    def _lock_folder(self, folder: str, mode: int, held: list[int]) -> None:
        """Lock ``folder`` through its handle (appended to ``held``); raises
        ``BlockingIOError`` when another collector holds a conflicting lock."""
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            # Gone, no longer a folder, or not readable: a storage root the scan cannot
            # list either (the scan reports it), or a parent this user may not read.
            log.debug("cannot lock folder %s (%s)", folder, exc.strerror or exc)
            return
        held.append(fd)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
            log.debug("cannot lock folder %s (%s); relying on %s", folder, exc.strerror, self.path)


def _parents(path: str) -> Iterator[str]:
    """Every folder above ``path``, up to the filesystem's root."""
    while (parent := os.path.dirname(path)) != path:
        yield parent
        path = parent
