"""``lightspeed-collector export`` end to end: records made by a real server, a real exporter
process, the ingress stub as the receiver, and faults injected at the stub or by SIGKILL.

After every scenario each record is in exactly one place: in one archive the stub stored
(an archive re-sent under the same id counts once, as a receiver deduplicating by archive id
would see it), or still on disk in the storage, the outbox or the quarantine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import NOBODY, RunningServer, start_server, unprivileged
from tests.export_support import (
    Stub,
    account,
    archive_records,
    assert_exactly_once,
    copy_storage,
    export_command,
    leftovers,
    multiply_records,
    run_export,
    storage_records,
    wait_for,
    write_export_config,
)

MARKER = "zebra-lantern-4711"
USERS = ("alice", "bob", "carol")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Records stored by a real server through its HTTP API, made once for the module."""
    root = tmp_path_factory.mktemp("recorded") / "server"
    server = start_server(root)
    try:
        with requests.Session() as session:
            for user in USERS:
                for _conversation in range(3):
                    conversation_id = None
                    for turn in range(3):
                        body: dict[str, object] = {"query": f"{MARKER} question {turn}"}
                        if conversation_id:
                            body["conversation_id"] = conversation_id
                        answer = session.post(
                            f"{server.url}/v1/query",
                            params={"user_id": user},
                            json=body,
                            timeout=10,
                        )
                        assert answer.status_code == 200, answer.text
                        conversation_id = answer.json()["conversation_id"]
                    feedback = session.post(
                        f"{server.url}/v1/feedback",
                        params={"user_id": user},
                        json={
                            "conversation_id": conversation_id,
                            "user_question": f"{MARKER} question",
                            "llm_response": "an answer",
                            "sentiment": 1,
                            "user_feedback": f"{MARKER} helpful",
                        },
                        timeout=10,
                    )
                    assert feedback.status_code == 200, feedback.text
    finally:
        server.stop()
    assert len(storage_records(root)) == len(USERS) * 3 * 4
    # A backlog, stored a minute ago: every collector cycle packs it, whichever test runs
    # first (records younger than min_record_age_seconds wait for a later cycle).
    a_minute_ago = time.time() - 60
    for path in root.rglob("*.json"):
        os.utime(path, (a_minute_ago, a_minute_ago))
    return root


@pytest.fixture
def data(recorded: Path, tmp_path: Path) -> Path:
    """A private copy of the recorded storage for one test."""
    target = tmp_path / "data"
    copy_storage(recorded, target)
    return target


def collector_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "lightspeed_collector.collector" in line]


# -- the happy path --------------------------------------------------------------------------


def test_export_once_delivers_every_record_byte_for_byte(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs()
    originals = storage_records(data)
    config = write_export_config(tmp_path, data, stub.url, ingress_server_auth_token="t0ken")
    result = run_export(config)
    assert result.returncode == 0, result.stderr
    assert "\r" not in result.stderr, "no progress display when not on a terminal"

    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}
    assert leftovers(data) == [], "sources and their emptied folders must be gone"
    assert (data / "feedback").is_dir() and (data / "transcripts").is_dir()
    assert stub.duplicates() == []

    [upload] = stub.uploads()
    archive_id = re.fullmatch(r"ols-(.+)\.tar\.gz", upload["filename"])
    assert archive_id is not None
    assert upload["content_type"] == "application/vnd.redhat.ols.periodic+tar"
    headers = {name.lower(): value for name, value in upload["headers"].items()}
    assert headers["authorization"] == "Bearer ********"
    assert headers["user-agent"].startswith("lightspeed-collector/")
    assert "chunked" not in headers.get("transfer-encoding", "")
    assert int(headers["content-length"]) > upload["size"]

    records, manifest = archive_records(Path(upload["stored_as"]))
    assert manifest["archive_id"] == archive_id.group(1)
    assert manifest["record_counts"] == {"feedback": 9, "transcripts": 27}
    assert manifest["total_files"] == 36
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", manifest["created"])
    for entry in manifest["files"]:
        assert entry["sha256"] == hashlib.sha256(records[entry["name"]]).hexdigest()
    assert all(
        re.fullmatch(
            r"feedback/[0-9a-f-]{36}\.json|transcripts/[0-9a-f]{64}/[0-9a-f-]{36}/[0-9a-f-]{36}\.json",
            name,
        )
        for name in records
    )

    journal = [
        json.loads(line)
        for line in (tmp_path / "state" / "outbox" / "journal.jsonl").read_text().splitlines()
    ]
    assert [(e["event"], e["archive_id"], e["request_id"]) for e in journal] == [
        ("sent", archive_id.group(1), upload["request_id"])
    ]
    assert list((tmp_path / "state" / "outbox" / "ready").iterdir()) == []
    info = collector_lines(result.stderr)
    assert len(info) == 1 and "export cycle: packed 36 records into 1 archive" in info[0]


