"""``POST /v1/streaming_query``: the answer as Server-Sent Events, token by token.

Events are ``data: {"event": ..., "data": {...}}`` lines, as the reference service sends
them: ``start`` (the conversation id), one ``token`` per chunk, then ``end`` (token counts,
documents, ``truncated``) or ``error`` (the usual ``response``/``cause`` pair). With
``media_type: text/plain`` the body is the bare answer text instead.

Everything that can fail before the provider produced its first chunk (authentication,
validation, conversation checks, the provider refusing) is answered as an ordinary JSON
error. After that the status line is gone, so failures become an ``error`` event and the
stream ends cleanly. waitress sends each chunk as soon as it is yielded, and closes the
iterator when the client disconnects, which is when the partial transcript is stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Generator
from typing import Any

import falcon

from ..errors import CollectorError, StorageFailed
from ..queries import StreamedQuery
from ..types import Answer
from .middleware import current_request_id
from .resources import Endpoint

CONVERSATION_HEADER = "X-Conversation-ID"

log = logging.getLogger(__name__)

EVENT_STREAM = "text/event-stream"
PLAIN_TEXT = "text/plain; charset=utf-8"


class StreamingQueryResource(Endpoint):
    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        identity = self.identify(req)
        body = self.body(req, "query_request")
        answer = self.service.queries.stream(identity, body)
        plain = body.get("media_type") == "text/plain"
        resp.content_type = PLAIN_TEXT if plain else EVENT_STREAM
        resp.set_header("Cache-Control", "no-cache")
        # Proxies such as nginx buffer responses unless told otherwise.
        resp.set_header("X-Accel-Buffering", "no")
        # The plain-text body has no start event to carry it, and a client needs it to
        # continue the conversation or to give feedback on the answer.
        resp.set_header(CONVERSATION_HEADER, answer.conversation_id)
        resp.stream = AnswerEvents(answer, plain)


class AnswerEvents:
    """The response body: an iterator of encoded events that waitress writes one by one.

    A class rather than a bare generator so that ``close()`` always settles the transcript,
    even when the server closes the body before asking for its first event. The server
    iterates it after the request's own handling has ended, so each step puts the request id
    back for the log lines it writes.
    """

    def __init__(self, answer: StreamedQuery, plain: bool) -> None:
        self._answer = answer
        self._events = _plain_text(answer) if plain else _server_sent_events(answer)
        self._request_id = current_request_id.get()

    def __iter__(self) -> AnswerEvents:
        return self

    def __next__(self) -> bytes:
        token = current_request_id.set(self._request_id)
        try:
            return next(self._events)
        finally:
            current_request_id.reset(token)

    def close(self) -> None:
        token = current_request_id.set(self._request_id)
        try:
            self._events.close()
            self._answer.close()
        finally:
            current_request_id.reset(token)


def _server_sent_events(answer: StreamedQuery) -> Generator[bytes, None, None]:
    yield _event("start", {"conversation_id": answer.conversation_id})
    failure: CollectorError | None = None
    try:
        for index, chunk in enumerate(answer):
            yield _event("token", {"id": index, "token": chunk})
    except CollectorError as exc:
        failure = exc
    final = _complete(answer, failure)
    if isinstance(final, CollectorError):
        yield _event("error", {"response": final.response, "cause": final.cause})
        return
    yield _event(
        "end",
        {
            "referenced_documents": [dict(doc) for doc in final.referenced_documents],
            "rag_chunks": [dict(chunk) for chunk in final.rag_chunks],
            "truncated": final.truncated,
            "input_tokens": final.input_tokens,
            "output_tokens": final.output_tokens,
        },
    )


def _plain_text(answer: StreamedQuery) -> Generator[bytes, None, None]:
    failure: CollectorError | None = None
    try:
        for chunk in answer:
            yield chunk.encode("utf-8")
    except CollectorError as exc:
        failure = exc
    final = _complete(answer, failure)
    if isinstance(final, CollectorError):
        yield f"\n\n[error] {final.response}: {final.cause}\n".encode()


def _complete(answer: StreamedQuery, failure: CollectorError | None) -> Answer | CollectorError:
    """Store the transcript; the answer, or the first failure (the provider's, else the
    storage's) that the client must be told about."""
    try:
        final = answer.complete()
    except CollectorError as exc:
        failure = failure or exc
    except Exception:
        # The status line is long gone; the client still deserves a well-formed ending.
        log.exception("storing the transcript of a streamed answer failed")
        failure = failure or StorageFailed("The transcript of this answer was not stored")
    if failure is None:
        return final
    level = logging.ERROR if failure.status >= 500 else logging.WARNING
    log.log(level, "streamed answer ended with an error: %s: %s", failure.response, failure.cause)
    return failure


def _event(name: str, data: dict[str, Any]) -> bytes:
    payload = json.dumps({"event": name, "data": data}, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()
