"""One registry of the JSON Schemas in ``schemas/``, each validator compiled once.

Schemas may carry ``x-messages``: a map from a JSON Schema keyword to the message a client
sees when that keyword fails (``{value}`` is replaced by the offending value). That keeps the
reference service's wording next to the rule it explains instead of in code.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from functools import cache, cached_property
from importlib import resources
from typing import TYPE_CHECKING, Any

from .errors import FieldError
from .fastcheck import compile_check, schema_pattern

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError
    from referencing import Registry

SCHEMA_PACKAGE = "lightspeed_collector.schemas"


@cache
def schema_names() -> tuple[str, ...]:
    files = resources.files(SCHEMA_PACKAGE).iterdir()
    return tuple(sorted(f.name[:-5] for f in files if f.name.endswith(".json")))


@cache
def load_schema(name: str) -> Mapping[str, Any]:
    text = resources.files(SCHEMA_PACKAGE).joinpath(f"{name}.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema


@cache
def _registry() -> Registry[Any]:
    from referencing import Registry, Resource

    resources_ = [
        (load_schema(name)["$id"], Resource.from_contents(dict(load_schema(name))))
        for name in schema_names()
    ]
    return Registry().with_resources(resources_)


class SchemaValidator:
    """A compiled schema: a fast yes/no check for the common, valid case, and ``jsonschema``
    for explaining what is wrong (see :mod:`lightspeed_collector.fastcheck`).

    ``jsonschema`` is imported only when first needed: a valid configuration and valid
    requests never need it, and commands such as ``export`` start sooner without it.
    """

    def __init__(self, schema: Mapping[str, Any]) -> None:
        self.schema = schema
        self._fast = compile_check(schema, _resolve_ref)

    @cached_property
    def full(self) -> Draft202012Validator:
        validator: Draft202012Validator = _validator_class()(self.schema, registry=_registry())
        return validator

    @property
    def accelerated(self) -> bool:
        return self._fast is not None

    def is_valid(self, instance: Any) -> bool:
        if self._fast is not None:
            return self._fast(instance)
        return bool(self.full.is_valid(instance))

    def errors(self, instance: Any, root: tuple[str | int, ...] = ()) -> list[FieldError]:
        """All problems of ``instance``, each named by its path and worded for a client."""
        if self._fast is not None and self._fast(instance):
            return []
        return _to_field_errors(self.full.iter_errors(instance), root)


@cache
def _validator_class() -> Any:
    """Draft 2020-12, with ``pattern`` matched as the standard means it (see
    :func:`~lightspeed_collector.fastcheck.schema_pattern`), so both checks agree."""
    from jsonschema import Draft202012Validator, validators
    from jsonschema.exceptions import ValidationError

    def pattern(validator: Any, expected: str, instance: Any, schema: Any) -> Iterator[Any]:
        if validator.is_type(instance, "string") and not schema_pattern(expected).search(instance):
            yield ValidationError(f"{instance!r} does not match {expected!r}")

    return validators.extend(Draft202012Validator, {"pattern": pattern})  # type: ignore[no-untyped-call]


def compile_validator(schema: Mapping[str, Any]) -> SchemaValidator:
    """Compile any schema against the shared registry (plugins' schemas go through here)."""
    return SchemaValidator(schema)


@cache
def validator(name: str) -> SchemaValidator:
    return compile_validator(load_schema(name))


def check(name: str, instance: Any, root: tuple[str | int, ...] = ()) -> list[FieldError]:
    return validator(name).errors(instance, root)


@cache
def _schemas_by_id() -> dict[str, Mapping[str, Any]]:
    return {load_schema(name)["$id"]: load_schema(name) for name in schema_names()}


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any] | None:
    base, _, pointer = ref.partition("#")
    document: Any = _schemas_by_id().get(base) if base else root
    for part in filter(None, pointer.split("/")):
        if not isinstance(document, Mapping):
            return None
        document = document.get(part.replace("~1", "/").replace("~0", "~"))
    return document if isinstance(document, Mapping) else None


def _to_field_errors(
    errors: Iterable[ValidationError], root: tuple[str | int, ...]
) -> list[FieldError]:
    errors = list(errors)
    field_paths = [tuple(e.absolute_path) for e in errors]
    found: list[FieldError] = []
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for error in sorted(errors, key=lambda e: (list(map(str, e.absolute_path)), str(e.validator))):
        if error.validator == "anyOf" and _has_field_error_below(
            tuple(error.absolute_path), field_paths
        ):
            # A rule across fields ("at least one of ...") is noise while a field it looks
            # at is itself wrong: fix the field first, as the reference service reports it.
            continue
        for problem in _describe(error, root):
            key = (problem.loc, problem.msg)
            if key not in seen:
                seen.add(key)
                found.append(problem)
    return found


def _has_field_error_below(path: tuple[str | int, ...], paths: list[tuple[str | int, ...]]) -> bool:
    return any(len(other) > len(path) and other[: len(path)] == path for other in paths)


def _describe(error: ValidationError, root: tuple[str | int, ...]) -> list[FieldError]:
    loc = root + tuple(error.absolute_path)
    keyword = str(error.validator)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    template = schema.get("x-messages", {}).get(keyword)
    if keyword == "additionalProperties" and isinstance(error.instance, Mapping):
        allowed = set(schema.get("properties", {}))
        extras = sorted(k for k in error.instance if k not in allowed)
        return [FieldError((*loc, extra), f"Unknown field '{extra}'") for extra in extras]
    if keyword == "required" and isinstance(error.instance, Mapping):
        required: list[str] = list(error.validator_value)  # type: ignore[arg-type]
        missing = [name for name in required if name not in error.instance]
        return [FieldError((*loc, name), template or "Field required") for name in missing]
    if template:
        return [FieldError(loc, template.format(value=_show(error.instance)))]
    if keyword == "type":
        # jsonschema quotes the value in Python's words (None, True, {'a': 1}); a client
        # sent JSON (null, true, {"a": 1}).
        expected = error.validator_value
        names = [expected] if isinstance(expected, str) else list(expected)  # type: ignore[arg-type]
        wanted = ", ".join(repr(name) for name in names)
        return [FieldError(loc, f"{_json_words(error.instance)} is not of type {wanted}")]
    if keyword == "enum":
        options = json.dumps(error.validator_value, ensure_ascii=False)
        return [FieldError(loc, f"{_json_words(error.instance)} is not one of {options}")]
    if keyword in ("anyOf", "oneOf") and error.context:
        # Prefer the explanation from the branch that got furthest, like a person would.
        best = max(error.context, key=lambda e: len(e.absolute_path))
        if len(best.absolute_path) > len(error.absolute_path):
            return _describe(best, root)
    return [FieldError(loc, error.message)]


def _json_words(value: Any) -> str:
    """A value as a message quotes it: strings as jsonschema quotes them, the rest as JSON.
    Nothing is cut here: a configuration message is checked whole for secrets before it is
    shortened."""
    return repr(value) if isinstance(value, str) else _as_json(value)


def _show(value: Any) -> str:
    """A value as an ``x-messages`` template shows it: strings bare, the rest as JSON."""
    return value if isinstance(value, str) else _as_json(value)


def _as_json(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):  # a value YAML made that JSON has no word for
        return repr(value)