def test_archives_stay_under_max_archive_bytes(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs()
    originals = storage_records(data)
    limit = 4096
    config = write_export_config(tmp_path, data, stub.url, max_archive_bytes=limit)
    result = run_export(config)
    assert result.returncode == 0, result.stderr
    sizes = [upload["size"] for upload in stub.uploads()]
    assert len(sizes) > 3
    assert max(sizes) <= limit
    assert_exactly_once(originals, account(stub, data, tmp_path / "state"))


def test_nothing_to_export_is_a_quiet_success(tmp_path: Path, stubs: Callable[..., Stub]) -> None:
    stub = stubs()
    config = write_export_config(tmp_path, tmp_path / "empty", stub.url)
    result = run_export(config)
    assert result.returncode == 0, result.stderr
    assert stub.uploads() == []
    assert "packed 0 records into 0 archives" in result.stderr


def test_a_record_written_in_place_is_shipped_whole_never_half(
    tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    """Writers other than our sink (the reference service among them) write a record under
    its final name, with no temporary file. One caught halfway stays until its writer has
    finished; then it goes whole."""
    data = tmp_path / "data"
    (data / "feedback").mkdir(parents=True)
    stub = stubs()
    config = write_export_config(tmp_path, data, stub.url)
    record = json.dumps({"user_feedback": f"{MARKER} " + "many words " * 400}).encode()
    path = data / "feedback" / f"{uuid.uuid4()}.json"
    half_written = threading.Event()

    def write_in_place() -> None:
        with path.open("wb") as out:
            out.write(record[: len(record) // 2])
            out.flush()
            half_written.set()
            time.sleep(1.0)
            out.write(record[len(record) // 2 :])

    writer = threading.Thread(target=write_in_place)
    writer.start()
    try:
        assert half_written.wait(10)
        first = run_export(config)
    finally:
        writer.join()
    assert first.returncode == 0, first.stderr
    second = run_export(config)
    assert second.returncode == 0, second.stderr

    name = f"feedback/{path.name}"
    assert_exactly_once({name: record}, account(stub, data, tmp_path / "state"))
    assert not path.exists()


# -- faults at the receiver ------------------------------------------------------------------


def test_503_with_retry_after_is_honoured_then_delivered_once(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--fail-first", "2", "--fail-status", "503", "--retry-after", "1")
    originals = storage_records(data)
    config = write_export_config(tmp_path, data, stub.url, upload_attempts=5)
    started = time.monotonic()
    result = run_export(config)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    assert elapsed >= 2.0, "two Retry-After: 1 answers mean two waits of at least a second"
    assert "not accepted (attempt 1 of 5): http://" in result.stderr
    assert "answered 503 Service Unavailable" in result.stderr
    assert "retrying 1 archive in 1.0 s" in result.stderr
    assert stub.duplicates() == []
    assert_exactly_once(originals, account(stub, data, tmp_path / "state"))


def test_500_then_202_is_delivered_once(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--fail-first", "1", "--fail-status", "500")
    originals = storage_records(data)
    result = run_export(write_export_config(tmp_path, data, stub.url))
    assert result.returncode == 0, result.stderr
    assert len(stub.uploads()) == 1
    assert_exactly_once(originals, account(stub, data, tmp_path / "state"))


def test_413_splits_archives_until_the_receiver_takes_them(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    max_size = 5000
    stub = stubs("--max-size", str(max_size))
    # One record the receiver can never take, not even alone: random, so it cannot shrink.
    huge = data / "feedback" / "00000000-0000-4000-8000-000000000000.json"
    huge.write_bytes(os.urandom(8000).hex().encode())
    originals = storage_records(data)
    result = run_export(write_export_config(tmp_path, data, stub.url))
    assert result.returncode == 0, result.stderr
    assert "refused as too large" in result.stderr
    assert "split into" in result.stderr
    assert all(upload["size"] <= max_size for upload in stub.uploads())
    assert stub.duplicates() == []
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert set(found.on_disk) == {f"feedback/{huge.name}"}
    assert list((tmp_path / "state" / "quarantine" / "archives").iterdir())


def test_401_is_a_configuration_problem_and_a_fixed_token_then_delivers(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--token", "right-token")
    originals = storage_records(data)
    wrong = write_export_config(tmp_path, data, stub.url, ingress_server_auth_token="wrong-token")
    result = run_export(wrong)
    assert result.returncode == 2, result.stderr
    assert (
        "configuration problem: check user_data_collection.data_collector.ingress_server_auth_token"
        in result.stderr
    )
    assert stub.uploads() == []
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert set(found.on_disk) == set(originals), "refused records wait in the outbox"

    token_file = tmp_path / "token"
    token_file.write_text("right-token\n")
    fixed = write_export_config(
        tmp_path, data, stub.url, ingress_server_auth_token_file=str(token_file)
    )
    result = run_export(fixed)
    assert result.returncode == 0, result.stderr
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}


def test_415_names_the_service_name_setting(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--service", "ols")
    config = write_export_config(
        tmp_path, data, stub.url, ingress_content_service_name="someone-else"
    )
    result = run_export(config)
    assert result.returncode == 2
    assert "check user_data_collection.data_collector.ingress_content_service_name" in result.stderr


def test_slow_receiver_past_the_timeout_keeps_the_archive_for_later(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--stall-seconds", "5", "--stall-first", "1")
    originals = storage_records(data)
    config = write_export_config(
        tmp_path, data, stub.url, connection_timeout_seconds=0.5, upload_attempts=1
    )
    result = run_export(config)
    assert result.returncode == 1, result.stderr
    assert "did not answer within 0.5 s" in result.stderr
    wait_for(lambda: "discarded" in stub.log(), what="the stub to drop the abandoned upload")
    assert stub.uploads() == []
    assert_exactly_once(originals, account(stub, data, tmp_path / "state"))

    result = run_export(config)
    assert result.returncode == 0, result.stderr
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}


def test_a_2xx_without_request_id_counts_as_sent_with_a_warning(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--no-request-id")
    result = run_export(write_export_config(tmp_path, data, stub.url))
    assert result.returncode == 0, result.stderr
    assert "sent no request_id; counted as sent" in result.stderr
    assert storage_records(data) == {}


# -- kills -----------------------------------------------------------------------------------


def _kill_during_stall(config: Path, stub: Stub) -> None:
    exporter = subprocess.Popen(
        export_command(config, "--once"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: "stalling" in stub.log(), what="the upload to reach the stub")
    finally:
        exporter.send_signal(signal.SIGKILL)
        exporter.wait()


def test_sigkill_during_upload_then_restart_delivers_exactly_once(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--stall-seconds", "30", "--stall-first", "1")
    originals = storage_records(data)
    config = write_export_config(tmp_path, data, stub.url)
    _kill_during_stall(config, stub)
    wait_for(lambda: "discarded" in stub.log(), what="the stub to drop the abandoned upload")
    assert storage_records(data) == {}, "the sources went once the archive was durable"

    result = run_export(config)
    assert result.returncode == 0, result.stderr
    assert stub.duplicates() == []
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}


def test_sigkill_after_the_receiver_stored_it_resends_under_the_same_archive_id(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    """The one window the protocol leaves open: accepted, but the answer never arrived."""
    stub = stubs("--stall-seconds", "30", "--stall-first", "1", "--store-before-stall")
    originals = storage_records(data)
    config = write_export_config(tmp_path, data, stub.url)
    _kill_during_stall(config, stub)

    result = run_export(config)
    assert result.returncode == 0, result.stderr
    uploads = stub.uploads()
    assert len(uploads) == 2
    assert uploads[0]["filename"] == uploads[1]["filename"], "same archive id both times"
    assert [entry["duplicate_of"] for entry in uploads] == [None, uploads[0]["request_id"]]
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}


def test_sigkill_at_any_point_neither_loses_nor_duplicates_a_record(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    multiply_records(data, 25)
    originals = storage_records(data)
    assert len(originals) > 900
    stub = stubs()
    config = write_export_config(tmp_path, data, stub.url, max_archive_bytes=32768)
    outbox = tmp_path / "state" / "outbox"

    def names(state: str) -> set[str]:
        folder = outbox / state
        return set(os.listdir(folder)) if folder.exists() else set()

    def lines(path: Path) -> int:
        return path.read_bytes().count(b"\n") if path.exists() else 0

    def appears(state: str) -> Callable[[], bool]:
        before = names(state)
        return lambda: bool(names(state) - before)

    def grows(path: Path, by: int = 1) -> Callable[[], bool]:
        before = lines(path)
        return lambda: lines(path) >= before + by

    index = stub.store / "index.jsonl"
    journal = outbox / "journal.jsonl"
    # Each kill waits for a different step of this run to be under way: an archive being
    # written, an archive committed with its sources not yet removed, an upload landing at
    # the receiver (its receipt not yet written), a receipt written.
    moments: list[Callable[[], Callable[[], bool]]] = [
        lambda: appears("tmp"),
        lambda: appears("new"),
        lambda: appears("new"),
        lambda: appears("tmp"),
        lambda: grows(index),
        lambda: grows(journal),
        lambda: grows(index, 3),
        lambda: grows(journal, 5),
    ]
    killed_mid_work = 0
    for moment in moments:
        reached = moment()
        exporter = subprocess.Popen(
            export_command(config, "--once"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        while exporter.poll() is None and not reached():
            time.sleep(0.001)
        if exporter.poll() is None:
            killed_mid_work += 1
        exporter.send_signal(signal.SIGKILL)
        exporter.wait()
        assert_exactly_once(originals, account(stub, data, tmp_path / "state"))
    assert killed_mid_work >= 6, "the kills should land while the exporter is at work"
    result = run_export(config)
    assert result.returncode == 0, result.stderr
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}
    assert leftovers(data) == []


# -- two collectors --------------------------------------------------------------------------


def test_two_exporters_started_at_once_send_each_record_once(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    multiply_records(data, 25)
    originals = storage_records(data)
    stub = stubs()
    config = write_export_config(tmp_path, data, stub.url, max_archive_bytes=16384)
    exporters = [
        subprocess.Popen(export_command(config, "--once"), stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    # communicate() reads while waiting, so a chatty exporter cannot fill its pipe and stall.
    outcomes = [(process.communicate(timeout=60)[1], process.returncode) for process in exporters]
    assert [code for _, code in outcomes] == [0, 0, 0], outcomes
    assert stub.duplicates() == []
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert found.on_disk == {}


def test_collectors_with_separate_state_folders_still_exclude_each_other(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    """The storage folders are locked too, so sharing only the storage is safe."""
    originals = storage_records(data)
    stub = stubs("--stall-seconds", "2", "--stall-first", "1")
    first = write_export_config(tmp_path / "a", data, stub.url)
    second = write_export_config(tmp_path / "b", data, stub.url, lock_wait_seconds=0)
    exporter = subprocess.Popen(export_command(first, "--once"), stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: "stalling" in stub.log(), what="the first upload")
        result = run_export(second)
        assert "export cycle skipped: another collector holds" in result.stderr
        assert result.returncode == 0, "its own outbox is empty"
    finally:
        assert exporter.wait(30) == 0
    assert stub.duplicates() == []
    assert_exactly_once(originals, account(stub, data, tmp_path / "a" / "state"))


# -- logs, imports, configuration ------------------------------------------------------------


def test_records_the_exporter_may_not_remove_are_held_back_not_sent_every_cycle(
    recorded: Path, shared_tmp: Path, stubs: Callable[..., Stub]
) -> None:
    """Sent but impossible to remove, a record would go out again with every cycle; and a
    failed removal must not wedge the exporter for every other record."""
    data = shared_tmp / "data"
    copy_storage(recorded, data)
    originals = storage_records(data)
    held_folder = next((data / "transcripts").iterdir())
    held = {name: body for name, body in originals.items() if held_folder.name in name}
    stub = stubs()
    config = write_export_config(shared_tmp, data, stub.url)
    prefix = unprivileged()
    if prefix:  # root: everything belongs to the unprivileged user but the held folder
        for path in [shared_tmp / "state", *data.rglob("*"), data]:
            if not path.exists():
                path.mkdir(mode=0o700)
            os.chown(path, NOBODY, NOBODY)
        for path in [held_folder, *held_folder.rglob("*")]:
            os.chown(path, 0, 0)
            path.chmod(0o755 if path.is_dir() else 0o644)
    else:
        for path in [held_folder, *held_folder.iterdir()]:
            path.chmod(0o555)

    for _ in range(2):
        result = subprocess.run(
            [*prefix, *export_command(config, "--once")], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        assert "are not exported: this process may not remove files there" in result.stderr

    sent = [archive_records(Path(upload["stored_as"]))[0] for upload in stub.uploads()]
    assert len(sent) == 1
    assert sent[0] == {name: body for name, body in originals.items() if name not in held}
    assert storage_records(data) == held


def test_logs_show_each_step_but_never_a_token_or_record_content(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    token = "tok-3f9a1c-never-logged"
    stub = stubs("--token", token, "--fail-first", "1")
    config = write_export_config(
        tmp_path, data, stub.url, log_level="debug", ingress_server_auth_token=token
    )
    result = run_export(config)
    assert result.returncode == 0, result.stderr
    log = result.stderr
    assert token not in log
    assert MARKER not in log
    for expected in (
        "export cycle started",
        "archive .* built: \\d+ bytes, 36 members \\(9 feedback, 27 transcripts\\)",
        "36 source files removed",
        "uploading archive",
        "not accepted \\(attempt 1 of 5\\): .* answered 503",
        "accepted: status 202, request id [0-9a-f]{32}",
        "removed from the outbox",
    ):
        assert re.search(expected, log), expected
    assert token not in stub.log() and MARKER not in stub.log()


def test_export_loads_neither_the_web_stack_nor_metrics_nor_jsonschema(tmp_path: Path) -> None:
    # A valid configuration is confirmed by the compiled fast check; jsonschema is only
    # needed to explain a broken one.
    config = write_export_config(tmp_path, tmp_path / "data", "http://127.0.0.1:9/upload")
    heavy = ["falcon", "waitress", "prometheus_client", "jsonschema", "referencing"]
    probe = (
        "import sys\n"
        "from lightspeed_collector import cli\n"
        f"code = cli.main(['export', '--once', '-c', {str(config)!r}])\n"
        f"heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert result.stdout.strip() == "0 []", result.stdout + result.stderr


@pytest.mark.parametrize(
    ("collector", "message"),
    [
        (
            {"ingress_server_url": None},
            "user_data_collection.data_collector.ingress_server_url: ingress_server_url is required",
        ),
        (
            {"exporter": "carrier-pigeon"},
            "user_data_collection.data_collector.exporter: 'carrier-pigeon' is not installed",
        ),
        (
            {"ingress_server_auth_token_file": "/nonexistent/token"},
            "user_data_collection.data_collector.ingress_server_auth_token_file: cannot read",
        ),
    ],
)
def test_configuration_errors_exit_with_status_2(
    tmp_path: Path, collector: dict[str, object], message: str
) -> None:
    config = write_export_config(tmp_path, tmp_path / "data", "http://127.0.0.1:9/upload")
    settings = yaml.safe_load(config.read_text())
    settings["user_data_collection"]["data_collector"].update(collector)
    config.write_text(yaml.safe_dump(settings))
    result = run_export(config)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


# -- inside serve ----------------------------------------------------------------------------


def serve_with_collector(
    recorded: Path, tmp_path: Path, server_factory: Callable[..., RunningServer], stub: Stub
) -> tuple[RunningServer, dict[str, bytes]]:
    """A real `serve` over a copy of the recorded storage, its collector pointed at ``stub``
    (first cycle at start, the next only after an hour)."""
    root = tmp_path / "server"
    copy_storage(recorded, root)
    originals = storage_records(root)
    server = server_factory(
        {
            "user_data_collection": {
                "data_collector": {
                    "enabled": True,
                    "ingress_server_url": stub.url,
                    "ingress_content_service_name": "ols",
                    "collection_interval": 3600,
                }
            }
        },
        name="server",
    )
    return server, originals


def test_serve_collects_in_the_background_and_ships_the_rest_on_sigterm(
    recorded: Path,
    tmp_path: Path,
    server_factory: Callable[..., RunningServer],
    stubs: Callable[..., Stub],
) -> None:
    stub = stubs("--stall-seconds", "3", "--stall-first", "1")
    server, originals = serve_with_collector(recorded, tmp_path, server_factory, stub)
    root = server.root
    # The first cycle's upload is stalled at the stub: the service must keep answering.
    wait_for(lambda: "stalling" in stub.log(), what="the first cycle's upload")
    started = time.monotonic()
    answer = requests.post(
        f"{server.url}/v1/query",
        json={"query": "still there?"},
        params={"user_id": "dave"},
        timeout=10,
    )
    assert answer.status_code == 200
    assert time.monotonic() - started < 2.0
    wait_for(lambda: len(stub.uploads()) == 1, what="the first cycle's upload to land")

    # Stored after the first cycle: only the final cycle on SIGTERM can ship these.
    for n in range(3):
        reply = requests.post(
            f"{server.url}/v1/query",
            json={"query": f"late {n}"},
            params={"user_id": "erin"},
            timeout=10,
        )
        assert reply.status_code == 200
    late = {
        name: content for name, content in storage_records(root).items() if name not in originals
    }
    assert len(late) == 4
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    assert "running a final export cycle" in server.log()
    found = account(stub, root, root / "state")
    assert_exactly_once({**originals, **late}, found)
    assert found.on_disk == {}
    assert stub.duplicates() == []


# -- the loop and its stop -------------------------------------------------------------------


def _add_records(data: Path, count: int) -> None:
    """New feedback records, written as the sink writes them."""
    for _ in range(count):
        record_id = uuid.uuid4()
        temp = data / "feedback" / f".{record_id}.tmp"
        temp.write_bytes(json.dumps({"late": str(record_id)}).encode())
        temp.rename(data / "feedback" / f"{record_id}.json")


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_the_export_loop_ships_what_arrived_before_the_stop(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub], stop_signal: signal.Signals
) -> None:
    stub = stubs()
    config = write_export_config(tmp_path, data, stub.url, collection_interval=3600)
    with subprocess.Popen(export_command(config), stderr=subprocess.PIPE, text=True) as exporter:
        try:
            wait_for(lambda: len(stub.uploads()) == 1, what="the first cycle")
            _add_records(data, 5)
            originals = {**storage_records(data)}
            assert len(originals) == 5
            exporter.send_signal(stop_signal)
            stderr = exporter.communicate(timeout=30)[1]
        finally:
            if exporter.poll() is None:
                exporter.kill()
    assert exporter.returncode == 0, stderr
    assert "running a final export cycle" in stderr
    assert len(stub.uploads()) == 2
    last, _ = archive_records(Path(stub.uploads()[1]["stored_as"]))
    assert last == originals
    assert storage_records(data) == {}


def test_the_final_cycle_is_bounded_in_time(
    data: Path, tmp_path: Path, stubs: Callable[..., Stub]
) -> None:
    stub = stubs("--stall-seconds", "60")
    originals = storage_records(data)
    config = write_export_config(
        tmp_path,
        data,
        stub.url,
        shutdown_timeout_seconds=1,
        connection_timeout_seconds=2,
        upload_attempts=5,
    )
    with subprocess.Popen(export_command(config), stderr=subprocess.PIPE, text=True) as exporter:
        try:
            wait_for(lambda: "stalling" in stub.log(), what="an upload in flight")
            started = time.monotonic()
            exporter.send_signal(signal.SIGTERM)
            exporter.communicate(timeout=30)
            elapsed = time.monotonic() - started
        finally:
            if exporter.poll() is None:
                exporter.kill()
    assert exporter.returncode == 1, "the archive waits in the outbox"
    assert elapsed < 1 + 2 + 2, f"took {elapsed:.1f} s"
    found = account(stub, data, tmp_path / "state")
    assert_exactly_once(originals, found)
    assert set(found.on_disk) == set(originals)


# -- metrics -----------------------------------------------------------------------------------


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_serve_exposes_export_metrics(
    recorded: Path,
    tmp_path: Path,
    stubs: Callable[..., Stub],
    server_factory: Callable[..., RunningServer],
) -> None:
    # Fixtures are torn down in reverse: the server (and its final cycle) stops while the
    # receiver still answers, instead of retrying against a stopped one.
    stub = stubs("--fail-first", "1", "--fail-status", "503", "--retry-after", "1")
    server, originals = serve_with_collector(recorded, tmp_path, server_factory, stub)

    def scrape() -> str:
        return requests.get(f"{server.url}/metrics", timeout=10).text

    wait_for(lambda: metric(scrape(), "lightspeed_export_archives_total") == 1.0, what="an export")
    text = scrape()
    assert metric(text, "lightspeed_export_records_total") == len(originals)
    bytes_sent = metric(text, "lightspeed_export_bytes_total")
    assert bytes_sent is not None and bytes_sent > 0
    assert 'lightspeed_export_failures_total{reason="unavailable"} 1.0' in text

    time.sleep(2.1)  # past the backlog measurement's cache
    text = scrape()
    assert metric(text, "lightspeed_export_backlog_files") == 0.0
    assert metric(text, "lightspeed_export_outbox_archives") == 0.0
    assert metric(text, "lightspeed_export_oldest_unexported_age_seconds") == 0.0

    answer = requests.post(f"{server.url}/v1/query", json={"query": "one more"}, timeout=10)
    assert answer.status_code == 200
    time.sleep(2.1)
    text = scrape()
    assert metric(text, "lightspeed_export_backlog_files") == 1.0
    backlog_bytes = metric(text, "lightspeed_export_backlog_bytes")
    assert backlog_bytes is not None and backlog_bytes > 0
    age = metric(text, "lightspeed_export_oldest_unexported_age_seconds")
    assert age is not None and 0.0 <= age < 60
