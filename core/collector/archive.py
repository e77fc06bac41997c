"""Writing ``tar.gz`` archives straight to disk, within a byte limit on the compressed size.

The archive is streamed: each record goes through one small tar header, the gzip compressor
(on a worker thread) and onto the file, so memory holds a few buffers and the compressor's
state whatever the archive's size. The manifest is written alongside into its own file
(``manifest.json``, kept next to the archive) and becomes the last member; the collector
reads the same file back to know which sources to remove, so nothing per record is kept in
memory.

The limit is on the bytes that will be uploaded, and it holds for every archive of two or
more records. What the records take is known exactly after a sync flush; the next record is
counted at its worst case (deflate never grows data by more than a few bytes per block).
The manifest is compressed as it grows in a stream of its own, which is spliced onto the
main stream at the end (after a sync flush, blocks of a second raw deflate stream continue
a deflate stream validly), so the room it needs is known exactly too, not estimated: full
archives come within a few percent of the limit. The first record always goes in when it
is no larger than the limit; if even alone it compresses past the limit, the caller sees
that in ``BuiltArchive.size`` and quarantines it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import threading
import zlib
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from . import fsutil

if TYPE_CHECKING:
    import tarfile
    from concurrent.futures import Future

ARCHIVE_FILE = "archive.tar.gz"
MANIFEST_FILE = "manifest.json"
_TAIL_FILE = ".manifest.deflate"
MANIFEST_MEMBER = "manifest.json"
MANIFEST_FORMAT = 1

BLOCK = 512
END_OF_ARCHIVE = bytes(2 * BLOCK)
_ZEROS = bytes(BLOCK)
_READ_CHUNK = 128 * 1024
# Compressed bytes zlib may hold back between flushes is far below this (its buffers are a
# few hundred KiB at most); past it we flush to learn the exact position instead.
_PENDING_CAP = 1024 * 1024
# Bytes handed to the compressor thread at a time, and chunks allowed in flight.
_HAND_OFF = 128 * 1024
_IN_FLIGHT = 2
# gzip header (10) and trailer (8).
_GZIP_FRAMING = 18
_TAIL_WINDOW_BITS = 12
_TAIL_MEM_LEVEL = 6
# gzip trailer (8), the final deflate block and a sync flush's empty stored block.
_CLOSING_OVERHEAD = 64
# Most a manifest entry adds beyond the quoted name and the size's digits (see _entry).
_ENTRY_OVERHEAD = 104
# Most the closing line of the manifest (counts and totals) can take.
_MANIFEST_CLOSING_MAX = 256


def deflate_bound(size: int) -> int:
    """The most deflate can emit for ``size`` input bytes (zlib falls back to stored blocks,
    so the growth is a few bytes per block; this errs well on the safe side)."""
    return size + (size >> 10) + 64


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


class ShortRead(Exception):
    """A record file ended before the size it had when it was opened."""

    def __init__(self, member: str, missing: int) -> None:
        super().__init__(f"{member} ended {missing} bytes early")
        self.member = member


class UnreadableMember(Exception):
    """Reading a record failed part way (a disk error, say). Raised apart from errors in
    writing the archive, which end packing: this one concerns one record only."""

    def __init__(self, member: str, error: OSError) -> None:
        super().__init__(f"{member}: {error.strerror or error}")
        self.member = member
        self.reason = error.strerror or str(error)


class _GzipWriter:
    """A single-member gzip stream onto ``raw``, compressed on a worker thread.

    The caller (reading records, building headers) and the compressor (zlib, CRC and the
    file writes all release the GIL) then work side by side on two cores. Data is handed
    over in chunks with at most two in flight, so the buffers stay a few hundred KiB.

    ``upper_bound()`` is a sure upper bound of the file size if everything written so far
    were flushed now; ``sync()`` makes it exact at the cost of a few bytes.
    """

    def __init__(self, raw: IO[bytes], level: int, mtime: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._raw = raw
        self._digest = hashlib.sha256()
        self._write_raw(b"\x1f\x8b\x08\x00" + struct.pack("<I", mtime & 0xFFFFFFFF) + b"\x00\xff")
        self._compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
        self._crc = 0
        self._fed = 0
        self._buffer = bytearray()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="collector-gzip")
        self._in_flight: deque[Future[None]] = deque()
        self._progress = threading.Lock()
        self._consumed = 0
        self._written = raw.tell()
        self._synced_at = self._written
        self._fed_at_sync = 0

    def _write_raw(self, data: bytes) -> None:
        if data:
            self._raw.write(data)
            self._digest.update(data)

    def write(self, data: bytes | bytearray) -> None:
        self._buffer += data
        self._fed += len(data)
        if len(self._buffer) >= _HAND_OFF:
            self._hand_off()

    def _hand_off(self) -> None:
        chunk = bytes(self._buffer)
        self._buffer.clear()
        self._in_flight.append(self._pool.submit(self._compress, chunk))
        while len(self._in_flight) > _IN_FLIGHT:
            self._in_flight.popleft().result()

    def _compress(self, chunk: bytes) -> None:
        """On the worker thread, one chunk at a time, in order."""
        self._crc = zlib.crc32(chunk, self._crc)
        output = self._compressor.compress(chunk)
        self._write_raw(output)
        with self._progress:
            self._consumed += len(chunk)
            self._written += len(output)

    def _drain(self) -> None:
        if self._buffer:
            self._hand_off()
        while self._in_flight:
            self._in_flight.popleft().result()

    @property
    def uncompressed(self) -> int:
        return self._fed

    def upper_bound(self) -> int:
        with self._progress:
            consumed, written = self._consumed, self._written
        return min(
            written + _PENDING_CAP + deflate_bound(self._fed - consumed),
            self._synced_at + deflate_bound(self._fed - self._fed_at_sync),
        )

    def sync(self) -> None:
        self._drain()
        self._pool.submit(self._flush, zlib.Z_SYNC_FLUSH).result()
        self._synced_at = self._written
        self._fed_at_sync = self._fed

    def _flush(self, mode: int) -> None:
        output = self._compressor.flush(mode)
        self._write_raw(output)
        with self._progress:
            self._written += len(output)

    def close(self, tail: _TailStream) -> str:
        """End the stream with ``tail`` spliced on; answers the SHA-256 of the whole file.

        The main stream ends with a sync flush (byte-aligned, not final), and the tail's
        complete raw deflate stream follows: together they are one valid deflate stream,
        as each block is self-delimiting and the tail refers back only to its own data.
        """
        try:
            self._drain()
            self._pool.submit(self._flush, zlib.Z_SYNC_FLUSH).result()
        finally:
            self._pool.shutdown()
        crc = self._crc
        for chunk in tail.plain_chunks():
            crc = zlib.crc32(chunk, crc)
        for chunk in tail.compressed_chunks():
            self._write_raw(chunk)
        self._write_raw(struct.pack("<II", crc, (self._fed + tail.fed) & 0xFFFFFFFF))
        return self._digest.hexdigest()

    def abort(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class _TailStream:
    """The manifest member's content and the end of the archive, compressed on their own.

    Its exact compressed size is known at any time after a sync flush, which is what lets
    the writer reserve exactly the room the manifest will take, not its uncompressed size.
    The compressed bytes go to a file beside the manifest, so a manifest of any length costs
    no memory; the plain bytes are the manifest file itself plus the padding and end blocks.
    """

    def __init__(self, compressed: IO[bytes], manifest: IO[bytes], level: int) -> None:
        self._compressed = compressed
        self._manifest = manifest
        # A small window is enough to catch what repeats from one entry to the next (the
        # folder part of names) and keeps this second compressor a tenth of the main one.
        self._compressor = zlib.compressobj(
            level, zlib.DEFLATED, -_TAIL_WINDOW_BITS, _TAIL_MEM_LEVEL
        )
        self._pending = bytearray()
        self._trailer = b""
        self.fed = 0
        self._written = 0
        self._synced_at = 0
        self._fed_at_sync = 0

    def feed(self, data: bytes) -> None:
        self._pending += data
        self.fed += len(data)
        if len(self._pending) >= _HAND_OFF:
            self._compress_pending()

    def _compress_pending(self) -> None:
        if self._pending:
            self._write(self._compressor.compress(bytes(self._pending)))
            self._pending.clear()

    def _write(self, data: bytes) -> None:
        self._compressed.write(data)
        self._written += len(data)

    def upper_bound(self, more: int) -> int:
        """Most the finished stream can take if ``more`` plain bytes still come."""
        return self._synced_at + deflate_bound(self.fed - self._fed_at_sync + more)

    def sync(self) -> None:
        self._compress_pending()
        self._write(self._compressor.flush(zlib.Z_SYNC_FLUSH))
        self._synced_at = self._written
        self._fed_at_sync = self.fed

    def finish(self, trailer: bytes) -> None:
        """Feed the padding and end blocks (kept to replay them) and end the stream."""
        self._trailer = trailer
        self.feed(trailer)
        self._compress_pending()
        self._write(self._compressor.flush(zlib.Z_FINISH))
        self._compressed.flush()

    def compressed_chunks(self) -> Iterator[bytes]:
        self._compressed.seek(0)
        while chunk := self._compressed.read(_READ_CHUNK):
            yield chunk

    def plain_chunks(self) -> Iterator[bytes]:
        self._manifest.seek(0)
        while chunk := self._manifest.read(_READ_CHUNK):
            yield chunk
        yield self._trailer


def tar_header(name: str, size: int, mtime: int) -> bytes:
    """A ustar header for a regular file, mode 0600, owner 0:0 with no names.

    Written by hand because ``TarInfo.tobuf`` costs more than compressing a small record;
    names that do not fit ustar (non-ASCII or too long) get a PAX header from ``tarfile``.
    """
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError:
        return _pax_header(name, size, mtime)
    prefix = b""
    if len(encoded) > 100:
        cut = encoded.rfind(b"/", 0, 156)
        if cut <= 0 or len(encoded) - cut - 1 > 100:
            return _pax_header(name, size, mtime)
        prefix, encoded = encoded[:cut], encoded[cut + 1 :]
    if size >= 8**11 or mtime < 0 or mtime >= 8**11:
        return _pax_header(name, size, mtime)
    header = bytearray(_USTAR_TEMPLATE)
    header[0 : len(encoded)] = encoded
    header[124:148] = b"%011o\0%011o\0" % (size, mtime)
    if prefix:
        header[345 : 345 + len(prefix)] = prefix
    # The checksum is the sum of the header's bytes. Adler-32's low half is that sum plus
    # one, modulo 65521, and an ASCII header sums to less than 45,000 (255 name and prefix
    # bytes of at most 127, the rest fixed digits and spaces), so it is exact, and C-fast.
    header[148:156] = b"%06o\0 " % ((zlib.adler32(header) & 0xFFFF) - 1)
    return bytes(header)


def _ustar_template() -> bytes:
    """A ustar header with every field that never changes filled in and the checksum field
    as spaces, as the checksum is computed; name, prefix, size and mtime are zeros."""
    return struct.pack(
        "100s8s8s8s12s12s8sc100s6s2s32s32s8s8s155s12s",
        b"",
        b"0000600\0",
        b"0000000\0",
        b"0000000\0",
        b"",
        b"",
        b"        ",
        b"0",
        b"",
        b"ustar\0",
        b"00",
        b"",
        b"",
        b"0000000\0",
        b"0000000\0",
        b"",
        b"",
    )


_USTAR_TEMPLATE = _ustar_template()


def _pax_header(name: str, size: int, mtime: int) -> bytes:
    import tarfile

    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = max(mtime, 0)
    info.mode = 0o600
    info.uname = info.gname = ""
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def _quoted(name: str) -> str:
    """``json.dumps(name)``, without its cost for the plain names records have."""
    if name.isascii() and name.isprintable() and '"' not in name and "\\" not in name:
        return f'"{name}"'
    return json.dumps(name)


def _entry(name: str, size: int, digest: str) -> str:
    return f'{{"name": {_quoted(name)}, "size": {size}, "sha256": "{digest}"}}'


@dataclass(frozen=True)
class BuiltArchive:
    archive_id: str
    folder: Path
    size: int
    record_count: int
    sha256: str
    counts: Mapping[str, int]

    @property
    def path(self) -> Path:
        return self.folder / ARCHIVE_FILE


class ArchiveWriter:
    """One archive being written into ``folder`` (a folder of the outbox's ``tmp/``).

    ``created`` (RFC 3339) and ``mtime`` stamp the manifest and the manifest member;
    ``split_from`` names the archive this one was split from, if any.
    """

    def __init__(
        self,
        folder: Path,
        archive_id: str,
        *,
        limit: int,
        level: int,
        created: str,
        mtime: int,
        split_from: str | None = None,
    ) -> None:
        self.folder = folder
        self.archive_id = archive_id
        self.limit = limit
        self.mtime = mtime
        self.counts: Counter[str] = Counter()
        self.total_bytes = 0
        fsutil.make_dirs(folder)
        self._archive = (folder / ARCHIVE_FILE).open("xb", buffering=128 * 1024)
        self._manifest = (folder / MANIFEST_FILE).open("xb+", buffering=64 * 1024)
        for handle in (self._archive, self._manifest):
            os.fchmod(handle.fileno(), fsutil.FILE_MODE)
        # Scratch for the manifest's compressed stream; gone once spliced into the archive.
        self._tail_file = (folder / _TAIL_FILE).open("xb+", buffering=64 * 1024)
        self._gzip = _GzipWriter(self._archive, level, mtime)
        self._tail = _TailStream(self._tail_file, self._manifest, level)
        opening = (
            f'{{"format": {MANIFEST_FORMAT}, "archive_id": {json.dumps(archive_id)}, '
            f'"created": "{created}", "split_from": {json.dumps(split_from)}, "files": ['
        ).encode()
        self._manifest_length = self._manifest.write(opening)
        self._tail.feed(opening)
        self._count = 0

    @property
    def record_count(self) -> int:
        return self._count

    def room_for(self, name: str, size: int) -> bool:
        """Whether a record of ``size`` bytes named ``name`` surely fits under the limit."""
        if self._count == 0:
            return size <= self.limit
        closing = _MANIFEST_CLOSING_MAX + BLOCK + len(END_OF_ARCHIVE)
        entry_rest = len(str(size)) + _ENTRY_OVERHEAD
        record_and_manifest_header = deflate_bound(BLOCK + _padded(size)) + deflate_bound(BLOCK)
        # Most archives end far below the limit: if even every byte stored uncompressed
        # would fit, with the name at its longest quoted form (12 characters for each, as
        # an escaped surrogate pair), there is nothing to measure.
        if (
            _GZIP_FRAMING
            + deflate_bound(self._gzip.uncompressed)
            + record_and_manifest_header
            + deflate_bound(self._tail.fed + 12 * len(name) + 2 + entry_rest + closing)
            + _CLOSING_OVERHEAD
            <= self.limit
        ):
            return True
        tail_to_come = len(_quoted(name)) + entry_rest + closing
        for exact in (False, True):
            if exact:
                self._gzip.sync()
                self._tail.sync()
            total = (
                self._gzip.upper_bound()
                + record_and_manifest_header
                + self._tail.upper_bound(tail_to_come)
                + _CLOSING_OVERHEAD
            )
            if total <= self.limit:
                return True
        return False

    def add(self, name: str, size: int, mtime: int, read: Callable[[int], bytes]) -> None:
        """Append a member whose ``size`` bytes come from ``read``; raises ``ShortRead`` if the
        source ends early and ``UnreadableMember`` if reading it fails (the archive must
        then be aborted)."""
        self._gzip.write(tar_header(name, size, mtime))
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            try:
                chunk = read(min(remaining, _READ_CHUNK))
            except OSError as exc:
                raise UnreadableMember(name, exc) from exc
            if not chunk:
                raise ShortRead(name, remaining)
            digest.update(chunk)
            self._gzip.write(chunk)
            remaining -= len(chunk)
        if size % BLOCK:
            self._gzip.write(_ZEROS[: BLOCK - size % BLOCK])
        separator = ",\n" if self._count else "\n"
        line = (separator + _entry(name, size, digest.hexdigest())).encode()
        self._manifest_length += self._manifest.write(line)
        self._tail.feed(line)
        self._count += 1
        self.counts[name.partition("/")[0]] += 1
        self.total_bytes += size

    def finish(self) -> BuiltArchive:
        """Close the manifest, append it, end the archive and flush both files to disk."""
        closing = (
            f'\n], "record_counts": {json.dumps(dict(sorted(self.counts.items())))}, '
            f'"total_files": {self._count}, "total_bytes": {self.total_bytes}}}\n'
        ).encode()
        self._manifest_length += self._manifest.write(closing)
        self._tail.feed(closing)
        self._manifest.flush()
        os.fsync(self._manifest.fileno())
        self._gzip.write(tar_header(MANIFEST_MEMBER, self._manifest_length, self.mtime))
        padding = (BLOCK - self._manifest_length % BLOCK) % BLOCK
        self._tail.finish(_ZEROS[:padding] + END_OF_ARCHIVE)
        digest = self._gzip.close(self._tail)
        self._manifest.close()
        self._tail_file.close()
        (self.folder / _TAIL_FILE).unlink()
        self._archive.flush()
        os.fsync(self._archive.fileno())
        size = self._archive.tell()
        self._archive.close()
        fsutil.fsync_dir(self.folder)
        return BuiltArchive(
            self.archive_id, self.folder, size, self._count, digest, dict(self.counts)
        )

    def abort(self) -> None:
        self._gzip.abort()
        for handle in (self._archive, self._manifest, self._tail_file):
            handle.close()
        fsutil.remove_tree(self.folder)


@dataclass(frozen=True)
class ManifestEntry:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ManifestSummary:
    archive_id: str
    record_count: int
    counts: Mapping[str, int]
    total_bytes: int


def manifest_names(path: Path) -> Iterator[str]:
    """The member names a manifest lists, read line by line without a JSON parse for the
    plain names the collector writes (it is on the path that removes every source)."""
    prefix = b'{"name": "'
    with path.open("rb") as handle:
        for line in handle:
            if not line.startswith(prefix):
                continue
            end = line.find(b'", "size": ', len(prefix))
            name = line[len(prefix) : end]
            if end < 0 or b"\\" in name:
                yield str(json.loads(line.strip().rstrip(b","))["name"])
            else:
                yield name.decode()


def manifest_entries(path: Path) -> Iterator[ManifestEntry]:
    """The files a manifest lists, read line by line (one entry per line, by construction),
    so even a manifest of a million records is read in constant memory."""
    with path.open("rb") as handle:
        for raw in handle:
            line = raw.strip().rstrip(b",")
            if line.startswith(b'{"name"'):
                entry = json.loads(line)
                yield ManifestEntry(entry["name"], entry["size"], entry["sha256"])


def manifest_summary(path: Path) -> ManifestSummary:
    """The totals from a manifest's first and last lines, without reading the entries."""
    with path.open("rb") as handle:
        first = handle.readline()
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - 4096))
        last = handle.read().rstrip().rsplit(b"\n", 1)[-1]
    opening: dict[str, Any] = json.loads(first.split(b'"files": [', 1)[0].rstrip(b", ") + b"}")
    closing: dict[str, Any] = json.loads(b"{" + last.lstrip(b"], ").lstrip())
    return ManifestSummary(
        archive_id=opening["archive_id"],
        record_count=closing["total_files"],
        counts=closing["record_counts"],
        total_bytes=closing["total_bytes"],
    )


def archive_members(path: Path) -> Iterator[tuple[tarfile.TarInfo, IO[bytes]]]:
    """Each record member of an archive with a reader for its bytes, in archive order."""
    import tarfile

    with tarfile.open(path, "r|gz") as archive:
        for member in archive:
            if member.name == MANIFEST_MEMBER or not member.isfile():
                continue
            reader = archive.extractfile(member)
            if reader is None:
                continue
            yield member, reader
