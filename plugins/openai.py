"""The ``openai`` query provider: any server that speaks OpenAI's ``/v1/chat/completions``.

vLLM, Ollama, llama-stack, LiteLLM and OpenAI itself all do, so one provider covers local
and hosted models. Each instance under ``query.providers`` names its server, its default
model and the other models a request may pick. Upstream trouble is translated into the
service's errors (429 with ``Retry-After``, 502, 504, 422), never a 500, and the API key is
read when a request needs it, so a rotated key file takes effect without a restart; the key
never reaches a log line or an error body.
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import ssl
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import requests
import urllib3.exceptions

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Answer,
    AnswerStream,
    Config,
    ConfigError,
    ConfigSchema,
    FieldError,
    ProviderFailed,
    ProviderTimeout,
    QueryProvider,
    QueryRequest,
    RateLimited,
    ValidationFailed,
    innermost_cause,
    masked_url,
)

log = logging.getLogger(__name__)

PROVIDER_TYPE = "openai"
DEFAULT_TIMEOUT_SECONDS = 60
DEFAULT_KEY_HEADER = "Authorization"
# Visible ASCII: what API keys are made of, and all an HTTP header can carry safely.
_KEY_SHAPE = re.compile(r"[\x21-\x7e]+")
KEY_SOURCES = ("api_key", "api_key_file", "api_key_env")
# What an HTTP header may carry: a token for the name (RFC 9110), visible ASCII with inner
# spaces or tabs for the value (a line break would end the header; YAML's `|` adds one).
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HEADER_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20-\x7e\t]*[\x21-\x7e])?)?")
# A socket timeout must fit the system's clock type (1e300 overflows on every request); an
# hour is far beyond any answer worth waiting for.
MAX_TIMEOUT_SECONDS = 3600
# A CA bundle is a few hundred kilobytes; a path to anything else (/dev/zero) is a mistake.
MAX_CA_FILE_BYTES = 16 * 1024 * 1024
# A wait the service passes on to its clients is cut to a day: a server asking for longer
# is broken, and a client should try again some day rather than never.
MAX_RETRY_AFTER_SECONDS = 86400
# The most the service reads of one answer, a plain one's body or a stream's events: some
# hundred thousand tokens, far more than any answer worth keeping, while one enormous or
# endless answer would otherwise be held in memory whole.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# An error body is a message, not a page: past this it is not read for one.
MAX_ERROR_BYTES = 1024 * 1024
# Upstream error text is passed on to help, but a page of HTML from a proxy helps nobody.
MAX_UPSTREAM_MESSAGE = 300
# Token counts are passed on as JSON numbers: past 2**53 - 1 many clients read them inexactly,
# and no answer comes near it. A server reporting more, or a count that is no whole number,
# reports no usage worth keeping.
MAX_TOKEN_COUNT = 2**53 - 1
# A model's name as the transcript records it: Hugging Face ids and paths on a model server
# run to a few dozen characters, and anything far longer is not a name.
MAX_MODEL_NAME = 256
# Far more calls than a model makes in one answer (OpenAI offers it at most 128 tools), while
# each call a stream opens is kept until the stream ends.
MAX_TOOL_CALLS = 128

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["url", "model"],
    "properties": {
        "url": {
            "type": "string",
            "pattern": "^https?://",
            "description": "Base URL of the server, e.g. http://127.0.0.1:8000/v1; "
            "/chat/completions is appended unless the URL already ends with it.",
            # The URL may carry credentials: it is not quoted.
            "x-messages": {"pattern": "not an http:// or https:// URL"},
        },
        "model": {
            "type": "string",
            "minLength": 1,
            "description": "Model used when a request names none.",
        },
        "models": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "uniqueItems": True,
            "description": "Further models a request may ask for; any other is refused with 422.",
        },
        "api_key": {"type": "string", "minLength": 1, "description": "The API key itself."},
        "api_key_file": {
            "type": "string",
            "minLength": 1,
            "description": "File holding the API key, read for every request.",
        },
        "api_key_env": {
            "type": "string",
            "minLength": 1,
            "description": "Environment variable holding the API key.",
        },
        "api_key_header": {
            "type": "string",
            "minLength": 1,
            "default": DEFAULT_KEY_HEADER,
            "description": "Header that carries the key: Authorization (as 'Bearer <key>') "
            "or another name, e.g. api-key, which gets the bare key.",
        },
        "timeout_seconds": {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": MAX_TIMEOUT_SECONDS,
            "default": DEFAULT_TIMEOUT_SECONDS,
            "description": "Longest wait for the server to connect, answer, or send the next "
            "piece of a streamed answer.",
        },
        "system_prompt": {
            "type": "string",
            "description": "System prompt used when a request brings none.",
        },
        "headers": {
            "type": "object",
            "additionalProperties": {
                "type": "string",
                "description": "Header value: visible ASCII, inner spaces allowed.",
            },
            "description": "Extra headers sent with every request (not for secrets: they "
            "are shown by config dump).",
        },
        "max_tokens": {
            "type": "integer",
            "minimum": 1,
            "description": "Longest answer in tokens; longer answers are cut and marked truncated.",
        },
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 2,
            "description": "Sampling temperature; the server's default when absent.",
        },
        "stream_usage": {
            "type": "boolean",
            "default": True,
            "description": "Ask for token usage at the end of streamed answers "
            "(stream_options.include_usage); turn off for servers that reject it.",
        },
        "verify_tls": {
            "type": "boolean",
            "default": True,
            "description": "Check the server's TLS certificate.",
        },
        "ca_file": {
            "type": "string",
            "minLength": 1,
            "description": "CA bundle to check the server's certificate against.",
        },
    },
}


class OpenAIProvider:
    def __init__(self, name: str, settings: Mapping[str, Any], config: Config) -> None:
        self.name = name
        base = str(settings["url"]).rstrip("/")
        self.endpoint = base if base.endswith("/chat/completions") else f"{base}/chat/completions"
        self.model: str = settings["model"]
        self.models: tuple[str, ...] = tuple(
            dict.fromkeys([self.model, *settings.get("models", [])])
        )
        self.timeout = float(settings.get("timeout_seconds", DEFAULT_TIMEOUT_SECONDS))
        self.system_prompt: str | None = settings.get("system_prompt")
        self.max_tokens: int | None = settings.get("max_tokens")
        self.temperature: float | None = settings.get("temperature")
        self.stream_usage: bool = settings.get("stream_usage", True)
        self.key_header: str = settings.get("api_key_header", DEFAULT_KEY_HEADER)
        self.extra_headers: dict[str, str] = dict(settings.get("headers", {}))
        self.verify: bool | str = settings.get("ca_file") or settings.get("verify_tls", True)
        self._key_settings = {k: settings[k] for k in KEY_SOURCES if k in settings}
        self._config = config
        self._sessions = threading.local()

    def answer(self, request: QueryRequest) -> Answer:
        model = self._model(request)
        key = self._key()
        payload = self._payload(request, model, stream=False)
        with (
            self._post(payload, key, stream=False) as response,
            self._reading("broke off the answer"),
        ):
            content = b"".join(_blocks(response, _Patience(self.timeout), decode=True))
        return self._completion(self._decoded(content, "an answer"), model, key)

    def stream(self, request: QueryRequest) -> AnswerStream:
        model = self._model(request)
        key = self._key()
        with self._post(self._payload(request, model, stream=True), key, stream=True) as response:
            return (yield from self._chunks(response, model, key))

    # -- the request ------------------------------------------------------------------------

    def _model(self, request: QueryRequest) -> str:
        if request.model is None:
            return self.model
        if request.model not in self.models:
            raise ValidationFailed(
                [
                    FieldError(
                        ("body", "model"),
                        f"Model '{request.model}' is not served by provider '{self.name}' "
                        f"(served: {', '.join(self.models)})",
                    )
                ],
                response="Unknown model",
            )
        return request.model

    def _payload(self, request: QueryRequest, model: str, stream: bool) -> dict[str, Any]:
        messages: list[dict[str, Any]] = []
        system_prompt = request.system_prompt or self.system_prompt
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.append({"role": "user", "content": _user_content(request)})
        payload: dict[str, Any] = {"model": model, "messages": messages, "stream": stream}
        if stream and self.stream_usage:
            payload["stream_options"] = {"include_usage": True}
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        if self.temperature is not None:
            payload["temperature"] = self.temperature
        return payload

    def _post(self, payload: Mapping[str, Any], key: str | None, stream: bool) -> requests.Response:
        headers = {**self.extra_headers, "Accept": "application/json"}
        if stream:
            # Compressed events would be read raw, and compression defeats streaming anyway.
            headers.update({"Accept": "text/event-stream", "Accept-Encoding": "identity"})
        if key is not None:
            headers[self.key_header] = (
                f"Bearer {key}" if self.key_header.lower() == "authorization" else key
            )
        try:
            response = self._session().post(
                self.endpoint,
                json=payload,
                headers=headers,
                timeout=self.timeout,
                # Read here, block by block, so that a body that trickles in is cut off.
                stream=True,
                verify=self.verify,
                # A redirect would carry the question, and a key in any header but
                # Authorization, to wherever it points, and turn a 301's POST into a GET.
                allow_redirects=False,
            )
        except requests.Timeout:
            raise self._timed_out() from None
        except requests.RequestException as exc:
            log.warning(
                "provider %s: cannot reach %s: %s",
                self.name,
                masked_url(self.endpoint),
                _reason(exc),
            )
            raise self._failed("could not be reached") from None
        except OSError as exc:
            # requests checks ca_file only when it connects, with a plain OSError: a file
            # removed after start-up must not turn every query into a 500.
            log.error("provider %s: cannot use the CA bundle %s: %s", self.name, self.verify, exc)
            raise self._failed(
                "cannot check the server's certificate; the service log says why"
            ) from None
        if response.status_code >= 400:
            with response:
                raise self._upstream_error(response, key)
        if response.is_redirect:
            with response:
                raise self._redirected(response)
        return response

    def _key(self) -> str | None:
        if not self._key_settings:
            return None
        try:
            key = self._config.resolve_secret(self._key_settings, "api_key")
        except ConfigError as exc:
            log.error("provider %s: no API key: %s", self.name, exc)
            raise self._failed("has no usable API key; the service log says why") from None
        if not key:
            log.error("provider %s: the configured API key is empty", self.name)
            raise self._failed("has no usable API key; the service log says why")
        if not _KEY_SHAPE.fullmatch(key):
            log.error("provider %s: the API key holds characters no header can carry", self.name)
            raise self._failed("has no usable API key; the service log says why")
        return key

    def _session(self) -> requests.Session:
        """One session per worker thread: connections are reused, sessions are not shared."""
        session: requests.Session | None = getattr(self._sessions, "session", None)
        if session is None:
            session = requests.Session()
            session.headers["User-Agent"] = "lightspeed-collector"
            self._sessions.session = session
        return session

    # -- the answer -------------------------------------------------------------------------

    def _completion(self, body: Any, model: str, key: str | None) -> Answer:
        if not isinstance(body, Mapping):
            raise self._failed("answered with JSON that is not an object")
        if body.get("error"):
            raise self._failed(f"answered with an error: {_upstream_message(body, key)}")
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
            raise self._failed("answered without any choices")
        choice = choices[0]
        message: Mapping[str, Any] = choice.get("message") or {}
        if not isinstance(message, Mapping):
            raise self._failed("answered with a choice that has no message")
        tool_calls = _tool_calls(message.get("tool_calls"))
        input_tokens, output_tokens = _usage(body.get("usage"))
        return Answer(
            text=_text(message.get("content")),
            model=_model_name(body.get("model"), model),
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            truncated=choice.get("finish_reason") == "length",
            tool_calls=tool_calls or None,
        )

    def _chunks(self, response: requests.Response, model: str, key: str | None) -> AnswerStream:
        answered_model = model
        usage: Any = None
        truncated = finished = chosen = False
        produced = 0
        tool_calls = _StreamedToolCalls()
        patience = _Patience(self.timeout)
        with self._reading("broke off the streamed answer"):
            for data in _server_sent_data(response, patience):
                if data.strip() == "[DONE]":
                    finished = True
                    break
                event = self._decoded(data, "a streamed event")
                if not isinstance(event, Mapping):
                    continue
                if event.get("error"):
                    raise self._failed(
                        f"reported an error while streaming: {_upstream_message(event, key)}"
                    )
                answered_model = _model_name(event.get("model"), answered_model)
                usage = event.get("usage") or usage
                choices = event.get("choices") or []
                if not isinstance(choices, list):
                    raise self._failed("sent a streamed event whose choices are not a list")
                for choice in choices:
                    if not isinstance(choice, Mapping) or choice.get("index", 0) != 0:
                        continue
                    chosen = True
                    delta = choice.get("delta")
                    text = _text(delta.get("content")) if isinstance(delta, Mapping) else ""
                    if isinstance(delta, Mapping) and not tool_calls.add(delta.get("tool_calls")):
                        raise self._failed(
                            f"sent more than {MAX_TOOL_CALLS} tool calls in one answer"
                        )
                    if text:
                        produced += 1
                        yield text
                        patience.renew()
                    elif _makes_progress(delta):
                        patience.renew()
                    if choice.get("finish_reason"):
                        finished = True
                        truncated = truncated or choice["finish_reason"] == "length"
        if not finished:
            raise self._failed("ended the streamed answer before it was finished")
        if not chosen:
            # No choice is no answer, not an empty one: a completion without any fails, and
            # a stream fails alike.
            raise self._failed("answered without any choices")
        input_tokens, output_tokens = _usage(usage)
        return Answer(
            text="",
            model=answered_model,
            input_tokens=input_tokens,
            output_tokens=output_tokens if usage else produced,
            truncated=truncated,
            tool_calls=tool_calls.assembled() or None,
        )

    @contextmanager
    def _reading(self, failure: str) -> Iterator[None]:
        """Turn what can go wrong while a body is read into the provider's errors; ``failure``
        says what happened when the connection broke."""
        try:
            yield
        except (requests.Timeout, urllib3.exceptions.TimeoutError, TimeoutError):
            raise self._timed_out() from None
        except _AnswerTooLarge:
            log.warning(
                "provider %s: an answer over %s bytes was cut off", self.name, MAX_ANSWER_BYTES
            )
            raise self._failed(
                f"sent an answer larger than {MAX_ANSWER_BYTES // (1024 * 1024)} MiB"
            ) from None
        except (
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ) as exc:
            log.warning("provider %s %s: %s", self.name, failure, _reason(exc))
            raise self._failed(failure) from None

    def _decoded(self, data: str | bytes, what: str) -> Any:
        """``data`` parsed as JSON; ``what`` names it in the failure."""
        try:
            return json.loads(data)
        except RecursionError:
            # Python's parser recurses once per level: a body of a few kilobytes of brackets
            # exhausts the stack, and that is the server's fault, not the service's.
            raise self._failed(f"sent {what} of JSON nested too deeply to read") from None
        except ValueError:
            raise self._failed(f"sent {what} that is not JSON") from None

    # -- errors -----------------------------------------------------------------------------

    def _upstream_error(
        self, response: requests.Response, key: str | None
    ) -> ProviderFailed | ProviderTimeout | RateLimited | ValidationFailed:
        status = response.status_code
        message = _upstream_message(self._error_body(response), key) or _scrubbed(
            response.reason or "", key
        )
        log.warning("provider %s: HTTP %s from %s", self.name, status, masked_url(self.endpoint))
        if status == 429:
            return RateLimited(
                f"Provider '{self.name}' is rate limiting requests: {message}",
                retry_after=_retry_after(response.headers),
            )
        if status in (401, 403):
            return self._failed(
                f"refused the service's credentials (HTTP {status}); "
                f"check the api_key of query.providers.{self.name}"
            )
        if status in (408, 504):
            return self._timed_out()
        if status in (400, 413, 422):
            return ValidationFailed(
                [FieldError(("body",), f"Provider '{self.name}' rejected the request: {message}")],
                response="The model provider rejected the request",
            )
        if status == 404:
            return self._failed(
                f"does not know the model or the URL (HTTP 404: {message}); "
                f"check url and models of query.providers.{self.name}"
            )
        return self._failed(f"answered HTTP {status}: {message}")

    def _error_body(self, response: requests.Response) -> Any:
        """The error body as JSON, or None when it is not JSON, is too large to be an error
        message, trickles in or breaks off: the status alone then says what went wrong."""
        try:
            blocks = _blocks(response, _Patience(self.timeout), MAX_ERROR_BYTES, decode=True)
            return json.loads(b"".join(blocks))
        except (
            ValueError,
            RecursionError,
            _AnswerTooLarge,
            TimeoutError,
            requests.RequestException,
            urllib3.exceptions.HTTPError,
            http.client.HTTPException,
            OSError,
        ):
            return None

    def _redirected(self, response: requests.Response) -> ProviderFailed:
        log.warning(
            "provider %s: HTTP %s from %s redirects to %s; set url to where it leads",
            self.name,
            response.status_code,
            masked_url(self.endpoint),
            masked_url(response.headers.get("Location", "")),
        )
        return self._failed(
            f"answered with a redirect (HTTP {response.status_code}); set the url of "
            f"query.providers.{self.name} to where it leads (the service log names it)"
        )

    def _failed(self, what: str) -> ProviderFailed:
        return ProviderFailed(f"Provider '{self.name}' {what}")

    def _timed_out(self) -> ProviderTimeout:
        return ProviderTimeout(
            f"Provider '{self.name}' did not answer within {self.timeout:g} seconds"
        )


def _user_content(request: QueryRequest) -> str | list[dict[str, Any]]:
    """The question with its attachments: text ones inline, images as image parts."""
    text = request.query
    images: list[dict[str, Any]] = []
    for attachment in request.attachments:
        if attachment.content_type.startswith("image/"):
            url = f"data:{attachment.content_type};base64,{attachment.content}"
            images.append({"type": "image_url", "image_url": {"url": url}})
        else:
            text += (
                f"\n\n{attachment.attachment_type.capitalize()} ({attachment.content_type}):\n"
                f"```\n{attachment.content}\n```"
            )
    if not images:
        return text
    return [{"type": "text", "text": text}, *images]


class _AnswerTooLarge(Exception):
    """The server sent more of a body than the service reads of one."""


class _Patience:
    """How long the server may still take for the next piece of its answer.

    The socket's timeout only bounds the wait for the next byte: a server that sends one
    byte, or one keep-alive comment, at a time would hold the request, and a worker
    thread, forever without ever producing the answer.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self.renew()

    def renew(self) -> None:
        self._until = time.monotonic() + self._seconds

    def check(self) -> None:
        if time.monotonic() > self._until:
            raise TimeoutError


