"""The ``ingress`` exporter: uploads archives to an Insights-style ingress server.

One ``POST <ingress_server_url>`` per archive, ``multipart/form-data`` with a single part:
field ``file``, filename ``<service>-<archive id>.tar.gz`` (so a receiver can recognise an
archive sent twice), content type
``application/vnd.redhat.<ingress_content_service_name>.periodic+tar``. The body is streamed
from the archive on disk, never copied into memory, so an upload costs a few buffers whatever
the archive's size. The token is read again for every upload, so a rotated token file takes
effect without a restart.

It uses only the public plugin API and reads the keys of
``user_data_collection.data_collector`` that the reference service defined.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import ssl
import time
from collections.abc import Mapping
from typing import IO, Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3

from lightspeed_collector import __version__, hookimpl
from lightspeed_collector.types import (
    Archive,
    ArchiveTooLarge,
    Config,
    ConfigError,
    Exporter,
    ExportFailed,
    ExportMisconfigured,
    ExportUnavailable,
    Receipt,
    innermost_cause,
    masked_url,
)

NAME = "ingress"
SETTINGS_PATH = "user_data_collection.data_collector"
CONTENT_TYPE = "application/vnd.redhat.{service}.periodic+tar"
_READ_CHUNK = 64 * 1024
_DETAIL_LIMIT = 300
# Visible ASCII: what a bearer token is made of, and all an HTTP header can carry safely.
_TOKEN_SHAPE = re.compile(r"[\x21-\x7e]+")
# Enough for any answer the ingress gives (a small JSON object); more is never read.
_ANSWER_LIMIT = 64 * 1024
_RETRYABLE = frozenset({408, 425, 429}) | frozenset(range(500, 600))

log = logging.getLogger(__name__)


class MultipartFile:
    """A ``multipart/form-data`` body with one file part, read from disk as it is sent.

    ``requests`` takes its length for ``Content-Length`` (so no chunked encoding, which some
    gateways refuse) and then pulls it through ``read``.
    """

    def __init__(
        self, path: os.PathLike[str], field: str, filename: str, content_type: str
    ) -> None:
        self.boundary = secrets.token_hex(16)
        self._head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 - closed by close()
        self._size = os.fstat(self._file.fileno()).st_size
        self._stage = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self._size + len(self._tail)

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = len(self)
        if self._stage == 0:
            self._stage = 1
            return self._head
        if self._stage == 1:
            chunk = self._file.read(min(size, _READ_CHUNK) or _READ_CHUNK)
            if chunk:
                return chunk
            self._stage = 2
        if self._stage == 2:
            self._stage = 3
            return self._tail
        return b""

    def close(self) -> None:
        self._file.close()


class _BearerToken(requests.auth.AuthBase):
    """The token as requests' own auth: a plain Authorization header would be replaced by
    credentials requests finds in ``~/.netrc`` for the same host."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token}"
        return request


