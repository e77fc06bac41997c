"""The ``api-key`` authenticator in a real server: keys from config and from a changing file."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.conftest import RunningServer, base_settings, merge, run_config_check

ALICE_KEY = "s3cret-alice-key"
BOB_KEY = "bob-key-that-is-long"
CAROL_KEY = "carol-key-from-the-file"
MISSING = {
    "response": "Missing or invalid credentials provided by client",
    "cause": "No Authorization header found",
}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def ask(server: RunningServer, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        f"{server.url}/v1/query", json={"query": "hi"}, headers=headers or {}, timeout=10
    )


def set_status(server: RunningServer, key: str, enabled: bool) -> requests.Response:
    return requests.put(
        f"{server.url}/v1/feedback/status",
        json={"status": enabled},
        headers=bearer(key),
        timeout=10,
    )


def replace_file(path: Path, entries: list[dict[str, Any]]) -> None:
    """Swap the keys file in one rename, as an operator's tooling would."""
    staging = path.with_suffix(".new")
    staging.write_text(yaml.safe_dump(entries))
    os.replace(staging, path)


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    replace_file(path, [{"key_sha256": sha256(CAROL_KEY), "user_id": "carol"}])
    return path


@pytest.fixture
def server(server_factory: Callable[..., RunningServer], keys_file: Path) -> RunningServer:
    return server_factory(
        {
            "authentication": {
                "module": "api-key",
                "api-key": {
                    "keys": [
                        {"key": ALICE_KEY, "user_id": "alice", "roles": ["admin"]},
                        {"key_sha256": sha256(BOB_KEY), "user_id": "bob", "username": "Bob"},
                    ],
                    "keys_file": str(keys_file),
                },
            }
        }
    )


def test_missing_or_wrong_keys_are_401_with_the_reference_wording(server: RunningServer) -> None:
    missing = ask(server)
    assert missing.status_code == 401
    assert missing.json() == {"detail": MISSING}
    streaming = requests.post(f"{server.url}/v1/streaming_query", json={"query": "hi"}, timeout=10)
    assert streaming.status_code == 401
    assert streaming.json() == {"detail": MISSING}
    wrong = ask(server, bearer("not-a-key-anyone-has"))
    assert wrong.status_code == 401
    assert wrong.json()["detail"]["cause"] == "Invalid API key"
    assert ask(server, {"Authorization": f"Basic {ALICE_KEY}"}).status_code == 401
    assert ask(server, {"Authorization": "Bearer "}).status_code == 401
    # A key's digest is not a key.
    assert ask(server, bearer(sha256(BOB_KEY))).status_code == 401


def test_keys_map_to_users_and_only_admins_toggle_feedback(server: RunningServer) -> None:
    for key, user in ((ALICE_KEY, "alice"), (BOB_KEY, "bob"), (CAROL_KEY, "carol")):
        response = ask(server, bearer(key))
        assert response.status_code == 200, response.text
        record_dir = server.root / "transcripts" / sha256(user)
        assert (record_dir / response.json()["conversation_id"]).is_dir()

    forbidden = set_status(server, BOB_KEY, False)
    assert forbidden.status_code == 403
    assert forbidden.json()["detail"]["response"] == (
        "User does not have permission to perform this action"
    )
    allowed = set_status(server, ALICE_KEY, False)
    assert allowed.status_code == 200, allowed.text
    assert allowed.json()["status"]["updated_by"] == "alice"

    # The key alone says who is asking: ?user_id= changes nothing.
    def count(user: str) -> int:
        return len(list((server.root / "transcripts" / sha256(user)).rglob("*.json")))

    alice_before, bob_before = count("alice"), count("bob")
    impersonation = requests.post(
        f"{server.url}/v1/query",
        json={"query": "hi"},
        params={"user_id": "alice"},
        headers=bearer(BOB_KEY),
        timeout=10,
    )
    assert impersonation.status_code == 200
    assert (count("alice"), count("bob")) == (alice_before, bob_before + 1)


