"""Loading, defaulting, validating and reading the configuration file.

The file is validated against ``schemas/config.json`` with defaults taken from that schema,
so the schema is the single place where a key, its type and its default are written down.
Plugin settings are checked later, against the schemas the plugins register
(:func:`lightspeed_collector.plugins.validate_plugin_settings`).
"""

from __future__ import annotations

import copy
import difflib
import os
import re
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from .errors import ConfigError

CONFIG_ENV = "LIGHTSPEED_COLLECTOR_CONFIG"
SECRET_MASK = "********"
_SECRET_WORDS = (
    "token",
    "secret",
    "password",
    "passwd",
    "salt",
    "api_key",
    "api-key",
    "apikey",
    "private",
    "authorization",
    "cookie",
    "credential",
)
# Mappings of HTTP headers sent upstream: any header may carry a credential.
_SECRET_MAPPINGS = ("headers",)
# A configuration or secret file is a few kilobytes; the limit keeps a wrong path (a log,
# /dev/zero) from being read into memory.
MAX_FILE_BYTES = 1024 * 1024
# Values a configuration may hold once YAML aliases are expanded: far above any real file,
# far below what a handful of nested aliases can make a loader and its error messages build.
_MAX_VALUES = 100_000
# A message quotes at most this much of a wrong value.
_MAX_MESSAGE_CHARS = 300


class Config:
    """The resolved configuration: every default filled in, every key validated."""

    def __init__(self, data: Mapping[str, Any], source: Path | None = None) -> None:
        self.data: dict[str, Any] = dict(data)
        self.source = source

    def section(self, *path: str) -> dict[str, Any]:
        """The mapping at ``path`` (e.g. ``section("user_data_collection", "data_collector")``)."""
        node: Any = self.data
        for key in path:
            node = node.get(key, {}) if isinstance(node, Mapping) else {}
        return dict(node) if isinstance(node, Mapping) else {}

    def plugin_settings(self, name: str) -> dict[str, Any]:
        """Settings of the plugin ``name`` (``plugins.<name>``), empty when none are given."""
        return self.section("plugins", name)

    def authenticator_settings(self, module: str) -> dict[str, Any]:
        """Settings of the authenticator ``module`` (``authentication.<module>``)."""
        return self.section("authentication", module)

    def provider_instances(self, provider_type: str) -> dict[str, dict[str, Any]]:
        """Provider instances of ``provider_type``, by instance name, without the ``type`` key."""
        instances: dict[str, dict[str, Any]] = {}
        for name, settings in self.section("query", "providers").items():
            if settings.get("type", name) == provider_type:
                instances[name] = {k: v for k, v in settings.items() if k != "type"}
        return instances

    def resolve_secret(self, settings: Mapping[str, Any], key: str, where: str = "") -> str | None:
        """A secret given as ``key``, ``key_file`` (read now, so rotation needs no restart) or
        ``key_env``; the first that is set wins. A missing file is a ``ConfigError`` whose key
        path starts with ``where`` (the dotted path of ``settings``)."""
        return resolve_secret(settings, key, where)

    def masked(self) -> dict[str, Any]:
        """The configuration with every secret value replaced, safe to print or log."""
        masked: dict[str, Any] = _mask(self.data)
        return masked


def resolve_secret(settings: Mapping[str, Any], key: str, where: str = "") -> str | None:
    prefix = f"{where}." if where else ""
    value = settings.get(key)
    if value is not None:
        return str(value)
    path = settings.get(f"{key}_file")
    if path:
        # utf-8-sig: editors on some systems start a UTF-8 file with a byte-order mark,
        # which would otherwise become part of the secret.
        secret = read_text_file(path, f"{prefix}{key}_file", encoding="utf-8-sig").strip()
        if not secret:
            raise ConfigError(f"{prefix}{key}_file", f"{path} is empty")
        return secret
    env = settings.get(f"{key}_env")
    if env:
        if env not in os.environ:
            raise ConfigError(f"{prefix}{key}_env", f"environment variable {env} is not set")
        return os.environ[env]
    return None


class FileTooLarge(ValueError):
    """A file a setting names holds more than the most that is read of it."""