def _server_sent_data(
    response: requests.Response, patience: _Patience | None = None
) -> Iterator[str]:
    """The ``data`` of each Server-Sent Event, as soon as its blank line arrives."""
    data_lines: list[str] = []
    for raw_line in _lines(response, patience):
        line = raw_line.decode("utf-8", errors="replace")
        if not line:
            if data_lines:
                yield "\n".join(data_lines)
                data_lines = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data_lines.append(value[1:] if value.startswith(" ") else value)
    if data_lines:
        yield "\n".join(data_lines)


def _lines(response: requests.Response, patience: _Patience | None) -> Iterator[bytes]:
    """The lines of the body, each ended by CRLF, LF or a CR alone, as Server-Sent Events
    allow. A line within one block is sliced out of it; a line that spans many blocks is
    gathered once, not copied again with each block. A CRLF split between two blocks is one
    line ending: the LF that opens a block after one that ended in CR belongs to that CR."""
    pending = bytearray()
    after_cr = False
    for block in _blocks(response, patience):
        if not block:
            continue
        if after_cr and block.startswith(b"\n"):
            block = block[1:]
        after_cr = block.endswith(b"\r")
        # bytes.splitlines ends lines at CRLF, LF and CR, and at nothing else.
        for line in block.splitlines(keepends=True):
            ending = 2 if line.endswith(b"\r\n") else 1 if line.endswith((b"\r", b"\n")) else 0
            if not ending:
                pending += line
            elif pending:
                pending += memoryview(line)[:-ending]
                yield bytes(pending)
                pending.clear()
            else:
                yield line[:-ending]
    if pending:
        yield bytes(pending)


