"""The fast checker must agree with jsonschema on every schema and every instance."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from lightspeed_collector import validation
from lightspeed_collector.fastcheck import compile_check

CONVERSATION = "123e4567-e89b-12d3-a456-426614174000"
KEY = "a" * 64

VALID: dict[str, list[Any]] = {
    "feedback_request": [
        {
            "conversation_id": CONVERSATION,
            "user_question": "q",
            "llm_response": "r",
            "sentiment": 1,
        },
        {
            "conversation_id": "conv_" + "b" * 48,
            "user_question": "",
            "llm_response": "",
            "categories": ["other", "unsafe"],
        },
        {
            "conversation_id": CONVERSATION,
            "user_question": "q",
            "llm_response": "r",
            "user_feedback": "x",
            "sentiment": None,
        },
    ],
    "query_request": [
        {"query": "hi"},
        {
            "query": "hi",
            "provider": "p",
            "model": "m",
            "conversation_id": None,
            "media_type": "text/plain",
        },
        {
            "query": "hi",
            "attachments": [
                {"attachment_type": "log", "content_type": "text/plain", "content": "x"}
            ],
        },
    ],
    "feedback": [
        {
            "user_id": KEY,
            "timestamp": "2024-01-01T12:00:00.5Z",
            "conversation_id": CONVERSATION,
            "user_question": "q",
            "llm_response": "r",
            "sentiment": -1,
            "user_feedback": None,
            "categories": None,
        }
    ],
    "transcript": [
        {
            "metadata": {
                "provider": "echo",
                "model": "echo-1",
                "query_provider": None,
                "query_model": None,
                "user_id": KEY,
                "conversation_id": CONVERSATION,
                "timestamp": "2024-01-01T12:00:00Z",
            },
            "redacted_query": "q",
            "query_is_valid": True,
            "llm_response": "r",
            "rag_chunks": [{"text": "t"}],
            "truncated": False,
            "attachments": [],
            "tool_calls": [],
        }
    ],
    "feedback_status_request": [{"status": True}],
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats(-2, 2, allow_nan=False)
    | st.text(max_size=5)
    | st.sampled_from(
        ["other", "unsafe", "echo", CONVERSATION, KEY, "text/plain", "log", "2024-01-01T12:00:00Z"]
    ),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            found += paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += paths(child, (*prefix, index))
    return found


def mutate(value: Any, path: tuple[Any, ...], action: str, replacement: Any) -> Any:
    mutated = copy.deepcopy(value)
    if not path:
        return replacement
    parent = mutated
    for part in path[:-1]:
        parent = parent[part]
    if action == "delete":
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        parent["extra_field"] = replacement
    else:
        parent[path[-1]] = replacement
    return mutated


@pytest.mark.parametrize("name", validation.schema_names())
def test_every_shipped_schema_is_accelerated(name: str) -> None:
    assert validation.validator(name).accelerated


@pytest.mark.parametrize("name", sorted(VALID))
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_fast_and_full_validators_agree(name: str, data: st.DataObject) -> None:
    checker = validation.validator(name)
    base = data.draw(st.sampled_from(VALID[name]))
    assert checker.is_valid(base) and checker.full.is_valid(base)
    path = data.draw(st.sampled_from(paths(base)))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    replacement = data.draw(json_values)
    instance = (
        base if (action == "delete" and not path) else mutate(base, path, action, replacement)
    )
    assert checker.is_valid(instance) == checker.full.is_valid(instance), instance


@given(instance=json_values)
@settings(max_examples=300, deadline=None)
def test_agreement_on_arbitrary_values(instance: Any) -> None:
    for name in VALID:
        checker = validation.validator(name)
        assert checker.is_valid(instance) == checker.full.is_valid(instance)


@pytest.mark.parametrize(
    ("schema", "good", "bad"),
    [
        ({"enum": [1, None]}, [1, 1.0, None], [True, "1", 0]),
        ({"const": False}, [False], [0, None]),
        ({"type": "integer"}, [1, 2.0], [True, 1.5, "1"]),
        ({"uniqueItems": True}, [[1, True], ["a", "b"]], [[1, 1.0], [{"a": 1}, {"a": 1}]]),
        ({"dependentRequired": {"a": ["b"]}}, [{"b": 1}, {"a": 1, "b": 2}], [{"a": 1}]),
        ({"oneOf": [{"type": "integer"}, {"minimum": 0}]}, [-1, 0.5], [3]),
        ({"not": {"type": "string"}}, [1], ["s"]),
        (
            {"if": {"type": "string"}, "then": {"minLength": 2}, "else": {"type": "integer"}},
            ["ab", 3],
            ["a", 2.5],
        ),
        (
            {"additionalProperties": {"type": "string"}, "properties": {"n": {"type": "integer"}}},
            [{"n": 1, "x": "y"}],
            [{"x": 1}],
        ),
    ],
)
def test_keyword_semantics_match_jsonschema(
    schema: dict[str, Any], good: list[Any], bad: list[Any]
) -> None:
    fast = compile_check(schema, lambda ref, root: None)
    assert fast is not None
    full = Draft202012Validator(schema)
    for value in good:
        assert fast(value) and full.is_valid(value), value
    for value in bad:
        assert not fast(value) and not full.is_valid(value), value


def test_unknown_keywords_fall_back_to_jsonschema() -> None:
    assert compile_check({"unevaluatedProperties": False}, lambda ref, root: None) is None
    assert compile_check({"properties": {"a": {"format": "email"}}}, lambda ref, root: None) is None
    checker = validation.compile_validator({"type": "object", "unevaluatedProperties": False})
    assert not checker.accelerated
    assert checker.errors({"a": 1})


@pytest.mark.parametrize(
    ("pattern", "good", "bad"),
    [
        ("^[a-z0-9-]+$", ["ols", "a-1"], ["ols\n", "ols\n\n", ""]),
        ("^[$a]+$", ["$a", "a$"], ["$\n"]),
        (r"^a\$$", ["a$"], ["a$\n"]),
        ("[]$]x$", ["$x", "]x"], ["$x\n"]),
        ("^(conv_)?[0-9a-f]{4}$|^none$", ["conv_abcd", "none"], ["abcd\n", "none\n"]),
        (r"\S", [" x "], ["\n"]),
    ],
)
def test_dollar_matches_only_at_the_very_end_as_in_ecma_262(
    pattern: str, good: list[str], bad: list[str]
) -> None:
    """Python's $ also matches before a final newline; schema patterns must not."""
    schema = {"type": "string", "pattern": pattern}
    fast = compile_check(schema, lambda ref, root: None)
    full = validation.compile_validator(schema)
    assert fast is not None
    for value in good:
        assert fast(value) and full.full.is_valid(value), value
    for value in bad:
        assert not fast(value) and not full.full.is_valid(value), value
        assert full.errors(value), value
