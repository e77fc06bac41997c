"""A small Server-Sent Events client over http.client, reading one event at a time.

http.client rather than requests so a test controls exactly when bytes are read and when
the connection is dropped.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class EventStream:
    connection: http.client.HTTPConnection
    response: http.client.HTTPResponse

    @property
    def status(self) -> int:
        return self.response.status

    def header(self, name: str) -> str | None:
        return self.response.getheader(name)

    def json(self) -> Any:
        """The body of a non-streaming (error) answer; the connection is closed after it."""
        try:
            return json.loads(self.response.read())
        finally:
            self.close()

    def next_event(self) -> dict[str, Any] | None:
        """The next ``data:`` event, parsed, or None at the end of the stream."""
        data: list[str] = []
        while True:
            line = self.response.readline()
            if not line:
                return None
            text = line.decode("utf-8").rstrip("\r\n")
            if text.startswith("data:"):
                data.append(text[5:].removeprefix(" "))
            elif not text and data:
                event: dict[str, Any] = json.loads("\n".join(data))
                return event

    def events(self) -> list[dict[str, Any]]:
        """Every event to the end of the stream; the connection is closed after it."""
        found: list[dict[str, Any]] = []
        try:
            while (event := self.next_event()) is not None:
                found.append(event)
        finally:
            self.close()
        return found

    def close(self) -> None:
        """Hang up: the response holds the socket open too, so both must let go."""
        self.response.close()
        self.connection.close()


def post_stream(
    base_url: str,
    body: dict[str, Any],
    path: str = "/v1/streaming_query",
    headers: dict[str, str] | None = None,
    timeout: float = 15,
) -> EventStream:
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout)
    connection.request(
        "POST",
        path,
        body=json.dumps(body),
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    return EventStream(connection, connection.getresponse())


def answer_text(events: list[dict[str, Any]]) -> str:
    return "".join(e["data"]["token"] for e in events if e["event"] == "token")
