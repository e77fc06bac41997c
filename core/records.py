"""Building records and sending them through the record pipeline.

A record travels one way: built from a request → every configured redactor, in configured
order, over every free-text field → validated against its schema → written by every sink →
announced to ``record_stored`` observers. Nothing reaches a sink unredacted or invalid.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from . import validation
from .errors import CollectorError, RecordInvalid, StorageFailed
from .metrics import Metrics
from .types import Record, RecordKind, RecordSink, Redactor

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
IdFactory = Callable[[], str]

# Top-level fields that carry structure, not prose, written by the service itself:
# redacting them could only break the record. Everything else, at any depth (answers,
# attachments, RAG chunks, tool calls and results), is free text and is redacted.
_STRUCTURAL_FIELDS = frozenset(
    {
        "metadata",
        "user_id",
        "timestamp",
        "conversation_id",
        "sentiment",
        "categories",
        "truncated",
        "query_is_valid",
    }
)
# Inside each attachment only its content is free text; its type fields are enums.
_ATTACHMENT_STRUCTURAL_FIELDS = frozenset({"attachment_type", "content_type"})


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_uuid() -> str:
    return str(uuid.uuid4())


def rfc3339(moment: datetime) -> str:
    """``2024-01-01T12:00:00.123456Z``: UTC, with a Z, as the record schemas demand."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class Pseudonymizer:
    """Turns a user id into the pseudonym stored in every record and used as a folder name.

    The same function serves feedback and transcripts, so analysts can join the two without
    learning who the user is. With a salt it is an HMAC, so the pseudonym of a known user id
    cannot be recomputed by whoever reads the exported data.
    """

    def __init__(self, salt: str | None) -> None:
        self._key = salt.encode("utf-8") if salt else None

    def __call__(self, user_id: str) -> str:
        data = user_id.encode("utf-8")
        if self._key is None:
            return hashlib.sha256(data).hexdigest()
        return hmac.new(self._key, data, hashlib.sha256).hexdigest()


class RecordPipeline:
    def __init__(
        self,
        redactors: Sequence[Redactor],
        sinks: Sequence[RecordSink],
        on_stored: Callable[[RecordKind, dict[str, Any], str], None],
        metrics: Metrics,
        new_id: IdFactory = new_uuid,
    ) -> None:
        self._redactors = tuple(redactors)
        self._sinks = tuple(sinks)
        self._on_stored = on_stored
        self._metrics = metrics
        # labels() takes a lock and builds a key per call; the two children never change.
        self._stored_counters = {
            kind: metrics.records_stored.labels(kind=kind) for kind in ("feedback", "transcript")
        }
        self._new_id = new_id

    def store(
        self, kind: RecordKind, data: Mapping[str, Any], user_key: str, conversation_id: str
    ) -> list[str]:
        """Redact, validate and write one record; returns where each sink put it."""
        redacted = self.redact(data)
        problems = validation.check(kind, redacted)
        if problems:
            # Fields only: the messages quote values, and those are what users typed.
            fields = ", ".join(
                dict.fromkeys(".".join(map(str, p.loc)) or "<root>" for p in problems)
            )
            log.error("built %s record failed its schema and was not stored: %s", kind, fields)
            raise RecordInvalid(f"The {kind} record failed schema validation at: {fields}")
        record = Record(kind, self._new_id(), user_key, conversation_id, redacted)
        locations = [sink.write(record) for sink in self._sinks]
        self._stored_counters[kind].inc()
        for location in locations:
            self._on_stored(kind, redacted, location)
        return locations

    def redact(self, data: Mapping[str, Any]) -> dict[str, Any]:
        redacted: dict[str, Any] = {}
        for key, value in data.items():
            if key in _STRUCTURAL_FIELDS:
                redacted[key] = value
            elif key == "attachments" and isinstance(value, list):
                redacted[key] = [self._redact_attachment(item) for item in value]
            else:
                redacted[key] = self._redact_node(value)
        return redacted

    def _redact_attachment(self, attachment: Any) -> Any:
        if not isinstance(attachment, Mapping):
            return self._redact_node(attachment)
        return {
            key: value if key in _ATTACHMENT_STRUCTURAL_FIELDS else self._redact_node(value)
            for key, value in attachment.items()
        }

    def _redact_node(self, node: Any) -> Any:
        """Every string below ``node``, object keys included, and every whole number: tool
        data and RAG chunks are a provider's JSON, where a card number may come as a number
        and an address as a key."""
        if isinstance(node, str):
            return self._redact_text(node)
        if isinstance(node, Mapping):
            redacted: dict[Any, Any] = {}
            for key, value in node.items():
                name = self._redact_text(key) if isinstance(key, str) else key
                if name in redacted:
                    # Two keys redacted alike (two addresses): both values are kept.
                    name = next(
                        f"{name} ({n})"
                        for n in itertools.count(2)
                        if f"{name} ({n})" not in redacted
                    )
                redacted[name] = self._redact_node(value)
            return redacted
        if isinstance(node, list | tuple):
            return [self._redact_node(item) for item in node]
        if isinstance(node, int) and not isinstance(node, bool):
            digits = str(node)
            text = self._redact_text(digits)
            return node if text == digits else text
        return node

    def _redact_text(self, text: str) -> str:
        for redactor in self._redactors:
            try:
                result = redactor.redact(text)
            except CollectorError:
                raise
            except Exception as exc:
                log.exception("redactor %s failed", redactor.name)
                raise StorageFailed(
                    f"Redactor '{redactor.name}' failed; the record was not stored",
                    response="Failed to redact record",
                ) from exc
            text = result.text
            for rule, count in result.counts.items():
                self._metrics.redactions.labels(redactor=redactor.name, rule=rule).inc(count)
        return text