def _blocks(
    response: requests.Response,
    patience: _Patience | None,
    limit: int = MAX_ANSWER_BYTES,
    decode: bool = False,
) -> Iterator[bytes]:
    """Bytes as they arrive: ``read1`` returns what one read gets, where ``iter_content``
    would wait for a full buffer on a server that does not use chunked encoding. ``decode``
    undoes a ``Content-Encoding`` such as gzip. Raises ``TimeoutError`` once ``patience``
    runs out, and ``_AnswerTooLarge`` past ``limit`` bytes."""
    read1 = getattr(response.raw, "read1", None)
    if read1 is None:
        blocks = response.iter_content(chunk_size=None)
    elif decode:
        blocks = iter(lambda: read1(65536, decode_content=True), b"")
    else:
        blocks = iter(lambda: read1(65536), b"")
    received = 0
    for block in blocks:
        if patience is not None:
            patience.check()
        received += len(block)
        if received > limit:
            raise _AnswerTooLarge
        yield block


class _StreamedToolCalls:
    """The tool calls of a streamed answer, put together from the fragments OpenAI streams.

    Each fragment names its call by ``index``; a call's ``id``, ``type`` and
    ``function.name`` come once, its ``function.arguments`` in pieces to be joined. Calls
    are kept by index in a dict, so a fragment at index 10**30 costs what one at 0 does, and
    the pieces of a call's arguments go into one buffer, so a million one-letter pieces
    cost a million bytes, not a million strings. How much there is in all is bounded by the
    stream's own cap on what is read of it.
    """

    def __init__(self) -> None:
        self._calls: dict[int, _StreamedToolCall] = {}
        self._latest: int | None = None

    def add(self, fragments: Any) -> bool:
        """Take in a delta's ``tool_calls``; False when that would open more calls than
        ``MAX_TOOL_CALLS``. Fragments that are not objects are left out, as the calls of a
        plain answer are."""
        if not isinstance(fragments, list):
            return True
        for fragment in fragments:
            if not isinstance(fragment, Mapping):
                continue
            index = self._index(fragment)
            call = self._calls.get(index)
            if call is None:
                if len(self._calls) >= MAX_TOOL_CALLS:
                    return False
                call = self._calls[index] = _StreamedToolCall()
            call.add(fragment)
            self._latest = index
        return True

    def assembled(self) -> tuple[Mapping[str, Any], ...]:
        """The calls in the order of their indexes, shaped as a plain answer's are."""
        return tuple(self._calls[index].assembled() for index in sorted(self._calls))

    def _index(self, fragment: Mapping[str, Any]) -> int:
        """The fragment's ``index``; a server that sends none (some stream each call whole)
        continues the latest call, unless the fragment brings an ``id`` of its own."""
        index = fragment.get("index")
        if type(index) is int and index >= 0:
            return index
        if self._latest is not None:
            identifier = _nonempty_string(fragment.get("id"))
            if identifier is None or identifier == self._calls[self._latest].identifier:
                return self._latest
        return max(self._calls, default=-1) + 1


