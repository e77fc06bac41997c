"""A lightspeed-collector plugin: redact your own keywords, and audit every stored record.

Two independent features, both configured under ``plugins.keyword_redactor``:

- the redactor ``keyword`` replaces each configured keyword (project code names, customer
  names, ...) in every stored record; list it in ``user_data_collection.redactors``;
- with ``audit_log`` set, each stored record appends one JSON line to that file: when, what
  kind, where it was stored and for which conversation; never the record's text.

It imports only the public plugin API, ``lightspeed_collector.hookimpl`` and
``lightspeed_collector.types``, so it keeps working as the service changes inside.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    AppContext,
    Config,
    ConfigSchema,
    RedactionResult,
    Redactor,
)

PLUGIN_NAME = "keyword_redactor"
REDACTOR_NAME = "keyword"

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "keywords": {
            "type": "array",
            "minItems": 1,
            "items": {"type": "string", "minLength": 1},
            "description": "Words or phrases to redact, matched literally.",
        },
        "replacement": {
            "type": "string",
            "description": "What replaces a keyword; default [REDACTED_KEYWORD].",
        },
        "case_sensitive": {
            "type": "boolean",
            "description": "Match case exactly; default false.",
        },
        "whole_words": {
            "type": "boolean",
            "description": "Match only whole words (not 'acme' inside 'acmedia'); default true.",
        },
        "audit_log": {
            "type": "string",
            "minLength": 1,
            "description": "File that gets one JSON line per stored record; no audit when absent.",
        },
    },
}


class KeywordRedactor:
    """Replaces whole-word, case-insensitive (by default) occurrences of the keywords."""

    name = REDACTOR_NAME

    def __init__(self, settings: Mapping[str, Any]) -> None:
        keywords = sorted(settings.get("keywords", []), key=len, reverse=True)
        self._replacement: str = settings.get("replacement", "[REDACTED_KEYWORD]")
        flags = 0 if settings.get("case_sensitive", False) else re.IGNORECASE
        # Longest first, so "ACME Cloud" wins over "ACME" where both match.
        alternatives = "|".join(re.escape(keyword) for keyword in keywords)
        if settings.get("whole_words", True):
            alternatives = rf"(?<!\w)(?:{alternatives})(?!\w)"
        self._pattern = re.compile(alternatives, flags) if keywords else None

    def redact(self, text: str) -> RedactionResult:
        if self._pattern is None:
            return RedactionResult(text, 0)
        redacted, count = self._pattern.subn(self._replacement, text)
        return RedactionResult(redacted, count, {"keyword": count} if count else {})


class AuditLog:
    """Appends one line per event; safe to call from the service's many request threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.path: str | None = None

    def append(self, entry: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(entry, ensure_ascii=False) + "\n"
        with self._lock:
            # Opened per line in append mode: log rotation needs no restart, and each line is
            # written with one call, so a reader never sees half of one.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)


_audit = AuditLog()


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="plugin", name=PLUGIN_NAME, schema=SETTINGS_SCHEMA)]


@hookimpl
def register_redactors(config: Config) -> list[Redactor]:
    return [KeywordRedactor(config.plugin_settings(PLUGIN_NAME))]


@hookimpl
def startup(app_context: AppContext) -> None:
    _audit.path = app_context.config.plugin_settings(PLUGIN_NAME).get("audit_log")


@hookimpl
def record_stored(kind: str, record: dict[str, Any], location: str) -> None:
    metadata = record.get("metadata", record)
    _audit.append(
        {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "event": "record_stored",
            "kind": kind,
            "location": location,
            "conversation_id": metadata.get("conversation_id"),
        }
    )


@hookimpl
def shutdown() -> None:
    _audit.path = None
