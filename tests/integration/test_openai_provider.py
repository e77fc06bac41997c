"""The ``openai`` provider in a real server, against an OpenAI-compatible server on loopback."""

from __future__ import annotations

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

from lightspeed_collector import validation
from tests.conftest import RunningServer, base_settings, merge, openai_settings
from tests.openai_standin import PROMPT_TOKENS, StandIn

API_KEY = "sk-test-0123456789abcdef-SECRET"


def provider_config(standin: StandIn, **settings: Any) -> dict[str, Any]:
    return openai_settings(standin, models=["gpt-4o"], **settings)


def ask(server: RunningServer, query: str, **body: Any) -> requests.Response:
    return requests.post(f"{server.url}/v1/query", json={"query": query, **body}, timeout=15)


def transcripts(server: RunningServer) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted(server.root.rglob("transcripts/**/*.json"))]


def test_answers_through_the_server_and_records_the_model_and_tokens(
    standin: StandIn, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    key_file = tmp_path / "openai-key"
    key_file.write_text(API_KEY + "\n")
    standin.expected_key = API_KEY
    server = server_factory(
        provider_config(standin, api_key_file=str(key_file), system_prompt="Be brief.")
    )
    log_attachment = {"attachment_type": "log", "content_type": "text/plain", "content": "OOM"}
    response = ask(server, "What is a pod?", attachments=[log_attachment])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["response"] == "Pods are the smallest units."
    assert (answer["input_tokens"], answer["output_tokens"]) == (PROMPT_TOKENS, 5)
    assert answer["truncated"] is False

    sent = standin.requests[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {API_KEY}"
    assert sent.body["model"] == "gpt-4o-mini"
    assert sent.body["stream"] is False
    assert sent.body["messages"][0] == {"role": "system", "content": "Be brief."}
    user = sent.body["messages"][1]
    assert user["role"] == "user"
    assert user["content"].startswith("What is a pod?")
    assert "OOM" in user["content"]

    [record] = transcripts(server)
    assert validation.check("transcript", record) == []
    assert record["metadata"]["provider"] == "llm"
    assert record["metadata"]["model"] == "gpt-4o-mini"
    assert record["attachments"] == [log_attachment]

    # A request may pick another listed model, and its own system prompt wins.
    picked = ask(server, "again", provider="llm", model="gpt-4o", system_prompt="Be formal.")
    assert picked.status_code == 200, picked.text
    assert standin.requests[-1].body["model"] == "gpt-4o"
    assert standin.requests[-1].body["messages"][0]["content"] == "Be formal."

    # The key file is read for every request: a rotated key works without a restart.
    standin.expected_key = "sk-rotated-key-0000000000"
    key_file.write_text("sk-rotated-key-0000000000")
    assert ask(server, "after rotation").status_code == 200
    assert standin.requests[-1].headers["authorization"] == "Bearer sk-rotated-key-0000000000"


def test_recorded_openai_response_body(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    """The example body from OpenAI's API reference, as OpenAI itself serves it."""
    server = server_factory(provider_config(standin))
    response = ask(server, "[recorded] Hello!")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["response"] == "Hello! How can I assist you today?"
    assert (answer["input_tokens"], answer["output_tokens"]) == (19, 10)
    assert answer["truncated"] is False
    [record] = transcripts(server)
    assert record["metadata"]["model"] == "gpt-4.1-2025-04-14"


def test_finish_reason_length_marks_the_answer_truncated(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(provider_config(standin, max_tokens=3))
    answer = ask(server, "[length] tell me everything").json()
    assert answer["truncated"] is True
    assert answer["response"] == "Pods are the "
    assert standin.requests[-1].body["max_tokens"] == 3
    assert transcripts(server)[0]["truncated"] is True


def test_a_lone_surrogate_in_the_answer_is_replaced_not_a_500(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    server = server_factory(provider_config(standin))
    answer = ask(server, "[surrogate] smile")
    assert answer.status_code == 200, answer.text
    assert answer.json()["response"] == "Half an emoji: \ufffd!"
    [record] = transcripts(server)
    assert record["llm_response"] == "Half an emoji: \ufffd!"
    failed = ask(server, "[garbled] go")
    assert failed.status_code == 502, failed.text
    assert "upstream broke \ufffd here" in failed.json()["detail"]["cause"]
    assert "Traceback" not in server.log()


def test_a_key_file_rewritten_with_a_key_no_header_can_carry_is_502_not_500(
    standin: StandIn, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    key_file = tmp_path / "openai-key"
    key_file.write_text(API_KEY + "\n")
    server = server_factory(provider_config(standin, api_key_file=str(key_file)))
    assert ask(server, "hi").status_code == 200
    key_file.write_text("sk-\u2014pasted\n", "utf-8")
    answer = ask(server, "hi")
    assert answer.status_code == 502, answer.text
    assert "has no usable API key" in answer.json()["detail"]["cause"]
    assert "characters no header can carry" in server.log()
    assert "Traceback" not in server.log()


def test_upstream_failures_map_to_clear_statuses_never_500(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    standin.expected_key = API_KEY
    server = server_factory(provider_config(standin, api_key=API_KEY))

    limited = ask(server, "[ratelimit] hi")
    assert limited.status_code == 429, limited.text
    assert limited.headers["Retry-After"] == "7"
    assert "Rate limit reached" in limited.json()["detail"]["cause"]

    failed = ask(server, "[error500] hi")
    assert failed.status_code == 502, failed.text
    assert failed.json()["detail"]["response"] == "The model provider failed"
    assert "HTTP 500" in failed.json()["detail"]["cause"]

    timed_out = ask(server, "[slow] hi")
    assert timed_out.status_code == 504, timed_out.text
    assert "within 1 seconds" in timed_out.json()["detail"]["cause"]
    assert ask(server, "[slowbody] hi").status_code == 504

    assert ask(server, "[notfound] hi").status_code == 502
    assert ask(server, "[notjson] hi").status_code == 502
    rejected = ask(server, "[badrequest] hi")
    assert rejected.status_code == 422
    assert "maximum context length" in rejected.json()["detail"]["errors"][0]["msg"]

    unknown_model = ask(server, "hi", provider="llm", model="gpt-9")
    assert unknown_model.status_code == 422
    error = unknown_model.json()["detail"]["errors"][0]
    assert error["loc"] == ["body", "model"]
    assert "gpt-9" in error["msg"] and "gpt-4o-mini" in error["msg"]
    unknown_provider = ask(server, "hi", provider="nope", model="gpt-4o")
    assert unknown_provider.status_code == 422
    assert "nope" in unknown_provider.json()["detail"]["errors"][0]["msg"]

    assert transcripts(server) == []
    assert "Traceback" not in server.log()


def test_unreachable_server_is_502(server_factory: Callable[..., RunningServer]) -> None:
    closed = StandIn().start()
    url = closed.url
    closed.stop()
    server = server_factory(
        {
            "query": {
                "default_provider": "llm",
                "providers": {"llm": {"type": "openai", "url": url, "model": "m"}},
            }
        }
    )
    response = ask(server, "hi")
    assert response.status_code == 502, response.text
    assert response.json()["detail"]["cause"] == "Provider 'llm' could not be reached"


def test_the_key_never_reaches_logs_error_bodies_or_config_dump(
    standin: StandIn, server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    standin.expected_key = "sk-the-right-key-0000000000"
    settings = provider_config(standin, api_key=API_KEY)
    server = server_factory(merge(settings, {"service": {"log_level": "debug"}}))
    refused = ask(server, "hi")
    assert refused.status_code == 502
    assert "credentials" in refused.json()["detail"]["cause"]
    streamed = requests.post(f"{server.url}/v1/streaming_query", json={"query": "hi"}, timeout=15)
    assert streamed.status_code == 502
    for text in (refused.text, streamed.text, server.log()):
        assert API_KEY not in text
        assert "0123456789abcdef" not in text
    # The stand-in did quote the key back, so the test would notice a leak.
    assert standin.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"

    config_path = tmp_path / "dump.yaml"
    config_path.write_text(yaml.safe_dump(merge(base_settings(tmp_path), settings)))
    dump = subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "config", "dump", "-c", str(config_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert API_KEY not in dump.stdout
    assert yaml.safe_load(dump.stdout)["query"]["providers"]["llm"]["api_key"] == "********"


def test_key_from_environment_and_several_named_instances(
    standin: StandIn, server_factory: Callable[..., RunningServer]
) -> None:
    other = StandIn().start()
    try:
        config = {
            "query": {
                "default_provider": "local",
                "providers": {
                    "local": {"type": "openai", "url": standin.url, "model": "llama3"},
                    "hosted": {
                        "type": "openai",
                        "url": f"{other.url}/chat/completions",
                        "model": "gpt-4o-mini",
                        "api_key_env": "TEST_OPENAI_KEY",
                    },
                },
            }
        }
        server = server_factory(config, env={"TEST_OPENAI_KEY": API_KEY})
        assert ask(server, "hi").status_code == 200
        assert standin.requests[-1].body["model"] == "llama3"
        assert "authorization" not in standin.requests[-1].headers
        assert ask(server, "hi", provider="hosted", model="gpt-4o-mini").status_code == 200
        assert other.requests[-1].path == "/v1/chat/completions"
        assert other.requests[-1].headers["authorization"] == f"Bearer {API_KEY}"
        providers = [r["metadata"]["provider"] for r in transcripts(server)]
        assert sorted(providers) == ["hosted", "local"]
    finally:
        other.stop()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "m"}, "query.providers.llm.url: Field required"),
        (
            {"url": "ftp://x", "model": "m"},
            "query.providers.llm.url: not an http:// or https:// URL",
        ),
        ({"url": "http://x", "model": "m", "colour": 1}, "query.providers.llm.colour: unknown key"),
        (
            {"url": "http://x", "model": "m", "api_key": "a", "api_key_env": "B"},
            "give only one of api_key, api_key_env",
        ),
        (
            {"url": "http://x", "model": "m", "api_key_file": "/nonexistent/key"},
            "query.providers.llm.api_key_file: cannot read /nonexistent/key",
        ),
        (
            {"url": "http://x", "model": "m", "api_key_env": "SURELY_UNSET_VARIABLE"},
            "query.providers.llm.api_key_env: environment variable SURELY_UNSET_VARIABLE",
        ),
        (
            {"url": "http://x", "model": "m", "api_key": "sk-\u2014pasted"},
            "query.providers.llm.api_key: the API key holds characters an HTTP header cannot",
        ),
        (
            # YAML's `|` ends the value with a line break.
            {"url": "http://x", "model": "m", "headers": {"X-Team": "team-s3cret\n"}},
            "query.providers.llm.headers.X-Team: the value holds characters an HTTP header",
        ),
        (
            {"url": "http://x", "model": "m", "headers": {"X-Team": "team-s3cret\r\nX-Evil: 1"}},
            "query.providers.llm.headers.X-Team: the value holds characters an HTTP header",
        ),
        (
            {"url": "http://x", "model": "m", "headers": {"X-Team": "t\u00e9am-s3cret"}},
            "query.providers.llm.headers.X-Team: the value holds characters an HTTP header",
        ),
        (
            {"url": "http://x", "model": "m", "headers": {"X Team": "ok"}},
            "query.providers.llm.headers: 'X Team' is not a valid HTTP header name",
        ),
        (
            {"url": "https://x", "model": "m", "ca_file": "/nonexistent/ca.pem"},
            "query.providers.llm.ca_file: cannot read /nonexistent/ca.pem",
        ),
        (
            {"url": "https://x", "model": "m", "ca_file": "/dev/zero"},
            "query.providers.llm.ca_file: /dev/zero is not a CA bundle file",
        ),
        (
            {"url": "https://x", "model": "m", "timeout_seconds": 1.0e300},
            "query.providers.llm.timeout_seconds",
        ),
        (
            {"url": "ftp://u:pa55word@x", "model": "m"},
            "query.providers.llm.url: not an http:// or https:// URL",
        ),
    ],
)
def test_bad_provider_settings_fail_config_check_naming_the_key(
    tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    config = merge(
        base_settings(tmp_path),
        {"query": {"providers": {"llm": {"type": "openai", **settings}}}},
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "config", "check", "-c", str(config_path)],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SURELY_UNSET_VARIABLE"},
    )
    assert result.returncode == 2, result.stdout
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert "s3cret" not in result.stderr
    assert "pa55word" not in result.stderr


def test_a_ca_file_that_is_not_pem_fails_config_check(tmp_path: Path) -> None:
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("hello\n")
    config = merge(
        base_settings(tmp_path),
        {
            "query": {
                "providers": {
                    "llm": {
                        "type": "openai",
                        "url": "https://x",
                        "model": "m",
                        "ca_file": str(not_pem),
                    }
                }
            }
        },
    )
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "config", "check", "-c", str(config_path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2, result.stdout
    assert f"query.providers.llm.ca_file: {not_pem} holds no CA certificate" in result.stderr


def test_a_ca_file_removed_while_serving_is_502_not_500(
    server_factory: Callable[..., RunningServer], tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(Path(requests.certs.where()).read_bytes())
    closed = StandIn().start()
    url = closed.url.replace("http://", "https://")
    closed.stop()
    server = server_factory(
        {
            "query": {
                "default_provider": "llm",
                "providers": {
                    "llm": {"type": "openai", "url": url, "model": "m", "ca_file": str(ca_file)}
                },
            }
        }
    )
    assert ask(server, "hi").status_code == 502
    ca_file.unlink()
    response = ask(server, "hi")
    assert response.status_code == 502, response.text
    assert "certificate" in response.json()["detail"]["cause"]
    assert "cannot use the CA bundle" in server.log()
    assert "Traceback" not in server.log()


def test_the_log_masks_the_password_and_query_of_the_url(
    server_factory: Callable[..., RunningServer],
) -> None:
    closed = StandIn().start()
    url = closed.url.replace("http://", "http://user:pa55word@") + "?key=s3cret"
    closed.stop()
    server = server_factory(
        {
            "query": {
                "default_provider": "llm",
                "providers": {"llm": {"type": "openai", "url": url, "model": "m"}},
            }
        }
    )
    assert ask(server, "hi").status_code == 502
    log = server.log()
    assert "cannot reach http://user:********@127.0.0.1:" in log
    assert "pa55word" not in log
    assert "s3cret" not in log
