"""The JSON Schemas: well-formed, identified, and worded for clients."""

from __future__ import annotations

import pytest
from jsonschema import Draft202012Validator

from lightspeed_collector import validation


@pytest.mark.parametrize("name", validation.schema_names())
def test_every_schema_is_valid_draft_2020_12_with_id_and_version(name: str) -> None:
    schema = validation.load_schema(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == f"urn:lightspeed-collector:schema:{name}"
    assert schema["schema_version"]


def test_record_schemas_exist() -> None:
    assert {"feedback", "transcript", "config", "query_request", "feedback_request"} <= set(
        validation.schema_names()
    )


@pytest.mark.parametrize(
    "conversation_id",
    [
        "123e4567-e89b-12d3-a456-426614174000",
        "a" * 48,
        "conv_" + "0f" * 24,
        "123E4567-E89B-12D3-A456-426614174000",
    ],
)
def test_accepted_conversation_ids(conversation_id: str) -> None:
    body = {
        "conversation_id": conversation_id,
        "user_question": "q",
        "llm_response": "r",
        "sentiment": 1,
    }
    assert validation.check("feedback_request", body) == []


@pytest.mark.parametrize(
    "conversation_id",
    ["", "a" * 47, "conv_" + "a" * 47, "../etc/passwd", "g" * 48, "conv-" + "a" * 48],
)
def test_rejected_conversation_ids(conversation_id: str) -> None:
    body = {
        "conversation_id": conversation_id,
        "user_question": "q",
        "llm_response": "r",
        "sentiment": 1,
    }
    problems = validation.check("feedback_request", body, root=("body",))
    assert [(p.loc, p.msg) for p in problems] == [
        (("body", "conversation_id"), f"Improper conversation ID '{conversation_id}'")
    ]


def test_whitespace_only_feedback_is_not_a_form_of_feedback() -> None:
    body = {
        "conversation_id": "a" * 48,
        "user_question": "q",
        "llm_response": "r",
        "user_feedback": "   ",
    }
    [problem] = validation.check("feedback_request", body)
    assert problem.msg.startswith("At least one form of feedback")


def test_several_problems_are_all_reported() -> None:
    body = {
        "conversation_id": "bad",
        "user_question": 3,
        "llm_response": "r",
        "sentiment": 0,
        "extra": True,
    }
    locs = {problem.loc for problem in validation.check("feedback_request", body)}
    assert {("conversation_id",), ("user_question",), ("sentiment",), ("extra",)} <= locs
