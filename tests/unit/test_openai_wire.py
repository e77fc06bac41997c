"""The ``openai`` provider's reading of the wire format: SSE framing, errors, Retry-After."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import requests

from lightspeed_collector.plugins import openai
from lightspeed_collector.types import Attachment, Identity, QueryRequest


class Trickle(io.RawIOBase):
    """A body that arrives a few bytes at a time, as from a slow network."""

    def __init__(self, data: bytes, size: int) -> None:
        self.data = data
        self.size = size

    def read1(self, limit: int = -1) -> bytes:
        piece, self.data = self.data[: self.size], self.data[self.size :]
        return piece


def response_over(raw: object) -> requests.Response:
    response = requests.Response()
    response.raw = raw
    return response


@pytest.mark.parametrize("size", [1, 3, 7, 65536])
def test_server_sent_events_are_framed_however_the_bytes_arrive(size: int) -> None:
    body = (
        ": a comment\r\n"
        "event: ignored\r\n"
        'data: {"a": 1}\r\n\r\n'
        "data: line one\n"
        "data:line two\n\n"
        "data: caf\u00e9\n\n"
        "data: [DONE]"
    ).encode()
    events = list(openai._server_sent_data(response_over(Trickle(body, size))))
    assert events == ['{"a": 1}', "line one\nline two", "caf\u00e9", "[DONE]"]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 65536])
def test_server_sent_events_may_end_lines_in_cr_lf_or_both(size: int) -> None:
    body = (
        b'data: {"a": 1}\r\r'
        b"data: line one\r"
        b"data:line two\r\n\r\n"
        b": a comment\r"
        b"data: three\n\r"
        b"data: four\r\r\n"
        b"data: five\r\n\n"
        b"data: [DONE]\r"
    )
    events = list(openai._server_sent_data(response_over(Trickle(body, size))))
    assert events == ['{"a": 1}', "line one\nline two", "three", "four", "five", "[DONE]"]


def test_bytes_io_bodies_work_too() -> None:
    events = list(openai._server_sent_data(response_over(io.BytesIO(b"data: x\n\n"))))
    assert events == ["x"]


@pytest.mark.parametrize(
    ("body", "text"),
    [
        ({"error": {"message": "Rate limit reached", "type": "requests"}}, "Rate limit reached"),
        ({"error": {"code": "model_not_found"}}, "model_not_found"),
        ({"error": "model 'x' not found"}, "model 'x' not found"),
        ({"object": "error", "message": "vLLM says no", "code": 400}, "vLLM says no"),
        ({"detail": "llama-stack says no"}, "llama-stack says no"),
        ("not an object", ""),
        (None, ""),
    ],
)
def test_error_messages_in_every_shape(body: object, text: str) -> None:
    assert openai._error_text(body) == text


def test_retry_after_in_seconds_dates_and_milliseconds() -> None:
    assert openai._retry_after({"retry-after": "7"}) == 7
    assert openai._retry_after({"retry-after": "1.2"}) == 2
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 28 <= (openai._retry_after({"retry-after": later}) or 0) <= 30
    assert openai._retry_after({"retry-after-ms": "1500"}) == 2
    assert openai._retry_after({"retry-after": "soon"}) is None
    assert openai._retry_after({}) is None


def test_attachments_travel_inline_and_images_as_image_parts() -> None:
    request = QueryRequest(
        query="Why?",
        conversation_id="c",
        identity=Identity(user_id="u"),
        attachments=(
            Attachment("stack trace", "text/plain", "Traceback: boom"),
            Attachment("image", "image/png", "iVBORw0KGgo="),
        ),
    )
    text_part, image_part = openai._user_content(request)  # type: ignore[misc]
    assert text_part["type"] == "text"
    assert text_part["text"].startswith("Why?\n\nStack trace (text/plain):\n```\nTraceback: boom")
    assert image_part == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="},
    }
    plain = QueryRequest(query="Why?", conversation_id="c", identity=Identity(user_id="u"))
    assert openai._user_content(plain) == "Why?"


def test_streamed_tool_call_fragments_are_joined_by_index() -> None:
    calls = openai._StreamedToolCalls()
    fragments: list[object] = [
        [{"index": 1, "id": "call_b", "type": "function", "function": {"name": "b"}}],
        [{"index": 0, "id": "call_a", "type": "function", "function": {"name": "a"}}],
        [{"index": 1, "function": {"arguments": '{"x"'}}, "not an object"],
        [{"index": 0, "function": {"arguments": "{}"}}, {"index": 1, "function": {}}],
        # A name or an id repeated in a later fragment does not replace the first.
        [{"index": 1, "id": "call_b", "function": {"name": "", "arguments": ": 1}"}}],
        None,
    ]
    for delta_calls in fragments:
        assert calls.add(delta_calls)
    assert calls.assembled() == (
        {"id": "call_a", "type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"id": "call_b", "type": "function", "function": {"name": "b", "arguments": '{"x": 1}'}},
    )


def test_streamed_tool_calls_without_an_index_continue_the_latest_unless_a_new_id() -> None:
    calls = openai._StreamedToolCalls()
    assert calls.add([{"id": "call_a", "function": {"name": "a", "arguments": "{"}}])
    assert calls.add([{"function": {"arguments": "}"}}])
    assert calls.add([{"id": "call_b", "function": {"name": "b", "arguments": "[]"}}])
    assert [call["function"] for call in calls.assembled()] == [
        {"name": "a", "arguments": "{}"},
        {"name": "b", "arguments": "[]"},
    ]


def test_streamed_tool_calls_are_bounded_in_number_not_by_their_index() -> None:
    calls = openai._StreamedToolCalls()
    assert calls.add([{"index": 10**30, "function": {"arguments": "\ud83d"}}])
    for index in range(openai.MAX_TOOL_CALLS - 1):
        assert calls.add([{"index": index}])
    assert calls.add([{"index": 0, "function": {"arguments": "more for a call that exists"}}])
    assert not calls.add([{"index": openai.MAX_TOOL_CALLS}])
    # Lone surrogates come out as they went in, for the service to replace like any other.
    assert calls.assembled()[-1] == {"function": {"arguments": "\ud83d"}}
