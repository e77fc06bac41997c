"""The Falcon application factory and the waitress server around it."""

from __future__ import annotations

import falcon

from ..errors import CollectorError
from ..openapi import build_document
from ..service import Service
from .errors import handle_collector_error, handle_unexpected, serialize_http_error
from .middleware import RequestContext
from .resources import (
    FeedbackResource,
    FeedbackStatusResource,
    LivenessResource,
    MetricsResource,
    OpenAPIResource,
    QueryResource,
    ReadinessResource,
)
from .streaming import StreamingQueryResource


def create_app(service: Service) -> falcon.App[falcon.Request, falcon.Response]:
    app = falcon.App(middleware=[RequestContext(service.metrics)])
    app.req_options.strip_url_path_trailing_slash = True
    app.add_error_handler(Exception, handle_unexpected)
    app.add_error_handler(CollectorError, handle_collector_error)
    app.set_error_serializer(serialize_http_error)

    query = QueryResource(service)
    streaming_query = StreamingQueryResource(service)
    feedback = FeedbackResource(service)
    # The reference service's documentation calls the un-versioned paths, so both answer.
    for prefix in ("/v1", ""):
        app.add_route(f"{prefix}/query", query)
        app.add_route(f"{prefix}/streaming_query", streaming_query)
        app.add_route(f"{prefix}/feedback", feedback)
    app.add_route("/v1/feedback/status", FeedbackStatusResource(service))
    app.add_route("/readiness", ReadinessResource(service))
    app.add_route("/liveness", LivenessResource())
    app.add_route("/metrics", MetricsResource(service))
    app.add_route("/openapi.json", OpenAPIResource(build_document()))
    return app
