"""A plugin module loaded through a real entry point by the plugin manager tests."""

from __future__ import annotations

from lightspeed_collector import hookimpl
from lightspeed_collector.types import Config
from tests.plugins.throwaway import ShoutingProvider


@hookimpl
def register_query_providers(config: Config) -> list[ShoutingProvider]:
    return [ShoutingProvider("shout")]
