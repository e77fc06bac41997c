"""The ``filesystem`` record sink: one JSON file per record, for the data collector to pack.

The collector (another process) reads these folders while the service writes them and deletes
what it has shipped, so every file appears atomically under its final ``.json`` name or not at
all. Records hold what users typed, hence owner-only modes whatever the umask, and paths that
cannot be steered out of the storage root by record fields or by planted symlinks.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Config,
    ConfigSchema,
    Record,
    RecordKind,
    RecordSink,
    SinkStatus,
    StorageFailed,
    StorageFull,
)

NAME = "filesystem"

SETTINGS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "fsync": {
            "type": "boolean",
            "default": True,
            "description": (
                "Flush every record and its directory to disk before answering, so a stored "
                "record survives a power cut; false is faster but may lose the last records."
            ),
        },
        "feedback_max_bytes": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": (
                "Most bytes the feedback folder may hold before new feedback is refused "
                "with 507; null means no cap."
            ),
        },
        "transcripts_max_bytes": {
            "type": ["integer", "null"],
            "minimum": 1,
            "default": None,
            "description": (
                "Most bytes the transcripts folder may hold before new transcripts are "
                "refused with 507; null means no cap."
            ),
        },
    },
}

DIR_MODE = 0o700
FILE_MODE = 0o600
RESCAN_INTERVAL = 1.0

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TEMP_FLAGS = os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Verified directories are remembered so the hot path skips mkdir and realpath; one entry per
# conversation would otherwise grow without bound in a long-lived process.
_MAX_KNOWN_DIRS = 10_000
_PREPARE_ATTEMPTS = 3

FsyncFunction = Callable[[int], None]


class _Storage:
    """One storage root with its running byte count.

    ``used`` counts what is on disk plus what writers have reserved; the lock makes the
    check-and-reserve atomic, so concurrent writers cannot overshoot the cap together.
    """

    __slots__ = (
        "known_dirs",
        "last_scan",
        "lock",
        "max_bytes",
        "name",
        "pending",
        "record_kind",
        "root",
        "used",
    )

    def __init__(
        self, name: str, record_kind: RecordKind, root: str, max_bytes: int | None
    ) -> None:
        self.name = name
        self.record_kind = record_kind
        self.root = root
        self.max_bytes = max_bytes
        self.lock = threading.Lock()
        self.used = 0
        self.pending = 0
        self.last_scan = 0.0
        self.known_dirs: dict[str, tuple[int, int]] = {}


class FilesystemSink:
    """Stores feedback as ``<feedback_root>/<record_id>.json`` and transcripts as
    ``<transcripts_root>/<user_key>/<conversation_id>/<record_id>.json``.

    A root of ``None`` disables that kind of record. ``fsync_function`` exists so tests can
    watch or fail the flushes; ``rescan_interval`` bounds how often a full storage is walked
    again, because while it stays full every refused request would otherwise walk the tree.
    """

    name = NAME

    def __init__(
        self,
        feedback_root: str | os.PathLike[str] | None,
        transcripts_root: str | os.PathLike[str] | None,
        *,
        fsync: bool = True,
        feedback_max_bytes: int | None = None,
        transcripts_max_bytes: int | None = None,
        fsync_function: FsyncFunction = os.fsync,
        rescan_interval: float = RESCAN_INTERVAL,
    ) -> None:
        self.fsync = fsync
        self._fsync_function = fsync_function
        self._rescan_interval = rescan_interval
        self._storages: dict[str, _Storage] = {}
        roots: tuple[tuple[str, RecordKind, str | os.PathLike[str] | None, int | None], ...] = (
            ("feedback", "feedback", feedback_root, feedback_max_bytes),
            ("transcripts", "transcript", transcripts_root, transcripts_max_bytes),
        )
        for storage_name, record_kind, root, max_bytes in roots:
            if root is None:
                continue
            # Absolute now, so a later chdir cannot move the storage.
            storage = _Storage(storage_name, record_kind, os.path.abspath(root), max_bytes)
            # Folders are created on first write or readiness probe, not here: building the
            # sink (as `config check` does) must not touch the disk.
            storage.used = _scan(storage.root)
            storage.last_scan = time.monotonic()
            self._storages[record_kind] = storage

    def write(self, record: Record) -> str:
        storage = self._storages.get(record.kind)
        if storage is None:
            raise StorageFailed(f"Storing {record.kind} records is disabled")
        if record.kind == "transcript":
            components: tuple[str, ...] = (record.user_key, record.conversation_id)
            _check_component("user_key", record.user_key)
            _check_component("conversation_id", record.conversation_id)
        else:
            components = ()
        _check_component("record_id", record.record_id)
        directory = os.path.join(storage.root, *components)
        data = _encode(record.data)
        size = len(data)
        self._reserve(storage, size)
        stored = False
        try:
            path = self._store(storage, directory, components, record.record_id, data)
            stored = True
        finally:
            with storage.lock:
                storage.pending -= size
                if not stored:
                    storage.used -= size
        return path

    def describe(self) -> SinkStatus:
        details: dict[str, Any] = {"fsync": self.fsync}
        problems: list[str] = []
        for storage in self._storages.values():
            details[storage.name] = {
                "path": storage.root,
                "bytes_used": storage.used,
                "max_bytes": storage.max_bytes,
            }
            problem = self._probe(storage)
            if problem is not None:
                problems.append(problem)
        if problems:
            return SinkStatus(ready=False, details=details, problem="; ".join(problems))
        return SinkStatus(ready=True, details=details)

    def _reserve(self, storage: _Storage, size: int) -> None:
        with storage.lock:
            cap = storage.max_bytes
            if cap is not None and storage.used + size > cap:
                now = time.monotonic()
                if now - storage.last_scan >= self._rescan_interval:
                    # The exporter may have deleted what it shipped since we last counted.
                    storage.used = _scan(storage.root) + storage.pending
                    storage.last_scan = now
                if storage.used + size > cap:
                    raise StorageFull(
                        f"The {storage.name} storage reached its cap of {cap} bytes "
                        f"(plugins.{NAME}.{storage.name}_max_bytes)"
                    )
            storage.used += size
            storage.pending += size

    def _store(
        self,
        storage: _Storage,
        directory: str,
        components: tuple[str, ...],
        record_id: str,
        data: bytes,
    ) -> str:
        temp = f".{record_id}.tmp"
        final = f"{record_id}.json"
        try:
            dir_fd, fd = self._open_temp(storage, directory, components, temp)
        except OSError as exc:
            raise _failure(exc, storage, directory) from exc
        # Everything below goes through the folder that was checked, whatever its path
        # leads to by now.
        try:
            self._write_temp(fd, dir_fd, temp, final, data, storage, directory)
        finally:
            os.close(dir_fd)
        return os.path.join(directory, final)

    def _write_temp(
        self,
        fd: int,
        dir_fd: int,
        temp: str,
        final: str,
        data: bytes,
        storage: _Storage,
        directory: str,
    ) -> None:
        try:
            try:
                os.fchmod(fd, FILE_MODE)
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    self._fsync_function(fd)
            finally:
                os.close(fd)
            os.rename(temp, final, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException as exc:
            _remove(temp, dir_fd)
            if isinstance(exc, OSError):
                raise _failure(exc, storage, directory) from exc
            raise
        if self.fsync:
            try:
                self._fsync_function(dir_fd)
            except OSError as exc:
                # The caller will be told it failed, so it must not be left to be exported.
                _remove(final, dir_fd)
                raise _failure(exc, storage, directory) from exc

    def _open_temp(
        self, storage: _Storage, directory: str, components: tuple[str, ...], temp: str
    ) -> tuple[int, int]:
        """Create the temporary file, making its folders first when needed; returns the
        record's folder and the file, both open.

        The exporter prunes folders it emptied, possibly behind our cache's back or between
        our creating a user folder and its conversation folder; a vanished folder is simply
        made again, a few times at most.
        """
        attempts_left = _PREPARE_ATTEMPTS
        while True:
            attempts_left -= 1
            try:
                dir_fd = self._open_checked_directory(storage, directory, components)
                if dir_fd is not None:
                    try:
                        return dir_fd, os.open(temp, _TEMP_FLAGS, FILE_MODE, dir_fd=dir_fd)
                    except BaseException:
                        os.close(dir_fd)
                        raise
            except FileNotFoundError:
                if not attempts_left:
                    raise
            storage.known_dirs.pop(directory, None)
            if not attempts_left:
                raise StorageFailed(
                    f"Refused to store {storage.record_kind}: directory {directory} "
                    "kept changing while it was being checked"
                )

    def _open_checked_directory(
        self, storage: _Storage, directory: str, components: tuple[str, ...]
    ) -> int | None:
        """The record's folder, open, if it is the very folder checked to lie inside the
        root; None if the path has led elsewhere since it was checked.

        Checked folders are remembered with their identity rather than trusted for their
        name: a folder swapped for a symlink leading out of the root after it was checked
        is checked again, and refused.
        """
        checked = storage.known_dirs.get(directory)
        if checked is None:
            checked = self._prepare(storage, directory, components)
        dir_fd = os.open(directory, _DIR_FLAGS)
        try:
            opened = os.fstat(dir_fd)
        except BaseException:
            os.close(dir_fd)
            raise
        if (opened.st_dev, opened.st_ino) == checked:
            return dir_fd
        os.close(dir_fd)
        return None

    def _prepare(
        self, storage: _Storage, directory: str, components: tuple[str, ...]
    ) -> tuple[int, int]:
        """Create the record's folders, prove each resolves inside the root, and return the
        identity of the record's folder.

        Each level is checked before the next is created, so a planted symlink cannot make
        us create even an empty folder outside the root.
        """
        self._make_dirs(storage.root)
        real_root = os.path.realpath(storage.root) + os.sep
        path = storage.root
        for component in components:
            path = os.path.join(path, component)
            self._make_dir(path)
            if not (os.path.realpath(path) + os.sep).startswith(real_root):
                raise StorageFailed(
                    f"Refused to store {storage.record_kind}: directory {path} "
                    f"leads outside {storage.root}"
                )
        found = os.stat(directory)
        if len(storage.known_dirs) >= _MAX_KNOWN_DIRS:
            storage.known_dirs.clear()
        storage.known_dirs[directory] = (found.st_dev, found.st_ino)
        return found.st_dev, found.st_ino

    def _make_dirs(self, path: str) -> None:
        """Create ``path`` and any missing parents, each owner-only and durably linked."""
        missing: list[str] = []
        current = path
        while not os.path.isdir(current):
            missing.append(current)
            parent = os.path.dirname(current)
            if parent == current:
                break
            current = parent
        for directory in reversed(missing):
            self._make_dir(directory)

    def _make_dir(self, path: str) -> None:
        try:
            os.mkdir(path, DIR_MODE)
        except FileExistsError:
            return
        # mkdir's mode is filtered through the umask; the records' privacy must not be.
        os.chmod(path, DIR_MODE)
        if self.fsync:
            self._fsync_directory(os.path.dirname(path))

    def _fsync_directory(self, path: str) -> None:
        fd = os.open(path, _DIR_FLAGS)
        try:
            self._fsync_function(fd)
        finally:
            os.close(fd)

    def _probe(self, storage: _Storage) -> str | None:
        """Create and remove a file for real: as root, ``os.access`` says yes to everything."""
        root = storage.root
        probe = os.path.join(root, f".probe-{uuid.uuid4().hex}.tmp")
        try:
            self._make_dirs(root)
            fd = os.open(probe, _TEMP_FLAGS, FILE_MODE)
        except FileNotFoundError:
            return f"The {storage.name} storage {root} does not exist"
        except (NotADirectoryError, FileExistsError):
            return f"The {storage.name} storage {root} is not a directory"
        except OSError as exc:
            return f"The {storage.name} storage {root} is not writable: {exc.strerror}"
        os.close(fd)
        _remove(probe)
        return None


def _encode(data: Any) -> bytes:
    """UTF-8 JSON, one line. Text UTF-8 cannot carry (a lone surrogate, which the core keeps
    out but a third-party redactor could put back) is written as JSON escapes instead, so the
    record is still stored, exactly, in a file that is still valid UTF-8."""
    try:
        return (json.dumps(data, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        return (json.dumps(data) + "\n").encode("ascii")


def _check_component(field: str, value: str) -> None:
    if not _SAFE_COMPONENT.fullmatch(value):
        raise StorageFailed(f"Refused to store record: {field} is not a safe path component")


def _failure(exc: OSError, storage: _Storage, directory: str) -> StorageFull | StorageFailed:
    """Name the folder and the system's reason, never the record: error messages end up in
    logs and responses, and an operator must tell a permission problem from a failing disk."""
    if exc.errno in _FULL_ERRNOS:
        return StorageFull(
            f"No space left to store {storage.record_kind} at directory: {directory}"
        )
    reason = exc.strerror or f"error {exc.errno}"
    return StorageFailed(
        f"Failed to store {storage.record_kind} at directory: {directory}: {reason}"
    )


def _remove(path: str, dir_fd: int | None = None) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path, dir_fd=dir_fd)


def _scan(root: str) -> int:
    """Bytes in regular files under ``root``, symlinks not followed.

    Temporary files count too: they take space all the same. Files vanishing mid-walk are
    expected, since the exporter deletes what it has shipped.
    """
    total = 0
    stack = [root]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            total += entry.stat(follow_symlinks=False).st_size
                    except OSError:
                        continue
        except OSError:
            continue
    return total


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="plugin", name=NAME, schema=SETTINGS_SCHEMA)]


@hookimpl
def register_record_sinks(config: Config) -> list[RecordSink]:
    collection = config.section("user_data_collection")
    settings = config.plugin_settings(NAME)
    # Feedback collection can be switched on at run time (PUT /v1/feedback/status), so its
    # folder is served whenever one is configured, enabled or not.
    feedback = collection.get("feedback_storage")
    transcripts = (
        collection.get("transcripts_storage") if collection.get("transcripts_enabled") else None
    )
    return [
        FilesystemSink(
            feedback,
            transcripts,
            fsync=settings.get("fsync", True),
            feedback_max_bytes=settings.get("feedback_max_bytes"),
            transcripts_max_bytes=settings.get("transcripts_max_bytes"),
        )
    ]