def read_bounded(path: str | os.PathLike[str], limit: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of ``path``, or ``FileTooLarge`` when it holds more than ``limit``.

    Configuration, secret and key files are small; the limit keeps a setting that points at
    the wrong file (a log, ``/dev/zero``) from filling memory or reading forever.
    """
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise FileTooLarge(f"{path} is larger than {limit} bytes")
    return data


def read_text_file(
    path: str | os.PathLike[str], key: str, *, encoding: str = "utf-8", limit: int = MAX_FILE_BYTES
) -> str:
    """The text of a file a setting names; any problem is a ``ConfigError`` naming ``key``."""
    try:
        data = read_bounded(path, limit)
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror or exc}") from None
    except FileTooLarge as exc:
        raise ConfigError(key, str(exc)) from None
    except ValueError:
        raise ConfigError(key, "the path holds a NUL character") from None
    try:
        return data.decode(encoding)
    except UnicodeDecodeError:
        raise ConfigError(key, f"{path} is not UTF-8 text") from None


def masked_url(url: str) -> str:
    """``url`` with its password and every query value replaced by the mask.

    A URL is where credentials hide in plain sight (``https://user:pass@host``,
    ``?api_key=...``), so it goes through here before it is printed or logged. Text that
    cannot be parsed as a URL is masked whole.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - a port out of range raises only when read
    except ValueError:
        return SECRET_MASK
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, host = netloc.rpartition("@")
        netloc = f"{userinfo.partition(':')[0]}:{SECRET_MASK}@{host}"
    query = "&".join(
        f"{name}={SECRET_MASK}" if has_value else name
        for name, has_value, _ in (item.partition("=") for item in parts.query.split("&"))
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query if parts.query else "", ""))


def _is_secret(key: str) -> bool:
    lowered = key.lower()
    if lowered.endswith(("_file", "_env")):
        return False
    return any(word in lowered for word in _SECRET_WORDS) or lowered in ("key", "keys")


def _mask(node: Any, key: str = "") -> Any:
    if isinstance(node, Mapping):
        if key.lower() in _SECRET_MAPPINGS:
            return {k: SECRET_MASK if v not in (None, "") else v for k, v in node.items()}
        return {k: _mask(v, str(k)) for k, v in node.items()}
    if key and _is_secret(key) and node not in (None, "", [], {}):
        return SECRET_MASK
    if isinstance(node, list):
        return [_mask(item) for item in node]
    if isinstance(node, str) and "://" in node:
        return masked_url(node)
    return node


def default_config() -> Config:
    """The embedded defaults: 127.0.0.1:8080, noop auth, echo provider, storage in ./data."""
    return build_config({})


