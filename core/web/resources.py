"""HTTP resources. Each one reads the request, calls a core service, and sets the response."""

from __future__ import annotations

import json
from typing import Any

import falcon

from .. import validation
from ..errors import Unauthorized, ValidationFailed
from ..service import Service
from ..surrogates import holds_surrogate
from ..types import AuthRequest, Identity
from .body import read_json


class Endpoint:
    """What every authenticated JSON resource shares: who is asking, and the checked body."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.max_bytes: int = service.config.section("service")["max_request_bytes"]

    def identify(self, req: falcon.Request) -> Identity:
        headers = {name.lower(): _header_text(value) for name, value in req.headers.items()}
        params = {k: v if isinstance(v, str) else v[-1] for k, v in req.params.items()}
        request = AuthRequest(method=req.method, path=req.path, headers=headers, params=params)
        identity = self.service.authenticator.authenticate(request)
        if holds_surrogate(identity.user_id, identity.username, *identity.roles):
            # It would be pseudonymized, logged and echoed; none of that can carry it.
            raise Unauthorized(
                "The authenticated identity is not valid Unicode text (it holds an unpaired "
                "UTF-16 surrogate); check the claims the identity provider issues"
            )
        return identity

    def body(self, req: falcon.Request, schema: str) -> dict[str, Any]:
        data = read_json(req, self.max_bytes)
        problems = validation.check(schema, data, root=("body",))
        if problems:
            raise ValidationFailed(problems)
        checked: dict[str, Any] = data
        return checked


class QueryResource(Endpoint):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = self.identify(req)
        body = self.body(req, "query_request")
        resp.media = self.service.queries.ask(identity, body)


class FeedbackResource(Endpoint):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = self.identify(req)
        body = self.body(req, "feedback_request")
        self.service.feedback.submit(identity, body)
        resp.media = {"response": "feedback received"}


class FeedbackStatusResource(Endpoint):
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        self.identify(req)
        resp.media = {
            "functionality": "feedback",
            "status": {"enabled": self.service.feedback.enabled},
        }

    def on_put(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = self.identify(req)
        body = self.body(req, "feedback_status_request")
        resp.media = self.service.feedback.set_enabled(identity, body["status"])


class LivenessResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = {"alive": True}


class ReadinessResource:
    """Ready when every configured sink can write and the conversations database answers."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        problems: list[str] = []
        sinks: dict[str, Any] = {}
        for name in self.service.config.section("user_data_collection")["sinks"]:
            status = self.service.components.sinks[name].describe()
            sinks[name] = {
                "ready": status.ready,
                **({"problem": status.problem} if status.problem else {}),
            }
            if not status.ready:
                problems.append(f"sink {name}: {status.problem or 'not ready'}")
        try:
            self.service.conversations.ping()
        except Exception as exc:
            problems.append(f"conversations database: {exc}")
        ready = not problems
        resp.status = 200 if ready else 503
        resp.media = {
            "ready": ready,
            "reason": "service is ready" if ready else "; ".join(problems),
            "sinks": sinks,
        }


class MetricsResource:
    def __init__(self, service: Service) -> None:
        self.service = service

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.data, resp.content_type = self.service.metrics.render(req.get_header("Accept") or "")


class OpenAPIResource:
    """Serves the OpenAPI document built once at start-up (see ``lightspeed_collector.openapi``)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self._body = json.dumps(document, ensure_ascii=False).encode("utf-8")

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self._body


def _header_text(value: str) -> str:
    """A header value as the text the client meant.

    WSGI hands header bytes over decoded as Latin-1, while clients (curl, requests given
    bytes) send non-ASCII text as UTF-8; read that way, a key or token holding ``é`` would
    never match the one configured. Values that are not UTF-8 stay as they came.
    """
    if value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeError:
        return value
