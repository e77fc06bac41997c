"""The ``lightspeed-collector`` command.

Every failure a user can cause (bad config, missing plugin) ends with one clear line on
stderr and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import yaml

from . import __version__, logs
from .config import Config, load_config
from .errors import ConfigError, PluginError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lightspeed-collector",
        description="Answer questions through pluggable providers and record transcripts and feedback.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "-c",
        "--config",
        help="YAML configuration file (default: $LIGHTSPEED_COLLECTOR_CONFIG, else the embedded defaults)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("serve", parents=[config_option], help="run the HTTP service")
    config_cmd = commands.add_parser("config", help="check or print the configuration")
    config_actions = config_cmd.add_subparsers(dest="action", required=True, metavar="ACTION")
    config_actions.add_parser(
        "check",
        parents=[config_option],
        help="validate the configuration, plugin settings included",
    )
    config_actions.add_parser(
        "dump", parents=[config_option], help="print the resolved configuration with secrets masked"
    )
    plugins_cmd = commands.add_parser(
        "plugins", parents=[config_option], help="list the loaded plugins"
    )
    plugins_cmd.add_argument("--format", choices=("text", "json"), default="text")
    export_cmd = commands.add_parser(
        "export",
        parents=[config_option],
        help="pack stored records into archives and upload them (the collector as a sidecar)",
        description="Exit status: 0 when every archive was sent, 1 when some wait in the "
        "outbox, 2 for a configuration problem.",
    )
    export_cmd.add_argument(
        "--once", action="store_true", help="run one cycle and exit instead of looping"
    )
    stub_cmd = commands.add_parser(
        "ingress-stub",
        help="run a local stand-in for the ingress server that stores what it receives",
        description="A local receiver that answers like the ingress server (same path, "
        "fields, content-type rule, size limit, status codes and bodies) and stores each "
        "upload with its headers under --store.",
    )
    from .ingress_stub import add_arguments as add_stub_arguments

    add_stub_arguments(stub_cmd)
    validate_cmd = commands.add_parser(
        "validate",
        help="check feedback and transcript files against their JSON Schemas",
        description="Check record files, and every *.json below the folders given, against "
        "their JSON Schemas. Exit status: 0 when all are valid, 1 when any is invalid, 2 for "
        "a usage error.",
    )
    from .validate_files import add_arguments as add_validate_arguments

    add_validate_arguments(validate_cmd)
    schemas_cmd = commands.add_parser(
        "schemas",
        help="print or write the JSON Schemas of records, requests, responses and configuration",
    )
    from .schema_files import add_arguments as add_schemas_arguments

    add_schemas_arguments(schemas_cmd)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "ingress-stub":
        from .ingress_stub import run as run_stub

        return run_stub(args)
    if args.command == "validate":
        from .validate_files import run as run_validate

        return run_validate(args)
    if args.command == "schemas":
        from .schema_files import run as run_schemas

        return run_schemas(args)
    try:
        config = load_config(args.config)
        if args.command == "serve":
            return _serve(config)
        if args.command == "config":
            return _config(config, args.action)
        if args.command == "plugins":
            return _plugins(config, args.format)
        if args.command == "export":
            return _export(config, args.once)
    except ConfigError as exc:
        print(f"lightspeed-collector: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except PluginError as exc:
        print(f"lightspeed-collector: plugin error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


def _serve(config: Config) -> int:
    from .service import build_service
    from .web.server import serve

    settings = config.section("service")
    logs.configure(settings["log_level"], settings["log_format"])
    serve(build_service(config))
    return EXIT_OK


def _export(config: Config, once: bool) -> int:
    """The web layer, waitress and the metrics library are never imported here: the sidecar
    starts fast and stays small."""
    from .collector import run_export
    from .collector.progress import for_stream

    settings = config.section("service")
    logs.configure(settings["log_level"], settings["log_format"], request_ids=False)
    return run_export(config, once=once, progress=for_stream(sys.stderr))


def _config(config: Config, action: str) -> int:
    from . import plugin_manager

    pm, _ = plugin_manager.load(config)
    if config.section("user_data_collection", "data_collector")["enabled"]:
        # serve would refuse to start without it, so the check must say so too.
        from .collector.runner import choose_exporter, registered_exporters

        choose_exporter(config, registered_exporters(config, pm))
    if action == "check":
        print(f"configuration OK ({config.source or 'embedded defaults'})")
    else:
        print(yaml.safe_dump(config.masked(), sort_keys=False), end="")
    return EXIT_OK


def _plugins(config: Config, fmt: str) -> int:
    from . import plugin_manager

    pm, components = plugin_manager.load(config)
    infos = plugin_manager.describe_plugins(pm)
    registered: dict[str, list[str]] = {}
    for (label, name), owner in sorted(components.owners.items()):
        registered.setdefault(owner, []).append(f"{label} {name}")
    if fmt == "json":
        rows = [
            {
                "name": info.name,
                "version": info.version,
                "source": info.source,
                "hooks": list(info.hooks),
                "registers": registered.get(info.name, []),
            }
            for info in infos
        ]
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for info in infos:
        version = f" {info.version}" if info.version else ""
        print(f"{info.name}{version} ({info.source})")
        print(f"  hooks: {', '.join(info.hooks)}")
        if registered.get(info.name):
            print(f"  registers: {', '.join(registered[info.name])}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
