"""GET /openapi.json: a valid OpenAPI 3.1 document, built from schemas/, covering every route."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from falcon import inspect
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate as validate_openapi
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from lightspeed_collector import validation
from lightspeed_collector.config import Config
from lightspeed_collector.openapi import build_document
from lightspeed_collector.service import build_service
from lightspeed_collector.web.app import create_app
from tests.conftest import RunningServer

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
DOCUMENT_URI = "urn:test:openapi"


def fetch_document(server: RunningServer) -> dict[str, Any]:
    response = requests.get(f"{server.url}/openapi.json", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    document: dict[str, Any] = response.json()
    return document


def document_validator(document: dict[str, Any], ref: str) -> Draft202012Validator:
    """Validates against ``ref`` (``#/components/schemas/...``) inside the document."""
    registry: Registry[Any] = Registry().with_resource(
        DOCUMENT_URI, DRAFT202012.create_resource(document)
    )
    return Draft202012Validator({"$ref": DOCUMENT_URI + ref}, registry=registry)


def response_validator(
    document: dict[str, Any], path: str, method: str, status: int
) -> Draft202012Validator:
    """A validator for the JSON body the document promises for this answer."""
    responses = document["paths"][path][method]["responses"]
    assert str(status) in responses, f"{method.upper()} {path} answered undocumented {status}"
    schema = responses[str(status)]["content"]["application/json"]["schema"]
    return document_validator(document, schema["$ref"])


def assert_documented(
    document: dict[str, Any], path: str, method: str, response: requests.Response
) -> None:
    validator = response_validator(document, path, method, response.status_code)
    errors = [error.message for error in validator.iter_errors(response.json())]
    assert not errors, f"{method.upper()} {path} {response.status_code}: {errors}"
    assert "X-Request-ID" in response.headers


def test_the_served_document_is_valid_openapi_3_1(server: RunningServer) -> None:
    document = fetch_document(server)
    validate_openapi(document)
    assert document["openapi"] == "3.1.0"
    assert document == json.loads(json.dumps(build_document()))


def test_every_route_the_app_serves_is_documented(make_config: Callable[..., Config]) -> None:
    service = build_service(make_config())
    try:
        app = create_app(service)
    finally:
        service.close()
    served = {
        (route.path, method.method.lower())
        for route in inspect.inspect_routes(app)
        for method in route.methods
        if not method.internal
    }
    document = build_document()
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert served == documented
    assert ("/v1/streaming_query", "post") in documented


def test_request_bodies_are_the_schemas_the_service_validates_with() -> None:
    document = build_document()
    components = document["components"]["schemas"]
    for path, method, name in [
        ("/v1/query", "post", "query_request"),
        ("/v1/streaming_query", "post", "query_request"),
        ("/v1/feedback", "post", "feedback_request"),
        ("/v1/feedback/status", "put", "feedback_status_request"),
    ]:
        body = document["paths"][path][method]["requestBody"]["content"]["application/json"]
        assert body["schema"] == {"$ref": f"#/components/schemas/{name}"}
        source = json.loads((SCHEMAS / f"{name}.json").read_text("utf-8"))
        component = components[name]
        assert component["required"] == source["required"]
        assert component["properties"].keys() == source["properties"].keys()
        assert component["additionalProperties"] is False
        # Same rules: a body is valid for the document exactly when it is for the service.
        from_document = document_validator(document, f"#/components/schemas/{name}")
        for sample in _samples(name):
            assert from_document.is_valid(sample) == validation.validator(name).is_valid(sample), (
                name,
                sample,
            )


def _samples(name: str) -> list[Any]:
    conversation = "3f0e6c1a-8d2b-4f7e-9a51-2c6d8b0e4a17"
    if name == "query_request":
        return [
            {"query": "hi"},
            {"query": ""},
            {"query": "hi", "model": "m"},
            {"query": "hi", "model": "m", "provider": "p"},
            {"query": "hi", "conversation_id": "nope"},
            {"query": "hi", "conversation_id": conversation, "extra": 1},
            {"query": "hi", "attachments": [{"attachment_type": "log"}]},
        ]
    if name == "feedback_request":
        base = {"conversation_id": conversation, "user_question": "q", "llm_response": "a"}
        return [
            base,
            {**base, "sentiment": 1},
            {**base, "sentiment": 0},
            {**base, "categories": []},
            {**base, "categories": ["other"]},
            {**base, "user_feedback": "   "},
            {**base, "user_feedback": "good"},
        ]
    return [{"status": True}, {"status": "yes"}, {}, {"status": False, "x": 1}]


def test_every_error_status_has_the_error_envelope() -> None:
    document = build_document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path != "/readiness":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/error"}, (path, method)


def test_real_answers_match_their_documented_schemas(server: RunningServer) -> None:
    document = fetch_document(server)
    url = server.url

    answer = requests.post(f"{url}/v1/query", json={"query": "What is a pod?"}, timeout=10)
    assert answer.status_code == 200
    assert_documented(document, "/v1/query", "post", answer)
    conversation = answer.json()["conversation_id"]

    feedback = {
        "conversation_id": conversation,
        "user_question": "What is a pod?",
        "llm_response": "A group of containers.",
        "sentiment": 1,
    }
    for path in ("/v1/feedback", "/feedback"):
        stored = requests.post(f"{url}{path}", json=feedback, timeout=10)
        assert stored.status_code == 200
        assert_documented(document, path, "post", stored)

    status = requests.get(f"{url}/v1/feedback/status", timeout=10)
    assert_documented(document, "/v1/feedback/status", "get", status)
    refused = requests.put(f"{url}/v1/feedback/status", json={"status": False}, timeout=10)
    assert refused.status_code == 403
    assert_documented(document, "/v1/feedback/status", "put", refused)

    for path in ("/readiness", "/liveness"):
        assert_documented(document, path, "get", requests.get(f"{url}{path}", timeout=10))

    errors = [
        ("/v1/query", requests.post(f"{url}/v1/query", data="{", headers=_JSON, timeout=10)),
        ("/v1/query", requests.post(f"{url}/v1/query", data="q", timeout=10)),
        ("/v1/query", requests.post(f"{url}/v1/query", json={"query": 1}, timeout=10)),
        (
            "/v1/feedback",
            requests.post(
                f"{url}/v1/feedback",
                json={**feedback, "conversation_id": "3f0e6c1a-8d2b-4f7e-9a51-2c6d8b0e4a17"},
                timeout=10,
            ),
        ),
    ]
    assert [response.status_code for _, response in errors] == [400, 415, 422, 404]
    for path, response in errors:
        assert_documented(document, path, "post", response)


_JSON = {"Content-Type": "application/json"}


def test_streamed_events_match_the_streaming_event_schema(server: RunningServer) -> None:
    response = requests.post(
        f"{server.url}/v1/streaming_query", json={"query": "Stream me"}, timeout=10
    )
    assert response.status_code == 200
    document = fetch_document(server)
    content = document["paths"]["/v1/streaming_query"]["post"]["responses"]["200"]["content"]
    assert response.headers["Content-Type"].split(";")[0] in content
    events = [
        json.loads(line[len("data: ") :])
        for line in response.text.splitlines()
        if line.startswith("data: ")
    ]
    assert events[0]["event"] == "start"
    assert events[-1]["event"] == "end"
    checker = validation.validator("streaming_event")
    for event in events:
        assert checker.errors(event) == [], event
    assert checker.errors({"event": "token", "data": {"id": -1, "token": "x"}})


@pytest.mark.parametrize("name", ["query_response", "error", "streaming_event", "readiness"])
def test_response_schemas_ship_with_the_package(name: str) -> None:
    assert name in validation.schema_names()
    assert validation.load_schema(name)["$id"] == f"urn:lightspeed-collector:schema:{name}"
