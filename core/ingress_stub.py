"""``lightspeed-collector ingress-stub``: a local receiver that answers like the ingress server.

It follows the real server's rules (see docs/export.md, "Trying it on one machine"): the
upload path and its alias, the ``file`` or ``upload`` field (else 400 "File or upload field
not found"), the part content type ``application/vnd.redhat.<service>.<category>...`` with a
service allow-list (else 415 with an empty body), the size limit (else 413 "File exceeds
maximum file size (N) for upload: n"), test requests (200), and 202 with
``{"request_id": ..., "upload": {}}``. The request id comes from ``x-rh-insights-request-id``
when given, as the real server does. An optional bearer token stands for the gateway in
front of it (401).

Every accepted upload is stored under ``--store`` with its headers (the token masked), and
``index.jsonl`` lists them; an upload whose file name was seen before is flagged as a
duplicate, which is how tests (and people) see an archive arrive twice.

The fault-injection options exist for tests of the exporter and are marked as such in
``--help``: answer the first N uploads with an error (with a ``Retry-After``), answer late,
store an upload and then stall (a server that accepted an upload whose answer never
arrived), or omit the request id.

Falcon and waitress are imported only when the stub runs, so the rest of the command line
does not pay for them.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import falcon

log = logging.getLogger("lightspeed_collector.ingress_stub")

UPLOAD_PATHS = ("/api/ingress/v1/upload", "/r/insights/platform/ingress/v1/upload")
VERSION_PATHS = ("/api/ingress/v1/version", "/r/insights/platform/ingress/v1/version")
UPLOADS_LISTING_PATH = "/stub/uploads"
DEFAULT_MAX_SIZE = 104857600
DEFAULT_SERVICES = ("ols", "rhos-lightspeed", "ocm-assisted-chat", "openshift-lightspeed")
REQUEST_ID_HEADER = "X-RH-INSIGHTS-REQUEST-ID"
CONTENT_TYPE = re.compile(r"application/vnd\.redhat\.([a-z0-9-]+)\.([a-z0-9-]+).*")
NOT_FOUND_MESSAGE = "File or upload field not found"
_CHUNK = 1024 * 1024
_STALL_STEP = 0.05
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# waitress refuses bodies past its own limit with its own page; keep that well above ours
# so an oversized file meets our 413 and its message, as with the real server.
_BODY_SLACK = 16 * 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=_port,
        default=8081,
        help="port, 0 to 65535; 0 picks a free one (default: 8081)",
    )
    parser.add_argument(
        "--store", required=True, help="folder where uploads and their headers are kept"
    )
    parser.add_argument(
        "--max-size",
        type=int,
        default=DEFAULT_MAX_SIZE,
        help=f"largest file accepted, in bytes; larger ones get 413 (default: {DEFAULT_MAX_SIZE})",
    )
    parser.add_argument(
        "--service",
        action="append",
        dest="services",
        metavar="NAME",
        help="service name accepted in the part content type; repeat for several "
        f"(default: {', '.join(DEFAULT_SERVICES)})",
    )
    parser.add_argument(
        "--token",
        help="require 'Authorization: Bearer TOKEN' like the gateway in front of the real "
        "server (401 otherwise); default: no check",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="info logs one line per request (default: info)",
    )
    faults = parser.add_argument_group(
        "fault injection (FOR TESTS ONLY: the real server does none of this)"
    )
    faults.add_argument(
        "--fail-first",
        type=int,
        default=0,
        metavar="N",
        help="TEST ONLY: answer the first N uploads with --fail-status instead of storing them",
    )
    faults.add_argument(
        "--fail-status",
        type=int,
        default=503,
        metavar="CODE",
        help="TEST ONLY: status of the injected failures (default: 503)",
    )
    faults.add_argument(
        "--retry-after",
        metavar="VALUE",
        help="TEST ONLY: Retry-After header of the injected failures (seconds or an HTTP date)",
    )
    faults.add_argument(
        "--stall-seconds",
        type=float,
        default=0.0,
        metavar="S",
        help="TEST ONLY: wait S seconds before answering an upload; if the client hangs up "
        "meanwhile the upload is discarded, unless --store-before-stall",
    )
    faults.add_argument(
        "--stall-first",
        type=int,
        default=None,
        metavar="N",
        help="TEST ONLY: stall only the first N uploads (default: all)",
    )
    faults.add_argument(
        "--store-before-stall",
        action="store_true",
        help="TEST ONLY: store the upload before stalling, like a server that accepted an "
        "upload whose answer the client never saw",
    )
    faults.add_argument(
        "--no-request-id",
        action="store_true",
        help="TEST ONLY: answer 202 without a request_id in the body",
    )


def _port(text: str) -> int:
    """A TCP port; argparse names the option in the error. Checked here because the socket
    layer does not refuse 99999: it wraps to another port and listens there."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0 to 65535; 0 picks a free one)")
    return value


