"""The ``echo`` query provider: offline and deterministic, so the service runs with no LLM.

It answers with a short, useful text built from the question, which makes it the embedded
default for trying the service and the provider of choice in tests.
"""

from __future__ import annotations

from collections.abc import Sequence

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Answer,
    AnswerStream,
    Config,
    ConfigSchema,
    FieldError,
    QueryProvider,
    QueryRequest,
    ValidationFailed,
)

DEFAULT_MODEL = "echo-1"

SETTINGS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "models": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "minItems": 1,
            "description": "Model names this instance accepts; the first is its default.",
        },
        "prefix": {"type": "string", "description": "Text the answer starts with."},
    },
}


class EchoProvider:
    def __init__(self, name: str, models: Sequence[str], prefix: str) -> None:
        self.name = name
        self.models = tuple(models)
        self.prefix = prefix

    def answer(self, request: QueryRequest) -> Answer:
        model = self._model(request)
        text = self._text(request)
        return Answer(
            text=text,
            model=model,
            input_tokens=_count_tokens(request.query) + _count_tokens(request.system_prompt or ""),
            output_tokens=_count_tokens(text),
        )

    def stream(self, request: QueryRequest) -> AnswerStream:
        answer = self.answer(request)
        words = answer.text.split(" ")
        for index, word in enumerate(words):
            yield word if index == len(words) - 1 else word + " "
        return answer

    def _model(self, request: QueryRequest) -> str:
        if request.model is None:
            return self.models[0]
        if request.model not in self.models:
            raise ValidationFailed(
                [
                    FieldError(
                        ("body", "model"),
                        f"Model '{request.model}' is not served by provider '{self.name}'",
                    )
                ],
                response="Unknown model",
            )
        return request.model

    def _text(self, request: QueryRequest) -> str:
        attachments = len(request.attachments)
        note = (
            f" I received {attachments} attachment{'s' if attachments != 1 else ''}."
            if attachments
            else ""
        )
        return (
            f'{self.prefix} You asked: "{request.query.strip()}".{note} '
            "This answer comes from the offline echo provider; configure a real provider "
            "under query.providers to get answers from a model."
        )


def _count_tokens(text: str) -> int:
    return len(text.split())


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="provider", name="echo", schema=SETTINGS_SCHEMA)]


@hookimpl
def register_query_providers(config: Config) -> list[QueryProvider]:
    instances = config.provider_instances("echo")
    instances.setdefault("echo", {})
    return [
        EchoProvider(
            name=name,
            models=settings.get("models", [DEFAULT_MODEL]),
            prefix=settings.get("prefix", "[echo]"),
        )
        for name, settings in sorted(instances.items())
    ]