class _StreamedToolCall:
    """One call of a streamed answer: the first ``id``, ``type`` and ``function.name`` given,
    and every piece of ``function.arguments``, joined."""

    def __init__(self) -> None:
        self.identifier: str | None = None
        self._type: str | None = None
        self._name: str | None = None
        # UTF-8, with lone surrogates kept as they came: the service replaces them in every
        # answer's text, these calls included.
        self._arguments = bytearray()

    def add(self, fragment: Mapping[str, Any]) -> None:
        self.identifier = self.identifier or _nonempty_string(fragment.get("id"))
        self._type = self._type or _nonempty_string(fragment.get("type"))
        function = fragment.get("function")
        if not isinstance(function, Mapping):
            return
        self._name = self._name or _nonempty_string(function.get("name"))
        arguments = function.get("arguments")
        if isinstance(arguments, str):
            self._arguments += arguments.encode("utf-8", "surrogatepass")

    def assembled(self) -> Mapping[str, Any]:
        function = {"name": self._name} if self._name is not None else {}
        function["arguments"] = self._arguments.decode("utf-8", "surrogatepass")
        call: dict[str, Any] = {"id": self.identifier, "type": self._type, "function": function}
        return {key: value for key, value in call.items() if value is not None}


def _nonempty_string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _makes_progress(delta: Any) -> bool:
    """A streamed delta that carries something besides the answer's text, such as a reasoning
    model's thoughts or a tool call: the model is working, however long it thinks."""
    return isinstance(delta, Mapping) and any(
        value for name, value in delta.items() if name not in ("role", "content")
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return ""


def _tool_calls(calls: Any) -> tuple[Mapping[str, Any], ...]:
    """The calls that are objects, as OpenAI's are: a transcript records each as one, and a
    string or a number in the list would make the whole answer unrecordable."""
    if not isinstance(calls, list):
        return ()
    return tuple(call for call in calls if isinstance(call, Mapping))


def _usage(usage: Any) -> tuple[int, int]:
    if not isinstance(usage, Mapping):
        return 0, 0
    return _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))


