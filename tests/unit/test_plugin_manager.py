"""Plugin loading: built-ins, blocking, name conflicts, hook checks, plugin settings."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pluggy
import pytest

from lightspeed_collector import plugin_manager
from lightspeed_collector.config import Config
from lightspeed_collector.errors import ConfigError, PluginError
from lightspeed_collector.plugin_manager import (
    DEFAULT_PLUGINS,
    collect_components,
    describe_plugins,
    get_plugin_manager,
    validate_plugin_settings,
)
from tests.plugins.throwaway import (
    MisspeltHookPlugin,
    NotAListPlugin,
    ProviderPlugin,
    SettingsPlugin,
)


def test_builtins_are_registered_under_their_short_names(
    make_config: Callable[..., Config],
) -> None:
    pm = get_plugin_manager(make_config())
    names = {info.name for info in describe_plugins(pm)}
    assert names >= {dotted.rsplit(".", 1)[1] for dotted in DEFAULT_PLUGINS}
    echo = next(info for info in describe_plugins(pm) if info.name == "echo")
    assert echo.source == "built-in"
    assert "register_query_providers" in echo.hooks
    components = collect_components(make_config(), pm)
    assert {"echo"} <= set(components.providers)
    assert {"regex"} <= set(components.redactors)
    assert {"filesystem"} <= set(components.sinks)
    assert {"noop", "noop-with-token"} <= set(components.authenticators)
    assert components.owners[("query provider", "echo")] == "echo"


def test_blocked_plugins_are_not_loaded(make_config: Callable[..., Config]) -> None:
    config = make_config({"plugins": {"disabled": ["echo"]}})
    pm = get_plugin_manager(config)
    assert pm.get_plugin("echo") is None
    assert "echo" not in collect_components(config, pm).providers
    with pytest.raises(
        ConfigError, match=r"query\.default_provider: 'echo' is not installed or is disabled"
    ):
        plugin_manager.load(config)


def test_two_plugins_with_one_provider_name_fail_naming_both(
    make_config: Callable[..., Config],
) -> None:
    config = make_config()
    pm = get_plugin_manager(config)
    pm.register(ProviderPlugin("echo"), name="copycat")
    with pytest.raises(PluginError) as caught:
        collect_components(config, pm)
    message = str(caught.value)
    assert "'echo'" in message and "plugin 'echo'" in message and "plugin 'copycat'" in message


def test_a_throwaway_provider_is_used_once_registered(make_config: Callable[..., Config]) -> None:
    config = make_config()
    pm = get_plugin_manager(config)
    pm.register(ProviderPlugin("shout"), name="shouter")
    components = collect_components(config, pm)
    assert components.providers["shout"].name == "shout"
    pm.unregister(name="shouter")
    assert "shout" not in collect_components(config, pm).providers


def test_misspelt_hook_fails_loudly(make_config: Callable[..., Config]) -> None:
    pm = get_plugin_manager(make_config())
    pm.register(MisspeltHookPlugin(), name="typo")
    with pytest.raises(pluggy.PluginValidationError):
        pm.check_pending()


def test_hook_answers_must_be_lists_of_the_right_kind(make_config: Callable[..., Config]) -> None:
    config = make_config()
    pm = get_plugin_manager(config)
    pm.register(NotAListPlugin(), name="sloppy")
    with pytest.raises(PluginError, match="plugin 'sloppy' must return a list"):
        collect_components(config, pm)


def test_plugin_settings_are_validated_by_the_plugin_schema(
    make_config: Callable[..., Config],
) -> None:
    good = make_config({"plugins": {"wordy": {"word": "banana"}}})
    pm = get_plugin_manager(good)
    pm.register(SettingsPlugin(), name="wordy")
    validate_plugin_settings(good, pm)
    assert collect_components(good, pm).redactors["wordy"].redact("a banana").text == "a [WORD]"

    bad = make_config({"plugins": {"wordy": {"word": ""}}})
    with pytest.raises(ConfigError, match=r"plugins\.wordy\.word: '' should be non-empty"):
        validate_plugin_settings(bad, pm)
    typo = make_config({"plugins": {"wordy": {"wrod": "x"}}})
    with pytest.raises(ConfigError, match=r"plugins\.wordy\.wrod: unknown key"):
        validate_plugin_settings(typo, pm)
    unclaimed = make_config({"plugins": {"wordie": {"word": "x"}}})
    with pytest.raises(ConfigError, match=r"plugins\.wordie: no installed plugin takes settings"):
        validate_plugin_settings(unclaimed, pm)


def test_provider_instances_and_authenticator_settings_are_checked(
    make_config: Callable[..., Config],
) -> None:
    config = make_config(
        {"query": {"providers": {"parrot": {"type": "echo", "models": ["p-1"], "prefix": ">"}}}}
    )
    _, components = plugin_manager.load(config)
    assert set(components.providers) == {"echo", "parrot"}
    with pytest.raises(ConfigError, match=r"query\.providers\.parrot\.colour: unknown key"):
        plugin_manager.load(
            make_config({"query": {"providers": {"parrot": {"type": "echo", "colour": 1}}}})
        )
    with pytest.raises(ConfigError, match=r"authentication\.noop\.admins: unknown key"):
        plugin_manager.load(make_config({"authentication": {"noop": {"admins": []}}}))
    with pytest.raises(
        ConfigError,
        match=r"authentication\.api-key: settings for 'api-key', but the module in use is 'noop'",
    ):
        plugin_manager.load(make_config({"authentication": {"api-key": {"keys": []}}}))


def install_entry_point(site: Path, distribution: str, name: str, target: str) -> None:
    """A real distribution's metadata on sys.path, as pip would leave it."""
    info = site / f"{distribution}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[lightspeed_collector]\n{name} = {target}\n")


def test_entry_point_taking_a_builtin_name_is_an_error(
    make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_entry_point(tmp_path, "imposter", "regex", "tests.plugins.throwaway")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(
        PluginError, match="plugin name 'regex' from distribution 'imposter' is already taken"
    ):
        get_plugin_manager(make_config())
    # Blocking the built-in lets the distribution's plugin take the name on purpose.
    pm = get_plugin_manager(make_config({"plugins": {"disabled": ["regex"]}}))
    assert pm.get_plugin("regex") is None


def test_two_distributions_offering_one_name_is_an_error(
    make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_entry_point(tmp_path, "first-dist", "auditor", "tests.plugins.throwaway")
    install_entry_point(tmp_path, "second-dist", "auditor", "tests.plugins.throwaway")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(PluginError, match="plugin name 'auditor' is offered by both"):
        get_plugin_manager(make_config())


def test_an_entry_point_plugin_is_loaded_with_its_distribution(
    make_config: Callable[..., Config], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install_entry_point(tmp_path, "shouting-plugin", "shouter", "tests.plugins.entry_point_plugin")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = make_config()
    pm = get_plugin_manager(config)
    info = next(info for info in describe_plugins(pm) if info.name == "shouter")
    assert (info.source, info.version) == ("distribution shouting-plugin", "1.0")
    assert "shout" in collect_components(config, pm).providers
