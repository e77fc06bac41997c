"""Log lines: one per event, whatever the text they quote."""

from __future__ import annotations

import json
import logging
import sys

from lightspeed_collector.logs import JsonFormatter, TextFormatter


def record(message: str, *args: object, exc_info: bool = False) -> logging.LogRecord:
    return logging.LogRecord(
        "lightspeed_collector.web",
        logging.DEBUG,
        __file__,
        1,
        message,
        args,
        sys.exc_info() if exc_info else None,
    )


def test_text_lines_cannot_be_forged_or_drive_the_terminal() -> None:
    forged = "/v1/query\n2026-11-25 13:00:00,000 ERROR fake: injected\r\x1b[2J\x9b\x00"
    line = TextFormatter().format(record("POST %s 404", forged))
    assert "\n" not in line and "\r" not in line and "\x1b" not in line and "\x9b" not in line
    assert "/v1/query\\n2026-11-25 13:00:00,000 ERROR fake: injected\\r\\x1b[2J\\x9b\\x00" in line


def test_a_traceback_still_follows_on_its_own_lines() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        line = TextFormatter().format(record("failed on %s", "a\nb", exc_info=True))
    first, *rest = line.split("\n")
    assert first.endswith("failed on a\\nb")
    assert rest[0] == "Traceback (most recent call last):" and "RuntimeError: boom" in rest[-1]


def test_json_lines_keep_the_text_exactly() -> None:
    line = JsonFormatter().format(record("POST %s", "/x\ny"))
    assert "\n" not in line and json.loads(line)["message"] == "POST /x\ny"
