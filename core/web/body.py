"""Reading a JSON request body within the configured size limit.

Falcon has no body-size option, and a limit checked after reading protects nothing, so the
body is read from ``bounded_stream`` at most one byte past the limit.
"""

from __future__ import annotations

import json
from typing import Any

import falcon

from ..errors import BadRequest, PayloadTooLarge, UnsupportedMediaType

_JSON_TYPES = ("application/json",)


def read_json(req: falcon.Request, max_bytes: int) -> Any:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        shown = media_type or "none"
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {shown}",
            response="Unsupported media type",
        )
    length = req.content_length
    if length is not None and length > max_bytes:
        raise PayloadTooLarge(
            f"Request body of {length} bytes exceeds the limit of {max_bytes} bytes"
        )
    raw = req.bounded_stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(f"Request body exceeds the limit of {max_bytes} bytes")
    if not raw.strip():
        raise BadRequest("Request body is empty; expected a JSON object")
    try:
        return json.loads(raw)
    except UnicodeDecodeError:
        raise BadRequest("Request body is not UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"Request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply") from None
