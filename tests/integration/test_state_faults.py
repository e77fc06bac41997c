"""The conversations database failing under a running server: clients get the error envelope
with a status that says whose fault it is, and no conversation is silently forgotten."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest
import requests

from tests.conftest import RunningServer, start_server


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


def assert_owned_after_restart(server: RunningServer, *conversation_ids: str) -> None:
    """Restart the service on the same folders: each conversation is still known to it."""
    server.stop()
    restarted = start_server(server.root)
    try:
        for conversation_id in conversation_ids:
            assert give_feedback(restarted, conversation_id).status_code == 200
    finally:
        restarted.stop()


@pytest.mark.parametrize("removed", ["database", "state_dir"])
def test_conversations_outlive_a_database_removed_while_running(
    server_factory: Callable[..., RunningServer], removed: str
) -> None:
    server = server_factory(name=removed)
    state = server.root / "state"
    before = ask(server).json()["conversation_id"]
    if removed == "database":
        for path in state.glob("conversations.sqlite3*"):
            path.unlink()
    else:
        shutil.rmtree(state)
    during = ask(server)
    assert during.status_code == 200, during.text
    assert requests.get(f"{server.url}/readiness", timeout=10).status_code == 200
    assert (state / "conversations.sqlite3").stat().st_mode & 0o777 == 0o600
    assert "was removed while the service ran" in server.log()

    assert_owned_after_restart(server, before, during.json()["conversation_id"])


def test_a_database_replaced_while_running_is_not_written_over(server: RunningServer) -> None:
    database = server.root / "state" / "conversations.sqlite3"
    conversation_id = ask(server).json()["conversation_id"]
    for path in database.parent.glob("conversations.sqlite3*"):
        path.unlink()
    database.mkdir()

    detail = error_detail(ask(server), 503)
    assert detail["response"] == "Conversations database unavailable"
    assert str(database) in detail["cause"]
    readiness = requests.get(f"{server.url}/readiness", timeout=10)
    assert readiness.status_code == 503
    assert "conversations database" in readiness.json()["reason"]
    # Conversations already known are still served.
    assert give_feedback(server, conversation_id).status_code == 200
    assert "Traceback" not in server.log()


def test_conversations_are_held_until_a_removed_database_can_be_written_again(
    server: RunningServer,
) -> None:
    state = server.root / "state"
    before = ask(server).json()["conversation_id"]
    shutil.rmtree(state)
    state.write_text("in the way")

    detail = error_detail(ask(server), 503)
    assert "cannot be written again" in detail["cause"]
    assert requests.get(f"{server.url}/readiness", timeout=10).status_code == 503

    state.unlink()
    during = ask(server)
    assert during.status_code == 200, during.text
    assert_owned_after_restart(server, before, during.json()["conversation_id"])
