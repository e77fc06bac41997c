"""The OpenAPI 3.1 description of the HTTP API, built from the JSON Schemas in ``schemas/``.

Request bodies are the very schemas the resources validate with, and the response bodies
are schema files beside them, so the document cannot drift from what the service enforces:
there is no second copy to forget. Only what a schema cannot say (which route takes which
body, which statuses a route can answer) is written here, and a test holds that table to
the routes the app really serves.

OpenAPI 3.1 speaks JSON Schema 2020-12, so the schemas go in unchanged except for their
cross-file references, which :mod:`lightspeed_collector.schema_bundle` points at
``#/components/schemas``, and their ``x-messages`` (the wording of validation errors, which
clients see in ``detail.errors`` anyway), which are left out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .schema_bundle import bundle

COMPONENTS = "#/components/schemas/"
JSON = "application/json"

_ERROR_DESCRIPTIONS: Mapping[int, str] = {
    400: "The body is not JSON, not UTF-8, empty, or nested too deeply.",
    401: "Credentials are missing or not accepted.",
    403: "Not allowed: someone else's conversation, feedback switched off, or not an admin.",
    404: "The conversation does not exist.",
    413: "The body is larger than service.max_request_bytes.",
    415: "The Content-Type is not JSON.",
    422: "The body breaks its schema; `detail.errors` names each problem.",
    429: "The provider is rate-limiting; see Retry-After.",
    431: "The request headers are larger than 256 KiB.",
    500: "A record could not be stored for a reason of the server's.",
    502: "The provider failed.",
    504: "The provider timed out.",
    507: "A storage is over its byte cap, or the disk is full.",
}

# Every route that reads a JSON body can answer these before its own work starts.
_BODY_ERRORS = (400, 401, 413, 415, 422, 431)
_QUERY_ERRORS = (*_BODY_ERRORS, 403, 404, 429, 500, 502, 504, 507)
_FEEDBACK_ERRORS = (*_BODY_ERRORS, 403, 404, 500, 507)


@dataclass(frozen=True)
class Response:
    description: str
    schema: str | None = None
    """A schema file name for a JSON body; ``None`` with ``content`` for other bodies."""
    content: Mapping[str, Mapping[str, Any]] | None = None
    """Media type objects for non-JSON bodies (``{"text/plain": {"schema": ...}}``)."""
    links: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    headers: tuple[str, ...] = ()
    """Names of response headers under ``components/headers``, besides X-Request-ID."""


@dataclass(frozen=True)
class Operation:
    method: str
    paths: tuple[str, ...]
    """The first path is the canonical one; the others are aliases the service also answers."""
    operation_id: str
    summary: str
    tag: str
    responses: Mapping[int, Response]
    request_schema: str | None = None
    errors: Sequence[int] = ()
    authenticated: bool = True
    description: str = ""


# Each Server-Sent Event as a client library hands it over; its ``data`` line holds JSON.
_SSE_EVENT = {
    "type": "object",
    "required": ["data"],
    "properties": {
        "data": {
            "type": "string",
            "contentMediaType": JSON,
            "contentSchema": {"$ref": COMPONENTS + "streaming_event"},
        },
        "event": {"type": "string"},
        "id": {"type": "string"},
        "retry": {"type": "integer", "minimum": 0},
    },
}
_TEXT = {"schema": {"type": "string"}}

# An answer's conversation id is what continues the conversation and what feedback rates.
_CONVERSATION_LINKS = {
    "rate_answer": {
        "operationId": "feedback",
        "description": "Rate this answer: feedback names the same conversation.",
        "requestBody": {"conversation_id": "$response.body#/conversation_id"},
    },
    "follow_up": {
        "operationId": "query",
        "description": "Ask a follow-up question in the same conversation.",
        "requestBody": {"conversation_id": "$response.body#/conversation_id"},
    },
}

_STREAM_DESCRIPTION = (
    "Server-Sent Events. Each event is a `data:` line holding a JSON object that matches the "
    "`streaming_event` schema: one `start` (the conversation id), a `token` per chunk, then "
    "`end` (token counts, documents, `truncated`) or `error`. With `media_type: text/plain` "
    "in the request the body is the bare answer text instead."
)

OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post",
        ("/v1/query", "/query"),
        "query",
        "Ask a question",
        "query",
        {
            200: Response(
                "The answer; its transcript is stored first.",
                "query_response",
                links=_CONVERSATION_LINKS,
            )
        },
        request_schema="query_request",
        errors=_QUERY_ERRORS,
        description="Answers through the chosen provider and stores a redacted transcript "
        "when transcripts are enabled. A request without `conversation_id` starts one.",
    ),
    Operation(
        "post",
        ("/v1/streaming_query", "/streaming_query"),
        "streaming_query",
        "Ask a question and receive the answer as it is produced",
        "query",
        {
            200: Response(
                _STREAM_DESCRIPTION,
                content={"text/event-stream": {"schema": _SSE_EVENT}, "text/plain": _TEXT},
                headers=("X-Conversation-ID",),
            )
        },
        request_schema="query_request",
        errors=_QUERY_ERRORS,
        description="Errors found before the first chunk (authentication, validation, "
        "conversation, provider) answer with their status; later ones end the stream with an "
        "`error` event. The transcript is stored when the stream ends or the client leaves.",
    ),
    Operation(
        "post",
        ("/v1/feedback", "/feedback"),
        "feedback",
        "Rate an answer",
        "feedback",
        {200: Response("The feedback was stored.", "feedback_response")},
        request_schema="feedback_request",
        errors=_FEEDBACK_ERRORS,
    ),
    Operation(
        "get",
        ("/v1/feedback/status",),
        "get_feedback_status",
        "Is feedback being collected?",
        "feedback",
        {200: Response("The current switch.", "feedback_status")},
        errors=(401,),
    ),
    Operation(
        "put",
        ("/v1/feedback/status",),
        "set_feedback_status",
        "Switch feedback collection on or off (admin only)",
        "feedback",
        {200: Response("The switch before and after.", "feedback_status_update")},
        request_schema="feedback_status_request",
        errors=(*_BODY_ERRORS, 403),
    ),
    Operation(
        "get",
        ("/readiness",),
        "readiness",
        "Readiness probe",
        "probes",
        {
            200: Response("Ready to serve.", "readiness"),
            503: Response("Not ready; `reason` says why.", "readiness"),
        },
        authenticated=False,
    ),
    Operation(
        "get",
        ("/liveness",),
        "liveness",
        "Liveness probe",
        "probes",
        {200: Response("The process answers.", "liveness")},
        authenticated=False,
    ),
    Operation(
        "get",
        ("/metrics",),
        "metrics",
        "Prometheus metrics",
        "operations",
        {
            200: Response(
                "The Prometheus text format, or OpenMetrics when the scraper asks for it.",
                content={"text/plain": _TEXT, "application/openmetrics-text": _TEXT},
            )
        },
        authenticated=False,
    ),
    Operation(
        "get",
        ("/openapi.json",),
        "openapi",
        "This document",
        "operations",
        {200: Response("OpenAPI 3.1.", content={JSON: {"schema": {"type": "object"}}})},
        authenticated=False,
    ),
)

_TAGS = (
    {"name": "query", "description": "Questions and answers; each answer is transcribed."},
    {"name": "feedback", "description": "Users' ratings of answers."},
    {"name": "probes", "description": "Kubernetes liveness and readiness probes."},
    {"name": "operations", "description": "Metrics and this description."},
)


def build_document(operations: Sequence[Operation] = OPERATIONS) -> dict[str, Any]:
    """The whole OpenAPI document; called once at start-up."""
    used = {"error"}
    for operation in operations:
        if operation.request_schema:
            used.add(operation.request_schema)
        used.update(r.schema for r in operation.responses.values() if r.schema)
        if any(
            r.content and "text/event-stream" in r.content for r in operation.responses.values()
        ):
            used.add("streaming_event")
    schemas = {
        name: _as_component(schema) for name, schema in bundle(sorted(used), COMPONENTS).items()
    }
    paths: dict[str, dict[str, Any]] = {}
    for operation in operations:
        for index, path in enumerate(operation.paths):
            item = _operation(operation, alias_of=operation.paths[0] if index else None)
            paths.setdefault(path, {})[operation.method] = item
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "lightspeed-collector",
            "version": __version__,
            "summary": "Answers questions through pluggable LLM providers and records "
            "transcripts and feedback as redacted, schema-checked JSON.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": list(_TAGS),
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Used by the noop-with-token, api-key and jwk-token "
                    "authentication modules; the default noop module reads the user from "
                    "the user_id query parameter instead.",
                }
            },
            "headers": {
                "X-Request-ID": {
                    "description": "The request's id, also in every log line about it: the "
                    "client's own when it sent a safe one (1-128 of A-Z a-z 0-9 . _ : -), "
                    "else one the service made.",
                    "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"},
                },
                "X-Conversation-ID": {
                    "description": "The conversation the streamed answer belongs to (new or "
                    "continued); a text/plain answer names it nowhere else.",
                    "schema": {"type": "string"},
                },
                "Retry-After": {
                    "description": "Seconds to wait before trying again, when the provider said.",
                    "schema": {"type": "integer", "minimum": 0},
                },
            },
            "parameters": {
                "X-Request-ID": {
                    "name": "X-Request-ID",
                    "in": "header",
                    "required": False,
                    "description": "An id of the client's choosing, echoed and logged when safe.",
                    "schema": {"type": "string"},
                }
            },
        },
    }


def _as_component(schema: dict[str, Any]) -> dict[str, Any]:
    version = schema.pop("schema_version", None)
    cleaned: dict[str, Any] = _without_messages(schema)
    if version is not None:
        cleaned["x-schema-version"] = version
    return cleaned


def _without_messages(node: Any) -> Any:
    """Drop ``x-messages``: its keys are keyword names (``pattern``), which tools that search
    a schema for keywords mistake for the keywords themselves."""
    if isinstance(node, dict):
        return {k: _without_messages(v) for k, v in node.items() if k != "x-messages"}
    if isinstance(node, list):
        return [_without_messages(item) for item in node]
    return node


def _operation(operation: Operation, alias_of: str | None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "operationId": operation.operation_id + ("_unversioned" if alias_of else ""),
        "summary": operation.summary,
        "tags": [operation.tag],
        "parameters": [{"$ref": "#/components/parameters/X-Request-ID"}],
    }
    description = operation.description
    if alias_of:
        description = f"The same as `{operation.method.upper()} {alias_of}`." + (
            f" {description}" if description else ""
        )
    if description:
        item["description"] = description
    if operation.request_schema:
        item["requestBody"] = {
            "required": True,
            "content": {JSON: {"schema": {"$ref": COMPONENTS + operation.request_schema}}},
        }
    responses: dict[str, Any] = {}
    for status, response in sorted(operation.responses.items()):
        responses[str(status)] = _response(response)
    for status in sorted(set(operation.errors)):
        responses[str(status)] = _error_response(status)
    item["responses"] = responses
    # Which credentials a request needs depends on authentication.module; none is also valid.
    item["security"] = [{}, {"bearer": []}] if operation.authenticated else [{}]
    return item


def _response(response: Response) -> dict[str, Any]:
    if response.schema:
        content: Mapping[str, Any] = {JSON: {"schema": {"$ref": COMPONENTS + response.schema}}}
    else:
        content = response.content or {}
    item: dict[str, Any] = {
        "description": response.description,
        "headers": {
            name: {"$ref": f"#/components/headers/{name}"}
            for name in ("X-Request-ID", *response.headers)
        },
        "content": {media_type: dict(media) for media_type, media in content.items()},
    }
    if response.links:
        item["links"] = {name: dict(link) for name, link in response.links.items()}
    return item


def _error_response(status: int) -> dict[str, Any]:
    headers: dict[str, Any] = {"X-Request-ID": {"$ref": "#/components/headers/X-Request-ID"}}
    if status == 429:
        headers["Retry-After"] = {"$ref": "#/components/headers/Retry-After"}
    return {
        "description": _ERROR_DESCRIPTIONS[status],
        "headers": headers,
        "content": {JSON: {"schema": {"$ref": COMPONENTS + "error"}}},
    }
