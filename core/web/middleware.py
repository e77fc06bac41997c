"""Per-request bookkeeping: a request id for logs and clients, metrics, one access log line."""

from __future__ import annotations

import contextvars
import itertools
import logging
import re
import secrets
import time
from typing import Any

import falcon

from ..metrics import Metrics

log = logging.getLogger("lightspeed_collector.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# A random per-process prefix and a counter: unique like a UUID, without a system call for
# randomness on every request.
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count(1)
# Clients choose the method; unknown ones share a label so they cannot grow the metrics.
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request_id", default=None
)


class RequestContext:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        offered = req.get_header(REQUEST_ID_HEADER) or ""
        # A client's id is echoed only when it is harmless in a log line.
        request_id = offered if _SAFE_ID.match(offered) else f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"
        req.context.request_id = request_id
        req.context.started = time.perf_counter()
        current_request_id.set(request_id)

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, req_succeeded: bool
    ) -> None:
        request_id = getattr(req.context, "request_id", None)
        if request_id:
            resp.set_header(REQUEST_ID_HEADER, request_id)
        elapsed = time.perf_counter() - getattr(req.context, "started", time.perf_counter())
        route = req.uri_template or "unmatched"
        status = resp.status_code
        method = req.method if req.method in _KNOWN_METHODS else "OTHER"
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            # labels() takes a lock and builds a key on every call; the children never change.
            children = (
                self._metrics.requests.labels(route=route, method=method, status=str(status)),
                self._metrics.latency.labels(route=route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(elapsed)
        log.debug("%s %s %d %.1fms", req.method, req.path, status, elapsed * 1000)
        current_request_id.set(None)
