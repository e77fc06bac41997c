"""The pieces of ``validate``: paths inside documents, telling kinds apart, collecting files;
and the command on file system conditions it must not hide (a real process on real files)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from lightspeed_collector.validate_files import (
    UsageError,
    check_document,
    collect,
    detect_kind,
    json_path,
)


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
NOBODY = 65534


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


def unprivileged() -> list[str]:
    """A command prefix that runs as a user to whom permission bits apply: none needed for
    anyone but root, who reads everything; root drops to nobody with setpriv."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, and setpriv is not there to run as another user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's own is private to the user running it)."""
    folder = Path(tempfile.mkdtemp(prefix="validate-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for directory, subdirectories, _ in os.walk(folder):
            for name in subdirectories:
                os.chmod(os.path.join(directory, name), 0o755)
        shutil.rmtree(folder)


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