def test_the_keys_file_is_read_again_when_it_changes(
    server: RunningServer, keys_file: Path
) -> None:
    assert ask(server, bearer(CAROL_KEY)).status_code == 200
    dave_key = "dave-key-added-later"
    replace_file(
        keys_file,
        [{"key": dave_key, "user_id": "dave", "roles": ["admin"]}],
    )
    assert ask(server, bearer(dave_key)).status_code == 200
    assert set_status(server, dave_key, True).status_code == 200
    assert ask(server, bearer(CAROL_KEY)).status_code == 401  # revoked by the new file

    # A broken file keeps the keys that were in force, and says so in the log.
    keys_file.write_text("- {user_id: [unclosed")
    assert ask(server, bearer(dave_key)).status_code == 200
    assert "keeping the keys loaded before" in server.log()

    # A removed file takes its keys with it; configured keys keep working.
    keys_file.unlink()
    assert ask(server, bearer(dave_key)).status_code == 401
    assert ask(server, bearer(ALICE_KEY)).status_code == 200


def test_config_dump_masks_every_key(tmp_path: Path) -> None:
    config = merge(
        base_settings(tmp_path),
        {
            "authentication": {
                "module": "api-key",
                "api-key": {"keys": [{"key": ALICE_KEY, "user_id": "alice"}]},
            }
        },
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    dump = subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "config", "dump", "-c", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert ALICE_KEY not in dump.stdout
    assert yaml.safe_load(dump.stdout)["authentication"]["api-key"]["keys"] == "********"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "authentication.api-key: give keys, keys_file, or both"),
        (
            {"keys": [{"key": "short", "user_id": "x"}]},
            "authentication.api-key.keys.0.key: keys must be at least 12 characters long",
        ),
        (
            # A presented key is trimmed: one that begins or ends with a space never matches.
            {"keys": [{"key": f"{ALICE_KEY} ", "user_id": "x"}]},
            "authentication.api-key.keys.0.key: a key must not begin or end with white space",
        ),
        (
            {"keys": [{"user_id": "x"}]},
            "authentication.api-key.keys.0: give exactly one of key and key_sha256",
        ),
        (
            {"keys": [{"key_sha256": "abc", "user_id": "x"}]},
            "authentication.api-key.keys.0.key_sha256: not a hex SHA-256 digest",
        ),
        (
            # A key pasted where its digest belongs is not repeated.
            {"keys": [{"key_sha256": ALICE_KEY, "user_id": "x"}]},
            "authentication.api-key.keys.0.key_sha256: not a hex SHA-256 digest",
        ),
        (
            # A bare key where an entry belongs is not repeated either.
            {"keys": [ALICE_KEY]},
            "authentication.api-key.keys.0: a key entry must be a mapping",
        ),
        ({"keys": ALICE_KEY}, "authentication.api-key.keys: must be a list of key entries"),
        (
            {"keys": [{"key": ALICE_KEY, "user_id": "a"}, {"key": ALICE_KEY, "user_id": "b"}]},
            "keys[1]: the same key as entry 0",
        ),
        ({"keys_file": "/nonexistent/keys.yaml"}, "authentication.api-key.keys_file:"),
    ],
)
def test_bad_settings_fail_config_check_without_echoing_keys(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    result = run_config_check(
        tmp_path, {"authentication": {"module": "api-key", "api-key": settings}}
    )
    assert ALICE_KEY not in result.stderr
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "short" not in result.stderr.replace(message, "")
    assert ALICE_KEY not in result.stderr
    assert "Traceback" not in result.stderr


def config_check(tmp_path: Path, settings: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    config = merge(
        base_settings(tmp_path), {"authentication": {"module": "api-key", "api-key": settings}}
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_keys_file_entries_are_checked_at_start(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps([{"key_sha256": sha256(CAROL_KEY)}]))
    result = config_check(tmp_path, {"keys_file": str(keys)})
    assert result.returncode == 2
    assert f"authentication.api-key.keys_file: {keys}[0]: user_id: required" in result.stderr

    keys.write_text(json.dumps([{"key_sha256": sha256(ALICE_KEY), "user_id": "mallory"}]))
    result = config_check(
        tmp_path, {"keys": [{"key": ALICE_KEY, "user_id": "alice"}], "keys_file": str(keys)}
    )
    assert result.returncode == 2
    assert "the same key as an entry of authentication.api-key.keys" in result.stderr

    missing = config_check(tmp_path, {"keys_file": str(tmp_path / "nope.yaml")})
    assert missing.returncode == 2
    assert "nope.yaml: No such file or directory" in missing.stderr


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f'- "{ALICE_KEY}"\n', "[0]: a key entry must be a mapping"),
        (f"- {ALICE_KEY}\n", "[0]: a key entry must be a mapping"),
        (
            f'- {{key: "{ALICE_KEY}", user_id: [unclosed\n',
            "is not valid YAML or JSON: expected ',' or ']', but got '<stream end>' (line 2",
        ),
        (f"- *{ALICE_KEY}\n", "is not valid YAML or JSON: found undefined alias '...' (line 1"),
        (f"- {{key_sha256: {ALICE_KEY}, user_id: x}}\n", "[0]: key_sha256: not a hex SHA-256"),
        (f"- {{key: {ALICE_KEY}, user_id: x, kye: 1}}\n", "[0]: kye: unknown key"),
        ("[" * 5000, "is nested too deeply to be a list of key entries"),
    ],
    ids=[
        "quoted-key",
        "bare-key",
        "yaml-error",
        "yaml-alias",
        "key-as-digest",
        "unknown-key",
        "too-deep",
    ],
)
def test_a_bad_keys_file_fails_config_check_without_echoing_keys(
    tmp_path: Path, content: str, message: str
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(content)
    result = config_check(tmp_path, {"keys_file": str(keys)})
    assert result.returncode == 2
    assert f"authentication.api-key.keys_file: {keys}" in result.stderr
    assert message in result.stderr
    assert ALICE_KEY not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_keys_file_that_is_not_a_small_file_fails_config_check(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text("# " + "x" * (1024 * 1024) + "\n[]\n")
    for path in (huge, Path("/dev/zero")):
        result = config_check(tmp_path, {"keys_file": str(path)})
        assert result.returncode == 2
        assert f"authentication.api-key.keys_file: {path} is larger than" in result.stderr


def test_a_keys_file_broken_while_serving_is_logged_without_its_keys(
    server: RunningServer, keys_file: Path
) -> None:
    keys_file.write_text(f'- {{key: "{ALICE_KEY}xyz", user_id: [unclosed\n')
    assert ask(server, bearer(CAROL_KEY)).status_code == 200
    log = server.log()
    assert "is not valid YAML or JSON" in log
    assert "keeping the keys loaded before" in log
    assert ALICE_KEY not in log


def test_a_keys_file_nested_too_deeply_while_serving_keeps_the_keys_in_force(
    server: RunningServer, keys_file: Path
) -> None:
    # PyYAML builds nested collections recursively: deep enough, Python's stack runs out.
    keys_file.write_text("[" * 5000)
    assert ask(server, bearer(CAROL_KEY)).status_code == 200
    log = server.log()
    assert "is nested too deeply to be a list of key entries" in log
    assert "keeping the keys loaded before" in log
    assert "Traceback" not in log


def test_a_non_ascii_key_sent_as_utf8_is_recognised(
    server_factory: Callable[..., RunningServer],
) -> None:
    key = "kéy-non-ascii-12345"
    server = server_factory(
        {
            "authentication": {
                "module": "api-key",
                "api-key": {
                    "keys": [
                        {"key": key, "user_id": "dora"},
                        {"key_sha256": sha256("ключ-0987654321"), "user_id": "ivan"},
                    ]
                },
            }
        }
    )
    for sent, user in ((key, "dora"), ("ключ-0987654321", "ivan")):
        # As curl sends it: the header's bytes are the key's UTF-8.
        answer = ask(server, {"Authorization": f"Bearer {sent}".encode()})  # type: ignore[dict-item]
        assert answer.status_code == 200, answer.text
        assert (server.root / "transcripts" / sha256(user)).is_dir()
