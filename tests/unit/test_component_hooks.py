"""Record sinks, authenticators and exporters from a plugin the kernel has never heard of.

Each throwaway plugin here is registered like any other and then reached only through its
hook, so these tests hold the kernel to calling ``register_record_sinks``,
``register_authenticators``, ``register_exporters`` and ``archive_exported`` as documented.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from falcon import testing

from lightspeed_collector import hookimpl
from lightspeed_collector.collector.runner import build_collector, registered_exporters
from lightspeed_collector.config import Config
from lightspeed_collector.plugin_manager import get_plugin_manager
from lightspeed_collector.service import build_service
from lightspeed_collector.types import (
    Archive,
    AuthRequest,
    Identity,
    Receipt,
    Record,
    SinkStatus,
    Unauthorized,
)
from lightspeed_collector.web.app import create_app


class MemorySink:
    name = "memory"

    def __init__(self) -> None:
        self.records: list[Record] = []

    def write(self, record: Record) -> str:
        self.records.append(record)
        return f"memory:{record.record_id}"

    def describe(self) -> SinkStatus:
        return SinkStatus(ready=True, details={"records": len(self.records)})


class SinkPlugin:
    def __init__(self) -> None:
        self.sink = MemorySink()

    @hookimpl
    def register_record_sinks(self, config: Config) -> list[MemorySink]:
        return [self.sink]


def test_a_plugin_sink_receives_every_redacted_record(
    make_config: Callable[..., Config],
) -> None:
    plugin = SinkPlugin()
    config = make_config({"user_data_collection": {"sinks": ["filesystem", "memory"]}})
    service = build_service(config, extra_plugins={"memory_sink": plugin})
    try:
        client = testing.TestClient(create_app(service))
        answer = client.simulate_post("/v1/query", json={"query": "mail me: a@example.com"})
        assert answer.status_code == 200
        readiness = client.simulate_get("/readiness")
        assert readiness.json["sinks"]["memory"] == {"ready": True}
    finally:
        service.close()
    [record] = plugin.sink.records
    assert record.kind == "transcript"
    assert record.conversation_id == answer.json["conversation_id"]
    assert record.data["redacted_query"] == "mail me: [REDACTED_EMAIL]"


class HeaderAuthenticator:
    """Trusts a header set by a gateway in front of the service."""

    name = "gateway-header"

    def authenticate(self, request: AuthRequest) -> Identity:
        user = request.headers.get("x-gateway-user")
        if not user:
            raise Unauthorized("No X-Gateway-User header found")
        roles = frozenset({"admin"}) if user == "root" else frozenset()
        return Identity(user_id=user, roles=roles)


class AuthPlugin:
    @hookimpl
    def register_authenticators(self, config: Config) -> list[HeaderAuthenticator]:
        return [HeaderAuthenticator()]


def test_a_plugin_authenticator_decides_who_asks(make_config: Callable[..., Config]) -> None:
    config = make_config({"authentication": {"module": "gateway-header"}})
    service = build_service(config, extra_plugins={"gateway": AuthPlugin()})
    try:
        client = testing.TestClient(create_app(service))
        missing = client.simulate_post("/v1/query", json={"query": "hi"})
        assert missing.status_code == 401
        assert missing.json["detail"]["cause"] == "No X-Gateway-User header found"
        asked = client.simulate_post(
            "/v1/query", json={"query": "hi"}, headers={"X-Gateway-User": "alice"}
        )
        assert asked.status_code == 200
        conversation = asked.json["conversation_id"]
        feedback = {
            "conversation_id": conversation,
            "user_question": "hi",
            "llm_response": "hello",
            "sentiment": 1,
        }
        stranger = client.simulate_post(
            "/v1/feedback", json=feedback, headers={"X-Gateway-User": "mallory"}
        )
        assert stranger.status_code == 403
        switch = {"status": False}
        assert (
            client.simulate_put(
                "/v1/feedback/status", json=switch, headers={"X-Gateway-User": "alice"}
            ).status_code
            == 403
        )
        assert (
            client.simulate_put(
                "/v1/feedback/status", json=switch, headers={"X-Gateway-User": "root"}
            ).json["status"]["updated_by"]
            == "root"
        )
    finally:
        service.close()


class ClaimsAuthenticator:
    """Takes the user from a JSON-encoded header, as claims decoded from a token would be."""

    name = "json-claims"

    def authenticate(self, request: AuthRequest) -> Identity:
        claims = json.loads(request.headers["x-claims"])
        return Identity(user_id=claims["sub"], roles=frozenset(claims.get("roles", [])))


class ClaimsPlugin:
    @hookimpl
    def register_authenticators(self, config: Config) -> list[ClaimsAuthenticator]:
        return [ClaimsAuthenticator()]


def test_an_identity_that_is_not_valid_unicode_is_401_not_a_500(
    make_config: Callable[..., Config],
) -> None:
    config = make_config({"authentication": {"module": "json-claims"}})
    service = build_service(config, extra_plugins={"claims": ClaimsPlugin()})
    try:
        client = testing.TestClient(create_app(service))
        for claims in ('{"sub": "al\\ud800ice"}', '{"sub": "bob", "roles": ["\\udfff"]}'):
            refused = client.simulate_post(
                "/v1/query", json={"query": "hi"}, headers={"X-Claims": claims}
            )
            assert refused.status_code == 401, refused.text
            assert "not valid Unicode" in refused.json["detail"]["cause"]
        asked = client.simulate_post(
            "/v1/query", json={"query": "hi"}, headers={"X-Claims": '{"sub": "zo\\u00eb"}'}
        )
        assert asked.status_code == 200, asked.text
    finally:
        service.close()


class MemoryExporter:
    name = "memory"

    def __init__(self) -> None:
        self.members: list[list[str]] = []

    def export(self, archive: Archive) -> Receipt:
        with tarfile.open(archive.path) as packed:
            self.members.append(sorted(packed.getnames()))
        return Receipt(status=202, request_id=f"req-{len(self.members)}")


class ExportPlugin:
    def __init__(self) -> None:
        self.exporter = MemoryExporter()
        self.exported: list[tuple[Archive, Receipt]] = []

    @hookimpl
    def register_exporters(self, config: Config) -> list[MemoryExporter]:
        return [self.exporter]

    @hookimpl
    def archive_exported(self, archive: Archive, receipt: Receipt) -> None:
        self.exported.append((archive, receipt))


def test_a_plugin_exporter_ships_archives_and_observers_hear_of_it(
    make_config: Callable[..., Config], tmp_path: Path
) -> None:
    # The record is packed the moment it is stored: this test is about the hooks.
    collector = {"exporter": "memory", "min_record_age_seconds": 0}
    config = make_config({"user_data_collection": {"data_collector": collector}})
    service = build_service(config)
    try:
        client = testing.TestClient(create_app(service))
        assert client.simulate_post("/v1/query", json={"query": "hi"}).status_code == 200
    finally:
        service.close()
    plugin = ExportPlugin()
    pm = get_plugin_manager(config, {"memory_export": plugin})
    exporters: dict[str, Any] = registered_exporters(config, pm)
    assert exporters["memory"] is plugin.exporter

    report = build_collector(config, exporters["memory"], pm).run_cycle()

    assert report.archives_sent == 1
    [members] = plugin.exporter.members
    assert "manifest.json" in members
    assert [m for m in members if m.startswith("transcripts/")]
    [(archive, receipt)] = plugin.exported
    assert receipt.request_id == "req-1"
    assert archive.record_count == 1
    assert not list((tmp_path / "transcripts").rglob("*.json"))
