"""The app in-process: lifecycle hooks, observers, pinned clock and ids, and no 500 for any
body a client can send."""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from falcon import testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lightspeed_collector import hookimpl
from lightspeed_collector.config import Config
from lightspeed_collector.errors import PluginError
from lightspeed_collector.service import Service, build_service
from lightspeed_collector.web.app import create_app
from tests.plugins.throwaway import FailingObserver, LifecycleObserver, RecordingObserver

FIXED_TIME = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def observers() -> dict[str, Any]:
    return {
        "lifecycle": LifecycleObserver(),
        "recorder": RecordingObserver(),
        "failing": FailingObserver(),
    }


@pytest.fixture
def service(make_config: Callable[..., Config], observers: dict[str, Any]) -> Iterator[Service]:
    ids = iter(f"00000000-0000-4000-8000-{n:012d}" for n in range(1, 10_000))
    built = build_service(
        make_config(), clock=lambda: FIXED_TIME, new_id=lambda: next(ids), extra_plugins=observers
    )
    yield built
    built.close()


@pytest.fixture
def client(service: Service) -> testing.TestClient:
    return testing.TestClient(create_app(service))


def test_lifecycle_and_record_hooks_fire(
    make_config: Callable[..., Config], observers: dict[str, Any], tmp_path: Path
) -> None:
    built = build_service(make_config(), extra_plugins=observers)
    assert observers["lifecycle"].events == ["startup"]
    assert observers["lifecycle"].state_dir == str(tmp_path / "state")
    client = testing.TestClient(create_app(built))
    response = client.simulate_post("/v1/query", json={"query": "hi"})
    assert response.status_code == 200  # the failing observer does not fail the request
    [(kind, record, location)] = observers["recorder"].stored
    assert kind == "transcript" and Path(location).is_file()
    assert json.loads(Path(location).read_text()) == record
    built.close()
    assert observers["lifecycle"].events == ["startup", "shutdown"]


def test_clock_and_ids_are_injected(client: testing.TestClient, tmp_path: Path) -> None:
    answer = client.simulate_post("/v1/query", json={"query": "hi"}).json
    assert answer["conversation_id"] == "00000000-0000-4000-8000-000000000001"
    [path] = (tmp_path / "transcripts").rglob("*.json")
    assert path.name == "00000000-0000-4000-8000-000000000002.json"
    assert json.loads(path.read_text())["metadata"]["timestamp"] == "2024-01-01T12:00:00.000000Z"


def test_blocked_extra_plugin_is_not_registered(make_config: Callable[..., Config]) -> None:
    observer = LifecycleObserver()
    built = build_service(
        make_config({"plugins": {"disabled": ["lifecycle"]}}), extra_plugins={"lifecycle": observer}
    )
    built.close()
    assert observer.events == []


def any_text(max_size: int, min_size: int = 0) -> st.SearchStrategy[str]:
    """Text with lone surrogates among the characters: JSON can spell them as escapes, UTF-8
    cannot encode them. (``st.text`` leaves them out whatever its alphabet.)"""
    characters = st.characters() | st.characters(categories=["Cs"])
    return st.lists(characters, min_size=min_size, max_size=max_size).map("".join)


json_bodies = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | any_text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(any_text(max_size=10), children, max_size=5)
    ),
    max_leaves=12,
)
field_values = st.one_of(
    json_bodies,
    any_text(max_size=20),
    st.sampled_from(["00000000-0000-4000-8000-000000000001", "a" * 48, -1, 1, 0, "other"]),
)
ROUTES = [("POST", "/v1/query"), ("POST", "/v1/feedback"), ("PUT", "/v1/feedback/status")]
FIELDS = [
    "query",
    "conversation_id",
    "provider",
    "model",
    "attachments",
    "media_type",
    "user_question",
    "llm_response",
    "sentiment",
    "user_feedback",
    "categories",
    "status",
    "system_prompt",
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    route=st.sampled_from(ROUTES),
    body=st.one_of(json_bodies, st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6)),
)
def test_no_client_body_yields_a_server_error(
    client: testing.TestClient, route: tuple[str, str], body: Any
) -> None:
    method, path = route
    response = client.simulate_request(
        method, path, body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json["detail"]) >= {"response", "cause"}


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    text=any_text(min_size=1, max_size=30),
    field=st.sampled_from(["query", "system_prompt"]),
)
def test_any_text_a_query_carries_is_answered_or_refused_never_a_500(
    client: testing.TestClient, text: str, field: str
) -> None:
    body = {"query": "hi", field: text}
    response = client.simulate_post(
        "/v1/query", body=json.dumps(body), headers={"Content-Type": "application/json"}
    )
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json["detail"]["errors"][0]["loc"] == ["body", field]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(max_size=64),
    content_type=st.sampled_from(["application/json", "text/plain", "", "application/x+json"]),
)
def test_no_raw_bytes_yield_a_server_error(
    client: testing.TestClient, raw: bytes, content_type: str
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.simulate_post("/v1/feedback", body=raw, headers=headers)
    assert response.status_code in (400, 404, 415, 422), response.text


def test_feedback_cannot_be_enabled_without_storage(make_config: Callable[..., Config]) -> None:
    config = make_config(
        {
            "user_data_collection": {"feedback_enabled": False, "feedback_storage": None},
            "authentication": {"noop": {"admin_user_ids": ["boss"]}},
        }
    )
    built = build_service(config)
    client = testing.TestClient(create_app(built))
    response = client.simulate_put(
        "/v1/feedback/status", json={"status": True}, params={"user_id": "boss"}
    )
    assert response.status_code == 422
    assert "feedback_storage is not configured" in response.json["detail"]["errors"][0]["msg"]
    assert client.simulate_get("/v1/feedback/status").json["status"]["enabled"] is False
    built.close()


def test_feedback_enabled_at_run_time_is_stored(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    config = make_config(
        {
            "user_data_collection": {"feedback_enabled": False},
            "authentication": {"noop": {"admin_user_ids": ["boss"]}},
        }
    )
    built = build_service(config)
    client = testing.TestClient(create_app(built))
    conversation_id = client.simulate_post("/v1/query", json={"query": "hi"}).json[
        "conversation_id"
    ]
    body = {
        "conversation_id": conversation_id,
        "user_question": "q",
        "llm_response": "r",
        "sentiment": 1,
    }
    assert client.simulate_post("/v1/feedback", json=body).status_code == 403
    assert (
        client.simulate_put(
            "/v1/feedback/status", json={"status": True}, params={"user_id": "boss"}
        ).status_code
        == 200
    )
    assert client.simulate_post("/v1/feedback", json=body).status_code == 200
    assert len(list((tmp_path / "feedback").glob("*.json"))) == 1
    built.close()


class BrokenStartup:
    @hookimpl
    def startup(self, app_context: Any) -> None:
        raise RuntimeError("cannot reach the audit database")


def test_a_failing_startup_hook_is_a_plugin_error_naming_the_plugin(
    make_config: Callable[..., Config],
) -> None:
    with pytest.raises(
        PluginError, match="plugin 'auditor' failed in startup: cannot reach the audit database"
    ):
        build_service(make_config(), extra_plugins={"auditor": BrokenStartup()})


def test_state_files_are_private_from_the_first_start(service: Service, tmp_path: Path) -> None:
    state = tmp_path / "state"
    files = sorted(state.iterdir())
    assert files, "the conversations database exists"
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
