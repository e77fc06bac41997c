"""The public value types a plugin sees, and the shapes of the objects a plugin returns.

Together with ``lightspeed_collector.hookimpl`` this module is the whole plugin API: built-in
plugins import nothing else from the core, so a third-party package can do anything they do.
The errors a plugin may raise are re-exported here for the same reason.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

from .config import Config, FileTooLarge, masked_url, read_bounded
from .errors import (
    ArchiveTooLarge,
    BadRequest,
    CollectorError,
    ConfigError,
    ExportFailed,
    ExportMisconfigured,
    ExportUnavailable,
    FieldError,
    Forbidden,
    ProviderFailed,
    ProviderTimeout,
    RateLimited,
    StorageFailed,
    StorageFull,
    Unauthorized,
    ValidationFailed,
    innermost_cause,
)

RecordKind = Literal["feedback", "transcript"]


@dataclass(frozen=True)
class Attachment:
    attachment_type: str
    content_type: str
    content: str


@dataclass(frozen=True)
class Identity:
    """Who sent a request. ``user_id`` is the real id; records only ever hold its pseudonym."""

    user_id: str
    username: str | None = None
    roles: frozenset[str] = frozenset()


@dataclass(frozen=True)
class AuthRequest:
    """What an authenticator may look at; header names are lower-case."""

    method: str
    path: str
    headers: Mapping[str, str]
    params: Mapping[str, str]

    def bearer_token(self) -> str:
        """The token of an ``Authorization: Bearer <token>`` header; ``Unauthorized``, worded
        as the reference service words it, when the header or the token is missing."""
        header = self.headers.get("authorization")
        if not header:
            raise Unauthorized("No Authorization header found")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("No token found in Authorization header")
        return token


@dataclass(frozen=True)
class QueryRequest:
    query: str
    conversation_id: str
    identity: Identity
    provider: str | None = None
    model: str | None = None
    system_prompt: str | None = None
    attachments: tuple[Attachment, ...] = ()
    media_type: str | None = None


@dataclass(frozen=True)
class Answer:
    """A provider's complete answer. ``model`` is the model that actually answered."""

    text: str
    model: str
    input_tokens: int = 0
    output_tokens: int = 0
    truncated: bool = False
    rag_chunks: tuple[Mapping[str, Any], ...] = ()
    referenced_documents: tuple[Mapping[str, Any], ...] = ()
    tool_calls: tuple[Mapping[str, Any], ...] | None = None
    tool_results: tuple[Mapping[str, Any], ...] | None = None


@dataclass(frozen=True)
class RedactionResult:
    """``count`` replacements were made; ``counts`` splits them by rule name for metrics."""

    text: str
    count: int
    counts: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Record:
    """A redacted, schema-valid record on its way to the sinks.

    ``record_id`` is a UUID4 chosen by the core; ``user_key`` is the user's pseudonym (hex);
    both, and ``conversation_id``, are safe to use as path components.
    """

    kind: RecordKind
    record_id: str
    user_key: str
    conversation_id: str
    data: Mapping[str, Any]


@dataclass(frozen=True)
class SinkStatus:
    """What ``describe()`` tells readiness probes and the ``plugins`` listing."""

    ready: bool
    details: Mapping[str, Any] = field(default_factory=dict)
    problem: str | None = None


@dataclass(frozen=True)
class Archive:
    """A finished, durable archive in the outbox, ready for an exporter."""

    archive_id: str
    path: Path
    size: int
    record_count: int
    sha256: str


@dataclass(frozen=True)
class Receipt:
    """What an ingress answered to an upload."""

    status: int
    request_id: str | None = None
    detail: str | None = None


@dataclass(frozen=True)
class ConfigSchema:
    """A JSON Schema for one plugin's settings and where those settings live.

    ``section`` ``provider``: each ``query.providers.<instance>`` whose ``type`` is ``name``;
    ``authenticator``: ``authentication.<name>``; ``plugin``: ``plugins.<name>``.
    """

    section: Literal["provider", "authenticator", "plugin"]
    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True)
class AppContext:
    """Handed to ``startup`` hooks: the resolved config and where the service keeps state."""

    config: Config
    state_dir: Path


AnswerStream: TypeAlias = Generator[str, None, Answer | None]
"""What a provider's ``stream`` may be: a generator of text chunks that *returns* a summary.

The summary is an :class:`Answer` whose ``text`` is ignored (the service joins the chunks it
sent) and whose ``model``, token counts, ``truncated``, ``rag_chunks``,
``referenced_documents``, ``tool_calls`` and ``tool_results`` end the stream and go into the
transcript. A provider that returns
nothing (or whose ``stream`` is a plain iterator) still works: the service then counts the
chunks as output tokens, reports no input tokens, and records the requested model.
"""


@runtime_checkable
class QueryProvider(Protocol):
    """Answers questions. ``stream`` yields the answer in pieces as they are produced; see
    :data:`AnswerStream` for how it reports token counts and truncation when it is done.

    The service pulls the first chunk before it answers the client, so an error raised before
    the first chunk (unknown model, rate limit, timeout) becomes a normal HTTP error; an error
    raised later ends the stream with an ``error`` event. When the client goes away the
    service calls ``close()`` on the generator: release upstream connections in ``finally``.
    """

    name: str

    def answer(self, request: QueryRequest) -> Answer: ...

    def stream(self, request: QueryRequest) -> Iterator[str]: ...


@runtime_checkable
class Redactor(Protocol):
    name: str

    def redact(self, text: str) -> RedactionResult: ...


@runtime_checkable
class RecordSink(Protocol):
    name: str

    def write(self, record: Record) -> str: ...

    def describe(self) -> SinkStatus: ...


@runtime_checkable
class Exporter(Protocol):
    """Uploads one finished archive and returns the receiver's answer.

    Raise ``ExportUnavailable`` for temporary trouble (retried with backoff),
    ``ArchiveTooLarge`` for a size refusal (the archive is split), ``ExportMisconfigured``
    when only an operator can help, or ``ExportFailed`` for anything else; the archive stays
    in the outbox in every case. Stream ``archive.path`` rather than reading it whole.
    """

    name: str

    def export(self, archive: Archive) -> Receipt: ...


@runtime_checkable
class Authenticator(Protocol):
    name: str

    def authenticate(self, request: AuthRequest) -> Identity: ...


__all__ = [
    "Answer",
    "AnswerStream",
    "AppContext",
    "Archive",
    "ArchiveTooLarge",
    "Attachment",
    "AuthRequest",
    "Authenticator",
    "BadRequest",
    "CollectorError",
    "Config",
    "ConfigError",
    "ConfigSchema",
    "ExportFailed",
    "ExportMisconfigured",
    "ExportUnavailable",
    "Exporter",
    "FieldError",
    "FileTooLarge",
    "Forbidden",
    "Identity",
    "ProviderFailed",
    "ProviderTimeout",
    "QueryProvider",
    "QueryRequest",
    "RateLimited",
    "Receipt",
    "Record",
    "RecordKind",
    "RecordSink",
    "RedactionResult",
    "Redactor",
    "SinkStatus",
    "StorageFailed",
    "StorageFull",
    "Unauthorized",
    "ValidationFailed",
    "innermost_cause",
    "masked_url",
    "read_bounded",
]
