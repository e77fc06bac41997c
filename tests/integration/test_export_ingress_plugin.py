"""The ``ingress`` exporter plugin against the ingress stub: the request it sends and how it
reads every kind of answer."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import ssl
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lightspeed_collector.config import Config
from lightspeed_collector.plugins.ingress import IngressExporter
from lightspeed_collector.types import (
    Archive,
    ArchiveTooLarge,
    ExportFailed,
    ExportMisconfigured,
    ExportUnavailable,
)
from tests.export_support import Stub, start_stub

SETTINGS = "user_data_collection.data_collector"


@pytest.fixture(scope="module")
def stub_with(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Stub]]:
    """One stub per set of options, shared by the module's tests."""
    started: dict[tuple[str, ...], Stub] = {}

    def get(*options: str) -> Stub:
        if options not in started:
            started[options] = start_stub(tmp_path_factory.mktemp("stub"), *options)
        return started[options]

    yield get
    for stub in started.values():
        stub.stop()


@pytest.fixture
def exporter_for(make_config: Callable[..., Config]) -> Callable[..., IngressExporter]:
    def make(url: str, **settings: object) -> IngressExporter:
        collector = {"ingress_server_url": url, "ingress_content_service_name": "ols", **settings}
        return IngressExporter(make_config({"user_data_collection": {"data_collector": collector}}))

    return make


def archive_file(
    tmp_path: Path, size: int = 2048, archive_id: str = "20240101T000000Z-0123456789ab"
) -> Archive:
    path = tmp_path / f"{archive_id}.tar.gz"
    with path.open("wb") as handle:
        handle.truncate(size)
    return Archive(archive_id=archive_id, path=path, size=size, record_count=3, sha256="0" * 64)


