"""A JSON Schema compiled into plain Python closures that answer one question: valid or not.

``jsonschema`` explains every problem well but costs a few hundred microseconds per record,
which on the request path is more than everything else the service does together. Valid
input is the common case, so it is checked here in microseconds; only input that fails is
handed to ``jsonschema`` for the full explanation. This checker must never accept what
``jsonschema`` rejects: it implements the keywords our schemas use exactly and refuses to
compile (returning ``None``, so ``jsonschema`` does all the work) a schema with any other
keyword. A differential test holds the two to the same answers.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[Any], bool]
RefResolver = Callable[[str, Mapping[str, Any]], Mapping[str, Any] | None]

# Keywords that never affect validity.
_ANNOTATIONS = frozenset(
    {
        "$schema",
        "$id",
        "$defs",
        "$comment",
        "title",
        "description",
        "default",
        "examples",
        "schema_version",
        "x-messages",
        "readOnly",
        "writeOnly",
        "deprecated",
    }
)


class Unsupported(Exception):
    """The schema uses a keyword this checker does not implement."""


def compile_check(schema: Mapping[str, Any] | bool, resolve: RefResolver) -> Check | None:
    try:
        return _Compiler(resolve).compile(schema, schema if isinstance(schema, Mapping) else {})
    except Unsupported:
        return None


def _is_integer(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, float) and value.is_integer()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


_TYPES: dict[str, Check] = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "integer": _is_integer,
    "number": _is_number,
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
}


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON Schema means it: true is not 1, and 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, str) or isinstance(b, str) or a is None or b is None:
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    return False


class _Compiler:
    def __init__(self, resolve: RefResolver) -> None:
        self._resolve = resolve
        self._active_refs: set[str] = set()

    def compile(self, schema: Mapping[str, Any] | bool, root: Mapping[str, Any]) -> Check:
        if schema is True:
            return lambda v: True
        if schema is False:
            return lambda v: False
        if not isinstance(schema, Mapping):
            raise Unsupported(repr(schema))
        checks: list[Check] = []
        for keyword, value in schema.items():
            if keyword in _ANNOTATIONS:
                continue
            builder = getattr(self, "_kw_" + keyword.replace("$", "dollar_"), None)
            if builder is None:
                raise Unsupported(keyword)
            built = builder(value, schema, root)
            if built is not None:
                checks.append(built)
        if not checks:
            return lambda v: True
        if len(checks) == 1:
            return checks[0]
        checks_tuple = tuple(checks)

        # Plain loops here and below: all() over a generator costs a generator object per
        # call, which on a whole record is most of the check's time.
        def every(v: Any) -> bool:
            for check in checks_tuple:  # noqa: SIM110
                if not check(v):
                    return False
            return True

        return every

    def _kw_dollar_ref(self, ref: str, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Check:
        if ref in self._active_refs:
            raise Unsupported("recursive $ref")
        target = self._resolve(ref, root)
        if target is None:
            raise Unsupported(f"unresolvable $ref {ref}")
        self._active_refs.add(ref)
        try:
            target_root = (
                self._resolve(ref.split("#", 1)[0] + "#", root) if not ref.startswith("#") else root
            )
            return self.compile(target, target_root or root)
        finally:
            self._active_refs.discard(ref)

    def _kw_type(self, value: str | list[str], schema: Any, root: Any) -> Check:
        names = [value] if isinstance(value, str) else list(value)
        try:
            checks = tuple(_TYPES[name] for name in names)
        except KeyError as exc:
            raise Unsupported(f"type {exc}") from None
        if len(checks) == 1:
            return checks[0]
        return lambda v: any(check(v) for check in checks)

    def _kw_enum(self, options: list[Any], schema: Any, root: Any) -> Check:
        if all(isinstance(option, str) for option in options):
            strings = frozenset(options)
            return lambda v: isinstance(v, str) and v in strings
        allowed = tuple(options)
        return lambda v: any(_json_equal(v, option) for option in allowed)

    def _kw_const(self, constant: Any, schema: Any, root: Any) -> Check:
        return lambda v: _json_equal(v, constant)

    def _kw_pattern(self, pattern: str, schema: Any, root: Any) -> Check:
        search = schema_pattern(pattern).search
        return lambda v: not isinstance(v, str) or search(v) is not None

    def _kw_minLength(self, limit: int, schema: Any, root: Any) -> Check:
        return lambda v: not isinstance(v, str) or len(v) >= limit

    def _kw_maxLength(self, limit: int, schema: Any, root: Any) -> Check:
        return lambda v: not isinstance(v, str) or len(v) <= limit

    def _kw_minimum(self, limit: float, schema: Any, root: Any) -> Check:
        return lambda v: not _is_number(v) or v >= limit

    def _kw_maximum(self, limit: float, schema: Any, root: Any) -> Check:
        return lambda v: not _is_number(v) or v <= limit

    def _kw_exclusiveMinimum(self, limit: float, schema: Any, root: Any) -> Check:
        return lambda v: not _is_number(v) or v > limit

    def _kw_exclusiveMaximum(self, limit: float, schema: Any, root: Any) -> Check:
        return lambda v: not _is_number(v) or v < limit

    def _kw_minItems(self, limit: int, schema: Any, root: Any) -> Check:
        return lambda v: not isinstance(v, list) or len(v) >= limit

    def _kw_maxItems(self, limit: int, schema: Any, root: Any) -> Check:
        return lambda v: not isinstance(v, list) or len(v) <= limit

    def _kw_uniqueItems(self, unique: bool, schema: Any, root: Any) -> Check | None:
        if not unique:
            return None

        def check(v: Any) -> bool:
            if not isinstance(v, list):
                return True
            if all(isinstance(item, str) for item in v):
                return len(set(v)) == len(v)
            return not any(
                _json_equal(v[i], v[j]) for i in range(len(v)) for j in range(i + 1, len(v))
            )

        return check

    def _kw_items(self, item_schema: Any, schema: Any, root: Any) -> Check:
        item = self.compile(item_schema, root)

        def check(v: Any) -> bool:
            if isinstance(v, list):
                for x in v:
                    if not item(x):
                        return False
            return True

        return check

    def _kw_required(self, names: list[str], schema: Any, root: Any) -> Check:
        wanted = tuple(names)
        return lambda v: not isinstance(v, dict) or all(name in v for name in wanted)

    def _kw_properties(self, properties: Mapping[str, Any], schema: Any, root: Any) -> Check:
        compiled = tuple((name, self.compile(sub, root)) for name, sub in properties.items())

        def check(v: Any) -> bool:
            if not isinstance(v, dict):
                return True
            for name, sub in compiled:  # noqa: SIM110
                if name in v and not sub(v[name]):
                    return False
            return True

        return check

    def _kw_additionalProperties(self, extra: Any, schema: Mapping[str, Any], root: Any) -> Check:
        if "patternProperties" in schema:
            raise Unsupported("patternProperties")
        known = frozenset(schema.get("properties", {}))
        if extra is False:
            return lambda v: not isinstance(v, dict) or all(key in known for key in v)
        sub = self.compile(extra, root)
        return lambda v: (
            not isinstance(v, dict)
            or all(sub(value) for key, value in v.items() if key not in known)
        )

    def _kw_dependentRequired(
        self, rules: Mapping[str, list[str]], schema: Any, root: Any
    ) -> Check:
        pairs = tuple((name, tuple(needed)) for name, needed in rules.items())
        return lambda v: (
            not isinstance(v, dict)
            or all(all(n in v for n in needed) for name, needed in pairs if name in v)
        )

    def _kw_allOf(self, schemas: list[Any], schema: Any, root: Any) -> Check:
        checks = tuple(self.compile(sub, root) for sub in schemas)
        return lambda v: all(check(v) for check in checks)

    def _kw_anyOf(self, schemas: list[Any], schema: Any, root: Any) -> Check:
        checks = tuple(self.compile(sub, root) for sub in schemas)
        return lambda v: any(check(v) for check in checks)

    def _kw_oneOf(self, schemas: list[Any], schema: Any, root: Any) -> Check:
        checks = tuple(self.compile(sub, root) for sub in schemas)
        return lambda v: sum(1 for check in checks if check(v)) == 1

    def _kw_not(self, sub_schema: Any, schema: Any, root: Any) -> Check:
        sub = self.compile(sub_schema, root)
        return lambda v: not sub(v)

    def _kw_if(self, if_schema: Any, schema: Mapping[str, Any], root: Any) -> Check | None:
        condition = self.compile(if_schema, root)
        then = self.compile(schema.get("then", True), root)
        otherwise = self.compile(schema.get("else", True), root)
        return lambda v: then(v) if condition(v) else otherwise(v)

    def _kw_then(self, value: Any, schema: Any, root: Any) -> None:
        """Handled together with ``if``; alone it means nothing."""

    def _kw_else(self, value: Any, schema: Any, root: Any) -> None:
        """Handled together with ``if``; alone it means nothing."""


@functools.cache
def schema_pattern(pattern: str) -> re.Pattern[str]:
    """A JSON Schema ``pattern`` compiled with the meaning the standard gives it.

    Schema patterns are ECMA-262 expressions, where ``$`` (outside a character class) matches
    only at the very end of the text. In Python it also matches before a final newline, so
    ``"^[a-z]+$"`` would take ``"ols\\n"``: an id, a service name or a header value with a
    trailing line break. Each such ``$`` becomes ``\\Z``.
    """
    translated: list[str] = []
    index, in_class = 0, False
    while index < len(pattern):
        char = pattern[index]
        if char == "\\":
            translated.append(pattern[index : index + 2])
            index += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
            # A "]" right after "[" or "[^" is a literal, not the end of the class.
            start = index + 1 + (pattern[index + 1 : index + 2] == "^")
            if pattern[start : start + 1] == "]":
                translated.append(pattern[index : start + 1])
                index = start + 1
                continue
        elif char == "$":
            char = "\\Z"
        translated.append(char)
        index += 1
    return re.compile("".join(translated))
