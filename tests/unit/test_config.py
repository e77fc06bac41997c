"""Configuration: defaults, validation errors naming the key, secrets, storage checks."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lightspeed_collector import plugin_manager
from lightspeed_collector.config import (
    SECRET_MASK,
    Config,
    default_config,
    load_config,
    masked_url,
)
from lightspeed_collector.errors import ConfigError


def test_embedded_defaults_match_the_documented_service() -> None:
    config = default_config()
    service = config.section("service")
    assert (service["host"], service["port"]) == ("127.0.0.1", 8080)
    assert config.section("authentication")["module"] == "noop"
    assert config.section("query")["default_provider"] == "echo"
    collection = config.section("user_data_collection")
    assert collection["feedback_storage"] == "./data/feedback"
    assert collection["transcripts_storage"] == "./data/transcripts"
    assert collection["feedback_enabled"] and collection["transcripts_enabled"]
    collector = collection["data_collector"]
    assert collector == {
        "enabled": False,
        "ingress_server_url": None,
        "ingress_server_auth_token": None,
        "ingress_server_auth_token_file": None,
        "ingress_server_auth_token_env": None,
        "ingress_content_service_name": None,
        "collection_interval": 7200,
        "cleanup_after_send": True,
        "connection_timeout_seconds": 30,
        "max_archive_bytes": 104857600,
        "exporter": "ingress",
        "user_agent": None,
        "compression_level": 1,
        "upload_attempts": 5,
        "retry_base_seconds": 1,
        "lock_wait_seconds": 10,
        "shutdown_timeout_seconds": 20,
        "min_record_age_seconds": 2,
    }


def test_reference_document_keys_are_accepted_exactly(make_config: Callable[..., Config]) -> None:
    config = make_config(
        {
            "user_data_collection": {
                "data_collector": {
                    "enabled": True,
                    "ingress_server_url": "https://ingress.example.com/upload",
                    "ingress_server_auth_token": "tok",
                    "ingress_content_service_name": "lightspeed-stack",
                    "collection_interval": 60,
                    "cleanup_after_send": True,
                    "connection_timeout_seconds": 30,
                }
            }
        }
    )
    assert config.section("user_data_collection", "data_collector")["collection_interval"] == 60


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"service": {"port": "eighty"}}, "service.port: 'eighty' is not of type 'integer'"),
        ({"service": {"prot": 1}}, "service.prot: unknown key; did you mean 'port'?"),
        ({"servise": {}}, "servise: unknown key; did you mean 'service'?"),
        (
            {"user_data_collection": {"data_collector": {"connection_timeout": 5}}},
            "user_data_collection.data_collector.connection_timeout: unknown key; did you mean 'connection_timeout_seconds'?",
        ),
        (
            {"user_data_collection": {"feedback_storage": None}},
            "user_data_collection.feedback_storage: feedback_storage is required when feedback is enabled",
        ),
        (
            {"user_data_collection": {"transcripts_storage": None}},
            "user_data_collection.transcripts_storage: transcripts_storage is required when transcripts are enabled",
        ),
        (
            {
                "user_data_collection": {
                    "data_collector": {"enabled": True, "ingress_content_service_name": "ols"}
                }
            },
            "user_data_collection.data_collector.ingress_server_url: ingress_server_url is required when the data collector is enabled",
        ),
        (
            {
                "user_data_collection": {
                    "data_collector": {"enabled": True, "ingress_server_url": "https://x"}
                }
            },
            "ingress_content_service_name is required when the data collector is enabled",
        ),
        (
            {
                "user_data_collection": {
                    "data_collector": {"ingress_content_service_name": "Light_Speed"}
                }
            },
            "user_data_collection.data_collector.ingress_content_service_name: 'Light_Speed' is not a valid service name",
        ),
        ({"service": {"log_level": "loud"}}, "service.log_level"),
        (
            {"user_data_collection": {"data_collector": {"user_agent": "ols\u2014operator"}}},
            "user_data_collection.data_collector.user_agent: 'ols\u2014operator' cannot be sent "
            "as a User-Agent header",
        ),
    ],
)
def test_errors_name_the_key_path(
    make_config: Callable[..., Config], extra: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(extra)
    assert message in str(caught.value)


def test_disabled_storage_may_have_no_path(make_config: Callable[..., Config]) -> None:
    config = make_config(
        {"user_data_collection": {"feedback_enabled": False, "feedback_storage": None}}
    )
    assert config.section("user_data_collection")["feedback_storage"] is None


def test_storage_path_that_is_a_file_is_an_error(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    with pytest.raises(
        ConfigError,
        match=r"user_data_collection.feedback_storage: .*blocker exists and is not a directory",
    ):
        make_config({"user_data_collection": {"feedback_storage": str(blocker)}})
    with pytest.raises(
        ConfigError, match=r"user_data_collection\.transcripts_storage: .*cannot be created"
    ):
        make_config({"user_data_collection": {"transcripts_storage": str(blocker / "sub")}})


def test_load_config_reports_yaml_and_file_problems(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("service:\n  port: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_config(listing)


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"service:\n  port: 9999\n  state_dir: {tmp_path / 'state'}\n")
    monkeypatch.setenv("LIGHTSPEED_COLLECTOR_CONFIG", str(path))
    assert load_config().section("service")["port"] == 9999


def test_secrets_from_value_file_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = default_config()
    secret_file = tmp_path / "salt"
    secret_file.write_text("from-file\n")
    assert config.resolve_secret({"user_id_salt": "inline"}, "user_id_salt") == "inline"
    assert (
        config.resolve_secret({"user_id_salt_file": str(secret_file)}, "user_id_salt")
        == "from-file"
    )
    secret_file.write_text("rotated\n")
    assert (
        config.resolve_secret({"user_id_salt_file": str(secret_file)}, "user_id_salt") == "rotated"
    )
    monkeypatch.setenv("SALT_VAR", "from-env")
    assert config.resolve_secret({"user_id_salt_env": "SALT_VAR"}, "user_id_salt") == "from-env"
    assert config.resolve_secret({}, "user_id_salt") is None
    with pytest.raises(ConfigError, match="user_id_salt_file: cannot read"):
        config.resolve_secret({"user_id_salt_file": str(tmp_path / "nope")}, "user_id_salt")
    with pytest.raises(ConfigError, match="UNSET_VAR is not set"):
        config.resolve_secret({"user_id_salt_env": "UNSET_VAR"}, "user_id_salt")


def test_a_secret_file_may_start_with_a_byte_order_mark_but_must_be_utf8(
    tmp_path: Path,
) -> None:
    config = default_config()
    secret_file = tmp_path / "token"
    secret_file.write_bytes(b"\xef\xbb\xbftok-abc\r\n")
    assert config.resolve_secret({"token_file": str(secret_file)}, "token") == "tok-abc"
    secret_file.write_bytes(b"tok\xff\n")
    with pytest.raises(ConfigError, match=r"token_file: .* is not UTF-8 text"):
        config.resolve_secret({"token_file": str(secret_file)}, "token")


def test_masked_config_hides_every_secret(make_config: Callable[..., Config]) -> None:
    config = make_config(
        {
            "user_data_collection": {
                "user_id_salt": "pepper",
                "data_collector": {
                    "ingress_server_auth_token": "tok-123",
                    "ingress_server_auth_token_file": "/run/t",
                },
            },
            "authentication": {"module": "noop", "noop": {"admin_user_ids": ["x"]}},
        }
    )
    masked = config.masked()
    text = repr(masked)
    assert "pepper" not in text and "tok-123" not in text
    assert masked["user_data_collection"]["user_id_salt"] == SECRET_MASK
    assert (
        masked["user_data_collection"]["data_collector"]["ingress_server_auth_token_file"]
        == "/run/t"
    )
    assert config.section("user_data_collection")["user_id_salt"] == "pepper"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=60,
    )


def test_cli_config_check_and_dump(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        f"service: {{state_dir: {tmp_path / 'state'}}}\n"
        f"user_data_collection: {{feedback_storage: {tmp_path / 'fb'}, transcripts_storage: {tmp_path / 'tr'},"
        " user_id_salt: very-secret}\n"
    )
    checked = run_cli("config", "check", "-c", str(good), cwd=tmp_path)
    assert checked.returncode == 0, checked.stderr
    assert "configuration OK" in checked.stdout
    dumped = run_cli("config", "dump", "--config", str(good), cwd=tmp_path)
    assert dumped.returncode == 0
    assert "very-secret" not in dumped.stdout and SECRET_MASK in dumped.stdout
    assert "connection_timeout_seconds: 30" in dumped.stdout


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("service:\n  port: -1\n", "service.port"),
        (
            "plugins:\n  regex:\n    rules:\n      - {name: bad, pattern: '(unclosed'}\n",
            "plugins.regex.rules[0].pattern",
        ),
        ("plugins:\n  no-such-plugin: {a: 1}\n", "plugins.no-such-plugin"),
        (
            "query:\n  providers:\n    gpt: {type: nonesuch}\n",
            "query.providers.gpt.type: unknown provider type 'nonesuch'",
        ),
        (
            "query:\n  default_provider: missing\n",
            "query.default_provider: 'missing' is not installed",
        ),
        (
            "authentication:\n  module: kerberos\n",
            "authentication.module: 'kerberos' is not installed",
        ),
        (
            "user_data_collection:\n  redactors: [regex, spacy]\n",
            "user_data_collection.redactors: 'spacy'",
        ),
    ],
)
def test_cli_config_errors_exit_2_without_traceback(
    tmp_path: Path, content: str, fragment: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"{content}")
    result = run_cli("config", "check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_a_number_too_long_for_python_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    path.write_text("service: {port: " + "9" * 5000 + "}\n")
    result = run_cli("config", "check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "holds a number of more than 4300 digits" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("opening, closing", [("[", "]"), ("{a: ", "}")])
def test_collections_nested_too_deeply_are_a_config_error(
    tmp_path: Path, opening: str, closing: str
) -> None:
    """PyYAML builds nested collections by recursion; a few kilobytes of brackets exhaust
    the interpreter's stack."""
    path = tmp_path / "deep.yaml"
    path.write_text("plugins: " + opening * 5000 + "1" + closing * 5000 + "\n")
    result = run_cli("config", "check", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "nests collections too deeply to read" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_with_bad_config_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("service: {port: 70000}\n")
    result = run_cli("serve", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert "service.port" in result.stderr and "Traceback" not in result.stderr


def test_a_state_dir_that_cannot_really_be_made_or_used_exits_2(tmp_path: Path) -> None:
    # Root passes every os.access check, even under /proc; only creating it tells.
    collector = (
        "data_collector: {ingress_server_url: 'http://127.0.0.1:9/u', "
        "ingress_content_service_name: ols}"
    )
    path = tmp_path / "bad.yaml"
    path.write_text(
        "service: {state_dir: /proc/lightspeed-collector-state}\n"
        f"user_data_collection: {{{collector}}}\n"
    )
    for command in (["serve"], ["export", "--once"]):
        result = run_cli(*command, "-c", str(path), cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert "service.state_dir: cannot create /proc/lightspeed-collector-state" in result.stderr
        assert "Traceback" not in result.stderr
    state = tmp_path / "state"
    (state / "conversations.sqlite3").mkdir(parents=True)
    path.write_text(f"service: {{state_dir: {state}, port: 0}}\n")
    result = run_cli("serve", "-c", str(path), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "service.state_dir: cannot open" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_address_that_cannot_be_listened_on_exits_2_naming_the_setting(
    tmp_path: Path,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(f"service: {{port: {port}, state_dir: {tmp_path / 'state'}}}\n")
        served = run_cli("serve", "-c", str(path), cwd=tmp_path)
        stub = run_cli("ingress-stub", "--port", str(port), "--store", "s", cwd=tmp_path)
    assert served.returncode == 2, served.stderr
    assert f"service.port: cannot listen on 127.0.0.1:{port}: Address already in use" in (
        served.stderr
    )
    assert stub.returncode == 2, stub.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in stub.stderr
    (tmp_path / "a-file").write_text("")
    no_store = run_cli("ingress-stub", "--port", "0", "--store", "a-file/store", cwd=tmp_path)
    assert no_store.returncode == 2, no_store.stderr
    assert "cannot store uploads in a-file/store: Not a directory" in no_store.stderr
    # A documentation address (RFC 5737): no interface of this machine has it.
    path.write_text("service: {host: 192.0.2.1}\n")
    unknown = run_cli("serve", "-c", str(path), cwd=tmp_path)
    assert unknown.returncode == 2, unknown.stderr
    assert "service.host: cannot listen on 192.0.2.1:8080" in unknown.stderr
    for result in (served, stub, no_store, unknown):
        assert "Traceback" not in result.stderr


def test_missing_secret_is_a_start_up_error_naming_the_full_key(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match=r"^user_data_collection\.user_id_salt_file: cannot read"):
        make_config({"user_data_collection": {"user_id_salt_file": str(tmp_path / "absent")}})
    with pytest.raises(
        ConfigError,
        match=r"^user_data_collection\.user_id_salt_env: environment variable NOPE_NOT_SET",
    ):
        make_config({"user_data_collection": {"user_id_salt_env": "NOPE_NOT_SET"}})


def test_config_check_has_no_side_effects(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"service: {{state_dir: {tmp_path / 'state'}}}\n"
        f"user_data_collection: {{feedback_storage: {tmp_path / 'fb'}, transcripts_storage: {tmp_path / 'tr'}}}\n"
    )
    assert run_cli("config", "check", "-c", str(path), cwd=tmp_path).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml"]


def test_masking_covers_header_maps_and_credential_words() -> None:
    config = Config(
        {
            "query": {
                "providers": {
                    "gpt": {
                        "type": "openai",
                        "headers": {"X-Team": "blue", "Authorization": "Bearer sk-1"},
                        "proxy_authorization": "Basic abc",
                        "api_key_file": "/run/key",
                    }
                }
            }
        }
    )
    masked = config.masked()["query"]["providers"]["gpt"]
    assert masked["headers"] == {"X-Team": SECRET_MASK, "Authorization": SECRET_MASK}
    assert masked["proxy_authorization"] == SECRET_MASK
    assert masked["api_key_file"] == "/run/key"


def test_masking_hides_passwords_and_query_values_in_urls() -> None:
    config = Config(
        {
            "user_data_collection": {
                "data_collector": {"ingress_server_url": "https://svc:pw-1@ingress.test/upload"}
            },
            "query": {"providers": {"llm": {"url": "http://u:pw-2@llm.test/v1?api_key=k-3&v=2"}}},
            "authentication": {"jwk-token": {"jwks_url": "https://id.test:8443/keys"}},
        }
    )
    masked = config.masked()
    collector = masked["user_data_collection"]["data_collector"]
    assert collector["ingress_server_url"] == f"https://svc:{SECRET_MASK}@ingress.test/upload"
    assert (
        masked["query"]["providers"]["llm"]["url"]
        == f"http://u:{SECRET_MASK}@llm.test/v1?api_key={SECRET_MASK}&v={SECRET_MASK}"
    )
    assert masked["authentication"]["jwk-token"]["jwks_url"] == "https://id.test:8443/keys"


@pytest.mark.parametrize("url", ["http://[::1", "http://u:pw@host:99999/x"])
def test_a_url_that_cannot_be_parsed_is_masked_whole(url: str) -> None:
    assert masked_url(url) == SECRET_MASK


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "authentication: {module: api-key}\nservice: {port: 8081}\nauthentication: {module: noop}\n",
            "at line 3, column 1: the key 'authentication' is given twice",
        ),
        ("service:\n  port: 1\n  port: 2\n", "at line 3, column 3: the key 'port' is given twice"),
        ("1: a\nfoo: b\n", "at line 1, column 1: the key '1' is read as int, not text; quote it"),
        ("service:\n  5: x\n  zz: y\n", "at line 2, column 3: the key '5' is read as int"),
        ("yes: 1\nservice: {}\n", "the key 'yes' is read as bool, not text; quote it"),
        (
            "query: {providers: {1: {type: echo}}}\n",
            "at line 1, column 21: the key '1' is read as int",
        ),
    ],
)
def test_keys_given_twice_or_not_as_text_are_refused(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert message in str(caught.value)


def test_keys_merged_from_an_anchor_may_be_overridden(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "user_data_collection:\n"
        f"  feedback_storage: {tmp_path / 'fb'}\n"
        f"  transcripts_storage: {tmp_path / 'tr'}\n"
        "service:\n  <<: {host: 127.0.0.1, port: 8081}\n  port: 8082\n"
        f"  state_dir: {tmp_path / 'state'}\n"
    )
    service = load_config(path).section("service")
    assert (service["host"], service["port"]) == ("127.0.0.1", 8082)


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    for level in range(1, 9):
        previous = f"*a{level - 1}"
        lines.append(f"a{level}: &a{level} [{', '.join([previous] * 9)}]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nplugins: {disabled: *a8}\n")
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "expands to more than 100000 values" in str(caught.value)
    assert time.monotonic() - started < 5


def test_a_configuration_path_to_an_endless_file_fails_cleanly() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config("/dev/zero")
    assert "/dev/zero is larger than 1048576 bytes" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "key"),
    [
        ({"user_data_collection": {"user_id_salt_file": "/tmp/a\x00b"}}, "user_id_salt_file"),
        ({"service": {"state_dir": "/tmp/st\x00x"}}, "service.state_dir"),
        ({"user_data_collection": {"feedback_storage": "/tmp/f\x00b"}}, "feedback_storage"),
    ],
)
def test_a_nul_character_is_a_configuration_error_naming_the_key(
    make_config: Callable[..., Config], extra: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config(extra)
    assert key in str(caught.value) and "NUL" in str(caught.value)


@pytest.mark.parametrize(
    ("extra", "secret", "key"),
    [
        (
            {"user_data_collection": {"user_id_salt": 123456789}},
            "123456789",
            "user_data_collection.user_id_salt: the value is not of type",
        ),
        (
            {"user_data_collection": {"data_collector": {"ingress_server_auth_token": 987654321}}},
            "987654321",
            "data_collector.ingress_server_auth_token: the value is not of type",
        ),
        (
            {
                "query": {
                    "providers": {
                        "llm": {"type": "openai", "url": "http://x", "api_key": 12345678901234}
                    }
                }
            },
            "12345678901234",
            "query.providers.llm.api_key: the value is not of type",
        ),
        (
            {
                "authentication": {
                    "module": "api-key",
                    "api-key": {"keys": ["sk-very-secret-key-0001"]},
                }
            },
            "sk-very-secret-key-0001",
            "authentication.api-key.keys.0: ",
        ),
    ],
)
def test_errors_never_repeat_a_secret(
    make_config: Callable[..., Config], extra: dict[str, Any], secret: str, key: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        config = make_config(extra)
        plugin_manager.load(config)
    message = str(caught.value)
    assert secret not in message
    assert key in message


def test_a_message_that_quotes_no_secret_is_kept_whole(make_config: Callable[..., Config]) -> None:
    """Section names such as jwk-token do not make every message below them secret."""
    config = make_config(
        {"authentication": {"module": "jwk-token", "jwk-token": {"jwks_timeout_seconds": 5}}}
    )
    with pytest.raises(ConfigError) as caught:
        plugin_manager.load(config)
    assert "give exactly one of jwks_url and jwks_file" in str(caught.value)


def test_a_long_wrong_value_is_cut_in_the_message(make_config: Callable[..., Config]) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"service": {"host": ["h" * 100_000]}})
    assert len(str(caught.value)) < 500 and "(cut)" in str(caught.value)


def test_a_whole_number_written_as_a_float_is_taken_as_an_integer(
    make_config: Callable[..., Config],
) -> None:
    collector = make_config(
        {"user_data_collection": {"data_collector": {"compression_level": 1.0}}}
    ).section("user_data_collection", "data_collector")
    assert collector["compression_level"] == 1 and isinstance(collector["compression_level"], int)
    with pytest.raises(ConfigError, match=r"compression_level: 1\.5 is not of type 'integer'"):
        make_config({"user_data_collection": {"data_collector": {"compression_level": 1.5}}})


@pytest.mark.parametrize(
    "key", ["collection_interval", "connection_timeout_seconds", "shutdown_timeout_seconds"]
)
def test_durations_have_a_ceiling(make_config: Callable[..., Config], key: str) -> None:
    with pytest.raises(ConfigError, match=f"data_collector.{key}: .* is greater than the maximum"):
        make_config({"user_data_collection": {"data_collector": {key: 1e20}}})


def test_an_empty_secret_file_is_an_error(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    salt = tmp_path / "salt"
    salt.write_text("  \n")
    with pytest.raises(
        ConfigError, match=f"user_data_collection.user_id_salt_file: {salt} is empty"
    ):
        make_config({"user_data_collection": {"user_id_salt_file": str(salt)}})


@pytest.mark.parametrize(
    "collector",
    [
        "{enabled: true, exporter: nosuch",
        "{enabled: true",
    ],
)
def test_config_check_refuses_a_missing_exporter_as_serve_does(
    tmp_path: Path, collector: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"service: {{state_dir: {tmp_path / 'state'}}}\n"
        "user_data_collection:\n"
        f"  feedback_storage: {tmp_path / 'fb'}\n"
        f"  transcripts_storage: {tmp_path / 'tr'}\n"
        f"  data_collector: {collector}, ingress_server_url: 'http://127.0.0.1:9/upload',"
        " ingress_content_service_name: ols}\n"
        "plugins: {disabled: [ingress]}\n"
    )
    checked = run_cli("config", "check", "-c", str(config), cwd=tmp_path)
    assert checked.returncode == 2, checked.stdout
    assert "user_data_collection.data_collector.exporter:" in checked.stderr
    assert "is not installed or is disabled" in checked.stderr
    assert "Traceback" not in checked.stderr


@pytest.mark.parametrize(
    ("key", "value"),
    [("ingress_content_service_name", "ols\n"), ("user_agent", "ols-operator/1.0\n")],
)
def test_a_trailing_line_break_does_not_pass_a_pattern(
    make_config: Callable[..., Config], key: str, value: str
) -> None:
    with pytest.raises(ConfigError, match=f"data_collector.{key}: "):
        make_config({"user_data_collection": {"data_collector": {key: value}}})


@pytest.mark.parametrize(
    ("same", "key"),
    [
        (("service", "state_dir"), "user_data_collection.feedback_storage"),
        (
            ("user_data_collection", "transcripts_storage"),
            "user_data_collection.transcripts_storage",
        ),
    ],
)
def test_the_state_folder_and_the_storages_are_distinct(
    make_config: Callable[..., Config], tmp_path: Path, same: tuple[str, str], key: str
) -> None:
    folder = str(tmp_path / "shared")
    section, name = same
    extra = {"user_data_collection": {"feedback_storage": folder}}
    extra.setdefault(section, {})[name] = folder
    with pytest.raises(ConfigError, match=f"{key}: {folder} is the same folder as"):
        make_config(extra)


def test_wrong_values_are_quoted_as_yaml_and_json_write_them(
    make_config: Callable[..., Config],
) -> None:
    with pytest.raises(ConfigError) as caught:
        make_config({"service": {"log_level": None, "threads": True}})
    message = str(caught.value)
    assert 'service.log_level: null is not one of ["debug", "info", "warning", "error"]' in message
    assert "service.threads: true is not of type 'integer'" in message
