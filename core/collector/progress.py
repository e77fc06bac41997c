"""Progress for people watching ``export`` on a terminal; silence everywhere else.

Nothing shows during the first second, so small backlogs stay as quiet as in CI.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TextIO

_QUIET_FOR = 1.0
_EVERY = 0.2


class TerminalProgress:
    def __init__(self, stream: TextIO, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._clock = clock
        self._started = clock()
        self._last = 0.0
        self._shown = False

    def packed(self, records: int, size: int) -> None:
        self._show(f"packing: {records} records ({size / 1048576:.1f} MiB uncompressed so far)")

    def uploaded(self, done: int, total: int) -> None:
        self._show(f"uploading: {done} of {total} archives sent", force=done == total)

    def done(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
            self._shown = False

    def _show(self, line: str, *, force: bool = False) -> None:
        now = self._clock()
        if now - self._started < _QUIET_FOR or (now - self._last < _EVERY and not force):
            return
        self._last = now
        self._stream.write(f"\r\x1b[K{line}")
        self._stream.flush()
        self._shown = True


def for_stream(stream: TextIO) -> TerminalProgress | None:
    """A progress display when ``stream`` is a terminal, else ``None``."""
    try:
        interactive = stream.isatty()
    except (AttributeError, ValueError):
        interactive = False
    return TerminalProgress(stream) if interactive else None
