"""The record pipeline: redaction in configured order, validation before any sink, events."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from lightspeed_collector.errors import RecordInvalid, StorageFailed
from lightspeed_collector.metrics import Metrics
from lightspeed_collector.records import Pseudonymizer, RecordPipeline, rfc3339
from lightspeed_collector.types import Record, RedactionResult, SinkStatus
from tests.plugins.throwaway import RecordingObserver, WordRedactor

USER_KEY = hashlib.sha256(b"alice").hexdigest()
CONVERSATION = "12345678-1234-4234-8234-123456789abc"


class ListSink:
    name = "list"

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> str:
        self.records.append(record)
        return f"memory://{record.record_id}"

    def describe(self) -> SinkStatus:
        return SinkStatus(ready=True)


class BrokenRedactor:
    name = "broken"

    def redact(self, text: str) -> RedactionResult:
        raise RuntimeError("boom")


def feedback(**extra: Any) -> dict[str, Any]:
    record = {
        "user_id": USER_KEY,
        "timestamp": "2024-01-01T12:00:00Z",
        "conversation_id": CONVERSATION,
        "user_question": "is apple a fruit?",
        "llm_response": "apple: yes",
        "sentiment": 1,
        "user_feedback": "apple pie",
        "categories": None,
    }
    record.update(extra)
    return record


def pipeline(
    redactors: list[Any], sink: ListSink, observer: RecordingObserver | None = None
) -> RecordPipeline:
    observer = observer or RecordingObserver()
    return RecordPipeline(
        redactors, [sink], observer.record_stored, Metrics(), new_id=lambda: "fixed-id"
    )


def test_redactors_run_in_configured_order_over_free_text_only() -> None:
    sink = ListSink()
    first = WordRedactor("first", "apple")
    second = WordRedactor("second", "[WORD]")  # only sees "[WORD]" if `first` ran before it
    pipeline([first, second], sink).store("feedback", feedback(), USER_KEY, CONVERSATION)
    [record] = sink.records
    assert (
        record.data["user_question"] == "is [WORD] a fruit?"
    )  # second redactor made it [WORD] again
    assert record.data["user_feedback"] == "[WORD] pie"
    assert record.data["conversation_id"] == CONVERSATION
    assert record.data["user_id"] == USER_KEY
    assert record.record_id == "fixed-id"

    sink_reversed = ListSink()
    pipeline([second, first], sink_reversed).store("feedback", feedback(), USER_KEY, CONVERSATION)
    assert sink_reversed.records[0].data["user_question"] == "is [WORD] a fruit?"


def test_invalid_record_reaches_no_sink_and_no_observer() -> None:
    sink = ListSink()
    observer = RecordingObserver()
    with pytest.raises(RecordInvalid, match="sentiment") as refused:
        pipeline([], sink, observer).store(
            "feedback", feedback(sentiment=5), USER_KEY, CONVERSATION
        )
    assert sink.records == [] and observer.stored == []
    assert "5" not in refused.value.cause  # fields are named, values never quoted


def test_object_keys_and_whole_numbers_in_provider_data_are_redacted_too() -> None:
    """Tool data is the provider's JSON: a card number may come as a number, an address as
    a key. Keys that come out alike are all kept."""
    sink = ListSink()
    record = {
        "metadata": {
            "provider": "p",
            "model": "m",
            "query_provider": None,
            "query_model": None,
            "user_id": USER_KEY,
            "conversation_id": CONVERSATION,
            "timestamp": "2024-01-01T12:00:00Z",
        },
        "redacted_query": "q",
        "query_is_valid": True,
        "llm_response": "r",
        "rag_chunks": [],
        "truncated": False,
        "attachments": [],
        "tool_results": [
            {"card": 4111111111111111, "count": 3, "ok": True, "apple": 1, "x apple": 2},
            {"apple": "a", "[WORD]": "b", "apple apple": "c"},
        ],
    }
    redactors = [WordRedactor("w", "apple"), WordRedactor("c", "4111111111111111")]
    pipeline(redactors, sink).store("transcript", record, USER_KEY, CONVERSATION)
    stored = sink.records[0].data
    assert stored["tool_results"] == [
        {"card": "[WORD]", "count": 3, "ok": True, "[WORD]": 1, "x [WORD]": 2},
        {"[WORD]": "a", "[WORD] (2)": "b", "[WORD] [WORD]": "c"},
    ]


def test_a_failing_redactor_stores_nothing() -> None:
    sink = ListSink()
    with pytest.raises(StorageFailed, match="broken"):
        pipeline([BrokenRedactor()], sink).store("feedback", feedback(), USER_KEY, CONVERSATION)
    assert sink.records == []


def test_observers_hear_about_stored_records() -> None:
    sink = ListSink()
    observer = RecordingObserver()
    locations = pipeline([], sink, observer).store("feedback", feedback(), USER_KEY, CONVERSATION)
    assert locations == ["memory://fixed-id"]
    assert observer.stored == [("feedback", feedback(), "memory://fixed-id")]


def test_pseudonyms_are_sha256_or_keyed_hmac() -> None:
    assert Pseudonymizer(None)("alice") == USER_KEY
    keyed = Pseudonymizer("pepper")("alice")
    assert keyed == hmac.new(b"pepper", b"alice", hashlib.sha256).hexdigest()
    assert keyed != USER_KEY


def test_timestamps_are_rfc3339_utc() -> None:
    moment = datetime(2024, 1, 1, 13, 0, 0, 120000, tzinfo=timezone(timedelta(hours=1)))
    assert rfc3339(moment) == "2024-01-01T12:00:00.120000Z"
    assert rfc3339(datetime(2024, 1, 1, tzinfo=UTC)) == "2024-01-01T00:00:00.000000Z"


def test_free_text_is_redacted_at_any_depth_but_structure_is_kept() -> None:
    sink = ListSink()
    record = {
        "metadata": {
            "provider": "apple",
            "model": "m",
            "query_provider": None,
            "query_model": None,
            "user_id": USER_KEY,
            "conversation_id": CONVERSATION,
            "timestamp": "2024-01-01T12:00:00Z",
        },
        "redacted_query": "apple?",
        "query_is_valid": True,
        "llm_response": "apple.",
        "rag_chunks": [{"text": "apple", "metadata": {"source": "apple.txt", "nested": ["apple"]}}],
        "truncated": False,
        "attachments": [
            {"attachment_type": "log", "content_type": "text/plain", "content": "apple log"}
        ],
        "tool_calls": [{"name": "lookup", "args": {"metadata": "apple"}}],
    }
    pipeline([WordRedactor("w", "apple")], sink).store("transcript", record, USER_KEY, CONVERSATION)
    stored = sink.records[0].data
    assert stored["metadata"]["provider"] == "apple"  # written by the service, not free text
    assert stored["rag_chunks"] == [
        {"text": "[WORD]", "metadata": {"source": "[WORD].txt", "nested": ["[WORD]"]}}
    ]
    assert stored["attachments"] == [
        {"attachment_type": "log", "content_type": "text/plain", "content": "[WORD] log"}
    ]
    assert stored["tool_calls"] == [{"name": "lookup", "args": {"metadata": "[WORD]"}}]
    assert "apple" not in json.dumps({k: v for k, v in stored.items() if k != "metadata"})