class IngressExporter:
    name = NAME

    def __init__(self, config: Config, session: requests.Session | None = None) -> None:
        self._config = config
        self._session = session or requests.Session()

    def _settings(self) -> Mapping[str, Any]:
        return self._config.section("user_data_collection", "data_collector")

    def export(self, archive: Archive) -> Receipt:
        settings = self._settings()
        url = settings.get("ingress_server_url")
        service = settings.get("ingress_content_service_name")
        if not url:
            raise ExportMisconfigured(
                "no ingress server URL is set", setting=f"{SETTINGS_PATH}.ingress_server_url"
            )
        try:
            _where(url, strict=True)
        except ValueError:
            # Retrying cannot mend an address that does not parse (a bad IPv6 host, a port
            # out of range): the operator must fix it. The text may hold credentials, so it
            # is not quoted.
            raise ExportMisconfigured(
                "the ingress server URL cannot be parsed (check its host and port)",
                setting=f"{SETTINGS_PATH}.ingress_server_url",
            ) from None
        if not service:
            raise ExportMisconfigured(
                "no content service name is set",
                setting=f"{SETTINGS_PATH}.ingress_content_service_name",
            )
        try:
            token = self._config.resolve_secret(
                settings, "ingress_server_auth_token", SETTINGS_PATH
            )
        except ConfigError as exc:
            raise ExportMisconfigured(exc.problem, setting=exc.path) from None
        if token is not None and not _TOKEN_SHAPE.fullmatch(token):
            raise ExportMisconfigured(
                "the token holds characters an Authorization header cannot carry (spaces, "
                "control or non-ASCII characters)",
                setting=f"{SETTINGS_PATH}.ingress_server_auth_token",
            )
        headers = {
            "User-Agent": settings.get("user_agent") or f"lightspeed-collector/{__version__}",
        }
        body = MultipartFile(
            archive.path,
            "file",
            f"{service}-{archive.archive_id}.tar.gz",
            CONTENT_TYPE.format(service=service),
        )
        headers["Content-Type"] = body.content_type
        where = _where(url)
        timeout = settings["connection_timeout_seconds"]
        try:
            response = self._session.post(
                url,
                data=body,
                headers=headers,
                auth=_BearerToken(token) if token else None,
                timeout=timeout,
                # Followed, a 301/302/303 turns the upload into a GET of the new address,
                # whose 200 would count an archive nobody received as sent.
                allow_redirects=False,
                # The answer is read by us, and only its first _ANSWER_LIMIT bytes.
                stream=True,
            )
        except requests.Timeout:
            raise ExportUnavailable(f"{where} did not answer within {timeout} s") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema) as exc:
            raise ExportMisconfigured(
                f"{where} is not a usable URL ({type(exc).__name__})",
                setting=f"{SETTINGS_PATH}.ingress_server_url",
            ) from None
        except requests.RequestException as exc:
            cause = innermost_cause(exc)
            if isinstance(cause, ssl.SSLCertVerificationError):
                # Retrying cannot help: the operator must fix the address or the trust store.
                raise ExportMisconfigured(
                    f"the TLS certificate of {where} could not be verified "
                    f"({cause.verify_message or cause.reason}); check the address, or name "
                    "the CA that signed it in the REQUESTS_CA_BUNDLE environment variable",
                    setting=f"{SETTINGS_PATH}.ingress_server_url",
                ) from None
            raise ExportUnavailable(f"cannot reach {where}: {_reason(exc)}") from None
        finally:
            body.close()
        with response:
            return self._receipt(response, archive, where, timeout)

    def _receipt(
        self, response: requests.Response, archive: Archive, where: str, timeout: float
    ) -> Receipt:
        status = response.status_code
        answer = _read_answer(response, timeout)
        if 200 <= status < 300:
            request_id = _request_id(answer)
            if request_id is None:
                log.warning(
                    "%s accepted archive %s with status %d but sent no request_id; counted as sent",
                    where,
                    archive.archive_id,
                    status,
                )
            return Receipt(status=status, request_id=request_id, detail=None)
        detail = f"{where} answered {status} {response.reason or ''}".rstrip()
        message = _message(answer)
        if message:
            detail = f"{detail}: {message}"
        if 300 <= status < 400:
            location = response.headers.get("Location")
            target = f" to {_where(urljoin(where, location))}" if location else ""
            raise ExportMisconfigured(
                f"{where} answered {status} {response.reason or ''}".rstrip()
                + f", redirecting{target}; uploads do not follow redirects, so set the "
                "address that accepts them",
                status=status,
                setting=f"{SETTINGS_PATH}.ingress_server_url",
            )
        if status == 413:
            raise ArchiveTooLarge(detail, status=status)
        if status in (401, 403):
            raise ExportMisconfigured(
                detail, status=status, setting=f"{SETTINGS_PATH}.ingress_server_auth_token"
            )
        if status == 415:
            raise ExportMisconfigured(
                detail, status=status, setting=f"{SETTINGS_PATH}.ingress_content_service_name"
            )
        if status == 404:
            raise ExportMisconfigured(
                detail, status=status, setting=f"{SETTINGS_PATH}.ingress_server_url"
            )
        if status in _RETRYABLE:
            raise ExportUnavailable(
                detail, status=status, retry_after=response.headers.get("Retry-After")
            )
        raise ExportFailed(detail, status=status)


def _where(url: str, strict: bool = False) -> str:
    """The URL without credentials or query, safe to log; ``********`` when it cannot be
    parsed (a ``ValueError`` instead when ``strict``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        if strict:
            raise
        return masked_url(url)
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _reason(exc: requests.RequestException) -> str:
    """The innermost cause, without the URL dump urllib3 wraps around it."""
    cause = innermost_cause(exc)
    return type(cause).__name__ if not str(cause) else f"{type(cause).__name__}: {str(cause)[:120]}"


def _read_answer(response: requests.Response, timeout: float) -> Any:
    """The server's answer: its JSON if it is JSON, else its text.

    Whatever the server does, reading it is bounded: at most _ANSWER_LIMIT bytes (an endless
    page cannot fill memory), for about ``timeout`` seconds (the read timeout applies to each
    read, so an answer trickled a byte at a time would otherwise hold the upload for hours),
    and nothing in it can fail the upload: the status has already said whether the archive
    was taken, and an unreadable answer only loses its request id.
    """
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        while size < _ANSWER_LIMIT and time.monotonic() < deadline:
            chunk = response.raw.read1(_ANSWER_LIMIT - size, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError):
        pass  # what arrived is all there is
    raw = b"".join(chunks)
    try:
        text = raw.decode(response.encoding or "utf-8", errors="replace")
    except LookupError:  # a charset Python does not know
        text = raw.decode("utf-8", errors="replace")
    # The real server sets no JSON content type on its answer, so the body is parsed as
    # JSON whatever the header says.
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def _request_id(answer: Any) -> str | None:
    if isinstance(answer, dict) and isinstance(answer.get("request_id"), str):
        return answer["request_id"] or None
    return None


def _message(answer: Any) -> str:
    text = answer if isinstance(answer, str) else json.dumps(answer)
    if isinstance(answer, dict):
        for key in ("message", "detail", "error", "errors"):
            if answer.get(key):
                value = answer[key]
                text = value if isinstance(value, str) else json.dumps(value)
                break
    return " ".join(text.split())[:_DETAIL_LIMIT]


@hookimpl
def register_exporters(config: Config) -> list[Exporter]:
    return [IngressExporter(config)]