@dataclass(frozen=True)
class StubOptions:
    store: Path
    max_size: int = DEFAULT_MAX_SIZE
    services: frozenset[str] = frozenset(DEFAULT_SERVICES)
    token: str | None = None
    fail_first: int = 0
    fail_status: int = 503
    retry_after: str | None = None
    stall_seconds: float = 0.0
    stall_first: int | None = None
    store_before_stall: bool = False
    no_request_id: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> StubOptions:
        return cls(
            store=Path(args.store),
            max_size=args.max_size,
            services=frozenset(args.services or DEFAULT_SERVICES),
            token=args.token,
            fail_first=args.fail_first,
            fail_status=args.fail_status,
            retry_after=args.retry_after,
            stall_seconds=args.stall_seconds,
            stall_first=args.stall_first,
            store_before_stall=args.store_before_stall,
            no_request_id=args.no_request_id,
        )


class UploadStore:
    """Keeps each upload in ``uploads/<request id>/`` with ``request.json`` beside it, and
    one line per upload in ``index.jsonl``; remembers file names to flag duplicates."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.uploads = root / "uploads"
        self.incoming = root / ".incoming"
        self.index = root / "index.jsonl"
        for folder in (self.uploads, self.incoming):
            folder.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._first_seen: dict[str, str] = {}
        self.duplicates: list[dict[str, str]] = []
        if self.index.exists():
            for line in self.index.read_text("utf-8").splitlines():
                entry = json.loads(line)
                self._first_seen.setdefault(entry["filename"], entry["request_id"])
                if entry.get("duplicate_of"):
                    self.duplicates.append(
                        {"filename": entry["filename"], "request_id": entry["request_id"]}
                    )

    def save(
        self, request_id: str, received: Path, filename: str, details: dict[str, Any]
    ) -> str | None:
        """Store an upload; answers the request id of an earlier upload of the same name."""
        folder = self.uploads / request_id
        folder.mkdir(parents=True)
        safe_name = _SAFE_NAME.sub("_", filename) or "upload"
        os.replace(received, folder / safe_name)
        with self._lock:
            duplicate_of = self._first_seen.get(filename)
            if duplicate_of is None:
                self._first_seen[filename] = request_id
            else:
                self.duplicates.append({"filename": filename, "request_id": request_id})
            entry = {
                **details,
                "request_id": request_id,
                "filename": filename,
                "stored_as": str(folder / safe_name),
                "duplicate_of": duplicate_of,
            }
            (folder / "request.json").write_text(json.dumps(entry, indent=2) + "\n", "utf-8")
            with self.index.open("a", encoding="utf-8") as index:
                index.write(json.dumps(entry) + "\n")
        return duplicate_of

    def listing(self) -> dict[str, Any]:
        with self._lock:
            return {
                "uploads": sum(1 for _ in self.uploads.iterdir()),
                "distinct_files": len(self._first_seen),
                "duplicates": list(self.duplicates),
            }


@dataclass(frozen=True)
class _Received:
    temp: Path
    filename: str
    content_type: str
    size: int
    sha256: str


class _UploadResource:
    def __init__(self, options: StubOptions, store: UploadStore) -> None:
        self.options = options
        self.store = store
        self._counter = itertools.count(1)

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        import falcon

        if self.options.token is not None:
            expected = f"Bearer {self.options.token}"
            if req.get_header("Authorization") != expected:
                log.info("401: missing or wrong bearer token")
                resp.status = falcon.HTTP_401
                resp.content_type = falcon.MEDIA_TEXT
                resp.text = "Missing or invalid bearer token"
                return
        request_id = req.get_header(REQUEST_ID_HEADER) or uuid.uuid4().hex
        received, test_request = self._read_body(req)
        try:
            if test_request:
                log.info("200: test request %s", request_id)
                resp.status = falcon.HTTP_200
                resp.media = {"request_id": request_id, "upload": {}}
                return
            number = next(self._counter)
            if number <= self.options.fail_first:
                log.info(
                    "%d: injected failure for upload %d of %d",
                    self.options.fail_status,
                    number,
                    self.options.fail_first,
                )
                resp.status = self.options.fail_status
                resp.content_type = falcon.MEDIA_TEXT
                resp.text = f"stub: injected failure {number} of {self.options.fail_first}"
                if self.options.retry_after is not None:
                    resp.set_header("Retry-After", self.options.retry_after)
                return
            if received is None:
                log.info("400: %s", NOT_FOUND_MESSAGE)
                resp.status = falcon.HTTP_400
                resp.content_type = falcon.MEDIA_TEXT
                resp.text = NOT_FOUND_MESSAGE
                return
            self._answer(req, resp, request_id, number, received)
        finally:
            if received is not None:
                received.temp.unlink(missing_ok=True)

    def _answer(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        request_id: str,
        number: int,
        received: _Received,
    ) -> None:
        import falcon

        temp, filename, content_type = received.temp, received.filename, received.content_type
        size, digest = received.size, received.sha256
        matched = CONTENT_TYPE.search(content_type)
        if matched is None or matched.group(1) not in self.options.services:
            log.info("415: content type %r not accepted", content_type)
            resp.status = falcon.HTTP_415
            resp.text = ""
            return
        if size > self.options.max_size:
            message = f"File exceeds maximum file size ({self.options.max_size}) for upload: {size}"
            log.info("413: %s", message)
            resp.status = falcon.HTTP_413
            resp.content_type = falcon.MEDIA_TEXT
            resp.text = message
            return
        details = {
            "service": matched.group(1),
            "category": matched.group(2),
            "content_type": content_type,
            "size": size,
            "sha256": digest,
            "received": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "headers": _masked_headers(req.headers),
        }
        stall = self.options.stall_seconds
        if self.options.stall_first is not None and number > self.options.stall_first:
            stall = 0.0
        stored = False
        if stall:
            log.info(
                "upload %d (%s) received; stalling %.1f s before answering", number, filename, stall
            )
        if stall and self.options.store_before_stall:
            self._store(request_id, temp, filename, details)
            stored = True
        if stall and not self._stall(req, stall) and not stored:
            log.info("client hung up during the stall; upload %s discarded", filename)
            return
        if not stored:
            self._store(request_id, temp, filename, details)
        resp.status = falcon.HTTP_202
        resp.media = (
            {"upload": {}}
            if self.options.no_request_id
            else {
                "request_id": request_id,
                "upload": {},
            }
        )

    def _store(self, request_id: str, temp: Path, filename: str, details: dict[str, Any]) -> None:
        duplicate_of = self.store.save(request_id, temp, filename, details)
        if duplicate_of:
            log.warning(
                "202: DUPLICATE upload of %s (%d bytes) as request %s; first stored as %s",
                filename,
                details["size"],
                request_id,
                duplicate_of,
            )
        else:
            log.info(
                "202: stored %s (%d bytes) as request %s", filename, details["size"], request_id
            )

    @staticmethod
    def _stall(req: falcon.Request, seconds: float) -> bool:
        """Wait; ``False`` when the client hung up meanwhile."""
        disconnected = req.env.get("waitress.client_disconnected")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if disconnected is not None and disconnected():
                return False
            time.sleep(_STALL_STEP)
        return not (disconnected is not None and disconnected())

    def _read_body(self, req: falcon.Request) -> tuple[_Received | None, bool]:
        """The uploaded file (the ``file`` part, else the ``upload`` part) spooled to disk,
        and whether this is a test request (a ``test=test`` field or ``{"test": "test"}``)."""
        import falcon
        from falcon.media.multipart import MultipartParseError

        content_type = (req.content_type or "").split(";")[0].strip().lower()
        if content_type == "application/json":
            body = req.bounded_stream.read(64 * 1024)
            return None, re.search(rb'\{\s*"test"\s*:\s*"test"\s*\}', body) is not None
        if content_type == "application/x-www-form-urlencoded":
            fields = urllib.parse.parse_qs(req.bounded_stream.read(64 * 1024).decode("latin-1"))
            return None, fields.get("test") == ["test"]
        if content_type != "multipart/form-data":
            return None, False
        found: dict[str, _Received] = {}
        test_request = False
        try:
            for part in req.get_media():
                if part.name in ("file", "upload") and part.filename and part.name not in found:
                    found[part.name] = self._spool(part)
                elif part.name == "test" and not part.filename:
                    test_request = test_request or part.stream.read(16) == b"test"
                else:
                    part.stream.read()
        except (MultipartParseError, falcon.MediaMalformedError) as exc:
            log.info("malformed multipart body: %s", exc)
            test_request = False
        chosen = found.pop("file", None) or found.pop("upload", None)
        for unused in found.values():
            unused.temp.unlink(missing_ok=True)
        return chosen, test_request

    def _spool(self, part: Any) -> _Received:
        fd, name = tempfile.mkstemp(dir=self.store.incoming)
        digest = hashlib.sha256()
        size = 0
        with os.fdopen(fd, "wb") as handle:
            while chunk := part.stream.read(_CHUNK):
                handle.write(chunk)
                digest.update(chunk)
                size += len(chunk)
        return _Received(
            Path(name), str(part.filename), str(part.content_type or ""), size, digest.hexdigest()
        )


class _VersionResource:
    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        from . import __version__

        resp.media = {"version": f"lightspeed-collector-stub {__version__}", "commit": "stub"}


class _ListingResource:
    def __init__(self, store: UploadStore) -> None:
        self.store = store

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.media = self.store.listing()


def _masked_headers(headers: Mapping[str, str]) -> dict[str, str]:
    masked: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() == "authorization":
            scheme, _, token = value.partition(" ")
            value = f"{scheme} ********" if token else "********"
        masked[name] = value
    return masked


def create_app(options: StubOptions) -> falcon.App[falcon.Request, falcon.Response]:
    import falcon

    store = UploadStore(options.store)
    app = falcon.App()
    upload = _UploadResource(options, store)
    for path in UPLOAD_PATHS:
        app.add_route(path, upload)
    version = _VersionResource()
    for path in VERSION_PATHS:
        app.add_route(path, version)
    app.add_route(UPLOADS_LISTING_PATH, _ListingResource(store))
    return app


def run(args: argparse.Namespace) -> int:
    import waitress

    from . import logs
    from .errors import listen_failure

    logs.configure(args.log_level, "text", request_ids=False)
    options = StubOptions.from_args(args)
    try:
        app = create_app(options)
    except OSError as exc:
        print(
            f"lightspeed-collector ingress-stub: cannot store uploads in {options.store}: "
            f"{exc.strerror or exc}",
            file=sys.stderr,
        )
        return 2
    try:
        server = waitress.create_server(
            app,
            host=args.host,
            port=args.port,
            threads=4,
            # Lets a stalled request notice that its client hung up.
            channel_request_lookahead=1,
            max_request_body_size=options.max_size + _BODY_SLACK,
            ident="ingress-stub",
        )
    except (OSError, ValueError) as exc:
        _, reason = listen_failure(exc)
        print(
            f"lightspeed-collector ingress-stub: cannot listen on {args.host}:{args.port}: "
            f"{reason}",
            file=sys.stderr,
        )
        return 2

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    log.info("storing uploads under %s", options.store.absolute())
    log.info(
        "listening on http://%s:%s%s",
        server.effective_host,
        server.effective_port,
        UPLOAD_PATHS[0],
    )
    try:
        server.run()
    except (SystemExit, KeyboardInterrupt):
        pass
    finally:
        server.close()
    return 0
