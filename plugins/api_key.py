"""The ``api-key`` authenticator: ``Authorization: Bearer <key>``, keys mapped to users.

Keys come from the configuration (plain ``key`` or its ``key_sha256``) and from an optional
``keys_file`` that is read again whenever it changes, so keys can be added or revoked
without a restart. Only SHA-256 digests are kept in memory, and a presented key is compared
against every known digest with ``hmac.compare_digest``, so neither the outcome's timing
nor the order of the keys tells an attacker anything.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lightspeed_collector import hookimpl
from lightspeed_collector.types import (
    Authenticator,
    AuthRequest,
    Config,
    ConfigError,
    ConfigSchema,
    Identity,
    Unauthorized,
    read_bounded,
)

if TYPE_CHECKING:
    from jsonschema.exceptions import ValidationError

log = logging.getLogger(__name__)

MODULE = "api-key"
MAX_KEYS_FILE_BYTES = 1024 * 1024

KEY_ENTRY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["user_id"],
    "properties": {
        "key": {
            "type": "string",
            "minLength": 12,
            # A presented key is trimmed, so one that begins or ends with white space could
            # never match: a copy-paste slip better told at start than at the first request.
            "pattern": "^\\S(.*\\S)?$",
            "description": "The key itself (at least 12 characters, no white space at either end).",
            "x-messages": {
                "minLength": "keys must be at least 12 characters long",
                "type": "a key must be a string",
                "pattern": "a key must not begin or end with white space (a presented key is "
                "trimmed, so it could never match)",
            },
        },
        "key_sha256": {
            "type": "string",
            "pattern": "^[0-9a-fA-F]{64}$",
            "description": "Hex SHA-256 of the key, so the key need not be written down.",
            # The value may be a key pasted into the wrong field: never quote it.
            "x-messages": {
                "pattern": "not a hex SHA-256 digest (64 hex digits)",
                "type": "a key_sha256 must be a string",
            },
        },
        "user_id": {"type": "string", "minLength": 1, "description": "Who holds the key."},
        "username": {
            "type": "string",
            "minLength": 1,
            "description": "Display name; the user id when absent.",
        },
        "roles": {
            "type": "array",
            "items": {"type": "string", "minLength": 1},
            "description": "Roles of the holder; `admin` may switch feedback collection.",
        },
    },
    "oneOf": [{"required": ["key"]}, {"required": ["key_sha256"]}],
    # An entry given as a bare string is most likely the key itself: never quote it.
    "x-messages": {
        "oneOf": "give exactly one of key and key_sha256",
        "type": "a key entry must be a mapping with key (or key_sha256) and user_id",
    },
}

SETTINGS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "keys": {
            "type": "array",
            "items": KEY_ENTRY_SCHEMA,
            "description": "Keys and who holds them.",
            "x-messages": {"type": "must be a list of key entries"},
        },
        "keys_file": {
            "type": "string",
            "minLength": 1,
            "description": "YAML or JSON list of key entries, read again when it changes.",
        },
    },
    "anyOf": [{"required": ["keys"]}, {"required": ["keys_file"]}],
    "x-messages": {
        "anyOf": "give keys, keys_file, or both",
        "type": "must be a mapping with keys or keys_file",
    },
}


@dataclass(frozen=True)
class KeyEntry:
    digest: bytes
    identity: Identity


class KeysFile:
    """The entries of ``keys_file``, re-read when its modification time, size or inode
    changes. A file that turns unparseable at run time keeps the last good entries in force
    (and says so in the log), so a typo does not lock every user out; a file that is removed
    takes its keys with it."""

    def __init__(self, path: Path, configured: frozenset[bytes]) -> None:
        self.path = path
        self._configured = configured
        self._lock = threading.Lock()
        self._signature: tuple[int, int, int] | None = None
        self._entries: tuple[KeyEntry, ...] = ()
        try:
            self._signature = _signature(path)
            self._entries = _parse_entries(_load_list(path), str(path), configured)
        except OSError as exc:
            raise ConfigError(
                f"authentication.{MODULE}.keys_file", f"cannot read {path}: {exc.strerror}"
            ) from None
        except ValueError as exc:
            raise ConfigError(f"authentication.{MODULE}.keys_file", str(exc)) from None

    def entries(self) -> tuple[KeyEntry, ...]:
        try:
            signature: tuple[int, int, int] | None = _signature(self.path)
        except OSError:
            signature = None
        with self._lock:
            if signature == self._signature:
                return self._entries
            self._signature = signature
            if signature is None:
                # A removed file revokes its keys: deleting it must not leave them working.
                log.error("api-key: %s is gone; none of its keys are accepted", self.path)
                self._entries = ()
                return self._entries
            try:
                self._entries = _parse_entries(
                    _load_list(self.path), str(self.path), self._configured
                )
                log.info("api-key: loaded %d keys from %s", len(self._entries), self.path)
            except (OSError, ValueError) as exc:
                log.error("api-key: %s; keeping the keys loaded before", exc)
            return self._entries


class ApiKeyAuthenticator:
    name = MODULE

    def __init__(self, entries: Sequence[KeyEntry], keys_file: KeysFile | None) -> None:
        self._entries = tuple(entries)
        self._keys_file = keys_file

    def authenticate(self, request: AuthRequest) -> Identity:
        key = request.bearer_token()
        digest = hashlib.sha256(key.encode("utf-8")).digest()
        entries = self._entries + (self._keys_file.entries() if self._keys_file else ())
        found: Identity | None = None
        # Every entry is compared, match or not, so the time taken reveals nothing.
        for entry in entries:
            if hmac.compare_digest(entry.digest, digest):
                found = entry.identity
        if found is None:
            raise Unauthorized("Invalid API key")
        return found


def _signature(path: Path) -> tuple[int, int, int]:
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size, stat.st_ino


def _load_list(path: Path) -> Any:
    data = read_bounded(path, MAX_KEYS_FILE_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's message quotes the offending lines, which hold keys: say where, not what.
        raise ValueError(f"{path} is not valid YAML or JSON{_yaml_where(exc)}") from None
    except RecursionError:
        # PyYAML builds nested collections recursively, so a few thousand brackets exhaust
        # the stack: that is the file's fault, and must not fail the request that noticed.
        raise ValueError(f"{path} is nested too deeply to be a list of key entries") from None
    if isinstance(data, Mapping) and set(data) == {"keys"}:
        data = data["keys"]
    return data if data is not None else []


def _parse_entries(
    raw: Any, where: str, configured: frozenset[bytes] = frozenset()
) -> tuple[KeyEntry, ...]:
    """Check key entries against their schema and keep only digests and identities.

    A key must name one user, so a key listed twice, or already in ``configured`` (the keys
    of the configuration file), is an error."""
    if not isinstance(raw, list):
        raise ValueError(f"{where} must hold a list of key entries")
    # Imported here: only a service configured with this authenticator pays for it.
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(KEY_ENTRY_SCHEMA)
    entries: list[KeyEntry] = []
    seen: dict[bytes, int] = {}
    for index, item in enumerate(raw):
        errors = sorted(validator.iter_errors(item), key=lambda e: list(map(str, e.path)))
        if errors:
            raise ValueError(f"{where}[{index}]: {_entry_message(errors[0])}")
        if "key" in item:
            digest = hashlib.sha256(item["key"].encode("utf-8")).digest()
        else:
            digest = bytes.fromhex(item["key_sha256"])
        if digest in seen:
            raise ValueError(f"{where}[{index}]: the same key as entry {seen[digest]}")
        if digest in configured:
            raise ValueError(
                f"{where}[{index}]: the same key as an entry of authentication.{MODULE}.keys"
            )
        seen[digest] = index
        identity = Identity(
            user_id=item["user_id"],
            username=item.get("username", item["user_id"]),
            roles=frozenset(item.get("roles", [])),
        )
        entries.append(KeyEntry(digest, identity))
    return tuple(entries)


def _yaml_where(exc: yaml.YAMLError) -> str:
    """Line and column of a YAML error, and its problem with any quoted text left out."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    where = ""
    if isinstance(problem, str) and problem:
        where += ": " + _QUOTED.sub(_quoted_if_harmless, problem)
    if mark is not None:
        where += f" (line {mark.line + 1}, column {mark.column + 1})"
    return where


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
# PyYAML quotes a single character ('\t'), a token ('<stream end>'), or a name it found
# (an alias, a tag), which could be part of a key: only the first two are kept.
_HARMLESS = re.compile(r"'(?:.|\\.|\\x[0-9a-f]{2}|<[a-z ]+>)'")


