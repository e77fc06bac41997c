"""Self-contained copies of the JSON Schemas in ``schemas/``, for tools that cannot follow our
``urn:lightspeed-collector:schema:*`` references.

The schemas refer to each other by ``$id`` (``urn:lightspeed-collector:schema:common#/$defs/
attachment``), which our own validators resolve through one registry. An OpenAPI document or
a generic validator only sees one file, so this module copies every schema a set of schemas
needs into one mapping of definitions and points each ``$ref`` at its copy. The copies are
made from the files at the moment of the call: there is never a second, hand-kept version.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from typing import Any

from .validation import load_schema

SCHEMA_URN = "urn:lightspeed-collector:schema:"

# Keywords that only make sense in a standalone file: inside a bundle an ``$id`` would change
# the base URI of the bundle's own references, and ``$schema`` belongs at the top only.
_STANDALONE_KEYWORDS = ("$id", "$schema")


class BundleError(ValueError):
    """A schema uses a reference this bundler cannot rewrite."""


def bundle(names: Iterable[str], ref_prefix: str) -> dict[str, dict[str, Any]]:
    """Every schema in ``names`` and every schema or ``$defs`` entry they reference, by
    definition name, with each ``$ref`` rewritten to ``ref_prefix + <definition name>``.

    A whole schema keeps its file name (``transcript``); an entry of its ``$defs`` becomes
    ``<file>.<entry>`` (``common.attachment``). ``ref_prefix`` is where the caller puts the
    mapping: ``#/components/schemas/`` in OpenAPI, ``#/$defs/`` in a JSON Schema.
    """
    wanted = list(names)
    definitions: dict[str, dict[str, Any]] = {}
    pending = list(wanted)
    referenced_whole: set[str] = set()
    done: set[str] = set()
    while pending:
        name = pending.pop(0)
        if name in done:
            continue
        done.add(name)
        schema = copy.deepcopy(dict(load_schema(name)))
        local_defs = schema.pop("$defs", {})
        for keyword in _STANDALONE_KEYWORDS:
            schema.pop(keyword, None)
        for def_name, sub_schema in local_defs.items():
            definitions[f"{name}.{def_name}"] = _rewrite(
                sub_schema, name, ref_prefix, pending, referenced_whole
            )
        definitions[name] = _rewrite(schema, name, ref_prefix, pending, referenced_whole)
    # A schema reached only for its $defs (``common``) is not itself a definition.
    return {
        key: value
        for key, value in definitions.items()
        if "." in key or key in wanted or key in referenced_whole
    }


def standalone_schema(name: str) -> dict[str, Any]:
    """One JSON Schema file that validates exactly what ``schemas/<name>.json`` validates,
    with no reference leaving the file (for generic JSON Schema tools)."""
    definitions = bundle([name], "#/$defs/")
    root = definitions.pop(name)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **root,
        "$defs": definitions,
    }


def _rewrite(node: Any, current: str, ref_prefix: str, pending: list[str], whole: set[str]) -> Any:
    if isinstance(node, Mapping):
        rewritten: dict[str, Any] = {}
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                rewritten[key] = _target(value, current, ref_prefix, pending, whole)
            else:
                rewritten[key] = _rewrite(value, current, ref_prefix, pending, whole)
        return rewritten
    if isinstance(node, list):
        return [_rewrite(item, current, ref_prefix, pending, whole) for item in node]
    return node


def _target(ref: str, current: str, ref_prefix: str, pending: list[str], whole: set[str]) -> str:
    base, _, pointer = ref.partition("#")
    if not base:
        schema = current
    elif base.startswith(SCHEMA_URN):
        schema = base[len(SCHEMA_URN) :]
        pending.append(schema)
    else:
        raise BundleError(f"schema '{current}': cannot bundle the reference {ref!r}")
    if pointer in ("", "/"):
        whole.add(schema)
        return ref_prefix + schema
    parts = pointer.split("/")
    if len(parts) == 3 and parts[1] == "$defs":
        return f"{ref_prefix}{schema}.{parts[2]}"
    raise BundleError(
        f"schema '{current}': cannot bundle the reference {ref!r} (only whole schemas and "
        "$defs entries can be referenced)"
    )
