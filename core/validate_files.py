"""``lightspeed-collector validate``: check record files against their JSON Schemas.

Made for CI and pre-commit, where a folder may hold tens of thousands of records:

- each validator is compiled once (:func:`lightspeed_collector.validation.validator`), and a
  valid record, the common case, is confirmed by its compiled fast check; only an invalid
  one pays for ``jsonschema`` to explain every problem;
- files are read and parsed in parallel, in worker processes forked after the validators
  were compiled, so each core works from the first file on;
- nothing here imports the web stack or the metrics library, so the command starts quickly.

Every problem names the file, the JSON path inside it (``$.metadata.user_id``) and the rule
that failed: a schema keyword (``pattern``, ``required``, ...) or one of ``read`` (the file
cannot be read), ``json`` (it is not JSON) and ``kind`` (it is neither record kind).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, TextIO

from . import validation

if TYPE_CHECKING:
    from multiprocessing.context import BaseContext

    from jsonschema.exceptions import ValidationError

KINDS: tuple[str, ...] = ("feedback", "transcript")

# Below this many files a process pool costs more (forking, shipping results back) than it
# saves: a record takes tens of microseconds to read and check.
PARALLEL_THRESHOLD = 400
# The largest record read by default: the collector's default max_archive_bytes, so a larger
# record would not be exported anyway (it goes to quarantine), and the ingress server's
# default upload limit. A file past it is reported without being loaded; a 2 GB one would
# otherwise take twice its size in memory, in every worker.
DEFAULT_MAX_BYTES = 104857600
_MAX_MESSAGE = 300
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

Progress = Callable[[int, int], None]
"""Called with (files done, files in total) as work completes."""


class UsageError(Exception):
    """The command line names something that cannot be checked (exit status 2)."""


@dataclass(frozen=True)
class Problem:
    path: str
    """JSON path of the offending value; ``$`` is the whole document."""
    rule: str
    message: str
    schema_path: str = ""
    """Where the rule sits in the schema (``properties/metadata/required``), when it is one."""


@dataclass(frozen=True)
class FileResult:
    file: str
    kind: str | None
    problems: tuple[Problem, ...]

    @property
    def valid(self) -> bool:
        return not self.problems


def collect(paths: Iterable[str]) -> list[str | FileResult]:
    """The files to check: each named file as given, and every ``*.json`` below each named
    folder (hidden files and folders skipped: they are temporary or tool state), in order,
    each once. A folder that cannot be listed is not skipped in silence: it takes its place
    in the order as a :class:`FileResult` with a ``read`` problem."""
    found: dict[str, str | FileResult] = {}
    for path in paths:
        try:
            is_folder = stat.S_ISDIR(os.stat(path).st_mode)
        except OSError:
            # A dangling symlink or an unreadable entry is still a file to report on.
            if not os.path.lexists(path):
                raise UsageError(f"{path}: no such file or folder") from None
            is_folder = False
        if is_folder:
            for entry in _walk(path):
                key = entry if isinstance(entry, str) else entry.file
                found.setdefault(key, entry)
        else:
            found.setdefault(path, path)
    return list(found.values())


def _walk(folder: str) -> Iterator[str | FileResult]:
    # os.walk hands listing errors to onerror and otherwise drops them, folder and all.
    unreadable: list[OSError] = []
    for directory, subdirectories, files in os.walk(folder, onerror=unreadable.append):
        yield from _unreadable_folders(unreadable, directory)
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".json") and not name.startswith("."):
                yield os.path.join(directory, name)
    yield from _unreadable_folders(unreadable, folder)


def _unreadable_folders(errors: list[OSError], fallback: str) -> Iterator[FileResult]:
    for error in errors:
        name = error.filename if isinstance(error.filename, str) else fallback
        reason = error.strerror or str(error)
        yield FileResult(name, None, (Problem("$", "read", f"cannot read folder: {reason}"),))
    errors.clear()


def validate_files(
    files: Sequence[str],
    kind: str | None = None,
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    parallel_threshold: int = PARALLEL_THRESHOLD,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[FileResult]:
    """Check every file, in parallel when there are enough of them; results in input order.

    ``kind`` forces one schema for every file; otherwise each file's kind is told by its keys.
    """
    if kind is not None and kind not in KINDS:
        raise UsageError(f"unknown record kind '{kind}' (expected one of {', '.join(KINDS)})")
    for name in KINDS:
        # Compiled before any fork, so every worker inherits them ready to use.
        validation.validator(name)
    workers = workers or usable_cores()
    if workers == 1 or len(files) < parallel_threshold:
        results = []
        for index, file in enumerate(files, 1):
            results.append(check_file(file, kind, max_bytes))
            if progress is not None and index % 500 == 0:
                progress(index, len(files))
        if progress is not None:
            progress(len(files), len(files))
        return results
    chunk = max(64, min(2000, len(files) // (workers * 6) or 1))
    batches = [files[start : start + chunk] for start in range(0, len(files), chunk)]
    results = []
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=workers, mp_context=_fork_context()) as pool:
        for batch in pool.map(check_batch, batches, repeat(kind), repeat(max_bytes)):
            results.extend(batch)
            if progress is not None:
                progress(len(results), len(files))
    return results


def usable_cores() -> int:
    """The cores this process may run on, which in a container or under ``taskset`` can be
    fewer than the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def _fork_context() -> BaseContext | None:
    """Forked workers share the parent's compiled validators and imported modules; spawned
    ones would import and compile everything again. Fork is not offered everywhere."""
    import multiprocessing

    if "fork" in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("fork")
    return None