def _quoted_if_harmless(match: re.Match[str]) -> str:
    return match.group() if _HARMLESS.fullmatch(match.group()) else "'...'"


def _entry_message(error: ValidationError) -> str:
    field = ".".join(map(str, error.path))
    keyword = error.validator
    if not field and keyword == "type":
        # An entry given as a bare string is most likely the key itself.
        return "a key entry must be a mapping with key (or key_sha256) and user_id"
    if keyword == "required" and isinstance(error.instance, Mapping):
        required = error.validator_value if isinstance(error.validator_value, list) else []
        missing = [name for name in required if name not in error.instance]
        return f"{', '.join(missing)}: required"
    if keyword == "oneOf":
        return "give exactly one of key and key_sha256"
    if keyword == "minLength" and field == "key":
        return "key: keys must be at least 12 characters long"
    if keyword == "pattern" and field == "key_sha256":
        return "key_sha256: not a hex SHA-256 digest (64 hex digits)"
    if keyword == "additionalProperties" and isinstance(error.instance, Mapping):
        known = KEY_ENTRY_SCHEMA["properties"]
        unknown = sorted(str(name) for name in error.instance if name not in known)
        return f"{', '.join(unknown)}: unknown key"
    # The schema's own message would quote the value, which may be a key pasted into the
    # wrong place; name the field instead.
    if field in ("key", "key_sha256") or not field:
        return f"{field or 'entry'}: not a valid value ({keyword})"
    return f"{field}: {error.message}"


@hookimpl
def register_plugin_config_schema() -> list[ConfigSchema]:
    return [ConfigSchema(section="authenticator", name=MODULE, schema=SETTINGS_SCHEMA)]


@hookimpl
def register_authenticators(config: Config) -> list[Authenticator]:
    settings = config.authenticator_settings(MODULE)
    try:
        entries = _parse_entries(settings.get("keys", []), f"authentication.{MODULE}.keys")
    except ValueError as exc:
        raise ConfigError("", str(exc)) from None
    configured = frozenset(entry.digest for entry in entries)
    keys_file = (
        KeysFile(Path(settings["keys_file"]), configured) if settings.get("keys_file") else None
    )
    return [ApiKeyAuthenticator(entries, keys_file)]
