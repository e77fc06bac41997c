"""The conversations database failing under a running server: clients get the error envelope
with a status that says whose fault it is, and no conversation is silently forgotten."""

from __future__ import annotations

import sqlite3
from typing import Any

import requests

from tests.conftest import RunningServer


def ask(server: RunningServer, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.post(f"{server.url}/v1/query", json=body or {"query": "hello"}, timeout=30)


def give_feedback(server: RunningServer, conversation_id: str) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/feedback",
        json={
            "conversation_id": conversation_id,
            "user_question": "hello",
            "llm_response": "hi",
            "sentiment": 1,
        },
        timeout=30,
    )


def error_detail(response: requests.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    detail: dict[str, Any] = response.json()["detail"]
    assert set(detail) >= {"response", "cause"}
    return detail


def test_a_database_locked_by_another_process_answers_503_naming_it(
    server: RunningServer,
) -> None:
    database = server.root / "state" / "conversations.sqlite3"
    other_process = sqlite3.connect(database, isolation_level=None)
    try:
        other_process.execute("BEGIN EXCLUSIVE")
        detail = error_detail(ask(server), 503)
    finally:
        other_process.execute("ROLLBACK")
        other_process.close()
    assert detail["response"] == "Conversations database unavailable"
    assert str(database) in detail["cause"]
    assert "locked" in detail["cause"]
    assert "Traceback" not in server.log()
    assert ask(server).status_code == 200