def _count(value: Any) -> int:
    """A token count as a whole number from 0 to ``MAX_TOKEN_COUNT``, else 0 as for a count
    the server did not give: ``true`` is an int to Python, and a count of four thousand
    digits would go into every answer and transcript as it came."""
    return value if type(value) is int and 0 <= value <= MAX_TOKEN_COUNT else 0


def _model_name(value: Any, fallback: str) -> str:
    """The model the server says answered, when it says so with a name; else ``fallback``,
    as when it says nothing: an object or a number would be recorded as Python spells it."""
    if isinstance(value, str) and 0 < len(value) <= MAX_MODEL_NAME:
        return value
    return fallback


def _upstream_message(body: Any, key: str | None) -> str:
    """The message of an error body, fit to pass on: some servers quote the key they were
    sent, and none of it may leave; a page of text from a proxy helps nobody."""
    return _scrubbed(_error_text(body), key)


def _scrubbed(message: str, key: str | None) -> str:
    if key:
        message = message.replace(key, "********")
    return message[:MAX_UPSTREAM_MESSAGE]


def _error_text(body: Any) -> str:
    """The message of an error body, in any of the shapes OpenAI-compatible servers use."""
    if not isinstance(body, Mapping):
        return ""
    error = body.get("error")
    if isinstance(error, Mapping):
        return str(error.get("message") or error.get("code") or "")
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        if isinstance(body.get(key), str):
            return str(body[key])
    return ""


