"""Metrics, logs and request ids, as an operator sees them from a real server."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import RunningServer

API_KEY = "sk-live-7Hq2Lx9Vb4Nc8Rz1"
WRONG_KEY = "sk-live-WRONG-4Fd8Kp2Zs6"
BEARER_JWT = (
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSIsInJvbGUiOiJhZG1pbiJ9."
    "c2lnbmF0dXJlLW5vdC1yZWFsLWJ1dC1sb25nLWVub3VnaA"
)
RECORD_TEXT = "PurpleOctopusMarmalade"
FEEDBACK_TEXT = "TangerineGlacierWhistle"


def samples(
    server: RunningServer, accept: str = ""
) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = requests.get(f"{server.url}/metrics", headers={"Accept": accept}, timeout=10)
    assert response.status_code == 200
    found = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            found[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return found


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_requests_records_and_redactions_from_many_threads(
    server: RunningServer,
) -> None:
    threads, per_thread = 8, 12
    failures: list[str] = []

    def client() -> None:
        with requests.Session() as session:
            for _ in range(per_thread):
                response = session.post(
                    f"{server.url}/v1/query",
                    json={"query": "Mail ops@example.com and 10.0.0.7 about pods"},
                    timeout=30,
                )
                if response.status_code != 200:
                    failures.append(response.text)

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not failures
    answers = threads * per_thread
    conversation = requests.post(
        f"{server.url}/v1/query", json={"query": "one more"}, timeout=10
    ).json()["conversation_id"]
    feedback = requests.post(
        f"{server.url}/v1/feedback",
        json={
            "conversation_id": conversation,
            "user_question": "q",
            "llm_response": "a",
            "sentiment": -1,
        },
        timeout=10,
    )
    assert feedback.status_code == 200
    requests.get(f"{server.url}/no/such/route", timeout=10)

    found = samples(server)

    assert (
        value(found, "lightspeed_requests_total", route="/v1/query", method="POST", status="200")
        == answers + 1
    )
    assert (
        value(found, "lightspeed_requests_total", route="/v1/feedback", method="POST", status="200")
        == 1
    )
    assert (
        value(found, "lightspeed_requests_total", route="unmatched", method="GET", status="404")
        == 1
    )
    assert (
        value(found, "lightspeed_request_duration_seconds_count", route="/v1/query") == answers + 1
    )
    assert (
        value(found, "lightspeed_request_duration_seconds_bucket", route="/v1/query", le="+Inf")
        == answers + 1
    )
    assert (
        value(found, "lightspeed_request_duration_seconds_bucket", route="/v1/query", le="120.0")
        == answers + 1
    )
    assert value(found, "lightspeed_records_stored_total", kind="transcript") == answers + 1
    assert value(found, "lightspeed_records_stored_total", kind="feedback") == 1
    # The echo provider repeats the question, so each transcript holds each address twice.
    assert (
        value(found, "lightspeed_redactions_total", redactor="regex", rule="email") == 2 * answers
    )
    assert value(found, "lightspeed_redactions_total", redactor="regex", rule="ipv4") == 2 * answers
    assert value(found, "lightspeed_build_info", version="0.1.0") == 1
    assert value(found, "process_resident_memory_bytes") > 0


def test_metrics_speak_prometheus_text_and_openmetrics(server: RunningServer) -> None:
    plain = requests.get(f"{server.url}/metrics", timeout=10)
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "# TYPE lightspeed_requests_total counter" in plain.text
    open_metrics = requests.get(
        f"{server.url}/metrics",
        headers={"Accept": "application/openmetrics-text; version=1.0.0"},
        timeout=10,
    )
    assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert open_metrics.text.rstrip().endswith("# EOF")


def test_every_response_carries_a_request_id(server: RunningServer) -> None:
    url = server.url
    answers = [
        requests.get(f"{url}/liveness", timeout=10),
        requests.get(f"{url}/metrics", timeout=10),
        requests.get(f"{url}/openapi.json", timeout=10),
        requests.get(f"{url}/nowhere", timeout=10),
        requests.delete(f"{url}/v1/query", timeout=10),
        requests.post(f"{url}/v1/query", data="x", timeout=10),
        requests.post(f"{url}/v1/query", json={"query": "hi"}, timeout=10),
    ]
    assert [a.status_code for a in answers] == [200, 200, 200, 404, 405, 415, 200]
    ids = [a.headers["X-Request-ID"] for a in answers]
    assert all(re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", i) for i in ids)
    assert len(set(ids)) == len(ids)

    echoed = requests.get(f"{url}/liveness", headers={"X-Request-ID": "trace-42.a:b_c"}, timeout=10)
    assert echoed.headers["X-Request-ID"] == "trace-42.a:b_c"
    for unsafe in ("has spaces", "<script>", "x" * 129, "é"):
        replaced = requests.get(
            f"{url}/liveness",
            headers={"X-Request-ID": unsafe.encode().decode("latin-1")},
            timeout=10,
        )
        assert replaced.headers["X-Request-ID"] not in (unsafe, "")


def test_json_logs_at_info_hold_no_token_key_or_record_text(
    server_factory: Callable[..., RunningServer],
) -> None:
    server = server_factory(
        {
            "service": {"log_format": "json", "log_level": "info"},
            "authentication": {
                "module": "api-key",
                "api-key": {"keys": [{"key": API_KEY, "user_id": "alice"}]},
            },
            # Every feedback is over the cap: the 507 is logged at error level, with its cause.
            "plugins": {"filesystem": {"feedback_max_bytes": 1}},
        }
    )
    url = server.url
    good = {"Authorization": f"Bearer {API_KEY}"}
    asked = requests.post(
        f"{url}/v1/query",
        json={
            "query": f"{RECORD_TEXT}: why does my token {BEARER_JWT} fail for bob@example.com?",
            "system_prompt": f"Remember {RECORD_TEXT}",
            "attachments": [
                {"attachment_type": "log", "content_type": "text/plain", "content": RECORD_TEXT}
            ],
        },
        headers=good,
        timeout=10,
    )
    assert asked.status_code == 200
    conversation = asked.json()["conversation_id"]
    streamed = requests.post(
        f"{url}/v1/streaming_query",
        json={"query": f"{RECORD_TEXT} streamed", "conversation_id": conversation},
        headers=good,
        timeout=10,
    )
    assert streamed.status_code == 200
    refused = requests.post(
        f"{url}/v1/query",
        json={"query": RECORD_TEXT},
        headers={"Authorization": f"Bearer {WRONG_KEY}"},
        timeout=10,
    )
    assert refused.status_code == 401
    invalid = requests.post(
        f"{url}/v1/query",
        json={"query": RECORD_TEXT, RECORD_TEXT: BEARER_JWT},
        headers=good,
        timeout=10,
    )
    assert invalid.status_code == 422
    full = requests.post(
        f"{url}/v1/feedback",
        json={
            "conversation_id": conversation,
            "user_question": RECORD_TEXT,
            "llm_response": RECORD_TEXT,
            "user_feedback": f"{FEEDBACK_TEXT} {BEARER_JWT}",
            "sentiment": 1,
        },
        headers={**good, "X-Request-ID": "audit-trail-7"},
        timeout=10,
    )
    assert full.status_code == 507
    server.stop()

    lines = server.log().splitlines()
    entries: list[dict[str, Any]] = [json.loads(line) for line in lines]
    for entry in entries:
        assert list(entry)[:5] == ["time", "level", "logger", "message", "request_id"]
        assert entry["level"] in {"info", "warning", "error", "critical"}
    # The storage failure was logged, and can be found by the request id the client saw.
    [failure] = [e for e in entries if e["level"] == "error"]
    assert failure["request_id"] == "audit-trail-7"
    assert "cap" in failure["message"]
    log = "\n".join(lines)
    for secret in (API_KEY, WRONG_KEY, BEARER_JWT, RECORD_TEXT, FEEDBACK_TEXT, "bob@example.com"):
        assert secret not in log
