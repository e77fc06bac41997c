"""Assembling a running service from a configuration: plugins, stores, services, metrics.

Everything that touches the outside world (clock, ids) is injectable so tests can pin it.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pluggy

from . import plugin_manager
from .collector import BackgroundCollector, background_collector
from .config import Config, make_state_dir
from .conversations import ConversationStore
from .errors import ConfigError
from .feedback import FeedbackService
from .metrics import Metrics
from .plugin_manager import Components
from .queries import QueryService
from .records import Clock, IdFactory, Pseudonymizer, RecordPipeline, new_uuid, utc_now
from .types import AppContext, Authenticator, RecordKind

log = logging.getLogger(__name__)


@dataclass
class Service:
    config: Config
    pm: pluggy.PluginManager
    components: Components
    authenticator: Authenticator
    metrics: Metrics
    conversations: ConversationStore
    queries: QueryService
    feedback: FeedbackService
    collector: BackgroundCollector | None = None
    """The in-process data collector, when ``data_collector.enabled``; the server starts it
    and stops it (with its final cycle) after the last request."""

    def close(self) -> None:
        try:
            self.pm.hook.shutdown()
        finally:
            self.conversations.close()


def build_service(
    config: Config,
    *,
    clock: Clock = utc_now,
    new_id: IdFactory = new_uuid,
    extra_plugins: Mapping[str, object] | None = None,
) -> Service:
    pm, components = plugin_manager.load(config, extra_plugins)
    collection = config.section("user_data_collection")
    metrics = Metrics()
    collector = None
    if collection["data_collector"]["enabled"]:
        collector = background_collector(
            config, pm, components.exporters, on_report=metrics.observe_export
        )
        cycle = collector.loop.collector
        metrics.enable_export_metrics(
            [storage.root for storage in cycle.settings.storages], str(cycle.outbox.root)
        )
    state_dir = make_state_dir(config)
    salt = config.resolve_secret(collection, "user_id_salt", "user_data_collection")
    pseudonymize = Pseudonymizer(salt)

    def on_stored(kind: RecordKind, record: dict[str, Any], location: str) -> None:
        plugin_manager.notify(pm, "record_stored", kind=kind, record=record, location=location)

    pipeline = RecordPipeline(
        redactors=[components.redactors[name] for name in collection["redactors"]],
        sinks=[components.sinks[name] for name in collection["sinks"]],
        on_stored=on_stored,
        metrics=metrics,
        new_id=new_id,
    )
    database = state_dir / "conversations.sqlite3"
    try:
        conversations = ConversationStore(database)
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError("service.state_dir", f"cannot open {database}: {exc}") from None
    query = config.section("query")
    service = Service(
        config=config,
        pm=pm,
        components=components,
        authenticator=components.authenticators[config.section("authentication")["module"]],
        metrics=metrics,
        conversations=conversations,
        collector=collector,
        queries=QueryService(
            providers=components.providers,
            default_provider=query["default_provider"],
            conversations=conversations,
            pipeline=pipeline,
            pseudonymize=pseudonymize,
            transcripts_enabled=collection["transcripts_enabled"],
            clock=clock,
            new_id=new_id,
        ),
        feedback=FeedbackService(
            enabled=collection["feedback_enabled"],
            storage_configured=collection["feedback_storage"] is not None,
            conversations=conversations,
            pipeline=pipeline,
            pseudonymize=pseudonymize,
            clock=clock,
        ),
    )
    try:
        plugin_manager.call_each(
            pm, "startup", app_context=AppContext(config=config, state_dir=state_dir)
        )
    except Exception:
        conversations.close()
        raise
    return service
