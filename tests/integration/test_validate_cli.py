"""``lightspeed-collector validate`` as CI and pre-commit run it: a real process on real files."""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "records"
SCRIPT = Path(sys.executable).parent / "lightspeed-collector"


def example(kind: str) -> dict[str, Any]:
    folder = "feedback" if kind == "feedback" else "transcripts"
    [path] = (EXAMPLES / folder).rglob("*.json")
    record: dict[str, Any] = json.loads(path.read_text("utf-8"))
    return record


def write(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    return path


def validate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "validate", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "CI": "true"},
    )


def test_the_documented_example_records_are_valid() -> None:
    result = validate(str(EXAMPLES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("2 files checked: 2 valid, 0 invalid")


def test_each_error_names_the_file_the_json_path_and_the_rule(tmp_path: Path) -> None:
    transcript = example("transcript")
    transcript["metadata"]["user_id"] = "alice"
    transcript["attachments"][0]["attachment_type"] = "diary"
    transcript["surprise"] = True
    del transcript["truncated"]
    bad = write(tmp_path / "records" / "transcripts" / "u" / "c" / "bad.json", transcript)
    good = write(tmp_path / "records" / "feedback" / "good.json", example("feedback"))

    result = validate(str(tmp_path / "records"))

    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        f"{bad}: $.metadata.user_id: 'alice' does not match '^[0-9a-f]{{64}}$' [pattern]" in lines
    )
    assert (
        f"{bad}: $.attachments[0].attachment_type: Attachment type 'diary' is not supported; "
        "expected one of alert, api object, configuration, error message, event, image, log, "
        "stack trace [enum]"
    ) in lines
    assert f"{bad}: $.surprise: unknown field [additionalProperties]" in lines
    assert f"{bad}: $: 'truncated' is a required property [required]" in lines
    assert not any(str(good) in line for line in lines[:-1])
    assert lines[-1] == "2 files checked: 1 valid, 1 invalid"


def test_unreadable_and_non_json_files_are_invalid_without_a_traceback(tmp_path: Path) -> None:
    files = {
        "empty.json": "",
        "broken.json": '{"user_id": ',
        "latin1.json": '{"user_question": "caf\xe9"}'.encode("latin-1"),
        "nan.json": '{"sentiment": NaN}',
        "array.json": "[1, 2]",
        "deep.json": "[" * 100_000 + "]" * 100_000,
        "neither.json": {"hello": "world"},
    }
    for name, content in files.items():
        write(tmp_path / name, content)
    dangling = tmp_path / "gone.json"
    dangling.symlink_to(tmp_path / "does-not-exist.json")

    result = validate(*sorted(str(p) for p in tmp_path.iterdir()), "--format", "json")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    rules = {Path(entry["file"]).name: entry["errors"][0]["rule"] for entry in report["files"]}
    assert rules == {
        "array.json": "type",
        "broken.json": "json",
        "deep.json": "json",
        "empty.json": "json",
        "gone.json": "read",
        "latin1.json": "json",
        "nan.json": "json",
        "neither.json": "kind",
    }
    assert report["invalid"] == report["checked"] == 8


def test_a_fifo_named_like_a_record_is_reported_not_waited_on(tmp_path: Path) -> None:
    write(tmp_path / "records" / "ok.json", example("feedback"))
    fifo = tmp_path / "records" / "pipe.json"
    os.mkfifo(fifo)

    for args in ([str(tmp_path / "records")], [str(fifo), os.devnull]):
        result = validate(*args, "--format", "json")

        assert result.returncode == 1, result.stderr
        report = json.loads(result.stdout)
        problems = {entry["file"]: entry["errors"] for entry in report["files"] if entry["errors"]}
        [problem] = problems[str(fifo)]
        assert (problem["rule"], problem["message"]) == ("read", "not a regular file")


def test_kind_option_overrides_detection(tmp_path: Path) -> None:
    feedback = write(tmp_path / "f.json", example("feedback"))
    assert validate(str(feedback)).returncode == 0
    forced = validate("--kind", "transcript", str(feedback))
    assert forced.returncode == 1
    assert f"{feedback}: $: 'metadata' is a required property [required]" in forced.stdout


def test_folders_are_searched_recursively_for_json_only(tmp_path: Path) -> None:
    write(tmp_path / "a" / "b" / "c" / "deep.json", example("feedback"))
    write(tmp_path / "a" / "notes.txt", "not a record")
    write(tmp_path / "a" / ".hidden.json", "garbage")
    write(tmp_path / "a" / ".git" / "x.json", "garbage")
    result = validate(str(tmp_path / "a"))
    assert result.returncode == 0, result.stdout
    assert "1 file checked: 1 valid, 0 invalid" in result.stdout


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    missing = validate(str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert f"{tmp_path / 'nowhere'}: no such file or folder" in missing.stderr
    assert validate().returncode == 2
    assert validate("--kind", "diary", str(tmp_path)).returncode == 2
    assert validate("--format", "xml", str(tmp_path)).returncode == 2


def test_junit_report_is_what_ci_systems_read(tmp_path: Path) -> None:
    write(tmp_path / "good.json", example("feedback"))
    bad = example("feedback")
    bad["sentiment"] = 0
    write(tmp_path / "bad.json", bad)
    write(tmp_path / "ctl.json", '{"user_question": "\x01"')
    report_path = tmp_path / "report.xml"

    result = validate(str(tmp_path), "--format", "junit", "--output", str(report_path))

    assert result.returncode == 1
    assert "3 files checked: 1 valid, 2 invalid" in result.stderr
    suites = ElementTree.parse(report_path).getroot()
    assert suites.tag == "testsuites"
    suite = suites.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures")) == ("3", "2")
    cases = {Path(case.get("name", "")).name: case for case in suite.iter("testcase")}
    assert cases["good.json"].find("failure") is None
    failure = cases["bad.json"].find("failure")
    assert failure is not None and failure.get("type") == "enum"
    assert "$.sentiment" in (failure.text or "")
    assert cases["bad.json"].get("classname") == "records.feedback"


def test_many_files_are_checked_in_parallel_with_the_same_verdicts(tmp_path: Path) -> None:
    record = example("transcript")
    for index in range(1200):
        variant = copy.deepcopy(record)
        variant["llm_response"] = f"answer {index}"
        if index % 300 == 7:
            variant["query_is_valid"] = "yes"
        write(tmp_path / f"t{index // 100}" / f"{index:05}.json", variant)

    parallel = validate(str(tmp_path), "--format", "json", "--jobs", "2")
    serial = validate(str(tmp_path), "--format", "json", "--jobs", "1")

    assert parallel.returncode == serial.returncode == 1
    assert parallel.stdout == serial.stdout
    report = json.loads(parallel.stdout)
    assert (report["checked"], report["invalid"]) == (1200, 4)
    invalid = [Path(entry["file"]).name for entry in report["files"] if not entry["valid"]]
    assert invalid == ["00007.json", "00307.json", "00607.json", "00907.json"]


def test_validate_starts_without_the_web_stack(tmp_path: Path) -> None:
    record = write(tmp_path / "f.json", example("feedback"))
    script = (
        "import sys\n"
        "from lightspeed_collector.cli import main\n"
        f"code = main(['validate', {str(record)!r}])\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'falcon', 'waitress', 'prometheus_client'})\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines()[-1] == "0 []"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_pre_commit_hook_checks_the_staged_records(tmp_path: Path) -> None:
    """Run the hook as pre-commit would: its entry, on the staged files its filters select."""
    [hook] = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text("utf-8"))
    assert hook["id"] == "lightspeed-collector-validate"
    assert hook["language"] == "python" and hook["types"] == ["json"]
    repo = tmp_path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
            cwd=repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    def run_hook() -> subprocess.CompletedProcess[str]:
        staged = git("diff", "--cached", "--name-only", "--diff-filter=ACMR").split()
        selected = [
            name for name in staged if name.endswith(".json") and re.search(hook["files"], name)
        ]
        command = shlex.split(hook["entry"])
        command[0] = str(Path(sys.executable).parent / command[0])
        return subprocess.run(
            [*command, *hook.get("args", []), *selected],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=60,
        )

    git("init", "-q")
    write(repo / "package.json", {"name": "not a record"})
    write(repo / "data" / "feedback" / "a.json", example("feedback"))
    bad = example("feedback")
    bad["categories"] = ["wrong"]
    write(repo / "data" / "feedback" / "b.json", bad)
    git("add", ".")

    refused = run_hook()
    assert refused.returncode == 1
    assert "data/feedback/b.json: $.categories[0]: Invalid feedback category 'wrong'" in (
        refused.stdout
    )
    assert "package.json" not in refused.stdout

    bad["categories"] = ["other"]
    write(repo / "data" / "feedback" / "b.json", bad)
    git("add", ".")
    accepted = run_hook()
    assert accepted.returncode == 0, accepted.stdout
    assert "2 files checked: 2 valid, 0 invalid" in accepted.stdout
