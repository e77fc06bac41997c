"""``lightspeed-collector schemas``: the JSON Schemas the service validates with, for tools.

The files come from the installed package, so what this prints is exactly what the running
service enforces. ``--standalone`` inlines the schemas they reference, for generic JSON
Schema tools that cannot resolve our ``urn:lightspeed-collector:schema:*`` references.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any

from . import validation
from .validate_files import write_stdout


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "names",
        nargs="*",
        metavar="NAME",
        help="schemas to show, e.g. transcript feedback (default: all; see --list)",
    )
    parser.add_argument("--list", action="store_true", help="list the schema names and titles")
    parser.add_argument(
        "--write",
        metavar="DIR",
        help="write each schema to DIR/<name>.json instead of printing",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="inline every referenced schema so each file stands alone",
    )


def run(args: argparse.Namespace) -> int:
    known = validation.schema_names()
    unknown = [name for name in args.names if name not in known]
    if unknown:
        print(
            f"lightspeed-collector schemas: unknown schema {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(known)})",
            file=sys.stderr,
        )
        return 2
    names = list(dict.fromkeys(args.names)) or list(known)
    if args.list:
        for name in names:
            print(f"{name}\t{validation.load_schema(name).get('title', '')}")
        return 0
    schemas = {name: _schema(name, args.standalone) for name in names}
    if args.write:
        try:
            for name, schema in schemas.items():
                _write_atomically(os.path.join(args.write, f"{name}.json"), schema)
        except OSError as exc:
            print(
                f"lightspeed-collector schemas: cannot write to {args.write}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        for name in schemas:
            print(os.path.join(args.write, f"{name}.json"))
        return 0
    # One schema prints as itself, so `schemas transcript > transcript.json` gives a usable
    # file; several print as one object keyed by name.
    shown: Any = schemas[names[0]] if len(args.names) == 1 else schemas
    write_stdout(json.dumps(shown, indent=2, ensure_ascii=False) + "\n")
    return 0


def _schema(name: str, standalone: bool) -> Any:
    if standalone:
        from .schema_bundle import standalone_schema

        return standalone_schema(name)
    return validation.load_schema(name)


def _write_atomically(path: str, schema: Any) -> None:
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(schema, handle, indent=2, ensure_ascii=False)
            handle.write("\n")
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
