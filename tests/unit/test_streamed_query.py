"""The streaming flow of the query service: one transcript per stream, whatever happens."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from lightspeed_collector.conversations import ConversationStore
from lightspeed_collector.errors import NotFound, ProviderFailed, RateLimited, ValidationFailed
from lightspeed_collector.metrics import Metrics
from lightspeed_collector.queries import QueryService
from lightspeed_collector.records import Pseudonymizer, RecordPipeline
from lightspeed_collector.types import Answer, AnswerStream, Identity, QueryRequest, Record
from tests.unit.test_records import ListSink

ALICE = Identity(user_id="alice")


class ScriptedProvider:
    """Streams ``chunks``; then fails with ``error`` if given, else returns ``summary``."""

    name = "scripted"

    def __init__(
        self,
        chunks: list[str],
        summary: Answer | None = None,
        error: Exception | None = None,
        fail_first: Exception | None = None,
    ) -> None:
        self.chunks = chunks
        self.summary = summary
        self.error = error
        self.fail_first = fail_first
        self.closed = False
        self.started = 0

    def answer(self, request: QueryRequest) -> Answer:
        return Answer(text="".join(self.chunks), model="m")

    def stream(self, request: QueryRequest) -> AnswerStream:
        self.started += 1
        try:
            if self.fail_first is not None:
                raise self.fail_first
            yield from self.chunks
            if self.error is not None:
                raise self.error
            return self.summary
        finally:
            self.closed = True


class PlainIteratorProvider(ScriptedProvider):
    """A provider whose stream is a plain iterator, with no summary and no ``close``."""

    def stream(self, request: QueryRequest) -> Iterator[str]:  # type: ignore[override]
        return iter(self.chunks)


def service(tmp_path: Path, provider: Any) -> tuple[QueryService, ListSink]:
    sink = ListSink()
    pipeline = RecordPipeline(
        redactors=[], sinks=[sink], on_stored=lambda *args: None, metrics=Metrics()
    )
    queries = QueryService(
        providers={"scripted": provider},
        default_provider="scripted",
        conversations=ConversationStore(tmp_path / "conversations.sqlite3"),
        pipeline=pipeline,
        pseudonymize=Pseudonymizer(None),
        transcripts_enabled=True,
        clock=lambda: datetime(2024, 1, 1, tzinfo=UTC),
        new_id=lambda: "12345678-1234-4234-8234-123456789abc",
    )
    return queries, sink


def only(records: list[Record]) -> dict[str, Any]:
    assert len(records) == 1
    return dict(records[0].data)


def test_complete_stream_uses_the_providers_summary(tmp_path: Path) -> None:
    summary = Answer(text="", model="real-model", input_tokens=7, output_tokens=3, truncated=True)
    provider = ScriptedProvider(["a", "", "b", "c"], summary=summary)
    queries, sink = service(tmp_path, provider)
    stream = queries.stream(ALICE, {"query": "q"})
    assert list(stream) == ["a", "b", "c"]  # empty chunks are not tokens
    final = stream.complete()
    assert (final.text, final.model, final.input_tokens, final.output_tokens) == (
        "abc",
        "real-model",
        7,
        3,
    )
    assert final.truncated is True
    stream.close()
    stream.complete()
    record = only(sink.records)
    assert record["llm_response"] == "abc"
    assert record["metadata"]["model"] == "real-model"
    assert provider.closed


def test_without_a_summary_chunks_are_counted(tmp_path: Path) -> None:
    queries, sink = service(tmp_path, PlainIteratorProvider(["x ", "y"]))
    stream = queries.stream(ALICE, {"query": "q", "provider": "scripted", "model": "asked"})
    assert list(stream) == ["x ", "y"]
    final = stream.complete()
    assert (final.model, final.input_tokens, final.output_tokens, final.truncated) == (
        "asked",
        0,
        2,
        False,
    )
    assert only(sink.records)["metadata"]["model"] == "asked"


def test_close_mid_stream_stores_the_partial_answer_once_and_closes_the_provider(
    tmp_path: Path,
) -> None:
    provider = ScriptedProvider(["one ", "two ", "three"], summary=Answer(text="", model="m"))
    queries, sink = service(tmp_path, provider)
    stream = queries.stream(ALICE, {"query": "q"})
    chunks = iter(stream)
    assert next(chunks) == "one "
    stream.close()
    stream.close()
    assert provider.closed
    record = only(sink.records)
    assert record["llm_response"] == "one "
    assert record["truncated"] is True
    # The conversation was created: the user can follow up on what they saw.
    follow_up = queries.stream(
        ALICE, {"query": "more", "conversation_id": "12345678-1234-4234-8234-123456789abc"}
    )
    follow_up.close()


def test_close_before_any_event_still_stores_once(tmp_path: Path) -> None:
    provider = ScriptedProvider(["one"])
    queries, sink = service(tmp_path, provider)
    queries.stream(ALICE, {"query": "q"}).close()
    assert only(sink.records)["llm_response"] == ""


def test_close_after_the_provider_finished_is_not_truncated(tmp_path: Path) -> None:
    queries, sink = service(tmp_path, ScriptedProvider(["all"]))
    stream = queries.stream(ALICE, {"query": "q"})
    assert list(stream) == ["all"]
    stream.close()
    assert only(sink.records)["truncated"] is False


def test_failure_mid_stream_raises_and_records_what_was_produced(tmp_path: Path) -> None:
    provider = ScriptedProvider(["half "], error=RuntimeError("socket gone"))
    queries, sink = service(tmp_path, provider)
    stream = queries.stream(ALICE, {"query": "q"})
    produced = []
    with pytest.raises(ProviderFailed, match="failed while streaming"):
        for chunk in stream:
            produced.append(chunk)
    assert produced == ["half "]
    final = stream.complete()
    assert final.truncated is True
    assert only(sink.records)["llm_response"] == "half "


@pytest.mark.parametrize(
    "error",
    [
        RateLimited("slow down", retry_after=3),
        ValidationFailed([], response="Unknown model"),
    ],
)
def test_failure_before_the_first_chunk_is_raised_and_nothing_is_stored(
    tmp_path: Path, error: Exception
) -> None:
    provider = ScriptedProvider(["never"], fail_first=error)
    queries, sink = service(tmp_path, provider)
    with pytest.raises(type(error)):
        queries.stream(ALICE, {"query": "q"})
    assert sink.records == []
    assert provider.closed


def test_checks_happen_before_the_provider_is_asked(tmp_path: Path) -> None:
    provider = ScriptedProvider(["x"])
    queries, _ = service(tmp_path, provider)
    with pytest.raises(NotFound):
        queries.stream(
            ALICE, {"query": "q", "conversation_id": "87654321-1234-4234-8234-123456789abc"}
        )
    assert provider.started == 0
