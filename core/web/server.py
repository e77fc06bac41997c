"""Serving the app with waitress until SIGTERM or SIGINT."""

from __future__ import annotations

import errno
import json
import logging
import signal
from types import FrameType
from typing import Any

import waitress
from waitress.channel import HTTPChannel
from waitress.task import ErrorTask

from ..errors import BadRequest, ConfigError, PayloadTooLarge, listen_failure
from ..service import Service
from .app import create_app
from .errors import envelope

log = logging.getLogger(__name__)

# waitress spools bodies before the app sees them; cap that spool a little above our own
# limit, so a body slightly too large is read and refused by the app (naming its size, the
# connection kept), while an absurd one is refused from its headers and never fills the disk.
_SPOOL_SLACK = 1024 * 1024
_HEADERS_TOO_LARGE = 431


class _EnvelopeErrorTask(ErrorTask):  # type: ignore[misc]
    """What waitress refuses before the app runs (a malformed request line, oversized
    headers, a body past the spool cap) is answered in the service's JSON envelope too, so
    a client handles one error shape whichever layer said no."""

    def execute(self) -> None:
        error = self.request.error
        if error.code == PayloadTooLarge.status:
            limit = self.channel.server.adj.max_request_body_size - _SPOOL_SLACK
            response = PayloadTooLarge.response
            cause = f"Request body exceeds the limit of {limit} bytes"
        elif error.code == _HEADERS_TOO_LARGE:
            limit = self.channel.server.adj.max_request_header_size
            response = "Request headers too large"
            cause = f"Request headers exceed the limit of {limit} bytes"
        else:
            response = BadRequest.response if error.code == BadRequest.status else error.reason
            cause = str(error.body).strip() or error.reason
        body = json.dumps(envelope(response, cause)).encode()
        self.status = f"{error.code} {error.reason}"
        self.response_headers.append(("Content-Type", "application/json"))
        self.set_close_on_finish()
        self.content_length = len(body)
        self.write(body)


class _Channel(HTTPChannel):  # type: ignore[misc]
    error_task_class = _EnvelopeErrorTask

    def send_continue(self) -> None:
        """No ``100 Continue`` for a request already refused from its headers (a
        Content-Length past the cap): the client would upload the whole body first, and
        waitress, having invited it, would wait for that body before answering."""
        if self.request is not None and self.request.error is not None:
            self.request.expect_continue = False
            return
        super().send_continue()


def _use_envelope_errors(server: Any) -> None:
    """waitress answers a listening socket's connections with its ``channel_class``; a
    server listening on several sockets keeps one such server per socket in its map."""
    listeners = [server, *getattr(server, "map", {}).values()]
    for listener in listeners:
        if hasattr(listener, "channel_class"):
            listener.channel_class = _Channel


def listen_error(host: str, port: int, exc: OSError | ValueError) -> ConfigError:
    """A port in use, or a host that is not this machine's or does not resolve, named by
    its setting."""
    number, reason = listen_failure(exc)
    key = "service.port" if number in (errno.EADDRINUSE, errno.EACCES) else "service.host"
    return ConfigError(key, f"cannot listen on {host}:{port}: {reason}")


def serve(service: Service) -> None:
    settings = service.config.section("service")
    app = create_app(service)
    try:
        server = waitress.create_server(
            app,
            host=settings["host"],
            port=settings["port"],
            threads=settings["threads"],
            max_request_body_size=settings["max_request_bytes"] + _SPOOL_SLACK,
            ident="lightspeed-collector",
            clear_untrusted_proxy_headers=True,
        )
    except (OSError, ValueError) as exc:
        service.close()
        raise listen_error(settings["host"], settings["port"], exc) from None
    _use_envelope_errors(server)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    host, port = server.effective_host, server.effective_port
    log.info("listening on http://%s:%s", host, port)
    if service.collector is not None:
        service.collector.start()
    try:
        server.run()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        log.info("stopping")
        server.close()
        # After the last request, so the final export cycle ships everything stored.
        if service.collector is not None:
            service.collector.stop()
        service.close()
