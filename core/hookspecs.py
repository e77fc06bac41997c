# mypy: disable-error-code="empty-body"
"""Every hook a plugin can implement. This file is the plugin author's reference.

Mark implementations with ``lightspeed_collector.hookimpl`` and take only the arguments you
need. ``register_*`` hooks return a list of objects (see the protocols in
``lightspeed_collector.types``); each object's ``name`` must be unique across all plugins of
its kind, or the service refuses to start and names both plugins.

The ``config`` argument is the resolved, validated configuration
(:class:`lightspeed_collector.types.Config`): read your own settings with
``config.plugin_settings(name)``, ``config.provider_instances(type)`` or
``config.authenticator_settings(module)``; they were already checked against the schema you
returned from ``register_plugin_config_schema``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pluggy

from . import PROJECT_NAME
from .config import Config
from .types import (
    AppContext,
    Archive,
    Authenticator,
    ConfigSchema,
    Exporter,
    QueryProvider,
    Receipt,
    RecordKind,
    RecordSink,
    Redactor,
)

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def register_query_providers(config: Config) -> Sequence[QueryProvider]:
    """Return the query providers this plugin offers.

    A provider answers ``answer(request) -> Answer`` and ``stream(request)``, an iterator of
    text chunks for ``POST /v1/streaming_query``. Write ``stream`` as a generator annotated
    ``-> AnswerStream`` and ``return`` an ``Answer`` when it ends: its model, token counts,
    ``truncated``, documents and tool calls and results end the stream and go into the
    transcript (its ``text`` is
    ignored; the service joins the chunks). Returning nothing is allowed: the service then
    counts chunks as output tokens. The first chunk is pulled before the client gets a
    response, so errors raised up to then become normal HTTP errors; later ones become an
    ``error`` event. If the client disconnects the service closes the generator (release
    connections in ``finally``) and stores the partial answer with ``truncated: true``.

    Providers are usually configured as named instances under
    ``query.providers.<instance>`` with ``type: <your type>``; return one object per instance,
    named after the instance. Raise ``RateLimited``, ``ProviderFailed`` or
    ``ProviderTimeout`` for upstream failures and ``ValidationFailed`` for a model you do not
    serve: the client then gets 429, 502, 504 or 422 instead of a 500.
    """


@hookspec
def register_redactors(config: Config) -> Sequence[Redactor]:
    """Return redactors: ``redact(text) -> RedactionResult(text, count, counts)``.

    Which redactors run, and in which order, is set by ``user_data_collection.redactors``;
    the service never relies on plugin registration order. Every free-text field of a record
    passes through each configured redactor before the record is validated and stored.
    ``counts`` (per rule name) feeds the redaction metrics.
    """


@hookspec
def register_record_sinks(config: Config) -> Sequence[RecordSink]:
    """Return record sinks: ``write(record) -> location`` and ``describe() -> SinkStatus``.

    Sinks named in ``user_data_collection.sinks`` receive every stored record after redaction
    and validation. Raise ``StorageFull`` (507) when over a cap or out of space and
    ``StorageFailed`` for other write errors. A sink must never leave a partial record where
    a reader could see it. ``describe().ready`` drives the readiness probe.
    """


@hookspec
def register_exporters(config: Config) -> Sequence[Exporter]:
    """Return exporters: ``export(archive) -> Receipt``, called by the data collector.

    An exporter uploads one finished archive from the outbox and returns what the receiver
    answered; ``data_collector.exporter`` picks the one that runs. Stream ``archive.path``
    rather than reading it whole. On failure the archive stays in the outbox, so an exporter
    never needs its own retry loop; say what went wrong with ``ExportUnavailable``
    (temporary: retried with backoff, honouring ``retry_after``), ``ArchiveTooLarge`` (the
    archive is split in two), ``ExportMisconfigured`` (only an operator can help; name the
    ``setting``) or ``ExportFailed`` (anything else).
    """


@hookspec
def register_authenticators(config: Config) -> Sequence[Authenticator]:
    """Return authenticators: ``authenticate(request: AuthRequest) -> Identity``.

    ``authentication.module`` picks the one that runs. Raise ``Unauthorized`` for missing or
    bad credentials. Give users the role ``admin`` to let them toggle feedback collection.
    """


@hookspec
def register_plugin_config_schema() -> Sequence[ConfigSchema]:
    """Return JSON Schemas (draft 2020-12) for your settings, one ``ConfigSchema`` each.

    The service validates those settings at start-up and reports errors with the full key
    path, so a typo fails before the first request. Settings that no plugin claims are an
    error too.
    """


@hookspec
def record_stored(kind: RecordKind, record: dict[str, Any], location: str) -> None:
    """Called after a sink stored a record (redacted, validated) at ``location``.

    For observers such as audit logs or metrics; an exception here is logged and never fails
    the request.
    """


@hookspec
def archive_exported(archive: Archive, receipt: Receipt) -> None:
    """Called after an archive was uploaded and the receiver accepted it."""


@hookspec
def startup(app_context: AppContext) -> None:
    """Called once when the service has loaded its plugins and is about to serve."""


@hookspec
def shutdown() -> None:
    """Called once when the service stops; release what ``startup`` acquired."""