def _retry_after(headers: Mapping[str, str]) -> int | None:
    """Seconds to wait, from ``Retry-After`` (seconds or an HTTP date) or ``retry-after-ms``."""
    value = headers.get("retry-after")
    if value:
        try:
            return _whole_seconds(float(value))
        except ValueError:
            pass
        try:
            return _whole_seconds(parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError, OverflowError):
            pass
    milliseconds = headers.get("retry-after-ms")
    if milliseconds:
        try:
            return _whole_seconds(float(milliseconds) / 1000)
        except ValueError:
            pass
    return None


def _whole_seconds(seconds: float) -> int | None:
    """``seconds`` rounded up, from 0 to ``MAX_RETRY_AFTER_SECONDS``: ``1e400`` reads as an
    infinite float, which no integer can hold, and ``1e300`` would be passed on as a header
    of three hundred digits."""
    if math.isnan(seconds):
        return None
    return math.ceil(min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS))


def _reason(exc: BaseException) -> str:
    """The innermost cause of a connection failure: requests' own text quotes the URL with
    its query, and an invalid header's text quotes the header."""
    cause = innermost_cause(exc)
    if isinstance(cause, OSError) and cause.strerror:
        return f"{type(cause).__name__}: {cause.strerror}"
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return f"{type(cause).__name__}: {cause.reason}"
    return type(cause).__name__


