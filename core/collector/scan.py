"""Finding finished records in the storage folders, and removing them once they are safe.

A record is finished when it carries its final ``*.json`` name: the sink writes a
``.<id>.tmp`` file and renames it, so a ``*.json`` regular file it made is always complete.
Other writers (the reference service among them) write records in place under their final
name; for them, the packer also leaves alone records modified too recently (see
``min_record_age_seconds``). Symlinks
are never followed (a planted link could lead out of the storage root or loop), and the
walk is a generator over ``os.scandir``, so a backlog of any size costs memory only for the
folders on the way down, never for the list of files.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import stat
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from . import fsutil

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger("lightspeed_collector.collector")

_T = TypeVar("_T")
_R = TypeVar("_R")

# An empty folder older than this is left over from an interrupted cleanup and removed; a
# younger one may be one the sink has just created for a record it is about to write.
STALE_EMPTY_DIR_SECONDS = 600.0
# A temporary file (``.<id>.tmp``) lives for the milliseconds of one write; one this old was
# left by a writer that died mid-write. Its client was never told it was stored, and it
# would otherwise keep what a user typed, and count against the storage cap, for good.
STALE_TEMP_FILE_SECONDS = 600.0
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
# Threads removing sources. On a 2-core machine whose disk discards freed blocks, 12,000
# unlinks took 1.10 s on one thread, 0.40 s on 4, 0.25 s on 16, and no less on 64.
REMOVE_WORKERS = 16
_HASH_CHUNK = 128 * 1024


@dataclass(frozen=True)
class Storage:
    """A storage root and the folder its records get inside archives.

    ``root`` is resolved once, so a symlinked mount (as Kubernetes volumes are) works, while
    nothing below it is ever followed.
    """

    folder: str
    root: str

    @property
    def record_layout(self) -> str:
        """Where records lie below the root, as the receiver expects them in an archive."""
        return _RECORD_LAYOUTS[self.folder]

    @property
    def record_depth(self) -> int:
        """How many folders below the root records lie."""
        return self.record_layout.count("/")


_RECORD_LAYOUTS = {"feedback": "<id>.json", "transcripts": "<user>/<conversation>/<id>.json"}
_MISPLACED_EXAMPLES = 3

Inode = int
"""A file's inode number: a file renamed over a packed record (the way records are written
and replaced) has another one."""

FolderIdentity = tuple[int, int]
"""A folder's device and inode: the folder a path leads to now is the one the scan listed
only if they match."""

PackedFile = tuple[str, Inode | None, FolderIdentity | None]
"""A file to remove once its archive is safe: its path, its inode when packed and the
identity of its folder when listed (``None`` where not known: the file's digest was checked
instead, or it is reached from its root without following a symlink)."""


# SourceFile and OpenedFile are built once per record on the packing path; not frozen,
# since a frozen dataclass takes three times as long to build.
@dataclass(slots=True)
class SourceFile:
    storage: Storage
    path: str
    member: str
    folder_fd: int
    """The scan's handle of the record's folder, open while the scan is in that folder:
    the record is opened through it, so a folder on its path swapped for a symlink since it
    was listed cannot lead the read elsewhere."""
    name: str
    folder_identity: FolderIdentity


def scan(
    storages: Sequence[Storage],
    *,
    exclude: Iterable[str] = (),
    wall_clock: Callable[[], float] = time.time,
) -> Iterator[SourceFile]:
    """Every finished record under ``storages``, feedback first, in directory order.

    Folders in ``exclude`` (the collector's own state folder, should it sit inside a storage
    root) are skipped. Empty folders and temporary files left behind long ago are removed
    on the way.
    """
    excluded = {os.path.realpath(path) for path in exclude}
    for storage in storages:
        if not os.path.isdir(storage.root):
            if os.path.lexists(storage.root):
                log.warning(
                    "storage folder %s is not a folder any more; nothing is exported from it",
                    storage.root,
                )
            continue
        yield from _walk(storage, excluded, wall_clock)


def _walk(
    storage: Storage, excluded: set[str], wall_clock: Callable[[], float]
) -> Iterator[SourceFile]:
    """The records of one storage: files at the layout's depth only. A ``*.json`` file
    elsewhere (a folder of another service's storage nested in this one, a file dropped by
    hand) is no record this service wrote, and its member name would be one the receiver
    does not expect: it is left alone, and reported."""
    # Each folder to walk with the identity (device, inode) it had when its parent was
    # listed; the root, resolved once, has none to check.
    stack: list[tuple[str, str, int, tuple[int, int] | None]] = [
        (storage.root, storage.folder, 0, None)
    ]
    misplaced = 0
    misplaced_examples: list[str] = []
    while stack:
        directory, member_dir, depth, identity = stack.pop()
        in_layout = depth == storage.record_depth
        seen_any = False
        # A record that could be sent but not removed would be sent again every cycle.
        removable = os.access(directory, os.W_OK | os.X_OK)
        held_back = 0
        stale_temps = 0
        try:
            folder_fd = _open_listed_folder(directory, identity)
        except FileNotFoundError:
            continue  # pruned while we walked
        except OSError as exc:
            log.warning(
                "cannot list %s (%s); records below it are not exported",
                directory,
                exc.strerror or exc,
            )
            continue
        if folder_fd is None:
            log.warning(
                "%s was replaced since it was listed (by a symlink, say); it is not followed",
                directory,
            )
            continue
        if identity is None:
            root = os.fstat(folder_fd)
            identity = (root.st_dev, root.st_ino)
        try:
            entries = os.scandir(folder_fd)
        except OSError as exc:
            os.close(folder_fd)
            log.warning(
                "cannot list %s (%s); records below it are not exported",
                directory,
                exc.strerror or exc,
            )
            continue
        try:
            with entries:
                for entry in entries:
                    seen_any = True
                    path = os.path.join(directory, entry.name)
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            if path not in excluded:
                                info = entry.stat(follow_symlinks=False)
                                stack.append(
                                    (
                                        path,
                                        f"{member_dir}/{entry.name}",
                                        depth + 1,
                                        (info.st_dev, info.st_ino),
                                    )
                                )
                        elif (
                            entry.name.endswith(".json")
                            and not entry.name.startswith(".")
                            and entry.is_file(follow_symlinks=False)
                        ):
                            if not in_layout:
                                misplaced += 1
                                if len(misplaced_examples) < _MISPLACED_EXAMPLES:
                                    misplaced_examples.append(path)
                            elif removable:
                                yield SourceFile(
                                    storage,
                                    path,
                                    f"{member_dir}/{entry.name}",
                                    folder_fd,
                                    entry.name,
                                    identity,
                                )
                            else:
                                held_back += 1
                        elif (
                            in_layout
                            and entry.name.startswith(".")
                            and entry.name.endswith(".tmp")
                            and removable
                            and _remove_if_stale(entry, folder_fd, wall_clock())
                        ):
                            stale_temps += 1
                    except OSError:
                        continue
        finally:
            os.close(folder_fd)
        if stale_temps:
            log.info(
                "removed %d temporary files in %s left by writes that never finished",
                stale_temps,
                directory,
            )
        if held_back:
            log.warning(
                "%d records in %s are not exported: this process may not remove files there, "
                "so each would be sent again every cycle; give it write access to the folder",
                held_back,
                directory,
            )
        if not seen_any and 0 < depth <= storage.record_depth:
            _prune_if_stale(directory, wall_clock())
    if misplaced:
        more = misplaced - len(misplaced_examples)
        log.warning(
            "%s named *.json in %s not where its records lie (%s), not exported: %s%s",
            f"{misplaced} file" if misplaced == 1 else f"{misplaced} files",
            storage.root,
            storage.record_layout,
            ", ".join(misplaced_examples),
            f" and {more} more" if more else "",
        )


def _open_listed_folder(path: str, identity: tuple[int, int] | None) -> int | None:
    """A handle of the folder at ``path``, or ``None`` when it is no longer the folder its
    parent listed (``identity``): a folder on the way swapped for a symlink since would
    lead elsewhere, out of the storage even."""
    flags = _FOLDER_FLAGS if identity is None else _FOLDER_FLAGS | os.O_NOFOLLOW
    fd = os.open(path, flags)
    if identity is not None:
        info = os.fstat(fd)
        if (info.st_dev, info.st_ino) != identity:
            os.close(fd)
            return None
    return fd


def _remove_if_stale(entry: os.DirEntry[str], folder_fd: int, now: float) -> bool:
    info = entry.stat(follow_symlinks=False)
    if not stat.S_ISREG(info.st_mode) or now - info.st_mtime < STALE_TEMP_FILE_SECONDS:
        return False
    os.unlink(entry.name, dir_fd=folder_fd)
    return True


def _prune_if_stale(directory: str, now: float) -> None:
    try:
        if now - os.stat(directory, follow_symlinks=False).st_mtime >= STALE_EMPTY_DIR_SECONDS:
            os.rmdir(directory)
    except OSError:
        pass


@dataclass(slots=True)
class OpenedFile:
    fd: int
    size: int
    mtime_ns: int
    inode: Inode


# What opening a listed record answers when it is no longer a plain file by that name:
# removed, turned into a symlink (``O_NOFOLLOW``), a socket or device, or its folder into a
# file. Nothing to report: the scan would not offer it now.
_NO_LONGER_A_RECORD = frozenset(
    {errno.ENOENT, errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.ENOTDIR}
)


def open_source(source: SourceFile) -> OpenedFile | None:
    """Open a record for reading, or ``None`` when it vanished or is no longer a plain file.

    Raises ``OSError`` when the record is there but cannot be read (no permission, a name
    too long, a disk error): it stays in the storage every cycle, so the caller must say so.
    """
    try:
        fd = os.open(source.name, _OPEN_FLAGS, dir_fd=source.folder_fd)
    except OSError as exc:
        if exc.errno in _NO_LONGER_A_RECORD:
            return None
        raise
    try:
        info = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        return None
    return OpenedFile(fd, info.st_size, info.st_mtime_ns, info.st_ino)


def source_path(storages: Sequence[Storage], member: str) -> str | None:
    """The file a member name came from, or ``None`` when the name is not one we would make."""
    folder, _, relative = member.partition("/")
    parts = relative.split("/")
    if not relative or any(part in ("", ".", "..") for part in parts):
        return None
    for storage in storages:
        if storage.folder == folder:
            return os.path.join(storage.root, *parts)
    return None


def file_digest(path: str) -> tuple[int, str] | None:
    """Size and SHA-256 of a plain file, or ``None`` when it is gone or not a plain file."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        digest = hashlib.sha256()
        while chunk := os.read(fd, _HASH_CHUNK):
            digest.update(chunk)
        return info.st_size, digest.hexdigest()
    finally:
        os.close(fd)


