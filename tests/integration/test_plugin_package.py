"""The example third-party plugin in docs/examples/keyword-redactor, installed with pip for
real into this venv and used through a running server, as a plugin author's user would.

The package is built from a copy (so the checkout gains no build/ or egg-info), installed
without build isolation or network, and uninstalled when the module's tests are done.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import (
    RunningServer,
    base_settings,
    listed_plugins,
    merge,
    plugins_listing,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "keyword-redactor"
DISTRIBUTION = "lightspeed-collector-keyword-redactor"
SCRIPT = Path(sys.executable).parent / "lightspeed-collector"


def pip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    source = tmp_path_factory.mktemp("keyword-redactor") / "src"
    shutil.copytree(EXAMPLE, source)
    result = pip(
        "install",
        "--no-deps",
        "--no-build-isolation",
        "--no-index",
        "--force-reinstall",
        str(source),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    try:
        yield
    finally:
        removed = pip("uninstall", "--yes", DISTRIBUTION)
        assert removed.returncode == 0, removed.stdout + removed.stderr


def plugin_settings(audit_log: Path) -> dict[str, object]:
    return {
        "user_data_collection": {"redactors": ["regex", "keyword"]},
        "plugins": {
            "keyword_redactor": {
                "keywords": ["Project Nightingale", "ACME"],
                "audit_log": str(audit_log),
            }
        },
    }


def test_installed_not_editable(installed: None) -> None:
    shown = pip("show", "--files", DISTRIBUTION)
    assert shown.returncode == 0
    assert "Version: 0.1.0" in shown.stdout
    # A real install: the module was copied into site-packages, not linked to the source.
    assert "lightspeed_collector_keyword_redactor/__init__.py" in shown.stdout
    assert "__editable__" not in shown.stdout


def test_plugins_lists_it_with_its_distribution_and_version(
    installed: None, tmp_path: Path
) -> None:
    rows = listed_plugins(tmp_path)
    row = rows["keyword_redactor"]
    assert row["source"] == f"distribution {DISTRIBUTION}"
    assert row["version"] == "0.1.0"
    assert row["registers"] == ["redactor keyword"]
    assert set(row["hooks"]) == {
        "record_stored",
        "register_plugin_config_schema",
        "register_redactors",
        "shutdown",
        "startup",
    }
    assert f"keyword_redactor 0.1.0 (distribution {DISTRIBUTION})" in plugins_listing(tmp_path)


def test_redaction_and_audit_through_a_running_server(
    installed: None, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    audit_log = tmp_path / "audit.log"
    server = server_factory(plugin_settings(audit_log))

    answer = requests.post(
        f"{server.url}/v1/query",
        json={"query": "Is project nightingale on track? Ask bob@example.com at acme"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    assert "project nightingale" in answer.json()["response"]  # the user sees the real answer
    conversation = answer.json()["conversation_id"]
    feedback = requests.post(
        f"{server.url}/v1/feedback",
        json={
            "conversation_id": conversation,
            "user_question": "About ACME",
            "llm_response": "ACMEDIA is not ACME",
            "sentiment": 1,
        },
        timeout=10,
    )
    assert feedback.status_code == 200, feedback.text

    [transcript_path] = (server.root / "transcripts").rglob("*.json")
    transcript = json.loads(transcript_path.read_text("utf-8"))
    assert transcript["redacted_query"] == (
        "Is [REDACTED_KEYWORD] on track? Ask [REDACTED_EMAIL] at [REDACTED_KEYWORD]"
    )
    [feedback_path] = (server.root / "feedback").glob("*.json")
    stored_feedback = json.loads(feedback_path.read_text("utf-8"))
    assert stored_feedback["llm_response"] == "ACMEDIA is not [REDACTED_KEYWORD]"

    metrics = requests.get(f"{server.url}/metrics", timeout=10).text
    counted = {
        sample.labels.get("redactor"): sample.value
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "lightspeed_redactions_total" and sample.labels.get("rule") == "keyword"
    }
    # Query and echoed answer hold two keywords each; the feedback's fields one each.
    assert counted == {"keyword": 6.0}

    entries = [json.loads(line) for line in audit_log.read_text("utf-8").splitlines()]
    assert [(e["event"], e["kind"]) for e in entries] == [
        ("record_stored", "transcript"),
        ("record_stored", "feedback"),
    ]
    assert {Path(e["location"]).resolve() for e in entries} == {
        transcript_path.resolve(),
        feedback_path.resolve(),
    }
    assert all(e["conversation_id"] == conversation for e in entries)
    assert "nightingale" not in audit_log.read_text("utf-8").lower()


def test_its_settings_are_checked_at_start(installed: None, tmp_path: Path) -> None:
    settings = plugin_settings(tmp_path / "audit.log")
    settings["plugins"] = {"keyword_redactor": {"keywords": [], "colour": "red"}}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(merge(base_settings(tmp_path), settings)))
    result = subprocess.run(
        [str(SCRIPT), "config", "check", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "plugins.keyword_redactor.colour: unknown key" in result.stderr
    assert "plugins.keyword_redactor.keywords" in result.stderr
    assert "Traceback" not in result.stderr


def test_it_can_be_disabled_by_name(installed: None, tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            merge(base_settings(tmp_path), {"plugins": {"disabled": ["keyword_redactor"]}})
        )
    )
    result = subprocess.run(
        [str(SCRIPT), "plugins", "--format", "json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "keyword_redactor" not in {row["name"] for row in json.loads(result.stdout)}
