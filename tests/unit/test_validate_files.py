"""The pieces of ``validate``: paths inside documents, telling kinds apart, collecting files."""

from __future__ import annotations

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
