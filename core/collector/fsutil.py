"""Filesystem steps that survive a crash: each one is either done and on disk, or not done.

A rename is atomic, but it only survives a power cut once the directory holding the new name
is flushed; the same holds for unlinks. Every helper here flushes what it changed before it
returns, so the collector can reason in states ("in tmp/", "in new/", ...) and nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_COPY_CHUNK = 128 * 1024


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, _DIR_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_existing_dir(path: str) -> None:
    """Flush a folder if it still exists; a vanished one is fine (its parent was flushed)."""
    with contextlib.suppress(FileNotFoundError):
        fsync_dir(path)


def make_dirs(path: Path) -> None:
    """``mkdir -p`` with owner-only folders, each new one linked durably into its parent."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(folder, DIR_MODE)
        fsync_dir(folder.parent)


def rename(source: Path, target: Path) -> None:
    """Rename and flush both parents, so the move is on disk when this returns."""
    os.rename(source, target)
    fsync_dir(target.parent)
    if source.parent != target.parent:
        fsync_dir(source.parent)


def remove_tree(path: Path) -> None:
    """Delete a folder and everything in it, durably; a missing folder is already done."""
    if not path.exists():
        return
    shutil.rmtree(path)
    fsync_dir(path.parent)


def move_file(source: Path, target: Path) -> None:
    """Move a file durably, also across filesystems (the state folder may be a different
    volume from the storage): copy, flush, then unlink, so a crash leaves two copies at worst,
    never none."""
    make_dirs(target.parent)
    try:
        rename(source, target)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
    partial = target.with_name(f".{target.name}.part")
    try:
        with source.open("rb") as reader, partial.open("wb") as writer:
            os.fchmod(writer.fileno(), FILE_MODE)
            shutil.copyfileobj(reader, writer, _COPY_CHUNK)
            writer.flush()
            os.fsync(writer.fileno())
        os.rename(partial, target)
    except BaseException:
        # A copy that did not fit would otherwise keep the target volume full for good.
        with contextlib.suppress(OSError):
            partial.unlink()
        raise
    fsync_dir(target.parent)
    source.unlink()
    fsync_dir(source.parent)


def move_tree(source: Path, target: Path) -> None:
    """Move a folder durably; both live under the state folder, so a rename always works."""
    make_dirs(target.parent)
    rename(source, target)
