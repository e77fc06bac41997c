"""Small real plugins the tests register with ``pm.register`` to exercise the kernel."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Answer,
    AppContext,
    Config,
    ConfigSchema,
    QueryRequest,
    RedactionResult,
)


class ShoutingProvider:
    """Answers in capitals; registered under a name of the caller's choice."""

    def __init__(self, name: str) -> None:
        self.name = name

    def answer(self, request: QueryRequest) -> Answer:
        return Answer(text=request.query.upper(), model="shout-1")

    def stream(self, request: QueryRequest) -> Iterator[str]:
        yield request.query.upper()


class ProviderPlugin:
    def __init__(self, provider_name: str) -> None:
        self.provider_name = provider_name

    @hookimpl
    def register_query_providers(self, config: Config) -> list[ShoutingProvider]:
        return [ShoutingProvider(self.provider_name)]


class WordRedactor:
    def __init__(self, name: str, word: str) -> None:
        self.name = name
        self.word = word

    def redact(self, text: str) -> RedactionResult:
        count = text.count(self.word)
        return RedactionResult(
            text.replace(self.word, "[WORD]"), count, {"word": count} if count else {}
        )


class SettingsPlugin:
    """Registers a redactor configured by its own validated settings under plugins.wordy."""

    @hookimpl
    def register_plugin_config_schema(self) -> list[ConfigSchema]:
        schema = {
            "type": "object",
            "additionalProperties": False,
            "required": ["word"],
            "properties": {"word": {"type": "string", "minLength": 1}},
        }
        return [ConfigSchema(section="plugin", name="wordy", schema=schema)]

    @hookimpl
    def register_redactors(self, config: Config) -> list[WordRedactor]:
        word = config.plugin_settings("wordy").get("word", "secret")
        return [WordRedactor("wordy", word)]


class RecordingObserver:
    def __init__(self) -> None:
        self.stored: list[tuple[str, dict[str, Any], str]] = []

    @hookimpl
    def record_stored(self, kind: str, record: dict[str, Any], location: str) -> None:
        self.stored.append((kind, record, location))


class MisspeltHookPlugin:
    @hookimpl
    def register_query_provider(self, config: Config) -> list[Any]:
        return []


class NotAListPlugin:
    @hookimpl
    def register_redactors(self, config: Config) -> Any:
        return WordRedactor("single", "x")


class LifecycleObserver:
    """Records the lifecycle hooks it sees."""

    def __init__(self) -> None:
        self.events: list[str] = []
        self.state_dir: str | None = None

    @hookimpl
    def startup(self, app_context: AppContext) -> None:
        self.events.append("startup")
        self.state_dir = str(app_context.state_dir)

    @hookimpl
    def shutdown(self) -> None:
        self.events.append("shutdown")


class FailingObserver:
    @hookimpl
    def record_stored(self, kind: str, record: dict[str, Any], location: str) -> None:
        raise RuntimeError("observer bug")