def check_batch(
    files: Sequence[str], kind: str | None, max_bytes: int = DEFAULT_MAX_BYTES
) -> list[FileResult]:
    return [check_file(file, kind, max_bytes) for file in files]


def check_file(
    file: str, kind: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES
) -> FileResult:
    try:
        raw = _read(file, max_bytes)
    except NotARegularFile:
        return FileResult(file, kind, (Problem("$", "read", "not a regular file"),))
    except TooLarge as exc:
        message = (
            f"{exc.size} bytes, more than a record may have ({max_bytes}); not read "
            "(--max-bytes raises the limit)"
        )
        return FileResult(file, kind, (Problem("$", "read", message),))
    except OSError as exc:
        return FileResult(file, kind, (Problem("$", "read", f"cannot read: {exc.strerror}"),))
    try:
        document = _DECODER.decode(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return FileResult(file, kind, (Problem("$", "json", "not UTF-8 encoded JSON"),))
    except json.JSONDecodeError as exc:
        message = f"not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        return FileResult(file, kind, (Problem("$", "json", message),))
    except ValueError as exc:
        return FileResult(file, kind, (Problem("$", "json", f"not valid JSON: {exc}"),))
    except RecursionError:
        return FileResult(file, kind, (Problem("$", "json", "nested too deeply"),))
    try:
        return check_document(file, document, kind)
    except RecursionError:
        # Parsed, but too deep to describe what is wrong with it.
        return FileResult(file, kind, (Problem("$", "json", "nested too deeply"),))


class NotARegularFile(Exception):
    """A FIFO, device or socket: reading one could block forever or never end."""


class TooLarge(Exception):
    """Larger than a record may be: not read into memory."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.size = size


def _read(file: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """The whole file in as few system calls as the OS allows: records are small and many,
    so a buffered file object's set-up costs more than the read itself. Opened without
    blocking, so a FIFO named like a record is reported instead of waited on."""
    flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(file, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotARegularFile(file)
        size = info.st_size
        if size > max_bytes:
            raise TooLarge(size)
        data = os.read(fd, size + 1)
        if len(data) <= size:
            return data
        # The file grew since fstat: read to the end, or to the limit.
        chunks = [data]
        total = len(data)
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise TooLarge(total)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


# One decoder for every file: ``json.loads`` with options would build a new one per call.
# Records are UTF-8 (RFC 8259); NaN and Infinity, which Python accepts, are not JSON.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def check_document(file: str, document: Any, kind: str | None = None) -> FileResult:
    if kind is None:
        if not isinstance(document, dict):
            found = _json_type(document)
            message = f"a record is a JSON object, this file holds {found}"
            return FileResult(file, None, (Problem("$", "type", message),))
        kind = detect_kind(document)
        if kind is None:
            message = (
                "cannot tell a feedback from a transcript record by its keys; "
                "name the kind with --kind"
            )
            return FileResult(file, None, (Problem("$", "kind", message),))
    checker = validation.validator(kind)
    if checker.is_valid(document):
        return FileResult(file, kind, ())
    errors = sorted(checker.full.iter_errors(document), key=_error_order)
    return FileResult(file, kind, tuple(p for error in errors for p in _problems(error)))


def detect_kind(document: Mapping[str, Any]) -> str | None:
    """The kind whose schema names the most of the document's keys that the other kind's
    does not; ``None`` on a tie."""
    scores = {kind: len(document.keys() & keys) for kind, keys in _distinctive_keys().items()}
    best = max(scores.values())
    winners = [kind for kind, score in scores.items() if score == best]
    return winners[0] if best and len(winners) == 1 else None


_DISTINCTIVE: dict[str, frozenset[str]] = {}


def _distinctive_keys() -> dict[str, frozenset[str]]:
    if not _DISTINCTIVE:
        keys = {kind: frozenset(validation.load_schema(kind)["properties"]) for kind in KINDS}
        for kind in KINDS:
            others = frozenset().union(*(keys[k] for k in KINDS if k != kind))
            _DISTINCTIVE[kind] = keys[kind] - others
    return _DISTINCTIVE


def _error_order(error: ValidationError) -> tuple[list[str], str]:
    return list(map(str, error.absolute_path)), str(error.validator)


def _problems(error: ValidationError) -> list[Problem]:
    if error.context:
        from jsonschema.exceptions import best_match

        # anyOf/oneOf: the branch that got furthest explains the problem best.
        error = best_match(error.context)
    keyword = str(error.validator)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    schema_path = "/".join(map(str, error.absolute_schema_path))
    if keyword == "additionalProperties" and isinstance(error.instance, Mapping):
        # Point at each unknown key itself rather than at the object that holds it.
        known = set(schema.get("properties", {}))
        return [
            Problem(json_path([*error.absolute_path, key]), keyword, "unknown field", schema_path)
            for key in sorted(error.instance)
            if key not in known
        ]
    template = schema.get("x-messages", {}).get(keyword)
    message = template.format(value=_show(error.instance)) if template else error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 1] + "…"
    return [Problem(json_path(error.absolute_path), keyword, message, schema_path)]


def json_path(parts: Iterable[str | int]) -> str:
    """``$.metadata.user_id``, ``$.attachments[0].content``, ``$['odd key']``."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += f".{part}"
        else:
            path += "[" + json.dumps(part) + "]"
    return path


def _json_type(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "null"


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# --- reports -----------------------------------------------------------------------------


def summary(results: Sequence[FileResult]) -> dict[str, int]:
    invalid = sum(1 for result in results if not result.valid)
    return {"checked": len(results), "valid": len(results) - invalid, "invalid": invalid}


def display_name(file: str) -> str:
    """A file name as every report shows it. A name that is not UTF-8 reaches Python with its
    odd bytes as lone surrogates, which no UTF-8 file can hold; they are shown as ``\\xff``."""
    try:
        return os.fsencode(file).decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return printable(file)


def printable(text: str) -> str:
    """``text`` with any lone surrogate (a record may hold ``"\\udcff"``, and messages quote
    values) written as its escape, so a report can be written to any UTF-8 file or stream."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def render_text(results: Sequence[FileResult]) -> str:
    lines = []
    for result in results:
        name = display_name(result.file)
        for problem in result.problems:
            lines.append(f"{name}: {problem.path}: {problem.message} [{problem.rule}]")
    lines.append(summary_line(results))
    return printable("\n".join(lines) + "\n")


def summary_line(results: Sequence[FileResult]) -> str:
    counts = summary(results)
    noun = "file" if counts["checked"] == 1 else "files"
    return (
        f"{counts['checked']} {noun} checked: {counts['valid']} valid, {counts['invalid']} invalid"
    )


def render_json(results: Sequence[FileResult]) -> str:
    report = {
        **summary(results),
        "files": [
            {
                "file": display_name(result.file),
                "kind": result.kind,
                "valid": result.valid,
                "errors": [
                    {
                        "path": problem.path,
                        "rule": problem.rule,
                        "message": problem.message,
                        "schema_path": problem.schema_path,
                    }
                    for problem in result.problems
                ],
            }
            for result in results
        ],
    }
    # A lone surrogate left in a message becomes its JSON escape (\\udcff).
    return printable(json.dumps(report, indent=2, ensure_ascii=False) + "\n")


# XML 1.0 cannot carry most control characters, even escaped; a file name or message holding
# one would make the whole report unreadable. (Lone surrogates are escaped before this.)
_XML_UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def render_junit(results: Sequence[FileResult], elapsed: float = 0.0) -> str:
    """JUnit XML as CI systems render it: one test case per file, a failure per bad file."""
    from xml.etree import ElementTree

    def clean(text: str) -> str:
        return _XML_UNSAFE.sub("\ufffd", printable(text))

    counts = summary(results)
    attributes = {
        "name": "lightspeed-collector validate",
        "tests": str(counts["checked"]),
        "failures": str(counts["invalid"]),
        "errors": "0",
        "skipped": "0",
        "time": f"{elapsed:.3f}",
    }
    suites = ElementTree.Element("testsuites", attributes)
    suite = ElementTree.SubElement(suites, "testsuite", attributes)
    for result in results:
        case = ElementTree.SubElement(
            suite,
            "testcase",
            {
                "classname": f"records.{result.kind or 'unknown'}",
                "name": clean(display_name(result.file)),
            },
        )
        if result.problems:
            first = result.problems[0]
            failure = ElementTree.SubElement(
                case,
                "failure",
                {
                    "type": first.rule,
                    "message": clean(
                        f"{len(result.problems)} problem(s); {first.path}: {first.message}"
                    ),
                },
            )
            failure.text = clean(
                "\n".join(f"{p.path}: {p.message} [{p.rule}]" for p in result.problems)
            )
    ElementTree.indent(suites)
    body = ElementTree.tostring(suites, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths", nargs="+", metavar="PATH", help="record files, or folders to search for *.json"
    )
    parser.add_argument(
        "--kind",
        choices=KINDS,
        help="check every file as this kind (default: tell each file's kind by its keys)",
    )
    parser.add_argument(
        "--format",
        choices=("text", "json", "junit"),
        default="text",
        help="text for people, json for scripts, junit (JUnit XML) for CI test reports",
    )
    parser.add_argument(
        "--output",
        "-o",
        metavar="FILE",
        help="write the report to FILE instead of standard output",
    )
    parser.add_argument(
        "--max-bytes",
        type=_positive_int,
        default=DEFAULT_MAX_BYTES,
        metavar="N",
        help="report files larger than N bytes without reading them "
        f"(default: {DEFAULT_MAX_BYTES}, the default max_archive_bytes)",
    )
    parser.add_argument(
        "--jobs",
        "-j",
        type=_positive_int,
        metavar="N",
        help="worker processes (default: one per core)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        found = collect(args.paths)
    except UsageError as exc:
        print(f"lightspeed-collector validate: {exc}", file=sys.stderr)
        return 2
    if not found:
        print("lightspeed-collector validate: no *.json files found", file=sys.stderr)
    files = [entry for entry in found if isinstance(entry, str)]
    started = time.perf_counter()
    progress = _TerminalProgress(sys.stderr) if _show_progress(sys.stderr) else None
    checked = iter(
        validate_files(
            files, args.kind, workers=args.jobs, progress=progress, max_bytes=args.max_bytes
        )
    )
    if progress is not None:
        progress.finish()
    # Unreadable folders keep their place among the files found around them.
    results = [next(checked) if isinstance(entry, str) else entry for entry in found]
    elapsed = time.perf_counter() - started
    if args.format == "json":
        report = render_json(results)
    elif args.format == "junit":
        report = render_junit(results, elapsed)
    else:
        report = render_text(results)
    if args.output:
        try:
            with open(args.output, "w", encoding="utf-8") as handle:
                handle.write(report)
        except OSError as exc:
            print(
                f"lightspeed-collector validate: cannot write {args.output}: {exc.strerror}",
                file=sys.stderr,
            )
            return 2
        sys.stderr.write(summary_line(results) + "\n")
    else:
        write_stdout(report)
    return 0 if all(result.valid for result in results) else 1


def write_stdout(text: str) -> None:
    """Write a report to standard output; a reader that stopped early (``| head``) is not
    an error worth a traceback."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Point stdout at nothing so the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _show_progress(stream: TextIO) -> bool:
    """Progress is for people at a terminal; CI logs stay clean."""
    return stream.isatty() and not os.environ.get("CI")


class _TerminalProgress:
    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._shown = False

    def __call__(self, done: int, total: int) -> None:
        if total < PARALLEL_THRESHOLD:
            return
        self._stream.write(f"\rvalidated {done}/{total} files")
        self._stream.flush()
        self._shown = True

    def finish(self) -> None:
        if self._shown:
            self._stream.write("\n")
            self._stream.flush()