class SourceRemover:
    """Deletes records that are safe in a committed archive, then prunes and flushes folders.

    Unlinks, folder pruning and flushes run on a pool of threads: each is a metadata write
    that waits on the disk (and, on filesystems mounted with ``discard``, on a TRIM of the
    freed blocks), so many in flight finish far sooner than one after another. Paths are
    taken in batches from an iterator, so a huge archive never needs its list of files in
    memory. Each batch prunes the folders it emptied at once, still on its thread; a folder
    another batch was still emptying is pruned by that batch or by :meth:`finish`. Use it as
    a context manager: the pool lives as long as the remover.

    Unlinks are flushed (each touched folder fsync'd) before the caller moves on: otherwise
    a power cut could bring back files whose archive was already sent, and they would be
    sent again.
    """

    def __init__(self, storages: Sequence[Storage], workers: int = REMOVE_WORKERS) -> None:
        self._roots = {storage.root for storage in storages}
        self._workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._touched: set[str] = set()
        self.removed = 0
        self.pruned = 0
        self.kept: list[tuple[str, str]] = []
        """The first few files kept, each with why; ``kept_count`` counts them all."""
        self.kept_count = 0

    def __enter__(self) -> SourceRemover:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def remove(self, path: str) -> None:
        """Remove a file already proven to be what was archived (by its digest)."""
        self._absorb(self._unlink_batch([(path, None, None)], None))

    def remove_all(
        self, files: Iterable[PackedFile], *, packed_since_ns: int | None = None
    ) -> None:
        """Remove each file that is still the one that was packed (same inode) in the folder
        that was listed (same identity); one renamed over it since holds something no
        archive has, and is kept, as are the files of a folder replaced since.

        With ``packed_since_ns`` (when packing began), a folder nobody has changed since then
        cannot hold a replaced file, and its files are removed without a look at each: on a
        disk that discards freed blocks, a ``stat`` per file made removal half as fast.
        """
        batches = _batched(files, _REMOVE_BATCH)
        first = next(batches, None)
        if first is None:
            return
        if len(first) < _REMOVE_BATCH:
            self._absorb(self._unlink_batch(first, packed_since_ns))
            return
        pool = self._threads()
        in_flight: deque[Future[_BatchResult]] = deque(
            [pool.submit(self._unlink_batch, first, packed_since_ns)]
        )
        for batch in batches:
            in_flight.append(pool.submit(self._unlink_batch, batch, packed_since_ns))
            if len(in_flight) > 2 * self._workers:
                self._absorb(in_flight.popleft().result())
        while in_flight:
            self._absorb(in_flight.popleft().result())

    def _absorb(self, result: _BatchResult) -> None:
        removed, pruned, survivors, kept = result
        self.removed += removed
        self.pruned += pruned
        self._touched.update(survivors)
        self.kept_count += len(kept)
        self.kept.extend(kept[: _KEPT_EXAMPLES - len(self.kept)])
        if len(self._touched) >= _MAX_TOUCHED:
            # Bounded memory however many conversations an archive spans. A folder pruned
            # or flushed now and touched again later is simply handled again.
            self.finish()

    def finish(self) -> None:
        """Prune folders emptied by the removals (never a storage root) and flush the rest.

        Folders below different top-level folders (one per user) never share a parent
        short of the root, so each such subtree is pruned on its own thread.
        """
        subtrees: dict[str, list[str]] = {}
        for directory in self._touched:
            subtrees.setdefault(self._subtree(directory), []).append(directory)
        self._touched.clear()
        to_flush: set[str] = set()
        for pruned, survivors in self._map(self._prune, list(subtrees.values())):
            self.pruned += pruned
            to_flush.update(survivors)
        for _ in self._map(fsutil.fsync_existing_dir, sorted(to_flush)):
            pass

    def _unlink_batch(self, files: list[PackedFile], since_ns: int | None) -> _BatchResult:
        """Remove ``files``, then the folders that left empty; answer how many files and
        folders went, the folders that remain to be flushed, and the files kept."""
        removed = 0
        folders: set[str] = set()
        kept: list[tuple[str, str]] = []
        # Files come folder by folder; each folder is opened once, through its handle.
        current, folder_fd, look_at_each, folder_problem = "", -1, True, ""
        try:
            for path, inode, identity in files:
                folder, name = os.path.split(path)
                if folder != current:
                    if folder_fd >= 0:
                        os.close(folder_fd)
                    folders.add(folder)
                    current = folder
                    folder_fd, look_at_each, folder_problem = self._open_folder(
                        folder, identity, since_ns
                    )
                if folder_fd < 0:
                    if folder_problem:
                        kept.append((path, folder_problem))
                    continue
                try:
                    if (
                        look_at_each
                        and inode is not None
                        and os.lstat(name, dir_fd=folder_fd).st_ino != inode
                    ):
                        kept.append((path, "it was replaced after it was packed"))
                        continue
                    os.unlink(name, dir_fd=folder_fd)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    kept.append((path, exc.strerror or str(exc)))
                    continue
                removed += 1
        finally:
            if folder_fd >= 0:
                os.close(folder_fd)
        pruned, survivors = self._prune(folders)
        return removed, pruned, survivors, kept

    def _open_folder(
        self, folder: str, identity: FolderIdentity | None, since_ns: int | None
    ) -> tuple[int, bool, str]:
        """A handle of ``folder`` if it is still the folder that was listed, whether its files
        need a look each (it changed since ``since_ns``), and ``""``; or ``-1`` and why not
        (``""`` when it is simply gone). A folder on the way swapped for a symlink since
        packing would otherwise make the removal delete files of the same names wherever it
        leads.

        Where the scan's ``identity`` of the folder is known, the path may be followed: what
        it leads to is the listed folder or is refused. Without it, the folder is reached
        from its root without following a symlink.
        """
        if identity is None:
            fd, problem = self._reach_from_root(folder)
            return fd, True, problem
        try:
            fd = os.open(folder, _FOLDER_FLAGS)
        except FileNotFoundError:
            return -1, True, ""
        except OSError as exc:
            return -1, True, exc.strerror or str(exc)
        try:
            info = os.fstat(fd)
        except OSError as exc:
            os.close(fd)
            return -1, True, exc.strerror or str(exc)
        if (info.st_dev, info.st_ino) != identity:
            os.close(fd)
            return -1, True, "its folder was replaced after it was packed"
        # File times come from a clock that may trail the one packing read by a few ticks.
        changed = since_ns is None or info.st_mtime_ns >= since_ns - _CLOCK_SLACK_NS
        return fd, changed, ""

    def _reach_from_root(self, folder: str) -> tuple[int, str]:
        """A handle of ``folder`` reached from its storage root without following a
        symlink, and ``""``; or ``-1`` and why not (``""`` when it is simply gone)."""
        root = next((r for r in self._roots if folder == r or folder.startswith(r + os.sep)), None)
        if root is None:
            return -1, "it is not inside a storage folder"
        try:
            fd = os.open(root, _FOLDER_FLAGS)
        except FileNotFoundError:
            return -1, ""
        except OSError as exc:
            return -1, exc.strerror or str(exc)
        reached = root
        for part in os.path.relpath(folder, root).split(os.sep) if folder != root else ():
            reached = os.path.join(reached, part)
            try:
                inner = os.open(part, _FOLDER_FLAGS | os.O_NOFOLLOW, dir_fd=fd)
            except FileNotFoundError:
                return -1, ""
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    return -1, f"{reached} is no longer a folder"
                return -1, exc.strerror or str(exc)
            finally:
                os.close(fd)
            fd = inner
        return fd, ""

    def _prune(self, directories: Iterable[str]) -> tuple[int, set[str]]:
        """Remove whichever of ``directories`` (and their parents) are empty, deepest first,
        so a conversation folder goes before its user folder; answer how many went and the
        nearest surviving folder of each, which must be flushed."""
        pruned = 0
        survivors: set[str] = set()
        for directory in sorted(directories, key=len, reverse=True):
            current = directory
            while current not in self._roots and self._inside_a_root(current):
                try:
                    os.rmdir(current)
                except FileNotFoundError:
                    pass  # pruned by another batch; its parent still needs pruning or a flush
                except OSError:
                    break
                else:
                    pruned += 1
                current = os.path.dirname(current)
            survivors.add(current)
        return pruned, survivors

    def _subtree(self, path: str) -> str:
        """The folder right below a storage root that holds ``path`` (or the root itself)."""
        for root in self._roots:
            if path.startswith(root + os.sep):
                return os.path.join(root, path[len(root) + 1 :].split(os.sep, 1)[0])
        return path

    def _inside_a_root(self, path: str) -> bool:
        return any(path.startswith(root + os.sep) for root in self._roots)

    def _map(self, function: Callable[[_T], _R], items: list[_T]) -> Iterator[_R]:
        if len(items) < 2:
            return map(function, items)
        return self._threads().map(function, items)

    def _threads(self) -> ThreadPoolExecutor:
        if self._pool is None:
            # Imported here: a cycle with little to remove never starts threads.
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(self._workers, thread_name_prefix="collector-remove")
        return self._pool


_REMOVE_BATCH = 256
_MAX_TOUCHED = 1024
_KEPT_EXAMPLES = 5
_CLOCK_SLACK_NS = 1_000_000_000
_BatchResult = tuple[int, int, set[str], list[tuple[str, str]]]


def _batched(items: Iterable[_T], size: int) -> Iterator[list[_T]]:
    batch: list[_T] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