def load_config(path: str | Path | None = None) -> Config:
    """Load ``path``, or the file named by $LIGHTSPEED_COLLECTOR_CONFIG, or the defaults."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV) or None
    if chosen is None:
        return default_config()
    source = Path(chosen)
    if not source.exists():
        raise ConfigError("", f"configuration file {source} does not exist")
    try:
        text = read_text_file(source, "")
    except ConfigError as exc:
        raise ConfigError("", f"cannot use configuration file {source}: {exc.problem}") from None
    try:
        raw = yaml.load(text, Loader=_ConfigLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError("", f"{source} is not valid YAML{where}: {problem}") from None
    except RecursionError:
        # PyYAML builds nested collections by recursion, one level per bracket.
        raise ConfigError("", f"{source} nests collections too deeply to read") from None
    except ValueError:
        # PyYAML hands integer literals to int(), which refuses overly long ones.
        raise ConfigError(
            "", f"{source} holds a number of more than {sys.get_int_max_str_digits()} digits"
        ) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("", f"{source} must hold a mapping at the top level")
    return build_config(raw, source)


def build_config(raw: Mapping[str, Any], source: Path | None = None) -> Config:
    """Fill defaults into ``raw``, validate it, and check the storage paths."""
    from . import validation

    schema = validation.load_schema("config")
    _check_values(raw)
    data = copy.deepcopy(dict(raw))
    _apply_defaults(schema, data)
    problems = validation.check("config", data)
    if problems:
        messages = [_config_message(schema, data, problem.loc, problem.msg) for problem in problems]
        raise ConfigError("", "\n".join(messages))
    collection = data["user_data_collection"]
    for kind in ("feedback", "transcripts"):
        if collection[f"{kind}_storage"] is not None:
            _check_directory(f"user_data_collection.{kind}_storage", collection[f"{kind}_storage"])
    _check_directory("service.state_dir", data["service"]["state_dir"])
    _check_distinct_folders(data)
    # Secrets are read again where they are used (so files can rotate); reading them once
    # here makes a missing file or variable a start-up error instead of a 2 a.m. one.
    resolve_secret(collection, "user_id_salt", "user_data_collection")
    collector = collection["data_collector"]
    if collector["enabled"]:
        resolve_secret(
            collector, "ingress_server_auth_token", "user_data_collection.data_collector"
        )
    return Config(data, source)


def _apply_defaults(schema: Mapping[str, Any], node: dict[str, Any]) -> None:
    """Fill in every default the schema gives, and read ``5.0`` where a whole number is
    expected as 5: JSON Schema accepts it as an integer, but Python code given a float where
    it counts things fails much later."""
    for key, sub in schema.get("properties", {}).items():
        if key not in node and "default" in sub:
            node[key] = copy.deepcopy(sub["default"])
        value = node.get(key)
        types = sub.get("type")
        integer = types == "integer" or (isinstance(types, list) and "integer" in types)
        if integer and isinstance(value, float) and value.is_integer():
            node[key] = int(value)
        elif isinstance(value, dict):
            _apply_defaults(sub, value)


def _config_message(
    schema: Mapping[str, Any], data: Mapping[str, Any], loc: tuple[str | int, ...], msg: str
) -> str:
    path = ".".join(str(part) for part in loc)
    if msg.startswith("Unknown field"):
        parent = _subschema(schema, loc[:-1])
        known = list(parent.get("properties", {})) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return f"{path}: unknown key{hint}"
    return f"{path}: {setting_problem(loc, msg, value_at(data, loc))}"


def setting_problem(loc: tuple[str | int, ...], msg: str, value: Any) -> str:
    """A validation message fit for a terminal or a log: without the value when it would
    repeat a secret held at or below ``loc`` (``value`` is what is there), and never longer
    than a line or two."""
    if any(secret in msg for secret in _secret_texts(loc, value)):
        found = _VALUE_FREE.search(msg)
        rule = f"the value {found.group(0).strip()}" if found else "the value is not valid"
        return f"{rule} (not shown: the setting holds a secret)"
    if len(msg) > _MAX_MESSAGE_CHARS:
        return msg[:_MAX_MESSAGE_CHARS] + "… (cut)"
    return msg


def value_at(node: Any, loc: tuple[str | int, ...]) -> Any:
    """What ``loc`` points at inside ``node``, or ``None`` when nothing is there."""
    for part in loc:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if not (in_mapping or in_list):
            return None
        node = node[part]
    return node


def _secret_texts(loc: tuple[str | int, ...], value: Any) -> Iterator[str]:
    """The text of every secret at or below ``loc``, as a message could quote it."""
    for path, node in _nodes(loc, value):
        leaf = not isinstance(node, Mapping | list | bool) and node not in (None, "")
        if leaf and _holds_secret(path):
            yield str(node)


def _nodes(loc: tuple[str | int, ...], value: Any) -> Iterator[tuple[tuple[str | int, ...], Any]]:
    """Every value at or below ``loc`` with its path, without recursion (a configuration's
    depth is the file's to choose)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [(loc, value)]
    while stack:
        path, node = stack.pop()
        yield path, node
        if isinstance(node, Mapping):
            stack.extend(((*path, str(key)), item) for key, item in node.items())
        elif isinstance(node, list):
            stack.extend(((*path, index), item) for index, item in enumerate(node))


# How jsonschema words a rule after quoting the value: "<value> is not of type 'string'".
_VALUE_FREE = re.compile(
    r" (is not of type|is not one of|is not valid under|does not match|is too (long|short)"
    r"|is (less|greater) than|is not a|should be|was expected|is not allowed).*$"
)


def _holds_secret(loc: tuple[str | int, ...]) -> bool:
    """Whether the value at ``loc`` is a secret: its key says so (list items take their
    list's key), or it sits in a mapping of headers. Section names such as ``jwk-token`` do
    not make everything below them secret."""
    parts = [part for part in loc if isinstance(part, str)]
    return (bool(parts) and _is_secret(parts[-1])) or any(
        part.lower() in _SECRET_MAPPINGS for part in parts[:-1]
    )


class _ConfigLoader(yaml.SafeLoader):
    """The safe loader, refusing what would silently change what a file means: a key given
    twice (the last one would quietly win) and keys that are not text (``yes:`` is a boolean
    in YAML, ``5:`` a number)."""


def _construct_mapping(loader: _ConfigLoader, node: yaml.MappingNode) -> dict[str, Any]:
    own_count = sum(1 for key, _ in node.value if key.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)
    # Keys merged in with "<<: *base" come first and may be overridden; the node's own may not.
    merged_count = len(node.value) - own_count
    mapping: dict[str, Any] = {}
    own: set[str] = set()
    for index, (key_node, value_node) in enumerate(node.value):
        key = loader.construct_object(key_node, deep=True)
        if not isinstance(key, str):
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"the key {key_node.value!r} is read as {type(key).__name__}, not text; quote it",
                key_node.start_mark,
            )
        if index >= merged_count:
            if key in own:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key '{key}' is given twice", key_node.start_mark
                )
            own.add(key)
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_ConfigLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _check_values(raw: Mapping[str, Any]) -> None:
    """Refuse what no valid setting holds and what would make the checks themselves costly:
    NUL characters (no path or URL may contain one) and more than ``_MAX_VALUES`` values,
    which only alias tricks produce."""
    for seen, (loc, node) in enumerate(_nodes((), raw), start=1):
        if seen > _MAX_VALUES:
            raise ConfigError(
                "", f"the configuration expands to more than {_MAX_VALUES} values (YAML aliases?)"
            )
        if isinstance(node, str) and "\x00" in node:
            raise ConfigError(".".join(map(str, loc)), "holds a NUL character")


