"""Serving the app with waitress until SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import signal
from types import FrameType

import waitress

from ..service import Service
from .app import create_app

log = logging.getLogger(__name__)

# waitress spools bodies before the app sees them; cap that spool a little above our own
# limit so an oversized body is refused by us (with the usual error envelope) but an absurd
# one never fills the disk.
_SPOOL_SLACK = 1024 * 1024


def serve(service: Service) -> None:
    settings = service.config.section("service")
    app = create_app(service)
    server = waitress.create_server(
        app,
        host=settings["host"],
        port=settings["port"],
        threads=settings["threads"],
        max_request_body_size=settings["max_request_bytes"] + _SPOOL_SLACK,
        ident="lightspeed-collector",
        clear_untrusted_proxy_headers=True,
    )

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
