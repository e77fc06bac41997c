"""A model server that misbehaves, through a real service: every way of asking (``/v1/query``,
the event stream and the plain-text stream) gets the documented status, never a 500, a hang
or a leaked key."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import RunningServer, openai_settings
from tests.openai_standin import ENORMOUS_BYTES, PROMPT_TOKENS, StandIn

API_KEY = "sk-test-0123456789abcdef-SECRET"


@dataclass
class Outcome:
    """What one way of asking answered: the status, the body as text, and the error the
    client was told about (from the JSON envelope, the ``error`` event or the plain-text
    ``[error]`` line), if any."""

    way: str
    status: int
    text: str
    error: str | None
    elapsed: float


def ask_every_way(server: RunningServer, query: str) -> list[Outcome]:
    outcomes = []
    for way, path, extra in (
        ("query", "/v1/query", {}),
        ("events", "/v1/streaming_query", {}),
        ("plain", "/v1/streaming_query", {"media_type": "text/plain"}),
    ):
        started = time.monotonic()
        response = requests.post(f"{server.url}{path}", json={"query": query, **extra}, timeout=30)
        elapsed = time.monotonic() - started
        outcomes.append(
            Outcome(way, response.status_code, response.text, _error(response), elapsed)
        )
    return outcomes


def _error(response: requests.Response) -> str | None:
    if response.headers.get("Content-Type", "").startswith("application/json"):
        detail = response.json().get("detail")
        return f"{detail['response']}: {detail['cause']}" if detail else None
    if response.headers.get("Content-Type") == "text/event-stream":
        for line in response.text.splitlines():
            if line.startswith("data: "):
                event = json.loads(line[6:])
                if event["event"] == "error":
                    return f"{event['data']['response']}: {event['data']['cause']}"
        return None
    marker = "\n\n[error] "
    return response.text.split(marker, 1)[1].strip() if marker in response.text else None


def transcript_count(server: RunningServer) -> int:
    return len(list((server.root / "transcripts").rglob("*.json")))


def test_json_nested_too_deeply_is_a_provider_failure_not_a_500(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    for outcome in ask_every_way(server, "[nested] hi"):
        assert outcome.status == 502, outcome
        assert outcome.error is not None and "nested too deeply" in outcome.error, outcome
    assert transcript_count(server) == 0
    assert "Traceback" not in server.log()


def test_choices_of_the_wrong_type_are_a_provider_failure_not_a_500(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    for outcome in ask_every_way(server, "[oddchoices] hi"):
        assert outcome.status == 502, outcome
        assert outcome.error is not None and "choices" in outcome.error, outcome
    assert transcript_count(server) == 0
    assert "Traceback" not in server.log()


def test_an_answer_without_any_choices_fails_however_it_is_asked_for(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    """A stream that ends, [DONE] and all, without a choice produced no answer, as a plain
    completion without one does not: both fail the same way, and nothing is stored."""
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    for outcome in ask_every_way(server, "[nochoices] hi"):
        assert outcome.status == 502, outcome
        assert outcome.error == (
            "The model provider failed: Provider 'llm' answered without any choices"
        ), outcome
    assert transcript_count(server) == 0
    assert "Traceback" not in server.log()


THOUSANDS_OF_DIGITS = int("9" * 4000)


@pytest.mark.parametrize(
    ("model", "usage", "recorded"),
    [
        (
            {"name": "gpt-4o"},
            {"prompt_tokens": THOUSANDS_OF_DIGITS, "completion_tokens": THOUSANDS_OF_DIGITS},
            ("gpt-4o-mini", 0, 0),
        ),
        (7, {"prompt_tokens": 2**53, "completion_tokens": -1}, ("gpt-4o-mini", 0, 0)),
        ("m" * 10_000, {"prompt_tokens": True, "completion_tokens": 5.0}, ("gpt-4o-mini", 0, 0)),
        (
            "granite-3.3-8b-instruct",
            {"prompt_tokens": 2**53 - 1, "completion_tokens": 0},
            ("granite-3.3-8b-instruct", 2**53 - 1, 0),
        ),
    ],
)
def test_odd_token_counts_and_model_names_fall_back_as_missing_ones_do(
    standin: StandIn,
    server_factory: Callable[..., RunningServer],
    model: Any,
    usage: dict[str, Any],
    recorded: tuple[str, int, int],
) -> None:
    standin.odd_model, standin.odd_usage = model, usage
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    answered_model, input_tokens, output_tokens = recorded
    query, events, plain = ask_every_way(server, "[oddnumbers] hi")
    assert query.status == 200, query
    answer = json.loads(query.text)
    assert (answer["input_tokens"], answer["output_tokens"]) == (input_tokens, output_tokens)
    assert events.status == 200, events
    end = json.loads(events.text.strip().splitlines()[-1].removeprefix("data: "))
    assert end["event"] == "end", events
    assert (end["data"]["input_tokens"], end["data"]["output_tokens"]) == (
        input_tokens,
        output_tokens,
    )
    assert plain.status == 200, plain
    records = [
        json.loads(path.read_text()) for path in (server.root / "transcripts").rglob("*.json")
    ]
    assert [record["metadata"]["model"] for record in records] == [answered_model] * 3
    assert "Traceback" not in server.log()


def test_tool_calls_that_are_not_objects_are_left_out_not_a_500(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    response = requests.post(f"{server.url}/v1/query", json={"query": "[oddtools] hi"}, timeout=15)
    assert response.status_code == 200, response.text
    assert response.json()["response"] == "Checking."
    [path] = (server.root / "transcripts").rglob("*.json")
    record = json.loads(path.read_text())
    # The real call is kept, and redacted like any text the model produced.
    assert record["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_pods", "arguments": '{"node": "[REDACTED_IPV4]"}'},
        }
    ]
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("headers", "passed_on"),
    [
        ({"Retry-After": "1e400"}, "86400"),  # infinite as a float
        ({"Retry-After": "1e300"}, "86400"),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, "86400"),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "inf"}, "86400"),
    ],
)
def test_an_absurd_retry_after_is_capped_at_a_day_not_a_500(
    standin: StandIn,
    server_factory: Callable[..., RunningServer],
    headers: dict[str, str],
    passed_on: str | None,
) -> None:
    standin.rate_limit_headers = headers
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    for way, path, extra in (
        ("query", "/v1/query", {}),
        ("events", "/v1/streaming_query", {}),
        ("plain", "/v1/streaming_query", {"media_type": "text/plain"}),
    ):
        response = requests.post(
            f"{server.url}{path}", json={"query": "[ratelimit] hi", **extra}, timeout=15
        )
        assert response.status_code == 429, (way, response.text)
        assert response.headers.get("Retry-After") == passed_on, way
    assert "Traceback" not in server.log()


def test_an_error_in_a_successful_answer_never_passes_the_key_on(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    outcomes = ask_every_way(server, "[errorbody] hi")
    assert [o.status for o in outcomes] == [502, 200, 200]
    for outcome in outcomes:
        assert outcome.error is not None, outcome
        assert "Key ******** is over quota" in outcome.error, outcome
        assert API_KEY not in outcome.text
        assert "0123456789abcdef" not in outcome.text
        # Cut short like any other upstream message: a page of text helps nobody.
        assert len(outcome.error) < 500, outcome
    assert standin.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
    assert API_KEY not in server.log()


def test_a_redirect_is_not_followed_so_neither_key_nor_question_goes_elsewhere(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    elsewhere = StandIn().start()
    try:
        # Letters no request id (hex) can hold, so the log check below cannot hit one.
        standin.redirect_to = f"{elsewhere.url}/chat/completions?token=quokka-zyx"
        # A header other than Authorization is one that requests would carry along.
        server = server_factory(openai_settings(standin, api_key=API_KEY, api_key_header="api-key"))
        for outcome in ask_every_way(server, "[redirect] my secret question"):
            assert outcome.status == 502, outcome
            assert outcome.error is not None and "redirect (HTTP 307)" in outcome.error, outcome
            assert "query.providers.llm" in outcome.error
        assert elsewhere.requests == []
        assert len(standin.requests) == 3
        # The log says where to, without the query's value.
        assert f"{elsewhere.url}/chat/completions?token=********" in server.log()
        assert "quokka-zyx" not in server.log()
    finally:
        elsewhere.stop()


@pytest.mark.parametrize("directive", ["[trickle]", "[keepalive]"])
def test_an_answer_that_trickles_in_times_out_instead_of_hanging(
    standin: StandIn, server_factory: Callable[..., RunningServer], directive: str
) -> None:
    """A byte, or a keep-alive comment, well within the timeout each time, but never the
    answer (or its next piece): the wait is bounded all the same."""
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    for outcome in ask_every_way(server, f"{directive} hi"):
        assert outcome.error is not None, outcome
        assert outcome.error.startswith("The model provider did not answer in time"), outcome
        assert outcome.elapsed < 4, outcome
    statuses = [outcome.status for outcome in ask_every_way(server, f"{directive} hi")]
    # The trickled stream sent its first token in time, so its status line was 200.
    assert statuses == ([504, 200, 200] if directive == "[trickle]" else [504, 504, 504])
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("directive", ["[cr]", "[crlf-split]"])
def test_events_ended_by_any_line_ending_the_standard_allows_are_read(
    standin: StandIn, server_factory: Callable[..., RunningServer], directive: str
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    events, plain = ask_every_way(server, f"{directive} hi")[1:]
    for outcome in (events, plain):
        assert outcome.status == 200, outcome
        assert outcome.error is None, outcome
    tokens = [
        json.loads(line.removeprefix("data: "))
        for line in events.text.splitlines()
        if line.startswith("data: ")
    ]
    assert "".join(e["data"]["token"] for e in tokens if e["event"] == "token") == (
        "Pods are the smallest units."
    )
    assert tokens[-1]["event"] == "end"
    assert tokens[-1]["data"]["input_tokens"] == PROMPT_TOKENS
    assert plain.text == "Pods are the smallest units."
    # The wait for the next piece is bounded all the same.
    for outcome in ask_every_way(server, f"[keepalive] {directive} hi")[1:]:
        assert outcome.status == 504, outcome
        assert outcome.elapsed < 4, outcome
    assert "Traceback" not in server.log()


def peak_memory_bytes(server: RunningServer) -> int | None:
    """The most memory the server process has held at once, where the system says."""
    status = Path(f"/proc/{server.process.pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return None


def test_an_enormous_answer_is_cut_off_without_being_held_in_memory(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    plain, *streamed = ask_every_way(server, "[enormous] hi")
    assert plain.status == 502, plain
    assert plain.error is not None and "larger than 16 MiB" in plain.error, plain
    for outcome in streamed:
        # Cut off after the stream started: an error at its end, as for any failure.
        assert outcome.status == 200, outcome
        assert outcome.error is not None and "larger than 16 MiB" in outcome.error, outcome
        assert len(outcome.text) < 20 * 1024 * 1024
    for outcome in ask_every_way(server, "[endless-line] hi")[1:]:
        assert outcome.status == 502, outcome
        assert outcome.error is not None and "larger than 16 MiB" in outcome.error, outcome
    records = [
        json.loads(path.read_text()) for path in (server.root / "transcripts").rglob("*.json")
    ]
    # The two streams that started keep what they sent; /v1/query was not asked for a line.
    assert sorted(record["truncated"] for record in records) == [False, True, True]
    peak = peak_memory_bytes(server)
    assert peak is None or peak < ENORMOUS_BYTES, peak
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("directive", ["[error-trickle]", "[error-cut]"])
def test_an_error_body_that_trickles_or_breaks_off_still_gives_the_status(
    standin: StandIn, server_factory: Callable[..., RunningServer], directive: str
) -> None:
    server = server_factory(openai_settings(standin, api_key=API_KEY))
    for outcome in ask_every_way(server, f"{directive} hi"):
        assert outcome.status == 502, outcome
        assert outcome.error is not None and "answered HTTP 500" in outcome.error, outcome
        assert outcome.elapsed < 4, outcome
    assert "Traceback" not in server.log()