def stored_request(stub: Stub, request_id: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(
        (stub.store / "uploads" / request_id / "request.json").read_text()
    )
    return result


def test_the_upload_is_the_multipart_request_ingress_expects(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with("--token", "tok-abc")
    exporter = exporter_for(
        stub.url, ingress_server_auth_token="tok-abc", user_agent="ols-operator/1.0 cluster/42"
    )
    archive = archive_file(tmp_path)
    receipt = exporter.export(archive)
    assert receipt.status == 202 and receipt.request_id
    request = stored_request(stub, receipt.request_id)
    assert request["filename"] == "ols-20240101T000000Z-0123456789ab.tar.gz"
    assert request["content_type"] == "application/vnd.redhat.ols.periodic+tar"
    assert (request["service"], request["category"], request["size"]) == ("ols", "periodic", 2048)
    headers = {name.lower(): value for name, value in request["headers"].items()}  # type: ignore[attr-defined]
    assert headers["user-agent"] == "ols-operator/1.0 cluster/42"
    assert headers["authorization"] == "Bearer ********"
    assert headers["content-type"].startswith("multipart/form-data; boundary=")
    assert "transfer-encoding" not in headers
    stored = Path(str(request["stored_as"]))
    assert stored.read_bytes() == archive.path.read_bytes()


def test_a_netrc_entry_never_replaces_the_token(
    stub_with: Callable[..., Stub],
    exporter_for: Callable[..., IngressExporter],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # requests applies ~/.netrc credentials to requests that carry no auth of their own,
    # which would swap the bearer token for someone's basic-auth login.
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password their-password\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    stub = stub_with("--token", "tok-abc")
    exporter = exporter_for(stub.url, ingress_server_auth_token="tok-abc")

    receipt = exporter.export(archive_file(tmp_path))

    assert receipt.status == 202 and receipt.request_id
    headers = stored_request(stub, receipt.request_id)["headers"]
    assert {k.lower(): v for k, v in headers.items()}["authorization"] == "Bearer ********"  # type: ignore[attr-defined]


def test_the_file_is_streamed_not_loaded(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with()
    archive = archive_file(tmp_path, size=40 * 1024 * 1024)
    exporter = exporter_for(stub.url)
    tracemalloc.start()
    try:
        receipt = exporter.export(archive)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert receipt.status == 202
    assert peak < 2 * 1024 * 1024, f"{peak} bytes held for a 40 MiB upload"


def test_the_token_file_is_read_for_every_upload(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with("--token", "rotated-token")
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    exporter = exporter_for(stub.url, ingress_server_auth_token_file=str(token_file))
    with pytest.raises(ExportMisconfigured) as refused:
        exporter.export(archive_file(tmp_path))
    assert refused.value.setting == f"{SETTINGS}.ingress_server_auth_token"
    assert refused.value.status == 401
    token_file.write_text("rotated-token\n")
    assert exporter.export(archive_file(tmp_path)).status == 202
    token_file.unlink()
    with pytest.raises(ExportMisconfigured) as missing:
        exporter.export(archive_file(tmp_path))
    assert missing.value.setting == f"{SETTINGS}.ingress_server_auth_token_file"


def test_a_2xx_without_request_id_is_a_success_with_a_warning(
    stub_with: Callable[..., Stub],
    exporter_for: Callable[..., IngressExporter],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    stub = stub_with("--no-request-id")
    caplog.set_level(logging.WARNING)
    receipt = exporter_for(stub.url).export(archive_file(tmp_path))
    assert (receipt.status, receipt.request_id) == (202, None)
    assert "sent no request_id; counted as sent" in caplog.text


@pytest.mark.parametrize("token", ["tok\u2014abc", "tok abc", "tok\tabc"])
def test_a_token_no_header_can_carry_points_at_the_token(
    exporter_for: Callable[..., IngressExporter], tmp_path: Path, token: str
) -> None:
    # Refused before any connection: nothing listens at this address.
    exporter = exporter_for(
        "http://127.0.0.1:9/api/ingress/v1/upload", ingress_server_auth_token=token
    )
    with pytest.raises(ExportMisconfigured) as refused:
        exporter.export(archive_file(tmp_path))
    assert refused.value.setting == f"{SETTINGS}.ingress_server_auth_token"
    assert token not in refused.value.detail


def test_413_means_too_large_with_the_servers_message(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with("--max-size", "1000")
    with pytest.raises(ArchiveTooLarge) as refused:
        exporter_for(stub.url).export(archive_file(tmp_path, size=2048))
    assert refused.value.status == 413
    assert "File exceeds maximum file size (1000) for upload: 2048" in refused.value.detail


def test_403_points_at_the_token(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with("--fail-first", "1000000", "--fail-status", "403")
    with pytest.raises(ExportMisconfigured) as refused:
        exporter_for(stub.url).export(archive_file(tmp_path))
    assert refused.value.status == 403
    assert refused.value.setting == f"{SETTINGS}.ingress_server_auth_token"


def test_415_points_at_the_service_name(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with()
    with pytest.raises(ExportMisconfigured) as refused:
        exporter_for(stub.url, ingress_content_service_name="not-allowed").export(
            archive_file(tmp_path)
        )
    assert refused.value.status == 415
    assert refused.value.setting == f"{SETTINGS}.ingress_content_service_name"


def test_a_wrong_path_points_at_the_url(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with()
    with pytest.raises(ExportMisconfigured) as refused:
        exporter_for(stub.url.replace("/upload", "/uplaod")).export(archive_file(tmp_path))
    assert refused.value.setting == f"{SETTINGS}.ingress_server_url"


@pytest.mark.parametrize(
    "url",
    ["http://[::1", "http://127.0.0.1:99999/x", "http://user:pa55word@[::1/upload?key=s3cret"],
)
def test_a_url_that_does_not_parse_points_at_the_url(
    exporter_for: Callable[..., IngressExporter], tmp_path: Path, url: str
) -> None:
    # Not a temporary failure: retried forever, it would never succeed.
    with pytest.raises(ExportMisconfigured) as refused:
        exporter_for(url).export(archive_file(tmp_path))
    assert refused.value.setting == f"{SETTINGS}.ingress_server_url"
    assert "cannot be parsed" in str(refused.value)
    for secret in ("pa55word", "s3cret"):
        assert secret not in str(refused.value)


@contextlib.contextmanager
def receiver(
    handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
) -> Iterator[str]:
    """A server on loopback answering uploads with ``handler``; yields the upload URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    scheme = "http" if tls is None else "https"
    try:
        yield f"{scheme}://127.0.0.1:{server.server_port}/api/ingress/v1/upload"
    finally:
        server.shutdown()
        server.server_close()


class _Redirecting(BaseHTTPRequestHandler):
    """Answers every upload with a redirect, and any GET with a friendly 200 page: what a
    gateway in front of the real server might do."""

    status: ClassVar[int] = 302
    gets: ClassVar[list[str]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(self.status)
        self.send_header("Location", "/welcome?session=x")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self) -> None:
        self.gets.append(self.path)
        page = b"<html>welcome</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(page)))
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_keeps_the_archive_and_points_at_the_url(
    exporter_for: Callable[..., IngressExporter], tmp_path: Path, status: int
) -> None:
    handler = type("Handler", (_Redirecting,), {"status": status, "gets": []})
    with receiver(handler) as url, pytest.raises(ExportMisconfigured) as refused:
        exporter_for(url).export(archive_file(tmp_path))
    assert refused.value.status == status
    assert refused.value.setting == f"{SETTINGS}.ingress_server_url"
    welcome = url.replace("/api/ingress/v1/upload", "/welcome")
    assert f"redirecting to {welcome};" in refused.value.detail
    assert handler.gets == []  # the upload was not turned into a GET of the new address


class _Accepting(BaseHTTPRequestHandler):
    """Accepts every upload as the real ingress does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        answer = json.dumps({"request_id": "tls-1", "upload": {}}).encode()
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def private_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ssl.SSLContext]:
    """A self-signed certificate for 127.0.0.1, as a private ingress might present, and a
    server context using it."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ingress.test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    return cert_file, context


def test_an_untrusted_certificate_is_a_configuration_problem(
    exporter_for: Callable[..., IngressExporter],
    tmp_path: Path,
    private_ca: tuple[Path, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    _, context = private_ca
    with receiver(_Accepting, context) as url, pytest.raises(ExportMisconfigured) as refused:
        exporter_for(url).export(archive_file(tmp_path))
    assert refused.value.setting == f"{SETTINGS}.ingress_server_url"
    assert "certificate" in refused.value.detail
    assert "REQUESTS_CA_BUNDLE" in refused.value.detail


def test_a_private_ca_is_trusted_through_requests_ca_bundle(
    exporter_for: Callable[..., IngressExporter],
    tmp_path: Path,
    private_ca: tuple[Path, ssl.SSLContext],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cert_file, context = private_ca
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert_file))
    with receiver(_Accepting, context) as url:
        receipt = exporter_for(url).export(archive_file(tmp_path))
    assert (receipt.status, receipt.request_id) == (202, "tls-1")


class _OddAcceptance(BaseHTTPRequestHandler):
    """Accepts every upload with a 202 whose body or headers are odd in one way."""

    body: ClassVar[bytes] = b""
    content_type: ClassVar[str] = "application/json"
    trickle: ClassVar[bool] = False

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(202)
        self.send_header("Content-Type", self.content_type)
        self.send_header("Content-Length", str(100_000 if self.trickle else len(self.body)))
        self.end_headers()
        try:
            if not self.trickle:
                self.wfile.write(self.body)
                return
            for _ in range(100):  # a byte every 0.1 s: each read is quick, the whole is not
                self.wfile.write(b" ")
                self.wfile.flush()
                time.sleep(0.1)
        except OSError:
            pass  # the client stopped listening, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("odd", "request_id"),
    [
        ({"body": b"[" * 100_000}, None),
        (
            {"body": b'{"request_id": "r-1"}', "content_type": "application/json; charset=bogus"},
            "r-1",
        ),
        ({"body": b"\xff\xfe not json"}, None),
    ],
)
def test_an_odd_answer_to_an_accepted_upload_still_counts_it_as_sent(
    exporter_for: Callable[..., IngressExporter],
    tmp_path: Path,
    odd: dict[str, object],
    request_id: str | None,
) -> None:
    """The status says the archive was taken; failing on the body would send it again."""
    handler = type("Handler", (_OddAcceptance,), odd)
    with receiver(handler) as url:
        receipt = exporter_for(url).export(archive_file(tmp_path))
    assert (receipt.status, receipt.request_id) == (202, request_id)


def test_an_answer_trickled_byte_by_byte_is_read_for_the_timeout_only(
    exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    handler = type("Handler", (_OddAcceptance,), {"trickle": True})
    with receiver(handler) as url:
        started = time.monotonic()
        receipt = exporter_for(url, connection_timeout_seconds=1).export(archive_file(tmp_path))
        elapsed = time.monotonic() - started
    assert receipt.status == 202 and receipt.request_id is None
    assert elapsed < 3, f"took {elapsed:.1f} s"


class _HugeAnswer(BaseHTTPRequestHandler):
    """Refuses every upload with a 500 whose page goes on for 200 MB."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(500)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        chunk = b"<p>" + b"error " * 10_000 + b"</p>"
        try:
            for _ in range(3_400):  # 200 MB: far more than anyone should read
                self.wfile.write(chunk)
        except OSError:
            pass  # the client stopped reading, as it should

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_huge_answer_is_read_only_in_part(
    exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    with receiver(_HugeAnswer) as url:
        tracemalloc.start()
        try:
            with pytest.raises(ExportUnavailable) as failed:
                exporter_for(url).export(archive_file(tmp_path))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert failed.value.status == 500
    assert "answered 500 Internal Server Error: <p>error error" in failed.value.detail
    assert peak < 2 * 1024 * 1024, f"{peak} bytes held for an error page"


@pytest.mark.parametrize(
    ("options", "status", "retry_after"),
    [
        (("--fail-first", "1000000", "--retry-after", "7"), 503, "7"),
        (("--fail-first", "1000000", "--fail-status", "500"), 500, None),
        (
            (
                "--fail-first",
                "1000000",
                "--fail-status",
                "429",
                "--retry-after",
                "Wed, 21 Oct 2037 07:28:00 GMT",
            ),
            429,
            "Wed, 21 Oct 2037 07:28:00 GMT",
        ),
    ],
)
def test_temporary_trouble_is_retryable_and_carries_retry_after(
    stub_with: Callable[..., Stub],
    exporter_for: Callable[..., IngressExporter],
    tmp_path: Path,
    options: tuple[str, ...],
    status: int,
    retry_after: str | None,
) -> None:
    stub = stub_with(*options)
    with pytest.raises(ExportUnavailable) as busy:
        exporter_for(stub.url).export(archive_file(tmp_path))
    assert busy.value.status == status
    assert busy.value.retry_after == retry_after


def test_another_client_error_is_a_plain_failure(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with("--fail-first", "1000000", "--fail-status", "400")
    with pytest.raises(ExportFailed) as failed:
        exporter_for(stub.url).export(archive_file(tmp_path))
    assert type(failed.value) is ExportFailed
    assert failed.value.status == 400


def test_no_answer_in_time_is_retryable(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with("--stall-seconds", "3")
    with pytest.raises(ExportUnavailable) as slow:
        exporter_for(stub.url, connection_timeout_seconds=0.3).export(archive_file(tmp_path))
    assert "did not answer within 0.3 s" in slow.value.detail


def test_nobody_listening_is_retryable_and_the_message_has_no_credentials(
    exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    with pytest.raises(ExportUnavailable) as down:
        exporter_for(
            "http://user:pa55word@127.0.0.1:9/api/ingress/v1/upload?key=s3cret",
            ingress_server_auth_token="tok-xyz",
        ).export(archive_file(tmp_path))
    message = str(down.value)
    assert "cannot reach http://127.0.0.1:9/api/ingress/v1/upload" in message
    for secret in ("pa55word", "s3cret", "tok-xyz"):
        assert secret not in message


def test_archive_file_handles_are_closed(
    stub_with: Callable[..., Stub], exporter_for: Callable[..., IngressExporter], tmp_path: Path
) -> None:
    stub = stub_with()
    exporter = exporter_for(stub.url)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        exporter.export(archive_file(tmp_path))
    assert len(os.listdir("/proc/self/fd")) <= before + 2
