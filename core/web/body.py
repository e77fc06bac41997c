"""Reading a JSON request body within the configured size limit.

Falcon has no body-size option, and a limit checked after reading protects nothing, so the
body is read from ``bounded_stream`` at most one byte past the limit.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import falcon

from ..errors import BadRequest, FieldError, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from ..surrogates import find_surrogate, may_hold_surrogates

_JSON_TYPES = ("application/json",)


def read_json(req: falcon.Request, max_bytes: int) -> Any:
    media_type = (req.content_type or "").split(";", 1)[0].strip().lower()
    if media_type not in _JSON_TYPES and not media_type.endswith("+json"):
        shown = media_type or "none"
        raise UnsupportedMediaType(
            f"Content-Type must be application/json, got {shown}",
            response="Unsupported media type",
        )
    encoding = (req.get_header("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        # Read as is, a compressed body would be "not UTF-8", and a plain one labelled as
        # compressed would be taken on trust; RFC 9110 answers an unsupported coding 415.
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding} is not supported; send the body uncompressed",
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
        # Decoded here, strictly: json.loads(bytes) would also take UTF-16 and UTF-32, and
        # decodes with "surrogatepass", letting encoded lone surrogates into the records.
        # A UTF-8 byte-order mark is allowed (RFC 8259 lets parsers ignore it) and dropped.
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError:
        raise BadRequest("Request body is not UTF-8 encoded JSON") from None
    try:
        data = json.loads(text, parse_constant=_refuse_constant)
    except _NotJson as exc:
        raise BadRequest(f"Request body is not valid JSON: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(
            f"Request body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadRequest("Request body is nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers past a length limit (a guard against slow
        # conversions); the JSON itself was fine.
        raise BadRequest(
            f"Request body holds a number of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if may_hold_surrogates(raw):
        _refuse_surrogates(data)
    return data


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> Any:
    """Python's parser takes NaN and Infinity, which JSON does not have."""
    raise _NotJson(f"{name} is not a JSON value")


def _refuse_surrogates(data: Any) -> None:
    """A 422 naming the field, before anything echoes the text back or tries to store it."""
    found = find_surrogate(data, ("body",))
    if found is None:
        return
    loc, code_point, in_key = found
    where = ".".join(str(part) for part in loc[1:]) or "body"
    escape = f"\\u{ord(code_point):04x}"
    if in_key:
        message = f"A field name in '{where}' holds an unpaired UTF-16 surrogate ({escape})"
    else:
        message = f"Field '{where}' holds an unpaired UTF-16 surrogate ({escape})"
    raise ValidationFailed([FieldError(loc, f"{message}, which is not valid Unicode text")])
