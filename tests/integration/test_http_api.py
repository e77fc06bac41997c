"""Every route and status code of the HTTP API, against a real server process."""

from __future__ import annotations

import gzip
import hashlib
import json
import socket
import stat
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from lightspeed_collector import validation
from tests.conftest import RunningServer

DEFAULT_USER = "00000000-0000-0000-0000-000"


def user_key(user_id: str) -> str:
    return hashlib.sha256(user_id.encode()).hexdigest()


def ask(
    server: RunningServer, body: dict[str, Any] | None = None, **params: str
) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/query",
        json=body if body is not None else {"query": "What is Kubernetes?"},
        params=params,
        timeout=10,
    )


def feedback_body(conversation_id: str, **extra: Any) -> dict[str, Any]:
    body = {
        "conversation_id": conversation_id,
        "user_question": "What is Kubernetes?",
        "llm_response": "An orchestrator.",
        "sentiment": 1,
    }
    body.update(extra)
    return body


def assert_error(
    response: requests.Response, status: int, cause_fragment: str = ""
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert set(detail) >= {"response", "cause"}
    assert cause_fragment in json.dumps(detail)
    return dict(detail)


def stored_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


def test_query_answers_and_stores_a_redacted_transcript(server: RunningServer) -> None:
    response = ask(
        server,
        {"query": "Mail me at jane.doe@example.com about pods", "system_prompt": "Be brief."},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {
        "conversation_id",
        "response",
        "rag_chunks",
        "referenced_documents",
        "truncated",
        "input_tokens",
        "output_tokens",
    }
    assert "jane.doe@example.com" in answer["response"]  # the user sees the real answer
    uuid.UUID(answer["conversation_id"])

    files = stored_files(server.root / "transcripts")
    assert len(files) == 1
    path = files[0]
    assert path.parent.name == answer["conversation_id"]
    assert path.parent.parent.name == user_key(DEFAULT_USER)
    uuid.UUID(path.stem, version=4)
    text = path.read_text()
    assert "jane.doe@example.com" not in text
    record = json.loads(text)
    assert validation.check("transcript", record) == []
    assert record["metadata"]["user_id"] == user_key(DEFAULT_USER)
    assert record["metadata"]["provider"] == "echo"
    assert record["metadata"]["query_provider"] is None
    assert "[REDACTED_EMAIL]" in record["redacted_query"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for folder in (path.parent, path.parent.parent, server.root / "transcripts"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_query_at_root_path_and_with_provider_and_model(server: RunningServer) -> None:
    response = requests.post(
        f"{server.url}/query",
        json={"query": "hi", "provider": "echo", "model": "echo-1"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    record = json.loads(stored_files(server.root / "transcripts")[0].read_text())
    assert record["metadata"]["query_provider"] == "echo"
    assert record["metadata"]["query_model"] == "echo-1"


def test_query_validation_errors_name_the_field(server: RunningServer) -> None:
    detail = assert_error(ask(server, {"query": "hi", "model": "echo-1"}), 422)
    assert detail["errors"][0]["msg"] == "Provider must be specified if model is specified"
    detail = assert_error(ask(server, {"query": "hi", "provider": "echo"}), 422)
    assert detail["errors"][0]["msg"] == "Model must be specified if provider is specified"
    detail = assert_error(
        ask(server, {"query": "hi", "provider": "nope", "model": "m"}), 422, "nope"
    )
    assert detail["errors"][0]["loc"] == ["body", "provider"]
    assert_error(ask(server, {"query": "hi", "provider": "echo", "model": "gpt-9"}), 422, "gpt-9")
    detail = assert_error(ask(server, {"query": "hi", "colour": "blue"}), 422)
    assert detail["errors"] == [{"loc": ["body", "colour"], "msg": "Unknown field 'colour'"}]
    assert_error(ask(server, {}), 422, "query")
    assert_error(
        ask(server, {"query": "hi", "conversation_id": "../../etc"}),
        422,
        "Improper conversation ID '../../etc'",
    )
    assert_error(
        ask(server, {"query": "hi", "conversation_id": f"{uuid.uuid4()}\n"}),
        422,
        "Improper conversation ID",
    )
    assert_error(ask(server, {"query": "hi", "media_type": "text/html"}), 422, "text/html")
    bad_image = {"attachment_type": "image", "content_type": "image/png", "content": "aGVsbG8="}
    detail = assert_error(ask(server, {"query": "hi", "attachments": [bad_image]}), 422)
    assert detail["errors"][0]["loc"] == ["body", "attachments", 0, "content"]
    assert stored_files(server.root / "transcripts") == []


def test_conversations_belong_to_their_user(server: RunningServer) -> None:
    conversation_id = ask(server, user_id="alice").json()["conversation_id"]
    follow_up = ask(
        server, {"query": "and then?", "conversation_id": conversation_id}, user_id="alice"
    )
    assert follow_up.status_code == 200
    assert follow_up.json()["conversation_id"] == conversation_id
    assert_error(
        ask(server, {"query": "x", "conversation_id": conversation_id}, user_id="mallory"), 403
    )
    unknown = str(uuid.uuid4())
    assert_error(
        ask(server, {"query": "x", "conversation_id": unknown}),
        404,
        f"Conversation with ID {unknown} does not exist",
    )

    post = requests.post(
        f"{server.url}/v1/feedback",
        json=feedback_body(conversation_id),
        params={"user_id": "mallory"},
        timeout=10,
    )
    assert_error(post, 403)
    post = requests.post(f"{server.url}/v1/feedback", json=feedback_body(unknown), timeout=10)
    detail = assert_error(post, 404)
    assert detail["response"] == "Conversation not found"
    assert stored_files(server.root / "feedback") == []


def test_feedback_is_stored_with_the_same_pseudonym_as_transcripts(server: RunningServer) -> None:
    conversation_id = ask(server, user_id="alice").json()["conversation_id"]
    body = feedback_body(
        conversation_id,
        user_feedback="Call me on my card 4111 1111 1111 1111",
        categories=["incorrect", "unsafe", "incorrect"],
    )
    response = requests.post(
        f"{server.url}/feedback", json=body, params={"user_id": "alice"}, timeout=10
    )
    assert response.status_code == 200, response.text
    assert response.json() == {"response": "feedback received"}
    [path] = stored_files(server.root / "feedback")
    record = json.loads(path.read_text())
    assert list(record) == [
        "user_id",
        "timestamp",
        "conversation_id",
        "user_question",
        "llm_response",
        "sentiment",
        "user_feedback",
        "categories",
    ]
    assert record["categories"] == ["incorrect", "unsafe"]
    assert "4111" not in record["user_feedback"]
    assert record["user_id"] == user_key("alice")
    [transcript] = stored_files(server.root / "transcripts")
    assert transcript.parent.parent.name == record["user_id"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_sentiment_written_as_a_float_is_stored_as_the_integer(server: RunningServer) -> None:
    conversation_id = ask(server).json()["conversation_id"]
    text = json.dumps(feedback_body(conversation_id)).replace('"sentiment": 1', '"sentiment": -1.0')
    response = requests.post(
        f"{server.url}/v1/feedback",
        data=text,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    [path] = stored_files(server.root / "feedback")
    assert '"sentiment": -1,' in path.read_text()


def test_feedback_at_its_longest_is_stored_even_when_redaction_lengthens_it(
    server: RunningServer,
) -> None:
    conversation_id = ask(server).json()["conversation_id"]
    text = ("mail a@b.co " * 400)[:4096]
    response = requests.post(
        f"{server.url}/v1/feedback",
        json=feedback_body(conversation_id, user_feedback=text),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    [path] = stored_files(server.root / "feedback")
    stored = json.loads(path.read_text())["user_feedback"]
    assert "@" not in stored and len(stored) > 4096
    assert not validation.check("feedback", json.loads(path.read_text()))


def test_feedback_validation_uses_the_reference_wording(server: RunningServer) -> None:
    conversation_id = ask(server).json()["conversation_id"]

    def post(body: dict[str, Any]) -> requests.Response:
        return requests.post(f"{server.url}/v1/feedback", json=body, timeout=10)

    detail = assert_error(post(feedback_body(conversation_id, sentiment=0)), 422)
    assert detail["errors"] == [
        {"loc": ["body", "sentiment"], "msg": "Improper sentiment value of 0, needs to be -1 or 1"}
    ]
    detail = assert_error(post(feedback_body(conversation_id, sentiment=None, categories=[])), 422)
    assert (
        detail["errors"][0]["msg"]
        == "At least one form of feedback must be provided: 'sentiment', 'user_feedback', or 'categories'"
    )
    assert_error(post(feedback_body(conversation_id, user_feedback="x" * 4097)), 422, "4096")
    assert_error(post(feedback_body(conversation_id, categories=["helpful"])), 422, "helpful")
    assert_error(
        post(feedback_body("not-a-conversation")),
        422,
        "Improper conversation ID 'not-a-conversation'",
    )
    assert_error(post(feedback_body(conversation_id, rating=5)), 422, "rating")
    missing = feedback_body(conversation_id)
    del missing["llm_response"]
    detail = assert_error(post(missing), 422)
    assert detail["errors"][0]["loc"] == ["body", "llm_response"]
    assert stored_files(server.root / "feedback") == []


def test_malformed_requests_get_clear_client_errors(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory({"service": {"max_request_bytes": 2048}})
    url = f"{server.url}/v1/feedback"
    assert_error(
        requests.post(
            url, data=b"{not json", headers={"Content-Type": "application/json"}, timeout=10
        ),
        400,
        "not valid JSON",
    )
    assert_error(
        requests.post(
            url, data=b"\xff\xfe", headers={"Content-Type": "application/json"}, timeout=10
        ),
        400,
    )
    assert_error(
        requests.post(url, data=b"", headers={"Content-Type": "application/json"}, timeout=10), 400
    )
    assert_error(
        requests.post(url, data=b"{}", headers={"Content-Type": "text/plain"}, timeout=10), 415
    )
    assert_error(requests.post(url, data=b"{}", timeout=10), 415)
    assert_error(requests.post(url, json=[1, 2], timeout=10), 422)
    assert_error(
        requests.post(url, data=b"null", headers={"Content-Type": "application/json"}, timeout=10),
        422,
    )
    assert_error(
        requests.post(
            url, data=b"[" * 5000, headers={"Content-Type": "application/json"}, timeout=10
        ),
        413,
    )
    assert_error(
        requests.post(
            url, data=b"[" * 2000, headers={"Content-Type": "application/json"}, timeout=10
        ),
        400,
    )
    big = json.dumps({"query": "x" * 4096}).encode()
    assert_error(
        requests.post(
            f"{server.url}/v1/query",
            data=big,
            headers={"Content-Type": "application/json"},
            timeout=10,
        ),
        413,
        "2048",
    )
    chunked = requests.post(
        f"{server.url}/v1/query",
        data=iter([big[:1000], big[1000:]]),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert_error(chunked, 413)
    assert_error(requests.get(f"{server.url}/v1/nothing-here", timeout=10), 404)
    assert_error(requests.delete(f"{server.url}/v1/feedback", timeout=10), 405)
    assert "Traceback" not in server.log()


@pytest.mark.parametrize(
    ("body", "cause"),
    [
        # A lone surrogate encoded as UTF-8 bytes (not as a \\u escape): not UTF-8.
        (b'{"query": "a\xed\xa0\x80b"}', "Request body is not UTF-8 encoded JSON"),
        ('{"query": "hi"}'.encode("utf-16"), "Request body is not UTF-8 encoded JSON"),
        # Without a byte-order mark, ASCII text in UTF-16 is valid UTF-8 with NULs in it.
        ('{"query": "hi"}'.encode("utf-16-le"), "Request body is not valid JSON"),
        ('{"query": "hi"}'.encode("utf-32"), "Request body is not UTF-8 encoded JSON"),
        (b'{"query": "x", "media_type": NaN}', "NaN is not a JSON value"),
        (b'{"query": "x", "temperature": -Infinity}', "-Infinity is not a JSON value"),
    ],
)
def test_bodies_are_strict_utf8_json(server: RunningServer, body: bytes, cause: str) -> None:
    answer = requests.post(
        f"{server.url}/v1/query",
        data=body,
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert cause in assert_error(answer, 400)["cause"]
    assert stored_files(server.root / "transcripts") == []


def test_a_utf8_byte_order_mark_is_ignored(server: RunningServer) -> None:
    answer = requests.post(
        f"{server.url}/v1/query",
        data=b"\xef\xbb\xbf" + json.dumps({"query": "hi"}).encode(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def test_unpaired_surrogate_escapes_are_422_naming_the_field(server: RunningServer) -> None:
    def post(path: str, text: str) -> requests.Response:
        return requests.post(
            f"{server.url}{path}",
            data=text.encode(),
            headers={"Content-Type": "application/json"},
            timeout=10,
        )

    detail = assert_error(post("/v1/query", '{"query": "hi \\ud800 there"}'), 422)
    assert detail["errors"] == [
        {
            "loc": ["body", "query"],
            "msg": "Field 'query' holds an unpaired UTF-16 surrogate (\\ud800), "
            "which is not valid Unicode text",
        }
    ]
    detail = assert_error(
        post("/v1/query", '{"query": "hi", "attachments": [{"content": "\\uDFFF"}]}'), 422
    )
    assert detail["errors"][0]["loc"] == ["body", "attachments", 0, "content"]
    detail = assert_error(post("/v1/query", '{"query": "hi", "\\ud83d": 1}'), 422)
    assert detail["errors"][0]["loc"] == ["body"]
    assert "A field name in 'body'" in detail["cause"]

    # A proper pair is one character, stored as such.
    answer = post("/v1/query", '{"query": "smile \\ud83d\\ude00"}')
    assert answer.status_code == 200, answer.text
    conversation_id = answer.json()["conversation_id"]
    [stored] = stored_files(server.root / "transcripts")
    assert json.loads(stored.read_text())["redacted_query"] == "smile \U0001f600"
    body = json.dumps(feedback_body(conversation_id, user_feedback="x")).replace(
        '"x"', '"bad \\udc00"'
    )
    detail = assert_error(post("/v1/feedback", body), 422)
    assert detail["errors"][0]["loc"] == ["body", "user_feedback"]
    assert stored_files(server.root / "feedback") == []
    assert "Traceback" not in server.log()


def test_a_number_too_long_for_python_is_400_not_500(server: RunningServer) -> None:
    for path in ("/v1/query", "/v1/feedback"):
        body = b'{"query": "hi", "sentiment": ' + b"9" * 5000 + b"}"
        response = requests.post(
            f"{server.url}{path}",
            data=body,
            headers={"Content-Type": "application/json"},
            timeout=10,
        )
        assert_error(response, 400, "a number of more than 4300 digits")
    assert "Traceback" not in server.log()


def raw_exchange(server: RunningServer, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes no HTTP library would send; answer the status, headers and body."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as connection:
        connection.sendall(request)
        connection.shutdown(socket.SHUT_WR)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except ConnectionResetError:
            pass  # the server closes at once; bytes it never read may reset the connection
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_requests_refused_before_the_app_runs_get_the_envelope_too(
    server: RunningServer,
) -> None:
    # Far past the limit: waitress refuses it from the headers, before spooling the body.
    status, headers, body = raw_exchange(
        server,
        b"POST /v1/feedback HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n",
    )
    assert status == 413
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {
        "detail": {
            "response": "Request body too large",
            "cause": "Request body exceeds the limit of 10485760 bytes",
        }
    }
    status, headers, body = raw_exchange(server, b"NOT AN HTTP REQUEST\r\n\r\n")
    assert status == 400
    assert headers["content-type"] == "application/json"
    detail = json.loads(body)["detail"]
    assert detail["response"] == "Malformed request"
    assert detail["cause"]
    status, headers, body = raw_exchange(
        server, b"GET /liveness HTTP/1.1\r\nHost: test\r\nX-Big: " + b"a" * 300_000 + b"\r\n\r\n"
    )
    assert status == 431
    assert json.loads(body)["detail"] == {
        "response": "Request headers too large",
        "cause": "Request headers exceed the limit of 262144 bytes",
    }
    assert "Traceback" not in server.log()


def test_feedback_status_toggle_needs_admin(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory(
        {"authentication": {"module": "noop", "noop": {"admin_user_ids": ["root-user"]}}}
    )
    status_url = f"{server.url}/v1/feedback/status"
    assert requests.get(status_url, timeout=10).json() == {
        "functionality": "feedback",
        "status": {"enabled": True},
    }
    assert_error(requests.put(status_url, json={"status": False}, timeout=10), 403)
    assert_error(
        requests.put(
            status_url,
            json={"status": False, "why": 1},
            params={"user_id": "root-user"},
            timeout=10,
        ),
        422,
        "why",
    )
    changed = requests.put(
        status_url, json={"status": False}, params={"user_id": "root-user"}, timeout=10
    )
    assert changed.status_code == 200, changed.text
    status = changed.json()["status"]
    assert (status["previous_status"], status["updated_status"], status["updated_by"]) == (
        True,
        False,
        "root-user",
    )
    assert requests.get(status_url, timeout=10).json()["status"]["enabled"] is False

    conversation_id = ask(server).json()["conversation_id"]
    detail = assert_error(
        requests.post(f"{server.url}/v1/feedback", json=feedback_body(conversation_id), timeout=10),
        403,
    )
    assert detail == {
        "response": "Storing feedback is disabled",
        "cause": "Storing feedback is disabled.",
    }
    assert stored_files(server.root / "feedback") == []


def test_noop_with_token_requires_a_bearer_token(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory({"authentication": {"module": "noop-with-token"}})
    detail = assert_error(ask(server), 401)
    assert detail == {
        "response": "Missing or invalid credentials provided by client",
        "cause": "No Authorization header found",
    }
    assert_error(
        requests.post(
            f"{server.url}/v1/query",
            json={"query": "x"},
            headers={"Authorization": "Basic abc"},
            timeout=10,
        ),
        401,
    )
    ok = requests.post(
        f"{server.url}/v1/query",
        json={"query": "x"},
        headers={"Authorization": "Bearer anything"},
        timeout=10,
    )
    assert ok.status_code == 200


def test_storage_cap_answers_507_and_keeps_what_is_stored(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory({"plugins": {"filesystem": {"feedback_max_bytes": 3000}}})
    conversation_id = ask(server).json()["conversation_id"]
    statuses = []
    for _ in range(20):
        response = requests.post(
            f"{server.url}/v1/feedback", json=feedback_body(conversation_id), timeout=10
        )
        statuses.append(response.status_code)
    assert 200 in statuses and 507 in statuses
    assert set(statuses) == {200, 507}
    stored = stored_files(server.root / "feedback")
    assert len(stored) == statuses.count(200)
    assert sum(p.stat().st_size for p in stored) <= 3000
    for path in stored:
        json.loads(path.read_text())
    detail = assert_error(
        requests.post(f"{server.url}/v1/feedback", json=feedback_body(conversation_id), timeout=10),
        507,
    )
    assert "cap" in detail["cause"]


def test_transcripts_disabled_stores_nothing(server_factory: Callable[..., RunningServer]) -> None:
    server = server_factory({"user_data_collection": {"transcripts_enabled": False}})
    assert ask(server).status_code == 200
    assert (
        not (server.root / "transcripts").exists()
        or stored_files(server.root / "transcripts") == []
    )


def test_probes_metrics_and_request_ids(server: RunningServer) -> None:
    ready = requests.get(f"{server.url}/readiness", timeout=10)
    assert ready.status_code == 200
    assert ready.json()["ready"] is True
    assert requests.get(f"{server.url}/liveness", timeout=10).json() == {"alive": True}
    echoed = requests.get(f"{server.url}/liveness", headers={"X-Request-ID": "abc-123"}, timeout=10)
    assert echoed.headers["X-Request-ID"] == "abc-123"
    assert len(requests.get(f"{server.url}/liveness", timeout=10).headers["X-Request-ID"]) == 32
    ask(server, {"query": "reach me at a@b.example.org"})
    metrics = requests.get(f"{server.url}/metrics", timeout=10)
    assert metrics.status_code == 200
    assert metrics.headers["Content-Type"].startswith("text/plain")
    assert 'lightspeed_records_stored_total{kind="transcript"} 1.0' in metrics.text
    assert 'lightspeed_redactions_total{redactor="regex",rule="email"}' in metrics.text
    assert (
        'lightspeed_requests_total{method="POST",route="/v1/query",status="200"} 1.0'
        in metrics.text
    )


def test_readiness_fails_when_storage_is_not_writable(server: RunningServer) -> None:
    assert requests.get(f"{server.url}/readiness", timeout=10).status_code == 200
    storage = server.root / "feedback"
    storage.rename(server.root / "feedback-moved")
    storage.write_text("not a directory")
    response = requests.get(f"{server.url}/readiness", timeout=10)
    assert response.status_code == 503
    assert response.json()["ready"] is False
    assert "filesystem" in response.json()["reason"]


def test_each_message_in_the_cause_names_its_field(server: RunningServer) -> None:
    conversation_id = ask(server).json()["conversation_id"]
    missing = feedback_body(conversation_id)
    del missing["user_question"]
    detail = assert_error(requests.post(f"{server.url}/v1/feedback", json=missing, timeout=10), 422)
    assert detail["cause"] == "user_question: Field required"
    # Values are quoted in JSON's words, as the client sent them.
    detail = assert_error(
        requests.post(
            f"{server.url}/v1/feedback",
            json=feedback_body(conversation_id, user_question=None, llm_response={"a": True}),
            timeout=10,
        ),
        422,
    )
    assert detail["cause"] == (
        """llm_response: {"a": true} is not of type 'string'; """
        "user_question: null is not of type 'string'"
    )
    detail = assert_error(ask(server, {"query": "hi", "conversation_id": 5}), 422)
    assert detail["cause"].startswith("conversation_id: ")
    detail = assert_error(ask(server, {"query": "hi", "colour": "blue"}), 422)
    assert detail["cause"] == "Unknown field 'colour'"
    detail = assert_error(
        ask(server, {"query": "hi", "attachments": [{"attachment_type": "log"}]}), 422
    )
    assert "attachments.0.content: Field required" in detail["cause"]


def test_a_compressed_body_is_415_naming_the_coding(server: RunningServer) -> None:
    body = gzip.compress(json.dumps({"query": "hi"}).encode())
    for data in (body, json.dumps({"query": "hi"}).encode()):
        answer = requests.post(
            f"{server.url}/v1/query",
            data=data,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert "Content-Encoding gzip is not supported" in assert_error(answer, 415)["cause"]


def test_an_oversized_body_announced_with_expect_continue_is_refused_at_once(
    server: RunningServer,
) -> None:
    """No 100 Continue for a body the server will refuse: the client would send it all."""
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=5) as connection:
        connection.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 99999999\r\nExpect: 100-continue\r\n\r\n"
        )
        # Without sending a byte of the body: the server answers, then closes.
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:80]
    assert b'"response"' in answer
