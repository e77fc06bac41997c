"""The lock that keeps two collectors from exporting the same files.

``flock`` on ``<state_dir>/collector.lock`` for the whole cycle, so collectors sharing a
state folder (the service and a sidecar, two sidecars) take turns. Each storage root is
locked too, through its directory handle, which leaves no file behind in the storage and
also covers collectors that share the storage but not the state folder. Filesystems that
cannot lock a directory (NFS emulates ``flock`` with byte-range locks, which need a writable
handle) fall back to the state-folder lock alone.

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
            for root in self._roots:
                try:
                    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                except OSError as exc:
                    # Gone, no longer a folder, or not readable: the scan cannot list it
                    # either, so there is nothing in it to guard (the scan reports it).
                    log.debug("cannot lock storage folder %s (%s)", root, exc.strerror or exc)
                    continue
                held.append(fd)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as exc:
                    if exc.errno not in _UNSUPPORTED:
                        raise
                    log.debug(
                        "cannot lock storage folder %s (%s); relying on %s",
                        root,
                        exc.strerror,
                        self.path,
                    )
        except BlockingIOError:
            for fd in held:
                os.close(fd)
            return None
        except BaseException:
            for fd in held:
                os.close(fd)
            raise
        return held
