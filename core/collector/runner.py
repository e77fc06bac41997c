"""Running the collector: once, in a loop until a signal, or in a thread inside ``serve``.

The exporter is whichever registered one ``data_collector.exporter`` names; the core knows
none of them. Stopping (SIGTERM, SIGINT, the service shutting down) sets a deadline of
``shutdown_timeout_seconds``: the cycle in progress winds down by then, and one final cycle
ships what was stored up to the stop, within the same deadline.
"""

from __future__ import annotations

import copy
import gc
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import pluggy

from .. import plugin_manager
from ..config import Config, build_config, make_state_dir
from ..errors import ConfigError, PluginError
from ..types import Archive, Exporter, Receipt
from .backoff import StopSignal
from .cycle import SETTINGS_PATH, Collector, CollectorSettings, CycleReport, Progress

log = logging.getLogger("lightspeed_collector.collector")

EXIT_SENT = 0
EXIT_WAITING = 1
EXIT_CONFIG = 2


def registered_exporters(config: Config, pm: pluggy.PluginManager) -> dict[str, Exporter]:
    """Every exporter the plugins register, by name; a name registered twice is an error
    naming both plugins, as for every other kind of component."""
    exporters: dict[str, Exporter] = {}
    owners: dict[str, str] = {}
    for plugin_name, answer in plugin_manager.call_each(pm, "register_exporters", config=config):
        if not isinstance(answer, list | tuple):
            raise PluginError(
                f"plugin '{plugin_name}' must return a list from register_exporters, "
                f"got {type(answer).__name__}"
            )
        for exporter in answer:
            if not isinstance(exporter, Exporter):
                raise PluginError(
                    f"plugin '{plugin_name}' returned {exporter!r} from register_exporters, "
                    "which is not an exporter (see lightspeed_collector.types)"
                )
            if exporter.name in owners:
                raise PluginError(
                    f"exporter name '{exporter.name}' is registered by both plugin "
                    f"'{owners[exporter.name]}' and plugin '{plugin_name}'; disable one with "
                    "plugins.disabled"
                )
            owners[exporter.name] = plugin_name
            exporters[exporter.name] = exporter
    return exporters


def choose_exporter(config: Config, exporters: dict[str, Exporter]) -> Exporter:
    name = config.section("user_data_collection", "data_collector")["exporter"]
    if name not in exporters:
        known = ", ".join(sorted(exporters)) or "none"
        raise ConfigError(
            f"{SETTINGS_PATH}.exporter",
            f"'{name}' is not installed or is disabled (available: {known})",
        )
    return exporters[name]


def as_enabled(config: Config) -> Config:
    """The configuration validated as if ``data_collector.enabled`` were true: running
    ``export`` is enabling the collector, so what that requires must be there."""
    if config.section("user_data_collection", "data_collector")["enabled"]:
        return config
    raw = copy.deepcopy(config.data)
    raw["user_data_collection"]["data_collector"]["enabled"] = True
    return build_config(raw, config.source)


class CollectorLoop:
    """Cycles every ``collection_interval`` until asked to stop, then one final cycle."""

    def __init__(
        self, collector: Collector, on_report: Callable[[CycleReport], None] | None = None
    ) -> None:
        self.collector = collector
        self.stop = collector.stop
        self.last_report: CycleReport | None = None
        self._on_report = on_report

    def run_once(self, *, last: bool = False) -> CycleReport | None:
        try:
            self.last_report = self.collector.run_cycle(last=last)
        except Exception as exc:
            log.error("export cycle failed: %s: %s", type(exc).__name__, exc)
            log.debug("export cycle failure", exc_info=True)
            self.last_report = None
        if self.last_report is not None and self._on_report is not None:
            try:
                self._on_report(self.last_report)
            except Exception:
                log.exception("recording the export cycle's figures failed")
        return self.last_report

    def run(self) -> None:
        while True:
            self.run_once()
            if not self.stop.requested:
                self.stop.wait(self.collector.settings.collection_interval)
            if self.stop.requested:
                break
        log.info("stopping: running a final export cycle")
        self.run_once(last=True)

    def request_stop(self) -> None:
        self.stop.request(self.collector.settings.shutdown_timeout_seconds)


class BackgroundCollector:
    """The collector inside ``serve``: a daemon thread, so requests keep being answered
    while a cycle packs or uploads, stopped with a final cycle when the service stops."""

    def __init__(self, loop: CollectorLoop, join_timeout: float) -> None:
        self.loop = loop
        self._join_timeout = join_timeout
        self._thread = threading.Thread(target=loop.run, name="collector", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.loop.request_stop()
        self._thread.join(self._join_timeout)
        if self._thread.is_alive():
            log.error("the final export cycle did not end in time; the outbox keeps the rest")


def build_collector(
    config: Config,
    exporter: Exporter,
    pm: pluggy.PluginManager,
    *,
    progress: Progress | None = None,
) -> Collector:
    def on_exported(archive: Archive, receipt: Receipt) -> None:
        plugin_manager.notify(pm, "archive_exported", archive=archive, receipt=receipt)

    return Collector(
        CollectorSettings.from_config(config),
        exporter,
        on_exported=on_exported,
        stop=StopSignal(),
        progress=progress,
    )


def background_collector(
    config: Config,
    pm: pluggy.PluginManager,
    exporters: dict[str, Exporter],
    on_report: Callable[[CycleReport], None] | None = None,
) -> BackgroundCollector:
    """The in-process collector for ``serve``; a missing exporter is a start-up error.
    ``on_report`` hears each cycle's figures (the service's export metrics)."""
    collector = build_collector(config, choose_exporter(config, exporters), pm)
    settings = config.section("user_data_collection", "data_collector")
    join_timeout = settings["shutdown_timeout_seconds"] + settings["connection_timeout_seconds"] + 5
    return BackgroundCollector(CollectorLoop(collector, on_report), join_timeout)


@contextmanager
def _stopping_on_signals(request_stop: Callable[[], None]) -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s", signal.Signals(signum).name)
        request_stop()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_export(config: Config, *, once: bool, progress: Progress | None = None) -> int:
    """``lightspeed-collector export``: 0 when the outbox ended empty, 1 when archives wait
    in it, 2 for a configuration problem (raised as ``ConfigError`` before any work, or
    reported by the exporter or the receiver during the cycle)."""
    config = as_enabled(config)
    make_state_dir(config)
    pm = plugin_manager.get_plugin_manager(config)
    plugin_manager.validate_plugin_settings(config, pm)
    exporter = choose_exporter(config, registered_exporters(config, pm))
    collector = build_collector(config, exporter, pm, progress=progress)
    # Everything built so far (modules, plugins, settings) lives as long as the process.
    # Frozen, the garbage collector never walks it again: its collections while packing,
    # and the interpreter's teardown at exit, get cheaper.
    gc.freeze()
    loop = CollectorLoop(collector)
    with _stopping_on_signals(loop.request_stop):
        if once:
            loop.run_once(last=True)
        else:
            loop.run()
    report = loop.last_report
    if report is not None and report.misconfigured:
        return EXIT_CONFIG
    return EXIT_WAITING if report is None or collector.outbox.pending_count() else EXIT_SENT
