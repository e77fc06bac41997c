"""A small OpenAI-compatible ``/v1/chat/completions`` server on loopback, for the tests.

It speaks the documented wire format: JSON completions, Server-Sent Events (``data:`` lines,
``[DONE]``, usage in a last chunk when ``stream_options.include_usage`` asks for it), and
OpenAI-style error bodies. What it does is chosen by a directive in the user's message, so
a test drives it through the real service:

``[length]``       stop for length (``finish_reason: length``)
``[ratelimit]``    429 with ``rate_limit_headers`` (``Retry-After: 7``) and an OpenAI
                   rate-limit body
``[error500]``     500 with an OpenAI server-error body
``[notfound]``     404, as for an unknown model
``[badrequest]``   400, as for a too-long context
``[notjson]``      200 with a body that is not JSON
``[slow]``         wait ``slow_seconds`` before answering (past a short client timeout)
``[slowbody]``     send the headers and part of the body, then wait ``slow_seconds``
``[stall]``        stream two tokens, then go quiet for ``slow_seconds``
``[abort]``        stream two tokens, then drop the connection mid-chunk
``[gated]``        stream one token, then wait for ``gate`` before producing the rest
``[drip]``         stream ``DRIP_TOKENS`` tokens ``drip_interval`` apart (for disconnects)
``[recorded]``     answer with the OpenAI API reference's own example bodies
``[surrogate]``    answer with half an emoji: a lone surrogate, sent as a JSON escape
``[garbled]``      500 whose error message holds such a lone surrogate
``[close-delimited]``  stream without chunked encoding, ending at connection close
``[nested]``       200 whose body (or first streamed event) is JSON nested far too deeply
``[oddchoices]``   a completion (or first streamed event) whose ``choices`` is a number
``[errorbody]``    200 whose body (or second streamed event) is an OpenAI error quoting the key
``[trickle]``      send the answer one byte every ``trickle_interval`` (a stream: after its
                   first token), for up to ``TRICKLE_SECONDS``
``[keepalive]``    send nothing but SSE comments (a completion: blanks before its JSON), every
                   ``trickle_interval``, for up to ``TRICKLE_SECONDS``
``[enormous]``     an answer of ``ENORMOUS_BYTES``: a completion of that length, or a stream
                   of events holding 64 KiB pieces of text
``[endless-line]`` stream one line of ``ENORMOUS_BYTES`` that never ends
``[error-trickle]``  500 whose error body trickles in as ``[trickle]``'s does
``[error-cut]``    500 whose error body breaks off before its Content-Length
``[redirect]``     307 to ``redirect_to``, as a server that moved would answer
``[oddnumbers]``   an answer that names ``odd_model`` as its model and reports ``odd_usage``
``[cr]``           stream with every line ended by a bare CR, as Server-Sent Events allow
                   (with ``[keepalive]``: its comments too)
``[crlf-split]``   stream with CRLF line endings, each event's first CR and LF sent apart
``[nochoices]``    a completion (or a stream, up to its ``[DONE]``) without a single choice
``[oddtools]``     a completion whose ``tool_calls`` hold a string, a number and a null
                   besides one real call
``[tools]``        "Checking." and the two ``TOOL_CALLS``: a completion's message holds them
                   whole; a stream sends them in fragments, as OpenAI does, the argument
                   pieces of the two calls interleaved
``[toolsonly]``    as ``[tools]``, with no text at all
``[manytools]``    a stream of ``MANY_TOOL_CALLS`` one-fragment tool calls and no text
``[hugeindex]``    a stream of two tool calls, the first at an index no list could reach

When ``expected_key`` is set, a request with another key gets the 401 OpenAI sends, which
quotes the key it refused, as OpenAI's own does (in part).
"""

from __future__ import annotations

