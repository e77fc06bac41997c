"""``lightspeed-collector ingress-stub`` answers like the ingress server and keeps what it gets."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.export_support import Stub, start_stub

TAR = "application/vnd.redhat.ols.periodic+tar"


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    running = start_stub(tmp_path_factory.mktemp("stub"), "--max-size", "1000")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stub]:
    running = start_stub(tmp_path_factory.mktemp("guarded"), "--token", "gate-token")
    yield running
    running.stop()


def upload(
    url: str,
    *,
    field: str = "file",
    content_type: str = TAR,
    body: bytes = b"archive bytes",
    filename: str = "ols-x.tar.gz",
    headers: dict[str, str] | None = None,
) -> requests.Response:
    return requests.post(
        url, files={field: (filename, body, content_type)}, headers=headers or {}, timeout=10
    )


def test_version(stub: Stub) -> None:
    answer = requests.get(stub.url.replace("/upload", "/version"), timeout=10)
    assert answer.status_code == 200
    assert set(answer.json()) == {"version", "commit"}


def test_an_accepted_upload_is_stored_with_its_headers(stub: Stub) -> None:
    answer = upload(
        stub.url, headers={"X-RH-Insights-Request-Id": "req-42"}, filename="ols-a.tar.gz"
    )
    assert answer.status_code == 202
    assert answer.json() == {"request_id": "req-42", "upload": {}}
    request = json.loads((stub.store / "uploads" / "req-42" / "request.json").read_text())
    assert (request["service"], request["category"], request["size"]) == ("ols", "periodic", 13)
    assert request["headers"]["X-RH-INSIGHTS-REQUEST-ID"] == "req-42"
    assert (stub.store / "uploads" / "req-42" / "ols-a.tar.gz").read_bytes() == b"archive bytes"


def test_the_upload_field_is_accepted_too_and_the_legacy_path_answers(stub: Stub) -> None:
    legacy = stub.url.replace("/api/ingress/v1/upload", "/r/insights/platform/ingress/v1/upload")
    answer = upload(legacy, field="upload", filename="ols-b.tar.gz")
    assert answer.status_code == 202
    assert len(answer.json()["request_id"]) == 32


@pytest.mark.parametrize(
    "send",
    [
        lambda url: upload(url, field="attachment"),
        lambda url: requests.post(url, data=b"raw bytes", timeout=10),
        lambda url: requests.post(url, data={"file": "not a file part"}, timeout=10),
    ],
)
def test_no_file_or_upload_part_is_400(stub: Stub, send: object) -> None:
    answer = send(stub.url)  # type: ignore[operator]
    assert answer.status_code == 400
    assert answer.text == "File or upload field not found"


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-tar",
        "application/vnd.redhat.unknown-service.periodic+tar",
        "application/vnd.redhat.OLS.periodic+tar",
        "application/vnd.redhat.o_l_s.periodic+tar",
        "application/vnd.redhat.ols",
    ],
)
def test_a_refused_content_type_is_415_with_an_empty_body(stub: Stub, content_type: str) -> None:
    answer = upload(stub.url, content_type=content_type)
    assert answer.status_code == 415
    assert answer.content == b""


def test_a_file_over_the_limit_is_413_with_the_servers_message(stub: Stub) -> None:
    answer = upload(stub.url, body=b"x" * 1001)
    assert answer.status_code == 413
    assert answer.text == "File exceeds maximum file size (1000) for upload: 1001"


def test_test_requests_answer_200(stub: Stub) -> None:
    assert requests.post(stub.url, files={"test": (None, "test")}, timeout=10).status_code == 200
    assert requests.post(stub.url, json={"test": "test"}, timeout=10).status_code == 200


def test_a_second_upload_of_the_same_file_is_flagged(stub: Stub) -> None:
    first = upload(stub.url, filename="ols-twice.tar.gz").json()["request_id"]
    second = upload(stub.url, filename="ols-twice.tar.gz").json()["request_id"]
    entries = {entry["request_id"]: entry for entry in stub.uploads()}
    assert entries[first]["duplicate_of"] is None
    assert entries[second]["duplicate_of"] == first
    listing = requests.get(stub.url.split("/api/")[0] + "/stub/uploads", timeout=10).json()
    assert {"filename": "ols-twice.tar.gz", "request_id": second} in listing["duplicates"]


def test_the_token_check_stands_for_the_gateway(guarded: Stub) -> None:
    assert upload(guarded.url).status_code == 401
    assert upload(guarded.url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    accepted = upload(guarded.url, headers={"Authorization": "Bearer gate-token"})
    assert accepted.status_code == 202
    request = json.loads(
        (guarded.store / "uploads" / accepted.json()["request_id"] / "request.json").read_text()
    )
    assert request["headers"]["AUTHORIZATION"] == "Bearer ********"
    assert "gate-token" not in guarded.log()


def test_fault_injection_options_are_marked_as_test_only() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "ingress-stub", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    faults = " ".join(result.stdout.split("fault injection", 1)[1].split())
    assert faults.startswith("(FOR TESTS ONLY")
    for option in (
        "--fail-first",
        "--fail-status",
        "--retry-after",
        "--stall-seconds",
        "--stall-first",
        "--store-before-stall",
        "--no-request-id",
    ):
        assert re.search(rf"{option}( [A-Z]+)? TEST ONLY:", faults), option


def test_the_stub_needs_a_store(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "ingress-stub", "--port", "0"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "--store" in result.stderr


@pytest.mark.parametrize("port", ["99999", "65536", "-1", "http"])
def test_a_port_out_of_range_is_refused_not_wrapped(tmp_path: Path, port: str) -> None:
    # 99999 used to reach the socket layer, which wrapped it to another port and listened.
    command = [sys.executable, "-m", "lightspeed_collector", "ingress-stub"]
    result = subprocess.run(
        [*command, "--port", port, "--store", str(tmp_path / "store")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2, result.stderr
    assert "argument --port:" in result.stderr
    assert "listening" not in result.stderr
