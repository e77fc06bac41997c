"""Answering a question: pick the provider, check the conversation, ask, record a transcript."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from .conversations import ConversationStore
from .errors import FieldError, ValidationFailed
from .records import Clock, IdFactory, Pseudonymizer, RecordPipeline, rfc3339
from .types import Answer, Attachment, Identity, QueryProvider, QueryRequest

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
        answer = provider.answer(request)
        now = rfc3339(self._clock())
        if is_new:
            self._conversations.create(conversation_id, user_key, now)
        if self._transcripts_enabled:
            record = transcript(request, provider.name, answer, user_key, now)
            self._pipeline.store("transcript", record, user_key, conversation_id)
        return {
            "conversation_id": conversation_id,
            "response": answer.text,
            "rag_chunks": [dict(chunk) for chunk in answer.rag_chunks],
            "referenced_documents": [dict(doc) for doc in answer.referenced_documents],
            "truncated": answer.truncated,
            "input_tokens": answer.input_tokens,
            "output_tokens": answer.output_tokens,
        }

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
