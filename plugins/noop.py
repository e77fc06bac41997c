"""Authenticators that trust the caller: ``noop`` and ``noop-with-token``.

For development and for deployments where a proxy in front already authenticated the user.
The user id comes from ``?user_id=`` (or a fixed default); ``noop-with-token`` additionally
insists on a bearer token, without checking it, as the reference service does. Nobody is an
admin unless listed in ``admin_user_ids``.
"""

from __future__ import annotations

from collections.abc import Iterable

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Authenticator,
    AuthRequest,
    Config,
    ConfigSchema,
    Identity,
)

DEFAULT_USER_ID = "00000000-0000-0000-0000-000"
DEFAULT_USERNAME = "lightspeed-user"

SETTINGS_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "default_user_id": {
            "type": "string",
            "minLength": 1,
            "description": "User id when the request gives none.",
        },
        "admin_user_ids": {
            "type": "array",
            "items": {"type": "string"},
            "description": "User ids that get the admin role (may toggle feedback collection).",
        },
    },
}


class NoopAuthenticator:
    def __init__(
        self, name: str, require_token: bool, default_user_id: str, admins: Iterable[str]
    ) -> None:
        self.name = name
        self.require_token = require_token
        self.default_user_id = default_user_id
        self.admins = frozenset(admins)

    def authenticate(self, request: AuthRequest) -> Identity:
        if self.require_token:
            request.bearer_token()
        user_id = request.params.get("user_id") or self.default_user_id
        roles = frozenset({"admin"}) if user_id in self.admins else frozenset()
        return Identity(user_id=user_id, username=DEFAULT_USERNAME, roles=roles)


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [
        ConfigSchema(section="authenticator", name="noop", schema=SETTINGS_SCHEMA),
        ConfigSchema(section="authenticator", name="noop-with-token", schema=SETTINGS_SCHEMA),
    ]


@hookimpl
def register_authenticators(config: Config) -> list[Authenticator]:
    authenticators: list[Authenticator] = []
    for name, require_token in (("noop", False), ("noop-with-token", True)):
        settings = config.authenticator_settings(name)
        authenticators.append(
            NoopAuthenticator(
                name=name,
                require_token=require_token,
                default_user_id=settings.get("default_user_id", DEFAULT_USER_ID),
                admins=settings.get("admin_user_ids", []),
            )
        )
    return authenticators
