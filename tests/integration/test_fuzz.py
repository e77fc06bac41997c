"""Schemathesis drives every route of /openapi.json against a real server.

Each operation gets a bounded number of generated requests, valid and invalid, on top of
schemathesis's coverage cases (boundary values, missing and unknown fields, wrong types).
The server must never answer 5xx, and every answer must keep the document's promises: a
documented status, its content type, its headers and its body schema.

The schemathesis command line is used as a CI job would use it (`st run`), with a fixed seed
so a failure reproduces.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.conftest import start_server

# About 15 operations x this many generated cases, plus the coverage phase: well under a
# minute on two cores.
EXAMPLES_PER_OPERATION = 40

CHECKS = ",".join(
    (
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    )
)


def test_every_route_keeps_its_documented_promises(tmp_path: Path) -> None:
    server = start_server(tmp_path / "server")
    try:
        document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
        operations = sum(len(methods) for methods in document["paths"].values())
        result = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"),
                "run",
                f"{server.url}/openapi.json",
                "--checks",
                CHECKS,
                "--phases",
                "examples,coverage,fuzzing,stateful",
                "--max-examples",
                str(EXAMPLES_PER_OPERATION),
                "--seed",
                "6",
                "--generation-database",
                "none",
                "--workers",
                "2",
                "--request-timeout",
                "30",
                "--no-color",
                "--report",
                "junit",
                "--report-junit-path",
                str(tmp_path / "fuzz.xml"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
    finally:
        server.stop()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:]
    # Every documented operation was exercised, none skipped or errored.
    report = (tmp_path / "fuzz.xml").read_text("utf-8")
    assert report.count("<testcase") == operations, report
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.parametrize("path", ["/v1/query", "/v1/feedback", "/v1/feedback/status"])
def test_fuzzing_reaches_the_routes_that_take_bodies(path: str) -> None:
    """Guard against a document that silently lost a route: the fuzzer only tests what is
    documented."""
    from lightspeed_collector.openapi import build_document

    assert path in build_document()["paths"]
