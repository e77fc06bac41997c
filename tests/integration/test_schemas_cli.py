"""``lightspeed-collector schemas``: the installed schemas, printed or written, as they are."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "schemas"
SCRIPT = Path(sys.executable).parent / "lightspeed-collector"
NAMES = sorted(path.stem for path in SCHEMAS.glob("*.json"))


def schemas(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SCRIPT), "schemas", *args], capture_output=True, text=True, timeout=60
    )


def source(name: str) -> Any:
    return json.loads((SCHEMAS / f"{name}.json").read_text("utf-8"))


def test_list_names_every_schema_file() -> None:
    result = schemas("--list")
    assert result.returncode == 0
    listed = [line.split("\t")[0] for line in result.stdout.splitlines()]
    assert listed == NAMES
    assert "transcript\tTranscript record" in result.stdout.splitlines()


def test_one_schema_prints_as_the_file_and_all_print_by_name() -> None:
    one = schemas("transcript")
    assert one.returncode == 0
    assert json.loads(one.stdout) == source("transcript")
    everything = json.loads(schemas().stdout)
    assert everything == {name: source(name) for name in NAMES}


def test_write_puts_each_schema_in_its_own_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "schemas"
    result = schemas("--write", str(target), "feedback", "common")
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in target.iterdir()) == ["common.json", "feedback.json"]
    for name in ("feedback", "common"):
        assert json.loads((target / f"{name}.json").read_text("utf-8")) == source(name)


def test_standalone_schema_validates_exactly_like_the_service() -> None:
    result = schemas("--standalone", "transcript")
    assert result.returncode == 0
    standalone = json.loads(result.stdout)
    assert "urn:lightspeed-collector" not in result.stdout
    Draft202012Validator.check_schema(standalone)
    validator = Draft202012Validator(standalone)  # no registry: nothing outside the file
    [example] = (ROOT / "docs" / "examples" / "records" / "transcripts").rglob("*.json")
    record = json.loads(example.read_text("utf-8"))
    assert validator.is_valid(record)
    record["attachments"][0]["content_type"] = "text/html"
    assert not validator.is_valid(record)
    record["attachments"] = []
    record["metadata"]["conversation_id"] = "conv_" + "a" * 48
    assert validator.is_valid(record)


def test_mistakes_exit_2_without_a_traceback(tmp_path: Path) -> None:
    unknown = schemas("transcrpt")
    assert unknown.returncode == 2
    assert "unknown schema 'transcrpt'" in unknown.stderr
    blocker = tmp_path / "file"
    blocker.write_text("")
    unwritable = schemas("--write", str(blocker / "sub"))
    assert unwritable.returncode == 2
    assert "cannot write" in unwritable.stderr
    assert "Traceback" not in unknown.stderr + unwritable.stderr
