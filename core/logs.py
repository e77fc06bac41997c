"""Log set-up: one line per event, as text for people or JSON for log collectors."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime


class _RequestIdFilter(logging.Filter):
    def __init__(self, current_request_id: ContextVar[str | None]) -> None:
        super().__init__()
        self._current_request_id = current_request_id

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = self._current_request_id.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, str | None] = {
            "time": datetime.fromtimestamp(record.created, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            # Always present (null outside a request), so log queries need no existence test.
            "request_id": getattr(record, "request_id", None),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# Line breaks and other control characters in a message, shown as escapes. Messages quote
# what clients send (a request path, an id); a raw newline there would forge a log line and
# an escape sequence would drive the reader's terminal.
_ESCAPES = {
    code: {10: "\\n", 13: "\\r", 9: "\\t"}.get(code, f"\\x{code:02x}")
    for code in (*range(0x20), *range(0x7F, 0xA0))
}


class TextFormatter(logging.Formatter):
    """One line per event; a traceback, when there is one, follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{line} [request {request_id}]" if request_id else line


def configure(level: str, fmt: str, *, request_ids: bool = True) -> None:
    """``request_ids=False`` is for commands that serve no HTTP (``export``): they then never
    load the web layer, which keeps them quick to start and small."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    if request_ids:
        from .web.middleware import current_request_id

        handler.addFilter(_RequestIdFilter(current_request_id))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # waitress logs every queue build-up at warning level; that is operational noise here.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
