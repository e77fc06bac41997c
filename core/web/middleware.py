"""Per-request bookkeeping: a request id for logs and clients, metrics, one access log line."""

from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid
from typing import Any

import falcon

from ..metrics import Metrics

log = logging.getLogger("lightspeed_collector.access")

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

current_request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "current_request_id", default=None
)


class RequestContext:
    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        offered = req.get_header(REQUEST_ID_HEADER) or ""
        # A client's id is echoed only when it is harmless in a log line.
        request_id = offered if _SAFE_ID.match(offered) else uuid.uuid4().hex
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
        self._metrics.requests.labels(route=route, method=req.method, status=str(status)).inc()
        self._metrics.latency.labels(route=route).observe(elapsed)
        log.debug("%s %s %d %.1fms", req.method, req.path, status, elapsed * 1000)
        current_request_id.set(None)