def _check_headers(name: str, settings: Mapping[str, Any]) -> None:
    """Fail at start-up, naming the header but never its value, when a header cannot be
    sent: otherwise every query is a 502."""
    where = f"query.providers.{name}"
    header = settings.get("api_key_header", DEFAULT_KEY_HEADER)
    if not _HEADER_NAME.fullmatch(header):
        raise ConfigError(f"{where}.api_key_header", "is not a valid HTTP header name")
    for header, value in settings.get("headers", {}).items():
        if not _HEADER_NAME.fullmatch(header):
            raise ConfigError(f"{where}.headers", f"'{header}' is not a valid HTTP header name")
        if not _HEADER_VALUE.fullmatch(value):
            raise ConfigError(
                f"{where}.headers.{header}",
                "the value holds characters an HTTP header cannot carry (a line break, e.g. "
                "from YAML's '|', other control or non-ASCII characters, or leading or "
                "trailing spaces); not shown: it may be a secret",
            )


def _check_ca_file(name: str, settings: Mapping[str, Any]) -> None:
    """Fail at start-up, naming the key, when the CA bundle cannot be used: requests would
    only find out when it connects, for every query."""
    path = settings.get("ca_file")
    if not path:
        return
    key = f"query.providers.{name}.ca_file"
    try:
        if os.path.isdir(path):
            os.listdir(path)  # a directory of hashed certificates, as OpenSSL's -CApath
            return
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_CA_FILE_BYTES:
            raise ConfigError(key, f"{path} is not a CA bundle file (PEM)")
        ssl.create_default_context(cafile=path)  # reads and parses it, as requests will
    except ssl.SSLError:
        raise ConfigError(key, f"{path} holds no CA certificate (PEM) that can be read") from None
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise ConfigError(key, "the path holds a NUL character") from None


