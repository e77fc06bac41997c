"""One error envelope for every failure: ``{"detail": {"response", "cause"}}``.

Domain errors, Falcon's own HTTP errors (unknown route, wrong method) and unexpected
exceptions all end up here, so a client never has to parse two shapes and never sees a
traceback.
"""

from __future__ import annotations

import logging
from typing import Any

import falcon

from ..errors import CollectorError, RateLimited, ValidationFailed
from ..surrogates import replace_surrogates

log = logging.getLogger(__name__)


def envelope(
    response: str, cause: str, errors: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    detail: dict[str, Any] = {"response": response, "cause": cause}
    if errors is not None:
        detail["errors"] = errors
    # Error causes are scrubbed where they are made (CollectorError); field messages written
    # by plugins and Falcon's own errors are not, and no JSON response can carry a lone
    # surrogate.
    cleaned: dict[str, Any] = replace_surrogates({"detail": detail})
    return cleaned


def handle_collector_error(
    req: falcon.Request, resp: falcon.Response, ex: CollectorError, params: Any
) -> None:
    resp.status = ex.status
    errors = None
    if isinstance(ex, ValidationFailed):
        errors = [{"loc": list(e.loc), "msg": e.msg} for e in ex.errors]
    if isinstance(ex, RateLimited) and ex.retry_after is not None:
        resp.set_header("Retry-After", str(ex.retry_after))
    if ex.status >= 500:
        log.error("%s: %s", ex.response, ex.cause)
    resp.media = envelope(ex.response, ex.cause, errors)


def handle_unexpected(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    if isinstance(ex, falcon.HTTPError):
        raise ex
    request_id = getattr(req.context, "request_id", "unknown")
    log.exception("unexpected error while handling %s %s", req.method, req.path)
    resp.status = 500
    resp.media = envelope(
        "Internal server error",
        f"An unexpected error occurred; the service log has the details under request id {request_id}",
    )


def serialize_http_error(
    req: falcon.Request, resp: falcon.Response, exception: falcon.HTTPError
) -> None:
    title = exception.title or "Error"
    cause = exception.description or title
    resp.content_type = falcon.MEDIA_JSON
    resp.media = envelope(title, cause)
