"""Helpers for the export tests: the ingress stub as a real process, the exporter as a real
process, and an account of where every record ended up.

"Exactly once" is checked on what the stub stored: each distinct archive (by file name, which
carries the archive id) is unpacked once, and every record must appear in exactly one of
them, or still be on disk (storage, outbox or quarantine) and nowhere else.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

STORAGE_FOLDERS = ("feedback", "transcripts")


@dataclass
class Stub:
    url: str
    store: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def uploads(self) -> list[dict[str, Any]]:
        index = self.store / "index.jsonl"
        if not index.exists():
            return []
        return [json.loads(line) for line in index.read_text("utf-8").splitlines()]

    def duplicates(self) -> list[dict[str, Any]]:
        return [entry for entry in self.uploads() if entry["duplicate_of"]]

    def distinct_archives(self) -> dict[str, Path]:
        """File name → stored archive, the first copy of each."""
        archives: dict[str, Path] = {}
        for entry in self.uploads():
            archives.setdefault(entry["filename"], Path(entry["stored_as"]))
        return archives

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_stub(folder: Path, *options: str) -> Stub:
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / "stub.log"
    store = folder / "store"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lightspeed_collector",
                "ingress-stub",
                "--port",
                "0",
                "--store",
                str(store),
                *options,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log_path.read_text(errors="replace"))
        if found:
            return Stub(found.group(1), store.absolute(), process, log_path)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"the ingress stub did not start:\n{log_path.read_text()}")


def wait_for(predicate: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def write_export_config(
    root: Path,
    data: Path,
    url: str,
    *,
    log_level: str = "info",
    state_dir: Path | None = None,
    **collector: Any,
) -> Path:
    settings = {
        "ingress_server_url": url,
        "ingress_content_service_name": "ols",
        "retry_base_seconds": 0.05,
        **collector,
    }
    config = {
        "service": {
            "host": "127.0.0.1",
            "port": 0,
            "state_dir": str(state_dir or root / "state"),
            "log_level": log_level,
        },
        "user_data_collection": {
            "feedback_storage": str(data / "feedback"),
            "transcripts_storage": str(data / "transcripts"),
            "data_collector": settings,
        },
    }
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"export-{uuid.uuid4().hex[:8]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def export_command(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lightspeed_collector", "export", "-c", str(config), *extra]


def run_export(config: Path, *extra: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        export_command(config, "--once", *extra), capture_output=True, text=True, timeout=timeout
    )


def storage_records(data: Path) -> dict[str, bytes]:
    """Member name → bytes of every finished record under ``data``."""
    records: dict[str, bytes] = {}
    for folder in STORAGE_FOLDERS:
        base = data / folder
        if not base.exists():
            continue
        for path in base.rglob("*.json"):
            if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                records[f"{folder}/{path.relative_to(base).as_posix()}"] = path.read_bytes()
    return records


def archive_records(path: Path) -> tuple[dict[str, bytes], dict[str, Any]]:
    """Records and manifest of one archive."""
    records: dict[str, bytes] = {}
    manifest: dict[str, Any] = {}
    with tarfile.open(path, "r:gz") as archive:
        for member in archive:
            reader = archive.extractfile(member)
            assert reader is not None, member.name
            data = reader.read()
            if member.name == "manifest.json":
                manifest = json.loads(data)
            else:
                assert member.name not in records, f"{member.name} twice in {path}"
                records[member.name] = data
    return records, manifest


def sent_archive_ids(state_dir: Path) -> set[str]:
    journal = state_dir / "outbox" / "journal.jsonl"
    if not journal.exists():
        return set()
    ids = set()
    for line in journal.read_text("utf-8").splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("event") == "sent":
            ids.add(entry["archive_id"])
    return ids


def outbox_records(
    state_dir: Path, state: str, delivered: frozenset[str] = frozenset()
) -> dict[str, bytes]:
    """Records in the outbox archives of one state that are still waiting to be sent.

    An archive the journal lists as sent only waits for its cleanup; one the receiver holds
    (``delivered`` ids) but the journal does not is in the at-least-once window: it will go
    again under the same id. Neither is a second copy of its records.
    """
    records: dict[str, bytes] = {}
    sent = sent_archive_ids(state_dir) | delivered
    folder = state_dir / "outbox" / state
    if folder.exists():
        for archive in sorted(folder.glob("*/archive.tar.gz")):
            if archive.parent.name not in sent:
                found, _ = archive_records(archive)
                records.update(found)
    return records


def quarantined_records(state_dir: Path) -> dict[str, bytes]:
    records: dict[str, bytes] = {}
    base = state_dir / "quarantine" / "records"
    if base.exists():
        for path in base.rglob("*.json"):
            records[path.relative_to(base).as_posix()] = path.read_bytes()
    for archive in sorted((state_dir / "quarantine" / "archives").glob("*/archive.tar.gz")):
        found, _ = archive_records(archive)
        records.update(found)
    return records


@dataclass
class Account:
    delivered: dict[str, bytes]
    on_disk: dict[str, bytes]
    places: Counter[str]


def account(stub: Stub, data: Path, state_dir: Path) -> Account:
    """Where every record is: delivered (in a distinct archive at the stub) or on disk."""
    delivered: dict[str, bytes] = {}
    places: Counter[str] = Counter()
    archives = stub.distinct_archives()
    delivered_ids = frozenset(name.split("-", 1)[1].removesuffix(".tar.gz") for name in archives)
    for path in archives.values():
        records, manifest = archive_records(path)
        listed = {entry["name"]: entry for entry in manifest["files"]}
        assert set(listed) == set(records), "manifest and members differ"
        for name, data_bytes in records.items():
            assert listed[name]["size"] == len(data_bytes)
            places[name] += 1
            delivered[name] = data_bytes
    committed = outbox_records(state_dir, "new", delivered_ids)
    in_storage = {
        name: content
        for name, content in storage_records(data).items()
        # A source whose archive is committed but not yet released is removed by the next
        # cycle's recovery: it is one record in the middle of a move, not two.
        if committed.get(name) != content
    }
    on_disk: dict[str, bytes] = {}
    waiting = outbox_records(state_dir, "ready", delivered_ids)
    for found in (in_storage, committed, waiting, quarantined_records(state_dir)):
        for name, data_bytes in found.items():
            places[name] += 1
            on_disk[name] = data_bytes
    return Account(delivered, on_disk, places)


def assert_exactly_once(originals: dict[str, bytes], found: Account) -> None:
    """Every original is in exactly one place, byte for byte, and nothing else appeared."""
    twice = {name: count for name, count in found.places.items() if count != 1}
    assert not twice, f"records found in more than one place: {list(twice.items())[:5]}"
    everything = {**found.delivered, **found.on_disk}
    assert set(everything) == set(originals), (
        f"missing {sorted(set(originals) - set(everything))[:5]}, "
        f"unexpected {sorted(set(everything) - set(originals))[:5]}"
    )
    different = [name for name, data in everything.items() if data != originals[name]]
    assert not different, f"records changed on the way: {different[:5]}"


def leftovers(data: Path) -> list[str]:
    """Anything in the storage folders except the folders themselves."""
    found: list[str] = []
    for folder in STORAGE_FOLDERS:
        base = data / folder
        for path in base.rglob("*"):
            found.append(str(path.relative_to(data)))
    return found


def copy_storage(source: Path, target: Path) -> None:
    for folder in STORAGE_FOLDERS:
        if (source / folder).exists():
            shutil.copytree(source / folder, target / folder)
        else:
            (target / folder).mkdir(parents=True)


def multiply_records(data: Path, copies: int) -> None:
    """Add ``copies`` more records next to each one, with fresh ids, as the sink would."""
    for folder in STORAGE_FOLDERS:
        for path in list((data / folder).rglob("*.json")):
            content = path.read_bytes()
            for _ in range(copies):
                target = path.with_name(f"{uuid.uuid4()}.json")
                target.write_bytes(content)
                os.chmod(target, 0o600)
