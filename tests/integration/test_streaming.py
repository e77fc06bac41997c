"""``POST /v1/streaming_query`` in a real server: events, transcripts, failures, disconnects."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from lightspeed_collector import validation
from lightspeed_collector.plugins import openai
from tests.conftest import RunningServer, openai_settings
from tests.openai_standin import (
    DRIP_TOKENS,
    MANY_TOOL_CALLS,
    PROMPT_TOKENS,
    TOOL_CALLS,
    StandIn,
)
from tests.sse import EventStream, answer_text, post_stream

LOG = {"attachment_type": "log", "content_type": "text/plain", "content": "kubelet: OOMKilled"}


def transcript_files(server: RunningServer) -> list[Path]:
    return sorted((server.root / "transcripts").rglob("*.json"))


def wait_for_transcripts(server: RunningServer, count: int = 1) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        files = transcript_files(server)
        if len(files) >= count:
            return [json.loads(path.read_text()) for path in files]
        time.sleep(0.05)
    raise AssertionError(f"expected {count} transcripts, found {len(transcript_files(server))}")


def test_echo_streams_start_tokens_end_and_stores_the_transcript_with_attachments(
    server: RunningServer,
) -> None:
    stream = post_stream(server.url, {"query": "What is a pod?", "attachments": [LOG]})
    assert stream.status == 200
    assert stream.header("Content-Type") == "text/event-stream"
    events = stream.events()
    assert all(validation.check("streaming_event", event) == [] for event in events)
    start, *tokens, end = events
    assert start["event"] == "start"
    conversation_id = start["data"]["conversation_id"]
    uuid.UUID(conversation_id)
    assert [t["event"] for t in tokens] == ["token"] * len(tokens)
    assert [t["data"]["id"] for t in tokens] == list(range(len(tokens)))
    assert len(tokens) > 5
    assert end["event"] == "end"
    assert set(end["data"]) >= {
        "referenced_documents",
        "truncated",
        "input_tokens",
        "output_tokens",
    }
    assert end["data"]["truncated"] is False
    assert end["data"]["output_tokens"] == len(tokens)

    # The same question over /v1/query gets the same answer.
    whole = requests.post(
        f"{server.url}/v1/query", json={"query": "What is a pod?", "attachments": [LOG]}, timeout=10
    ).json()
    assert answer_text(events) == whole["response"]

    records = wait_for_transcripts(server, 2)
    [streamed] = [r for r in records if r["metadata"]["conversation_id"] == conversation_id]
    assert validation.check("transcript", streamed) == []
    assert streamed["llm_response"] == whole["response"]
    assert streamed["attachments"] == [LOG]
    assert streamed["truncated"] is False

    # The conversation exists: a follow-up and feedback may name it.
    follow_up = post_stream(
        server.url, {"query": "And a node?", "conversation_id": conversation_id}, "/streaming_query"
    )
    assert follow_up.status == 200
    assert follow_up.events()[0]["data"]["conversation_id"] == conversation_id


def test_text_plain_media_type_streams_the_bare_answer(server: RunningServer) -> None:
    response = requests.post(
        f"{server.url}/v1/streaming_query",
        json={"query": "hi", "media_type": "text/plain"},
        timeout=10,
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert response.text.startswith('[echo] You asked: "hi".')
    # The only place a plain-text answer names its new conversation; feedback needs it.
    conversation_id = response.headers["X-Conversation-ID"]
    feedback = requests.post(
        f"{server.url}/v1/feedback",
        json={
            "conversation_id": conversation_id,
            "user_question": "hi",
            "llm_response": response.text,
            "sentiment": 1,
        },
        timeout=10,
    )
    assert feedback.status_code == 200, feedback.text


def test_errors_before_the_stream_are_ordinary_json_errors(server: RunningServer) -> None:
    url = f"{server.url}/v1/streaming_query"
    invalid = requests.post(url, json={"query": "hi", "colour": "blue"}, timeout=10)
    assert invalid.status_code == 422
    assert invalid.json()["detail"]["errors"] == [
        {"loc": ["body", "colour"], "msg": "Unknown field 'colour'"}
    ]
    unknown = requests.post(
        url, json={"query": "hi", "conversation_id": str(uuid.uuid4())}, timeout=10
    )
    assert unknown.status_code == 404
    assert unknown.json()["detail"]["response"] == "Conversation not found"
    wrong_model = requests.post(
        url, json={"query": "hi", "provider": "echo", "model": "gpt-9"}, timeout=10
    )
    assert wrong_model.status_code == 422
    assert requests.post(url, data="hi", timeout=10).status_code == 415
    assert transcript_files(server) == []


def test_openai_stream_maps_tokens_usage_and_attachments(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin))
    events = post_stream(server.url, {"query": "What is a pod?", "attachments": [LOG]}).events()
    assert answer_text(events) == "Pods are the smallest units."
    end = events[-1]
    assert end == {
        "event": "end",
        "data": {
            "referenced_documents": [],
            "rag_chunks": [],
            "truncated": False,
            "input_tokens": PROMPT_TOKENS,
            "output_tokens": 5,
        },
    }
    sent = standin.requests[-1].body
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}
    assert standin.requests[-1].headers["accept-encoding"] == "identity"
    assert "OOMKilled" in sent["messages"][-1]["content"]
    [record] = wait_for_transcripts(server)
    assert record["llm_response"] == "Pods are the smallest units."
    assert record["attachments"] == [LOG]
    assert record["metadata"]["model"] == "gpt-4o-mini"


def test_openai_stream_of_recorded_chunks_and_length_and_close_delimited(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin, stream_usage=False))
    recorded = post_stream(server.url, {"query": "[recorded] Hello!"}).events()
    assert answer_text(recorded) == "Hello"
    assert recorded[-1]["data"]["output_tokens"] == 1  # no usage asked for: chunks counted
    assert "stream_options" not in standin.requests[-1].body

    cut = post_stream(server.url, {"query": "[length] everything"}).events()
    assert answer_text(cut) == "Pods are the "
    assert cut[-1]["data"]["truncated"] is True

    unchunked = post_stream(server.url, {"query": "[close-delimited] hi"}).events()
    assert answer_text(unchunked) == "Pods are the smallest units."

    records = wait_for_transcripts(server, 3)
    assert sorted(r["truncated"] for r in records) == [False, False, True]


def redacted_tool_calls() -> list[dict[str, Any]]:
    """``TOOL_CALLS`` as a transcript holds them: redacted like any text the model wrote."""
    calls = json.loads(json.dumps(TOOL_CALLS))
    calls[0]["function"]["arguments"] = '{"node": "[REDACTED_IPV4]"}'
    return list(calls)


@pytest.mark.parametrize(("directive", "text"), [("[tools]", "Checking."), ("[toolsonly]", "")])
def test_streamed_tool_calls_are_recorded_as_a_plain_answer_records_them(
    standin: StandIn, server_factory: Callable[..., RunningServer], directive: str, text: str
) -> None:
    server = server_factory(openai_settings(standin))
    query = f"{directive} which pods run on 10.0.3.4?"
    plain = requests.post(f"{server.url}/v1/query", json={"query": query}, timeout=15)
    assert plain.status_code == 200, plain.text
    assert plain.json()["response"] == text
    [plain_record] = wait_for_transcripts(server)
    assert plain_record["tool_calls"] == redacted_tool_calls()

    events = post_stream(server.url, {"query": query}).events()
    assert [e["event"] for e in events][-1] == "end"
    assert answer_text(events) == text
    streamed_text = requests.post(
        f"{server.url}/v1/streaming_query",
        json={"query": query, "media_type": "text/plain"},
        timeout=15,
    )
    assert streamed_text.status_code == 200
    assert streamed_text.text == text

    records = wait_for_transcripts(server, 3)
    for record in records:
        assert validation.check("transcript", record) == []
        assert record["llm_response"] == text
        assert record["truncated"] is False
        assert record["tool_calls"] == plain_record["tool_calls"]
    assert "Traceback" not in server.log()


def test_streamed_tool_calls_are_kept_by_index_and_bounded_in_number(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin))
    events = post_stream(server.url, {"query": "[hugeindex] hi"}).events()
    assert events[-1]["event"] == "end"
    [record] = wait_for_transcripts(server)
    # In the order of their indexes: the call at the enormous index comes last.
    assert record["tool_calls"] == redacted_tool_calls()[::-1]

    for body in (
        {"query": "[manytools] hi"},
        {"query": "[manytools] hi", "media_type": "text/plain"},
    ):
        many = requests.post(f"{server.url}/v1/streaming_query", json=body, timeout=15)
        assert many.status_code == 502, many.text
        assert "more than" in many.json()["detail"]["cause"]
        assert "tool calls" in many.json()["detail"]["cause"]
    assert MANY_TOOL_CALLS > openai.MAX_TOOL_CALLS
    assert len(transcript_files(server)) == 1
    assert "Traceback" not in server.log()


def test_a_lone_surrogate_from_the_provider_streams_and_is_stored_as_u_fffd(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin))
    events = post_stream(server.url, {"query": "[surrogate] smile"}).events()
    assert answer_text(events) == "Half an emoji: \ufffd!"
    assert events[-1]["event"] == "end"
    [record] = wait_for_transcripts(server)
    assert record["llm_response"] == "Half an emoji: \ufffd!"
    assert "Traceback" not in server.log()


def test_first_token_arrives_before_the_provider_produced_the_last(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    """Nothing between the model and the client buffers the stream: the stand-in holds its
    second token until the test has read the first one through the service."""
    server = server_factory(openai_settings(standin, timeout_seconds=20))
    for flavour in ("[gated]", "[gated] [close-delimited]"):
        standin.gate.clear()
        standin.last_token_sent.clear()
        stream = post_stream(server.url, {"query": f"{flavour} hi"})
        assert stream.status == 200
        assert stream.next_event()["event"] == "start"  # type: ignore[index]
        first = stream.next_event()
        assert first == {"event": "token", "data": {"id": 0, "token": "Pods "}}
        assert not standin.last_token_sent.is_set()
        standin.gate.set()
        rest = stream.events()
        assert answer_text(rest) == "are the smallest units."
        assert standin.last_token_sent.is_set()


def test_client_disconnect_stores_the_partial_answer_once_and_stops_the_provider(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin))
    stream = post_stream(server.url, {"query": "[drip] count", "attachments": [LOG]})
    assert stream.next_event()["event"] == "start"  # type: ignore[index]
    received = [stream.next_event() for _ in range(5)]
    assert [e["data"]["token"] for e in received if e] == [f"t{i} " for i in range(5)]
    stream.close()

    [record] = wait_for_transcripts(server)
    assert record["truncated"] is True
    assert record["llm_response"].startswith("t0 t1 t2 t3 t4 ")
    assert record["llm_response"] != "".join(f"t{i} " for i in range(DRIP_TOKENS))
    assert record["attachments"] == [LOG]
    # The service hung up on the model too, long before it would have finished.
    assert standin.client_went_away.wait(timeout=10)
    assert standin.tokens_sent < DRIP_TOKENS
    time.sleep(0.5)
    assert len(transcript_files(server)) == 1


def test_provider_failure_mid_stream_is_an_error_event_then_a_clean_end(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin))
    broken = post_stream(server.url, {"query": "[abort] hi"}).events()
    assert [e["event"] for e in broken] == ["start", "token", "token", "error"]
    assert all(validation.check("streaming_event", event) == [] for event in broken)
    assert broken[-1]["data"] == {
        "response": "The model provider failed",
        "cause": "Provider 'llm' broke off the streamed answer",
    }
    stalled = post_stream(server.url, {"query": "[stall] hi"}).events()
    assert stalled[-1]["event"] == "error"
    assert stalled[-1]["data"]["response"] == "The model provider did not answer in time"

    records = wait_for_transcripts(server, 2)
    assert [r["llm_response"] for r in records] == ["Pods are ", "Pods are "]
    assert all(r["truncated"] for r in records)
    assert "Traceback" not in server.log()


def test_provider_failure_before_the_first_token_keeps_its_status(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin))
    limited = post_stream(server.url, {"query": "[ratelimit] hi"})
    assert limited.status == 429
    assert limited.header("Retry-After") == "7"
    assert limited.json()["detail"]["response"] == "The model provider is rate limiting requests"
    slow = post_stream(server.url, {"query": "[slow] hi"})
    assert slow.status == 504
    slow.close()
    failed: EventStream = post_stream(server.url, {"query": "[error500] hi"})
    assert failed.status == 502
    failed.close()
    assert transcript_files(server) == []


def test_storage_full_at_the_end_of_a_stream_is_an_error_event(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory({"plugins": {"filesystem": {"transcripts_max_bytes": 1500}}})
    outcomes = []
    for _ in range(4):
        events = post_stream(server.url, {"query": "What is a pod?"}).events()
        outcomes.append(events[-1])
    assert outcomes[0]["event"] == "end"
    full = outcomes[-1]
    assert full["event"] == "error"
    assert full["data"]["response"] == "Storage is full"
    assert "Traceback" not in server.log()
    # Written while the body streams, after the request's own handling: still tagged.
    lines = [x for x in server.log().splitlines() if "streamed answer ended with an error" in x]
    assert lines and all("[request " in line for line in lines)
