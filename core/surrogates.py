"""Unpaired UTF-16 surrogates: text that JSON and Python accept but UTF-8 cannot encode.

A JSON string may spell a lone surrogate as an escape (``"\\ud800"``), and Python decodes it
into a ``str`` without complaint; the first attempt to encode that text as UTF-8, to write a
record or send a response, then fails. Clients are told at the door, naming the field;
text from providers, which the client did not choose, has each such code point replaced by
U+FFFD, so what the user is shown and what is recorded are the same valid text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REPLACEMENT = "\ufffd"

_SURROGATE = re.compile("[\ud800-\udfff]")
# The only way a lone surrogate gets into JSON text that is valid UTF-8: a \uD800-\uDFFF
# escape. Bodies without one (nearly all) skip the walk.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")

Location = tuple[str | int, ...]


def may_hold_surrogates(raw: bytes) -> bool:
    """Whether JSON text ``raw`` could decode to strings holding lone surrogates."""
    return _SURROGATE_ESCAPE.search(raw) is not None


def holds_surrogate(*texts: str | None) -> bool:
    """Whether any of ``texts`` holds a lone surrogate."""
    return any(text is not None and _SURROGATE.search(text) for text in texts)


def find_surrogate(value: Any, loc: Location = ()) -> tuple[Location, str, bool] | None:
    """A lone surrogate in decoded JSON: where it is, the code point, and whether it is in a
    key (the location then ends at the object holding that key). Walked with a stack, not
    recursion, since a client chooses how deep its body nests."""
    pending: list[tuple[Location, Any]] = [(loc, value)]
    while pending:
        here, item = pending.pop()
        if isinstance(item, str):
            if (found := _SURROGATE.search(item)) is not None:
                return here, found.group(), False
        elif isinstance(item, Mapping):
            for key in item:
                if isinstance(key, str) and (found := _SURROGATE.search(key)) is not None:
                    return here, found.group(), True
            pending.extend(((*here, key), inner) for key, inner in reversed(list(item.items())))
        elif isinstance(item, list | tuple):
            pending.extend(
                ((*here, index), inner) for index, inner in reversed(list(enumerate(item)))
            )
    return None


def replace_surrogates(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings (keys included) replaced by U+FFFD;
    the same object when there is none, so clean data costs one scan and no copy."""
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value) if _SURROGATE.search(value) else value
    if isinstance(value, Mapping):
        items = [(replace_surrogates(key), replace_surrogates(item)) for key, item in value.items()]
        if all(
            k is key and v is item for (k, v), (key, item) in zip(items, value.items(), strict=True)
        ):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        replaced = [replace_surrogates(item) for item in value]
        if all(new is old for new, old in zip(replaced, value, strict=True)):
            return value
        return replaced if isinstance(value, list) else tuple(replaced)
    return value