def _subschema(schema: Mapping[str, Any], loc: tuple[str | int, ...]) -> Mapping[str, Any] | None:
    node: Mapping[str, Any] | None = schema
    for part in loc:
        if node is None:
            return None
        node = node.get("properties", {}).get(part)
    return node


def make_state_dir(config: Config) -> Path:
    """Create ``service.state_dir`` (owner-only) where it does not exist yet.

    Creating it is the only real test (as root, ``os.access`` says yes even under
    ``/proc``), so a failure here is reported like any other configuration error.
    """
    path = Path(config.section("service")["state_dir"])
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError("service.state_dir", f"cannot create {path}: {exc.strerror}") from None
    return path


def _check_distinct_folders(data: Mapping[str, Any]) -> None:
    """The storages and the state folder must be three folders: the collector would pack its
    own outbox as records, or one storage's records twice, were two of them the same."""
    collection = data["user_data_collection"]
    folders = {
        "service.state_dir": data["service"]["state_dir"],
        "user_data_collection.feedback_storage": collection["feedback_storage"],
        "user_data_collection.transcripts_storage": collection["transcripts_storage"],
    }
    seen: dict[str, str] = {}
    for key, value in folders.items():
        if value is None:
            continue
        resolved = os.path.realpath(value)
        if resolved in seen:
            raise ConfigError(key, f"{value} is the same folder as {seen[resolved]}")
        seen[resolved] = key


def _check_directory(key: str, value: str) -> None:
    """A storage path may not exist yet (it is created), but if it exists it must be a
    writable directory: failing at start beats failing on the first user's feedback."""
    path = Path(value)
    if path.exists():
        if not path.is_dir():
            raise ConfigError(key, f"{value} exists and is not a directory")
        if not os.access(path, os.W_OK | os.X_OK):
            raise ConfigError(key, f"{value} is not writable")
        return
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is not None and not (parent.is_dir() and os.access(parent, os.W_OK | os.X_OK)):
        raise ConfigError(key, f"{value} cannot be created: {parent} is not a writable directory")
