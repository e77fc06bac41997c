"""Answering a question: pick the provider, check the conversation, ask, record a transcript.

``ask`` answers in one piece; ``stream`` hands out the answer as the provider produces it and
records the transcript once, when the stream ends, fails, or is abandoned by the client.
"""

from __future__ import annotations

import base64
import binascii
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .conversations import ConversationStore
from .errors import CollectorError, FieldError, ProviderFailed, ValidationFailed
from .records import Clock, IdFactory, Pseudonymizer, RecordPipeline, rfc3339
from .surrogates import replace_surrogates
from .types import Answer, Attachment, Identity, QueryProvider, QueryRequest

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"

_IMAGE_MAGIC = {
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff",
}


class QueryService:
    def __init__(
        self,
        providers: Mapping[str, QueryProvider],
        default_provider: str,
        conversations: ConversationStore,
        pipeline: RecordPipeline,
        pseudonymize: Pseudonymizer,
        transcripts_enabled: bool,
        clock: Clock,
        new_id: IdFactory,
    ) -> None:
        self._providers = dict(providers)
        self._default_provider = default_provider
        self._conversations = conversations
        self._pipeline = pipeline
        self._pseudonymize = pseudonymize
        self._transcripts_enabled = transcripts_enabled
        self._clock = clock
        self._new_id = new_id

    def ask(self, identity: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        """``body`` has passed the query request schema; the answer is the response body."""
        prepared = self._prepare(identity, body)
        answer = valid_text(prepared.provider.answer(prepared.request))
        self._record(prepared, answer)
        return {
            "conversation_id": prepared.request.conversation_id,
            "response": answer.text,
            "rag_chunks": [dict(chunk) for chunk in answer.rag_chunks],
            "referenced_documents": [dict(doc) for doc in answer.referenced_documents],
            "truncated": answer.truncated,
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
        }

    def stream(self, identity: Identity, body: Mapping[str, Any]) -> StreamedQuery:
        """Start answering ``body`` (checked like ``ask``'s) piece by piece.

        Every check, and the provider's first chunk, happen here, so whatever fails before
        the client has seen anything is raised as an ordinary error with its HTTP status.
        """
        prepared = self._prepare(identity, body)
        return StreamedQuery(prepared, self._record)

    def _prepare(self, identity: Identity, body: Mapping[str, Any]) -> _Prepared:
        user_key = self._pseudonymize(identity.user_id)
        provider = self._provider(body.get("provider"))
        attachments = _attachments(body.get("attachments") or [])
        conversation_id = body.get("conversation_id")
        is_new = conversation_id is None
        if conversation_id is None:
            conversation_id = self._new_id()
        else:
            conversation_id = conversation_id.lower()
            self._conversations.check_access(conversation_id, user_key)
        request = QueryRequest(
            query=body["query"],
            conversation_id=conversation_id,
            identity=identity,
            provider=body.get("provider"),
            model=body.get("model"),
            system_prompt=body.get("system_prompt"),
            attachments=attachments,
            media_type=body.get("media_type"),
        )
        return _Prepared(request, provider, user_key, is_new)

    def _record(self, prepared: _Prepared, answer: Answer) -> None:
        """The conversation exists from its first answer on, and that answer is transcribed."""
        now = rfc3339(self._clock())
        request = prepared.request
        if prepared.is_new:
            self._conversations.create(request.conversation_id, prepared.user_key, now)
        if self._transcripts_enabled:
            record = transcript(request, prepared.provider.name, answer, prepared.user_key, now)
            self._pipeline.store("transcript", record, prepared.user_key, request.conversation_id)

    def _provider(self, name: str | None) -> QueryProvider:
        chosen = name or self._default_provider
        provider = self._providers.get(chosen)
        if provider is None:
            known = ", ".join(sorted(self._providers))
            raise ValidationFailed(
                [
                    FieldError(
                        ("body", "provider"),
                        f"Provider '{chosen}' is not configured (configured: {known})",
                    )
                ],
                response="Unknown provider",
            )
        return provider


@dataclass(frozen=True)
class _Prepared:
    """A checked request and the provider that will answer it."""

    request: QueryRequest
    provider: QueryProvider
    user_key: str
    is_new: bool


class StreamedQuery:
    """One answer on its way to a client, chunk by chunk.

    Iterate it for the text chunks, then call ``complete()``; if the client goes away call
    ``close()`` instead. Either way the transcript is stored exactly once: the whole answer
    after ``complete()``, or what was produced so far, marked ``truncated``, after a provider
    failure or a ``close()`` before the provider finished.
    """

    def __init__(self, prepared: _Prepared, record: Callable[[_Prepared, Answer], None]) -> None:
        self.conversation_id = prepared.request.conversation_id
        self._prepared = prepared
        self._record = record
        self._chunks: list[str] = []
        self._summary: Answer | None = None
        self._exhausted = False
        self._failed = False
        self._settled = False
        self._lock = threading.Lock()
        self._source: Iterator[str] = iter(prepared.provider.stream(prepared.request))
        try:
            self._pending = self._next_chunk()
        except BaseException:
            self._close_source()
            raise

    def __iter__(self) -> Iterator[str]:
        """The chunks; raises a ``CollectorError`` if the provider fails part way."""
        while self._pending is not None:
            chunk, self._pending = self._pending, None
            self._chunks.append(chunk)
            yield chunk
            try:
                self._pending = self._next_chunk()
            except CollectorError:
                self._failed = True
                raise
            except Exception as exc:
                self._failed = True
                log.exception("provider %s failed while streaming", self._prepared.provider.name)
                raise ProviderFailed(
                    f"Provider '{self._prepared.provider.name}' failed while streaming the answer"
                ) from exc

    def complete(self) -> Answer:
        """Store the transcript of the finished (or failed) stream; returns what was answered."""
        answer = self._final_answer(interrupted=False)
        if self._settle():
            self._record(self._prepared, answer)
        return answer

    def close(self) -> None:
        """The client is gone: stop the provider and keep what it produced. Never raises."""
        if not self._settle():
            return
        try:
            self._record(self._prepared, self._final_answer(interrupted=True))
        except Exception:
            log.exception(
                "the transcript of an interrupted stream in conversation %s was not stored",
                self.conversation_id,
            )

    def _settle(self) -> bool:
        """True exactly once: whoever gets it stores the transcript."""
        with self._lock:
            first, self._settled = not self._settled, True
        if first:
            self._close_source()
        return first

    def _next_chunk(self) -> str | None:
        """The next non-empty chunk, or None once the provider is done."""
        if self._exhausted:
            return None
        while True:
            try:
                chunk = next(self._source)
            except StopIteration as stop:
                self._exhausted = True
                self._summary = valid_text(stop.value) if isinstance(stop.value, Answer) else None
                return None
            if chunk:
                cleaned: str = replace_surrogates(chunk)
                return cleaned

    def _close_source(self) -> None:
        close = getattr(self._source, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:
            log.exception("provider %s failed to close its stream", self._prepared.provider.name)

    def _final_answer(self, interrupted: bool) -> Answer:
        text = "".join(self._chunks)
        cut_short = self._failed or (interrupted and not self._exhausted)
        summary = self._summary
        if summary is None:
            return Answer(
                text=text,
                model=self._prepared.request.model or UNKNOWN_MODEL,
                output_tokens=len(self._chunks),
                truncated=cut_short,
            )
        return Answer(
            text=text,
            model=summary.model,
            input_tokens=summary.input_tokens,
            output_tokens=summary.output_tokens,
            truncated=cut_short or summary.truncated,
            rag_chunks=summary.rag_chunks,
            referenced_documents=summary.referenced_documents,
            tool_calls=summary.tool_calls,
            tool_results=summary.tool_results,
        )


def valid_text(answer: Answer) -> Answer:
    """``answer`` with lone surrogates replaced (see :mod:`surrogates`), so the response, the
    stream and the transcript all carry the same valid text whatever the provider sent."""
    fields = {
        "text": answer.text,
        "model": answer.model,
        "rag_chunks": answer.rag_chunks,
        "referenced_documents": answer.referenced_documents,
        "tool_calls": answer.tool_calls,
        "tool_results": answer.tool_results,
    }
    changed = {
        name: cleaned
        for name, value in fields.items()
        if (cleaned := replace_surrogates(value)) is not value
    }
    return replace(answer, **changed) if changed else answer


def transcript(
    request: QueryRequest, provider_name: str, answer: Answer, user_key: str, timestamp: str
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "metadata": {
            "provider": provider_name,
            "model": answer.model,
            "query_provider": request.provider,
            "query_model": request.model,
            "user_id": user_key,
            "conversation_id": request.conversation_id,
            "timestamp": timestamp,
        },
        "redacted_query": request.query,
        "query_is_valid": True,
        "llm_response": answer.text,
        "rag_chunks": [dict(chunk) for chunk in answer.rag_chunks],
        "truncated": answer.truncated,
        "attachments": [
            {
                "attachment_type": a.attachment_type,
                "content_type": a.content_type,
                "content": a.content,
            }
            for a in request.attachments
        ],
    }
    if answer.tool_calls is not None:
        record["tool_calls"] = [dict(call) for call in answer.tool_calls]
    if answer.tool_results is not None:
        record["tool_results"] = [dict(result) for result in answer.tool_results]
    return record


def _attachments(raw: list[Mapping[str, str]]) -> tuple[Attachment, ...]:
    """Images must be real base64 images of the declared type: a mislabelled blob would
    otherwise travel all the way into the exported data."""
    problems: list[FieldError] = []
    for index, item in enumerate(raw):
        magic = _IMAGE_MAGIC.get(item["content_type"])
        if magic is None:
            continue
        try:
            head = base64.b64decode(item["content"][:64], validate=True)
        except (binascii.Error, ValueError):
            head = b""
        if not head.startswith(magic):
            problems.append(
                FieldError(
                    ("body", "attachments", index, "content"),
                    f"Attachment content is not a base64-encoded {item['content_type']} image",
                )
            )
    if problems:
        raise ValidationFailed(problems)
    return tuple(Attachment(**item) for item in raw)
