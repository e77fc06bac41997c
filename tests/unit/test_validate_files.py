"""The pieces of ``validate``: paths inside documents, telling kinds apart, collecting files;
and the command on file system conditions it must not hide (a real process on real files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from xml.etree import ElementTree

import pytest

from lightspeed_collector.validate_files import (
    UsageError,
    check_document,
    collect,
    detect_kind,
    json_path,
)
from tests.conftest import unprivileged


def test_json_paths_read_like_jsonpath() -> None:
    assert json_path([]) == "$"
    assert json_path(["metadata", "user_id"]) == "$.metadata.user_id"
    assert json_path(["attachments", 0, "content"]) == "$.attachments[0].content"
    assert json_path(["odd key", "a.b", "9x"]) == '$["odd key"]["a.b"]["9x"]'


def test_kind_is_told_by_the_keys_only_one_kind_has() -> None:
    assert detect_kind({"metadata": {}, "llm_response": "x"}) == "transcript"
    assert detect_kind({"user_question": "q", "llm_response": "x"}) == "feedback"
    # llm_response belongs to both kinds, so it decides nothing.
    assert detect_kind({"llm_response": "x"}) is None
    assert detect_kind({"metadata": {}, "sentiment": 1}) is None
    assert detect_kind({}) is None


def test_a_document_of_neither_kind_is_one_problem_not_many() -> None:
    result = check_document("f.json", {"hello": 1})
    assert [(p.path, p.rule) for p in result.problems] == [("$", "kind")]
    forced = check_document("f.json", {"hello": 1}, kind="feedback")
    assert ("$.hello", "additionalProperties") in [(p.path, p.rule) for p in forced.problems]
    assert sum(p.rule == "required" for p in forced.problems) == 8


def test_collect_keeps_order_drops_duplicates_and_refuses_missing_paths(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "2.json").write_text("{}")
    (tmp_path / "b" / "1.json").write_text("{}")
    (tmp_path / "a.txt").write_text("{}")
    files = collect([str(tmp_path / "a.txt"), str(tmp_path / "b"), str(tmp_path / "b" / "1.json")])
    assert files == [
        str(tmp_path / "a.txt"),
        str(tmp_path / "b" / "1.json"),
        str(tmp_path / "b" / "2.json"),
    ]
    with pytest.raises(UsageError, match="no such file or folder"):
        collect([str(tmp_path / "missing")])


SCRIPT = Path(sys.executable).parent / "lightspeed-collector"
ROOT = Path(__file__).resolve().parents[2]


def validate(
    *args: str, cwd: Path | None = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, str(SCRIPT), "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "CI": "true"},
    )


def test_a_folder_that_cannot_be_read_is_a_problem_not_skipped(shared_tmp: Path) -> None:
    records = shared_tmp / "v3"
    (records / "sub").mkdir(parents=True)
    (records / "sub" / "x.json").write_text('{"hello": 1}')
    (records / "a.json").write_text('{"hello": 1}')
    (records / "sub").chmod(0)
    result = validate("v3", "--format", "json", cwd=shared_tmp, prefix=unprivileged())

    assert result.returncode == 1, result.stdout + result.stderr
    assert "no *.json files found" not in result.stderr
    report = json.loads(result.stdout)
    entries = [(entry["file"], [e["rule"] for e in entry["errors"]]) for entry in report["files"]]
    assert entries == [("v3/a.json", ["kind"]), ("v3/sub", ["read"])]
    [problem] = report["files"][1]["errors"]
    assert problem["message"] == "cannot read folder: Permission denied"

    (records / "a.json").unlink()
    text = validate("v3", cwd=shared_tmp, prefix=unprivileged())
    assert text.returncode == 1
    assert text.stdout.splitlines()[0] == "v3/sub: $: cannot read folder: Permission denied [read]"


def test_names_and_values_that_are_not_utf8_are_escaped_alike_in_every_report(
    tmp_path: Path,
) -> None:
    # A file name with a byte that is not UTF-8 reaches Python as a lone surrogate, and so
    # does a "\udcff" escape inside a record: neither can be written to a UTF-8 file as is.
    os.mkdir(os.fsencode(tmp_path / "records"))
    with open(os.fsencode(tmp_path / "records") + b"/inv\xff.json", "wb") as handle:
        handle.write(b'{"hello": 1}')
    (tmp_path / "records" / "odd.json").write_text(
        '{"user_question": "q", "categories": ["\\udcff"]}'
    )
    name = f"{tmp_path}/records/inv\\xff.json"

    reports = {}
    for form in ("text", "json", "junit"):
        out = tmp_path / f"report.{form}"
        result = validate(str(tmp_path / "records"), "--format", form, "-o", str(out))
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr
        reports[form] = out.read_text("utf-8")
    # Standard output gives the same report, whatever its error handler.
    strict = subprocess.run(
        [str(SCRIPT), "validate", str(tmp_path / "records")],
        capture_output=True,
        timeout=120,
        env={**os.environ, "CI": "true", "PYTHONIOENCODING": "utf-8:strict"},
    )
    assert strict.returncode == 1, strict.stderr
    assert strict.stdout.decode("utf-8") == reports["text"]

    assert f"{name}: $: cannot tell a feedback" in reports["text"]
    assert "Invalid feedback category '\\udcff'" in reports["text"]
    report = json.loads(reports["json"])
    assert [entry["file"] for entry in report["files"]] == [
        name,
        str(tmp_path / "records/odd.json"),
    ]
    messages = [error["message"] for error in report["files"][1]["errors"]]
    assert "Invalid feedback category '\udcff'" in " ".join(messages)
    suite = ElementTree.fromstring(reports["junit"].encode("utf-8"))
    names = [case.get("name") for case in suite.iter("testcase")]
    assert names == [name, str(tmp_path / "records/odd.json")]
    failures = "".join(failure.text or "" for failure in suite.iter("failure"))
    assert "Invalid feedback category '\\udcff'" in failures


def test_a_file_larger_than_a_record_may_be_is_reported_without_being_read(
    tmp_path: Path,
) -> None:
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as handle:
        handle.truncate(2 * 1024**3)  # sparse: 2 GB that take no disk
    [example] = (ROOT / "docs" / "examples" / "records" / "feedback").rglob("*.json")
    record = example.read_bytes()
    (tmp_path / "small.json").write_bytes(record)

    result = subprocess.run(
        [
            sys.executable,
            "-c",
            # VmHWM, not ru_maxrss: the latter also counts what the forking test process
            # held before exec, hundreds of MiB late in a full run.
            "import re, sys\n"
            "from lightspeed_collector.cli import main\n"
            "code = main(sys.argv[1:])\n"
            "status = open('/proc/self/status').read()\n"
            "print(re.search(r'VmHWM:\\s+(\\d+) kB', status).group(1), file=sys.stderr)\n"
            "sys.exit(code)\n",
            "validate",
            "--format",
            "json",
            "--jobs",
            "1",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "CI": "true"},
    )

    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    [problem] = report["files"][0]["errors"]
    assert (problem["rule"], problem["message"]) == (
        "read",
        "2147483648 bytes, more than a record may have (104857600); not read "
        "(--max-bytes raises the limit)",
    )
    assert report["files"][1]["valid"]
    peak_kib = int(result.stderr.split()[-1])
    assert peak_kib < 200 * 1024, f"{peak_kib} KiB at peak"

    limited = validate("--max-bytes", str(len(record) - 1), str(tmp_path / "small.json"))
    assert limited.returncode == 1
    assert f"{len(record)} bytes, more than a record may have ({len(record) - 1})" in limited.stdout
    assert validate("--max-bytes", str(len(record)), str(tmp_path / "small.json")).returncode == 0