def _check_key_sources(name: str, settings: Mapping[str, Any], config: Config) -> None:
    """Fail at start-up, naming the key, when the API key cannot be found."""
    given = [key for key in KEY_SOURCES if key in settings]
    if len(given) > 1:
        raise ConfigError(f"query.providers.{name}", f"give only one of {', '.join(given)}")
    if not given:
        return
    value = config.resolve_secret(settings, "api_key", f"query.providers.{name}")
    if not value:
        raise ConfigError(f"query.providers.{name}.{given[0]}", "the API key is empty")
    if not _KEY_SHAPE.fullmatch(value):
        raise ConfigError(
            f"query.providers.{name}.{given[0]}",
            "the API key holds characters an HTTP header cannot carry (spaces, control or "
            "non-ASCII characters)",
        )


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="provider", name=PROVIDER_TYPE, schema=SETTINGS_SCHEMA)]


@hookimpl
def register_query_providers(config: Config) -> Sequence[QueryProvider]:
    providers: list[QueryProvider] = []
    for name, settings in sorted(config.provider_instances(PROVIDER_TYPE).items()):
        _check_key_sources(name, settings, config)
        _check_headers(name, settings)
        _check_ca_file(name, settings)
        providers.append(OpenAIProvider(name, settings, config))
    return providers
