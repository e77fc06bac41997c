"""The plugin manager: built-ins, third-party entry points, blocking, and name conflicts.

Built-in plugins are registered exactly like third-party ones (by module, under the module's
short name); nothing in the core refers to any of them except this list.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import PROJECT_NAME, __version__, hookspecs, validation
from .config import Config, setting_problem, value_at
from .errors import ConfigError, PluginError
from .types import Authenticator, ConfigSchema, Exporter, QueryProvider, RecordSink, Redactor

log = logging.getLogger(__name__)

DEFAULT_PLUGINS: tuple[str, ...] = (
    "lightspeed_collector.plugins.echo",
    "lightspeed_collector.plugins.regex",
    "lightspeed_collector.plugins.filesystem",
    "lightspeed_collector.plugins.noop",
    "lightspeed_collector.plugins.ingress",
    "lightspeed_collector.plugins.openai",
    "lightspeed_collector.plugins.api_key",
    "lightspeed_collector.plugins.jwk_token",
)

ENTRY_POINT_GROUP = PROJECT_NAME


def get_plugin_manager(
    config: Config | None = None, extra_plugins: Mapping[str, object] | None = None
) -> pluggy.PluginManager:
    """A fresh plugin manager: built-ins, then entry points, then ``extra_plugins`` (by name,
    for embedders and tests), minus ``plugins.disabled``.

    A fresh one per call (not import-time state) so tests and the CLI can build as many as
    they like with different configurations.
    """
    pm = pluggy.PluginManager(PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    disabled: Iterable[str] = config.section("plugins").get("disabled", []) if config else []
    for name in disabled:
        pm.set_blocked(name)
    for dotted in DEFAULT_PLUGINS:
        short = dotted.rsplit(".", 1)[1]
        if pm.is_blocked(short):
            continue
        pm.register(importlib.import_module(dotted), name=short)
    _check_entry_point_names(pm)
    try:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    except Exception as exc:
        raise PluginError(
            f"a plugin from the '{ENTRY_POINT_GROUP}' entry points failed to load: {exc}"
        ) from exc
    for name, plugin in (extra_plugins or {}).items():
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        name = pm.get_name(exc.plugin) or repr(exc.plugin)
        raise PluginError(f"plugin '{name}' implements an unknown hook: {exc}") from None
    return pm


def _check_entry_point_names(pm: pluggy.PluginManager) -> None:
    """pluggy skips an entry point whose name is taken without a word; a plugin that silently
    does not load is worse than one that refuses to start, so a clash is an error."""
    seen: dict[str, str] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        name = entry_point.name
        origin = f"distribution '{entry_point.dist.name}'" if entry_point.dist else "an entry point"
        if pm.is_blocked(name):
            continue
        if pm.get_plugin(name) is not None:
            raise PluginError(
                f"plugin name '{name}' from {origin} is already taken by a built-in plugin; "
                "rename the entry point or list the name in plugins.disabled"
            )
        if name in seen:
            raise PluginError(f"plugin name '{name}' is offered by both {seen[name]} and {origin}")
        seen[name] = origin


@dataclass(frozen=True)
class PluginInfo:
    name: str
    source: str
    version: str | None
    hooks: tuple[str, ...]


def describe_plugins(pm: pluggy.PluginManager) -> list[PluginInfo]:
    """Each plugin, where it came from (built-in or a distribution) and the hooks it implements."""
    distributions = {id(plugin): dist for plugin, dist in pm.list_plugin_distinfo()}
    infos: list[PluginInfo] = []
    for name, plugin in pm.list_name_plugin():
        if plugin is None:
            continue
        hooks = tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or ()))
        dist = distributions.get(id(plugin))
        if dist is not None:
            infos.append(PluginInfo(name, f"distribution {dist.project_name}", dist.version, hooks))
        else:
            infos.append(PluginInfo(name, "built-in", __version__, hooks))
    return sorted(infos, key=lambda info: info.name)


def call_each(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
    """Call one hook plugin by plugin, keeping who answered what so conflicts can name both.

    pluggy's own call merges the answers and forgets their origin, which is why this walks
    the implementations itself.
    """
    answers: list[tuple[str, Any]] = []
    for plugin_name, call in _implementations(pm, hook_name, kwargs):
        try:
            result = call()
        except (ConfigError, PluginError):
            raise
        except Exception as exc:
            raise PluginError(f"plugin '{plugin_name}' failed in {hook_name}: {exc}") from exc
        if result is not None:
            answers.append((plugin_name, result))
    return answers


def notify(pm: pluggy.PluginManager, hook_name: str, **kwargs: Any) -> None:
    """Call an event hook on every plugin; one observer's failure is logged and neither stops
    the others (as pluggy's own call would) nor the operation that raised the event."""
    for plugin_name, call in _implementations(pm, hook_name, kwargs):
        try:
            call()
        except Exception:
            log.exception("plugin '%s' failed in %s; carrying on", plugin_name, hook_name)


def _implementations(
    pm: pluggy.PluginManager, hook_name: str, kwargs: Mapping[str, Any]
) -> Iterator[tuple[str, Callable[[], Any]]]:
    """Each plugin's implementation of a hook, its arguments bound, in registration order.

    Wrappers are skipped: they wrap pluggy's own call, which the callers here replace.
    """
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if impl.hookwrapper or impl.wrapper:
            continue
        arguments = {name: kwargs[name] for name in impl.argnames}
        yield impl.plugin_name, functools.partial(impl.function, **arguments)


def validate_plugin_settings(config: Config, pm: pluggy.PluginManager) -> None:
    """Check every provider instance, the chosen authenticator's settings and every
    ``plugins.<name>`` section against the schema its plugin registered.

    Settings no plugin claims are an error: a misspelt plugin name must not be silently ignored.
    """
    registered: dict[tuple[str, str], ConfigSchema] = {}
    for plugin_name, answer in call_each(pm, "register_plugin_config_schema"):
        for entry in answer:
            if not isinstance(entry, ConfigSchema):
                raise PluginError(f"plugin '{plugin_name}' returned {entry!r}, not a ConfigSchema")
            registered[(entry.section, entry.name)] = entry

    def check(section: str, name: str, path: str, settings: Any) -> None:
        entry = registered.get((section, name))
        if entry is None:
            if settings:
                raise ConfigError(
                    path, f"no installed plugin takes settings here ({section} '{name}')"
                )
            return
        problems = validation.compile_validator(entry.schema).errors(settings)
        if problems:
            lines = []
            for problem in problems:
                where = ".".join([path, *map(str, problem.loc)])
                if problem.msg.startswith("Unknown field"):
                    lines.append(f"{where}: unknown key")
                else:
                    loc = (*path.split("."), *problem.loc)
                    value = value_at(settings, problem.loc)
                    lines.append(f"{where}: {setting_problem(loc, problem.msg, value)}")
            raise ConfigError("", "\n".join(dict.fromkeys(lines)))

    for instance, settings in config.section("query", "providers").items():
        provider_type = settings.get("type", instance)
        if ("provider", provider_type) not in registered:
            known = sorted(name for section, name in registered if section == "provider")
            raise ConfigError(
                f"query.providers.{instance}.type",
                f"unknown provider type '{provider_type}' (installed: {', '.join(known) or 'none'})",
            )
        body = {k: v for k, v in settings.items() if k != "type"}
        check("provider", provider_type, f"query.providers.{instance}", body)

    authentication = config.section("authentication")
    module = authentication["module"]
    for key in authentication:
        if key != "module" and key != module:
            raise ConfigError(
                f"authentication.{key}",
                f"settings for '{key}', but the module in use is '{module}'",
            )
    check("authenticator", module, f"authentication.{module}", authentication.get(module, {}))

    for key, settings in config.section("plugins").items():
        if key != "disabled":
            check("plugin", key, f"plugins.{key}", settings)


@dataclass
class Components:
    """Everything the plugins registered, by kind and name, after conflict checks."""

    providers: dict[str, QueryProvider] = field(default_factory=dict)
    redactors: dict[str, Redactor] = field(default_factory=dict)
    sinks: dict[str, RecordSink] = field(default_factory=dict)
    exporters: dict[str, Exporter] = field(default_factory=dict)
    authenticators: dict[str, Authenticator] = field(default_factory=dict)
    owners: dict[tuple[str, str], str] = field(default_factory=dict)
    """(kind, component name) → the plugin that registered it."""


_KINDS: Mapping[str, tuple[str, str, type]] = {
    "providers": ("register_query_providers", "query provider", QueryProvider),
    "redactors": ("register_redactors", "redactor", Redactor),
    "sinks": ("register_record_sinks", "record sink", RecordSink),
    "exporters": ("register_exporters", "exporter", Exporter),
    "authenticators": ("register_authenticators", "authenticator", Authenticator),
}


def collect_components(config: Config, pm: pluggy.PluginManager) -> Components:
    """Ask every plugin for its components; two with the same name is a start-up error."""
    components = Components()
    for attribute, (hook_name, label, protocol) in _KINDS.items():
        by_name: dict[str, Any] = getattr(components, attribute)
        owners: dict[str, str] = {}
        for plugin_name, answer in call_each(pm, hook_name, config=config):
            for component in _as_sequence(answer, plugin_name, hook_name):
                if not isinstance(component, protocol):
                    raise PluginError(
                        f"plugin '{plugin_name}' returned {component!r} from {hook_name}, "
                        f"which is not a {label} (see lightspeed_collector.types)"
                    )
                name: str = getattr(component, "name")  # noqa: B009 - checked by isinstance above
                if name in owners:
                    raise PluginError(
                        f"{label} name '{name}' is registered by both plugin '{owners[name]}' "
                        f"and plugin '{plugin_name}'; disable one with plugins.disabled"
                    )
                owners[name] = plugin_name
                by_name[name] = component
                components.owners[(label, name)] = plugin_name
    return components


def _as_sequence(answer: Any, plugin_name: str, hook_name: str) -> Sequence[Any]:
    if isinstance(answer, (list, tuple)):
        return answer
    raise PluginError(
        f"plugin '{plugin_name}' must return a list from {hook_name}, got {type(answer).__name__}"
    )


def select(config: Config, components: Components) -> None:
    """Check that every component the configuration names is installed."""
    collection = config.section("user_data_collection")
    checks: list[tuple[str, Iterable[str], Mapping[str, Any]]] = [
        ("user_data_collection.redactors", collection["redactors"], components.redactors),
        ("user_data_collection.sinks", collection["sinks"], components.sinks),
        (
            "authentication.module",
            [config.section("authentication")["module"]],
            components.authenticators,
        ),
        (
            "query.default_provider",
            [config.section("query")["default_provider"]],
            components.providers,
        ),
    ]
    for path, wanted, available in checks:
        for name in wanted:
            if name not in available:
                known = ", ".join(sorted(available)) or "none"
                raise ConfigError(
                    path, f"'{name}' is not installed or is disabled (available: {known})"
                )


def load(
    config: Config, extra_plugins: Mapping[str, object] | None = None
) -> tuple[pluggy.PluginManager, Components]:
    """Build the plugin manager, validate plugin settings and collect the components."""
    pm = get_plugin_manager(config, extra_plugins)
    validate_plugin_settings(config, pm)
    components = collect_components(config, pm)
    select(config, components)
    return pm, components