import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
ANSWER_TOKENS = ("Pods ", "are ", "the ", "smallest ", "units.")
# Half of U+1F600: what a model emits when a token boundary splits a surrogate pair.
SURROGATE_TOKENS = ("Half ", "an emoji: ", "\ud83d", "!")
DRIP_TOKENS = 400
PROMPT_TOKENS = 21
ODD_TOOL_FUNCTION = {"name": "get_pods", "arguments": '{"node": "10.0.3.4"}'}
TOOL_CALLS: tuple[dict[str, Any], ...] = (
    {"id": "call_1", "type": "function", "function": ODD_TOOL_FUNCTION},
    {
        "id": "call_2",
        "type": "function",
        "function": {"name": "get_events", "arguments": '{"namespace": "default", "limit": 5}'},
    },
)
# Far more calls than any model makes in one answer.
MANY_TOOL_CALLS = 1000
# An index past any machine integer: a list grown to reach it would exhaust memory.
HUGE_TOOL_INDEX = 10**30
# How long a trickling stand-in keeps going: far past any timeout a test configures.
TRICKLE_SECONDS = 20
# Far more than any answer, and than the service keeps in memory for one.
ENORMOUS_BYTES = 256 * 1024 * 1024
# Deeper than any JSON parser recurses: Python's stops near a thousand levels.
NESTING_DEPTH = 100_000


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class StandIn:
    expected_key: str | None = None
    slow_seconds: float = 3.0
    drip_interval: float = 0.02
    trickle_interval: float = 0.2
    redirect_to: str = ""
    rate_limit_headers: dict[str, str] = field(default_factory=lambda: {"Retry-After": "7"})
    odd_model: Any = None
    odd_usage: Any = None
    requests: list[Recorded] = field(default_factory=list)
    gate: threading.Event = field(default_factory=threading.Event)
    last_token_sent: threading.Event = field(default_factory=threading.Event)
    client_went_away: threading.Event = field(default_factory=threading.Event)
    tokens_sent: int = 0
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> StandIn:
        standin = self

        class Handler(_Handler):
            owner = standin

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.gate.set()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


def recorded_completion() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(
        (DATA / "openai_chat_completion_example.json").read_text("utf-8")
    )
    return loaded


def recorded_chunks() -> list[str]:
    text = (DATA / "openai_chat_completion_chunks_example.txt").read_text("utf-8")
    return [line for line in text.splitlines() if line.strip()]


def _tool_call_fragments(text: str) -> Iterator[list[dict[str, Any]]]:
    """The ``tool_calls`` of each streamed delta, as OpenAI streams them: a call's ``id``,
    ``type`` and ``function.name`` in its first fragment, its arguments in pieces after."""
    if "[manytools]" in text:
        for index in range(MANY_TOOL_CALLS):
            yield [{"index": index, "id": f"call_{index}", "function": {"name": "f"}}]
        return
    indexes = (HUGE_TOOL_INDEX, 0) if "[hugeindex]" in text else (0, 1)
    for index, call in zip(indexes, TOOL_CALLS, strict=True):
        function = {"name": call["function"]["name"], "arguments": ""}
        yield [{"index": index, "id": call["id"], "type": call["type"], "function": function}]
    pieces = (
        [arguments[start : start + 4] for start in range(0, len(arguments), 4)]
        for arguments in (call["function"]["arguments"] for call in TOOL_CALLS)
    )
    for first, second in itertools.zip_longest(*pieces, fillvalue=""):
        yield [
            {"index": index, "function": {"arguments": piece}}
            for index, piece in zip(indexes, (first, second), strict=True)
            if piece
        ]


class _Handler(BaseHTTPRequestHandler):
    owner: StandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests read what they need from ``StandIn``."""

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        standin = self.owner
        standin.requests.append(
            Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        if not self.path.endswith("/chat/completions"):
            return self._error(404, f"Unknown path {self.path}", "invalid_request_error", None)
        presented = self.headers.get("Authorization", "").removeprefix("Bearer ")
        if standin.expected_key is not None and presented != standin.expected_key:
            return self._error(
                401,
                f"Incorrect API key provided: {presented}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                "invalid_request_error",
                "invalid_api_key",
            )
        messages = body.get("messages") or [{}]
        content = messages[-1].get("content", "")
        text = content if isinstance(content, str) else json.dumps(content)
        if "[slow]" in text:
            time.sleep(standin.slow_seconds)
        if "[ratelimit]" in text:
            return self._error(
                429,
                "Rate limit reached for gpt-4o-mini in organization org-test on requests per "
                "min (RPM): Limit 3, Used 3, Requested 1. Please try again in 7s.",
                "requests",
                "rate_limit_exceeded",
                standin.rate_limit_headers,
            )
        if "[error500]" in text:
            return self._error(
                500,
                "The server had an error while processing your request. Sorry about that!",
                "server_error",
                None,
            )
        if "[garbled]" in text:
            return self._error(500, "upstream broke \ud83d here", "server_error", None)
        if "[notfound]" in text:
            return self._error(
                404,
                f"The model `{body.get('model')}` does not exist or you do not have access to it.",
                "invalid_request_error",
                "model_not_found",
            )
        if "[badrequest]" in text:
            return self._error(
                400,
                "This model's maximum context length is 128000 tokens.",
                "invalid_request_error",
                "context_length_exceeded",
            )
        if "[slowbody]" in text and not body.get("stream"):
            # Headers and half the body at once, the rest too late: a timeout mid-body.
            data = json.dumps(recorded_completion()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[:20])
            self.wfile.flush()
            time.sleep(standin.slow_seconds)
            self.wfile.write(data[20:])
            return None
        if "[nested]" in text:
            nested = b"[" * NESTING_DEPTH
            if body.get("stream"):
                return self._send(200, b"data: " + nested + b"\n\n", "text/event-stream")
            return self._send(200, nested, "application/json")
        if "[oddchoices]" in text:
            if body.get("stream"):
                event = b'data: {"object": "chat.completion.chunk", "choices": 5}\n\n'
                return self._send(200, event, "text/event-stream")
            return self._json(200, {"object": "chat.completion", "choices": 5})
        if "[nochoices]" in text:
            usage = {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 0}
            if body.get("stream"):
                events = (
                    {"model": body.get("model")},
                    {"model": body.get("model"), "choices": [], "usage": usage},
                )
                data = "".join(f"data: {json.dumps(event)}\n\n" for event in events)
                return self._send(200, f"{data}data: [DONE]\n\n".encode(), "text/event-stream")
            return self._json(200, {"model": body.get("model"), "usage": usage})
        if "[trickle]" in text and not body.get("stream"):
            data = json.dumps(recorded_completion()).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            return self._trickle([data[i : i + 1] for i in range(len(data))])
        if "[keepalive]" in text and not body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            return self._trickle([b" "] * 1000)
        if "[error-trickle]" in text or "[error-cut]" in text:
            data = json.dumps({"error": {"message": "The server had an error."}}).encode()
            self.send_response(500)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data) + 1000))
            self.end_headers()
            if "[error-cut]" in text:
                self.wfile.write(data)
                self.close_connection = True
                return None
            return self._trickle([data[i : i + 1] for i in range(len(data))])
        if "[enormous]" in text and not body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(ENORMOUS_BYTES))
            self.end_headers()
            return self._flood(b'{"choices": [{"message": {"content": "', b"A" * 65536)
        if "[redirect]" in text:
            return self._send(307, b"", "text/plain", {"Location": standin.redirect_to})
        if "[errorbody]" in text:
            # Some servers report a failure in a 200's body, and quote whatever they like.
            error = {"error": {"message": f"Key {presented} is over quota" + " (details)" * 200}}
            if body.get("stream"):
                return self._stream(body, text, error)
            return self._json(200, error)
        if "[oddtools]" in text and not body.get("stream"):
            call = {"id": "call_1", "type": "function", "function": ODD_TOOL_FUNCTION}
            message = {
                "role": "assistant",
                "content": "Checking.",
                "tool_calls": ["x", 1, None, call],
            }
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return self._json(200, {"object": "chat.completion", "choices": [choice]})
        if ("[tools]" in text or "[toolsonly]" in text) and not body.get("stream"):
            message = {
                "role": "assistant",
                "content": None if "[toolsonly]" in text else "Checking.",
                "tool_calls": list(TOOL_CALLS),
            }
            choice = {"index": 0, "message": message, "finish_reason": "tool_calls"}
            return self._json(200, {"object": "chat.completion", "choices": [choice]})
        if "[notjson]" in text:
            return self._send(200, b"<html>gateway says hello</html>", "text/html")
        if body.get("stream"):
            return self._stream(body, text)
        if "[recorded]" in text:
            return self._json(200, recorded_completion())
        tokens = ANSWER_TOKENS[:3] if "[length]" in text else ANSWER_TOKENS
        if "[surrogate]" in text:
            tokens = SURROGATE_TOKENS
        odd = "[oddnumbers]" in text
        return self._json(
            200,
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": standin.odd_model if odd else body.get("model"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(tokens)},
                        "logprobs": None,
                        "finish_reason": "length" if "[length]" in text else "stop",
                    }
                ],
                "usage": standin.odd_usage
                if odd
                else {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": len(tokens),
                    "total_tokens": PROMPT_TOKENS + len(tokens),
                },
            },
        )

    def _stream(self, body: dict[str, Any], text: str, error: dict[str, Any] | None = None) -> None:
        standin = self.owner
        chunked = "[close-delimited]" not in text
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        try:
            if "[keepalive]" in text:
                ping = b": ping\r\r" if "[cr]" in text else b": ping\n\n"
                return self._trickle([ping] * 1000, chunked=True)
            if "[enormous]" in text:
                first, piece = (
                    json.dumps({"choices": [{"index": 0, "delta": {"content": content}}]})
                    for content in ("Pods ", "A" * 65536)
                )
                return self._flood(
                    f"data: {first}\n\n".encode(), f"data: {piece}\n\n".encode(), chunked
                )
            if "[endless-line]" in text:
                return self._flood(b"data: ", b"A" * 65536, chunked)
            if "[trickle]" in text:
                events = "".join(self._events(body, text)).encode()
                first = events.index(b"\n\n", events.index(b"Pods")) + 2
                self._write(events[:first].decode(), chunked)
                return self._trickle(
                    [events[i : i + 1] for i in range(first, len(events))], chunked
                )
            if "[recorded]" in text:
                for line in recorded_chunks():
                    self._write(f"data: {line}\n\n", chunked)
                self._write("data: [DONE]\n\n", chunked)
            else:
                for index, line in enumerate(self._events(body, text)):
                    if index == 2 and error is not None:
                        line = f"data: {json.dumps(error)}\n\n"
                    self._write_event(line, text, chunked)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            standin.client_went_away.set()
            self.close_connection = True

    def _events(self, body: dict[str, Any], text: str) -> Iterator[str]:
        standin = self.owner
        odd = "[oddnumbers]" in text
        model = standin.odd_model if odd else body.get("model")

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            event = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
                ],
            }
            return f"data: {json.dumps(event)}\n\n"

        yield chunk({"role": "assistant", "content": ""})
        if any(name in text for name in ("[tools]", "[toolsonly]", "[manytools]", "[hugeindex]")):
            if "[tools]" in text:
                yield chunk({"content": "Checking."})
            for fragments in _tool_call_fragments(text):
                yield chunk({"tool_calls": fragments})
            yield chunk({}, "tool_calls")
            yield "data: [DONE]\n\n"
            return
        if "[drip]" in text:
            tokens: tuple[str, ...] = tuple(f"t{index} " for index in range(DRIP_TOKENS))
        elif "[length]" in text:
            tokens = ANSWER_TOKENS[:3]
        elif "[surrogate]" in text:
            tokens = SURROGATE_TOKENS
        else:
            tokens = ANSWER_TOKENS
        for index, token in enumerate(tokens):
            if index == 1 and "[gated]" in text:
                standin.gate.wait(timeout=30)
            if index == 2 and "[stall]" in text:
                time.sleep(standin.slow_seconds)
            if index == 2 and "[abort]" in text:
                # Half a chunk, then hang up: the reader sees a broken transfer.
                self.wfile.write(b"ff\r\ndata: {")
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if "[drip]" in text:
                time.sleep(standin.drip_interval)
            yield chunk({"content": token})
            standin.tokens_sent += 1
            if index == len(tokens) - 1:
                standin.last_token_sent.set()
        yield chunk({}, "length" if "[length]" in text else "stop")
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {
                "id": "chatcmpl-standin",
                "object": "chat.completion.chunk",
                "created": int(time.time()),
                "model": model,
                "choices": [],
                "usage": standin.odd_usage
                if odd
                else {
                    "prompt_tokens": PROMPT_TOKENS,
                    "completion_tokens": len(tokens),
                    "total_tokens": PROMPT_TOKENS + len(tokens),
                },
            }
            yield f"data: {json.dumps(usage)}\n\n"
        yield "data: [DONE]\n\n"

    def _trickle(self, pieces: list[bytes], chunked: bool = False) -> None:
        """Each piece on its own, ``trickle_interval`` apart: always something new before a
        read would time out, never the whole answer."""
        standin = self.owner
        self.close_connection = True
        started = time.monotonic()
        try:
            for piece in pieces:
                if time.monotonic() - started > TRICKLE_SECONDS:
                    return
                self.wfile.write(
                    f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                )
                self.wfile.flush()
                time.sleep(standin.trickle_interval)
        except (BrokenPipeError, ConnectionResetError):
            standin.client_went_away.set()

    def _flood(self, head: bytes, block: bytes, chunked: bool = False) -> None:
        """``head``, then ``block`` again and again, up to ``ENORMOUS_BYTES`` in all."""
        standin = self.owner
        self.close_connection = True
        try:
            for piece in (head, *[block] * (ENORMOUS_BYTES // len(block))):
                self.wfile.write(
                    f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
                )
        except (BrokenPipeError, ConnectionResetError):
            standin.client_went_away.set()

    def _write_event(self, event: str, text: str, chunked: bool) -> None:
        """``event``, its lines ended as the directives in ``text`` ask."""
        if "[cr]" in text:
            return self._write(event.replace("\n", "\r"), chunked)
        if "[crlf-split]" in text:
            event = event.replace("\n", "\r\n")
            cut = event.index("\r") + 1
            self._write(event[:cut], chunked)
            # Long enough for the reader to take the CR in a read of its own.
            time.sleep(0.02)
            return self._write(event[cut:], chunked)
        return self._write(event, chunked)

    def _write(self, text: str, chunked: bool) -> None:
        data = text.encode("utf-8")
        if chunked:
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        else:
            self.wfile.write(data)
        self.wfile.flush()

    def _error(
        self,
        status: int,
        message: str,
        kind: str,
        code: str | None,
        headers: dict[str, str] | None = None,
    ) -> None:
        body = {"error": {"message": message, "type": kind, "param": None, "code": code}}
        self._json(status, body, headers)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _send(
        self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
