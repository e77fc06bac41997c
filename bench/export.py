"""How fast ``export --once`` ships a backlog, against ``tar czf`` of the same folders.

Generates records laid out as the filesystem sink writes them (``feedback/<uuid>.json``,
``transcripts/<user>/<conversation>/<uuid>.json``, about 1.5 KB each, five transcripts for
every feedback), then, in the same run and from the same freshly copied and flushed files:

  (a) ``tar czf`` of the two folders (the baseline: reading and compressing, nothing else);
  (b) ``lightspeed-collector export --once`` to ``ingress-stub`` on loopback: scan, pack,
      make the outbox durable (fsync), remove the sources, upload, clean up.

It also times ``rm -rf`` of the same folders: removing the sources is part of (b) and of no
``tar`` run, and on some filesystems (mounted with ``discard``, network volumes) deleting a
file costs more than reading and compressing it, which b/(a+rm) makes visible.

Prints both wall times (median of the rounds), the ratio b/a, files per second and the
exporter's peak RSS, then repeats (b) once at ``--memory-records`` for the memory figure.

Targets: b/a <= 1.5; peak RSS <= 50 MB at both sizes. RSS is printed in MiB (what the kernel
counts, 1024 * 1024 bytes) and, for the verdict, in MB (10^6 bytes), the stricter reading.

    python bench/export.py [--records 12000] [--memory-records 100000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import yaml
from bytecode import compile_package
from servers import start_server

VOCABULARY = (
    "the cluster pod node deployment service route operator upgrade error log failed "
    "pending running image registry namespace secret config map volume claim storage "
    "network policy why does my how can I restart scale rollout build pipeline"
)

# Runs a command and reports its wall time and peak RSS: RUSAGE_CHILDREN of this small
# wrapper covers exactly the one child, whatever else the benchmark has started.
_MEASURE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
elapsed = time.perf_counter() - started
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(json.dumps({"code": code, "seconds": elapsed, "peak_kib": peak_kib}))
"""


def generate(root: Path, records: int, seed: int = 1) -> int:
    """Write ``records`` files (5/6 transcripts, 1/6 feedback); answers the bytes written."""
    rng = random.Random(seed)
    vocabulary = VOCABULARY.split()

    def text(count: int) -> str:
        return " ".join(rng.choice(vocabulary) for _ in range(count))

    def new_id() -> str:
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))

    feedback_count = records // 6
    transcript_count = records - feedback_count
    users = [hashlib.sha256(f"user-{n}".encode()).hexdigest() for n in range(max(1, records // 60))]
    conversations = [(rng.choice(users), new_id()) for _ in range(max(1, transcript_count // 10))]
    feedback_dir = root / "feedback"
    feedback_dir.mkdir(parents=True, mode=0o700)
    (root / "transcripts").mkdir(mode=0o700)
    total = 0
    for n in range(transcript_count):
        user, conversation = conversations[n % len(conversations)]
        folder = root / "transcripts" / user / conversation
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        record = {
            "metadata": {
                "provider": "echo",
                "model": "echo-1",
                "query_provider": "echo",
                "query_model": "echo-1",
                "user_id": user,
                "conversation_id": conversation,
                "timestamp": "2024-01-01T12:00:00.000000Z",
            },
            "redacted_query": text(30),
            "query_is_valid": True,
            "llm_response": text(130),
            "rag_chunks": [],
            "truncated": False,
            "attachments": [],
        }
        total += _write(folder / f"{new_id()}.json", record)
    for _ in range(feedback_count):
        user, conversation = rng.choice(conversations)
        record = {
            "user_id": user,
            "timestamp": "2024-01-01T12:00:00.000000Z",
            "conversation_id": conversation,
            "user_question": text(30),
            "llm_response": text(140),
            "sentiment": rng.choice([-1, 1]),
            "user_feedback": text(15),
            "categories": ["incorrect"],
        }
        total += _write(feedback_dir / f"{new_id()}.json", record)
    return total


def _write(path: Path, record: dict[str, object]) -> int:
    data = (json.dumps(record) + "\n").encode()
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    return len(data)


def measure(command: list[str]) -> dict[str, float]:
    output = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, float] = json.loads(output)
    if result["code"] != 0:
        raise SystemExit(f"{' '.join(command)} exited with {result['code']}")
    return result


def fresh_copy(master: Path, work: Path) -> None:
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(master, work, symlinks=True)
    # Flush the copy now: otherwise the exporter's first fsync would pay for writing it.
    os.sync()


def start_stub(store: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    command = [sys.executable, "-m", "lightspeed_collector", "ingress-stub", "--port", "0"]
    return start_server([*command, "--store", str(store)], log)


def write_config(folder: Path, data: Path, url: str) -> Path:
    config = {
        "service": {"state_dir": str(folder / "state"), "log_level": "warning"},
        "user_data_collection": {
            "feedback_storage": str(data / "feedback"),
            "transcripts_storage": str(data / "transcripts"),
            "data_collector": {
                "ingress_server_url": url,
                "ingress_content_service_name": "ols",
            },
        },
    }
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def count_files(folder: Path) -> int:
    return sum(1 for path in folder.rglob("*.json") if path.is_file())


def run(records: int, rounds: int, scratch: Path, label: str) -> dict[str, float]:
    master = scratch / f"master-{records}"
    started = time.perf_counter()
    size = generate(master, records)
    os.sync()
    print(
        f"[{label}] generated {records} records ({size / 1048576:.1f} MiB) in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    store = scratch / f"store-{records}"
    stub, url = start_stub(store, scratch / f"stub-{records}.log")
    exporter = [sys.executable, "-m", "lightspeed_collector", "export", "--once"]
    tar_times: list[float] = []
    removal_times: list[float] = []
    export_times: list[float] = []
    peaks: list[float] = []
    try:
        for round_number in range(1, rounds + 1):
            work = scratch / f"work-{records}"
            fresh_copy(master, work / "data")
            tar = measure(
                [
                    "tar",
                    "czf",
                    str(work / "baseline.tar.gz"),
                    "-C",
                    str(work / "data"),
                    "feedback",
                    "transcripts",
                ]
            )
            # Deleting the sources is part of (b) and of no tar run; time it alone too, so a
            # filesystem where deletes are dear (e.g. mounted with discard) shows as such.
            removal = measure(["rm", "-rf", str(work / "data")])
            fresh_copy(master, work / "data")
            config = write_config(work, work / "data", url)
            exported = measure([*exporter, "-c", str(config)])
            left = count_files(work / "data")
            if left:
                raise SystemExit(f"{left} records were left behind")
            tar_times.append(tar["seconds"])
            removal_times.append(removal["seconds"])
            export_times.append(exported["seconds"])
            peaks.append(exported["peak_kib"] * 1024)
            print(
                f"[{label}] round {round_number}: tar czf {tar['seconds']:.2f} s, "
                f"rm -rf {removal['seconds']:.2f} s, export --once {exported['seconds']:.2f} s, "
                f"exporter peak RSS {exported['peak_kib'] / 1024:.1f} MiB",
                flush=True,
            )
    finally:
        stub.terminate()
        stub.wait(10)
    listing = [json.loads(line) for line in (store / "index.jsonl").read_text().splitlines()]
    duplicates = [entry for entry in listing if entry["duplicate_of"]]
    if duplicates:
        raise SystemExit(f"the stub saw duplicate uploads: {duplicates}")
    tar_median = statistics.median(tar_times)
    removal_median = statistics.median(removal_times)
    export_median = statistics.median(export_times)
    return {
        "records": records,
        "tar_seconds": tar_median,
        "rm_seconds": removal_median,
        "export_seconds": export_median,
        "ratio": export_median / tar_median,
        "ratio_with_rm": export_median / (tar_median + removal_median),
        "files_per_second": records / export_median,
        "peak_rss_bytes": max(peaks),
        "archives_uploaded": len(listing),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=12000)
    parser.add_argument("--memory-records", type=int, default=100000, help="0 skips the memory run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--dir", help="where to put the records (default: the system's temporary folder)"
    )
    args = parser.parse_args()
    compile_package()
    with tempfile.TemporaryDirectory(prefix="export-bench-", dir=args.dir) as scratch_name:
        scratch = Path(scratch_name)
        results = [run(args.records, args.rounds, scratch, "speed")]
        if args.memory_records:
            results.append(run(args.memory_records, 1, scratch, "memory"))
    print()
    print(
        f"{'records':>8} {'tar czf':>8} {'rm -rf':>8} {'export':>8} {'b/a':>6} "
        f"{'b/(a+rm)':>9} {'files/s':>8} {'peak RSS':>9}"
    )
    for result in results:
        print(
            f"{result['records']:>8} {result['tar_seconds']:>7.2f}s {result['rm_seconds']:>7.2f}s "
            f"{result['export_seconds']:>7.2f}s {result['ratio']:>6.2f} "
            f"{result['ratio_with_rm']:>9.2f} {result['files_per_second']:>8.0f} "
            f"{result['peak_rss_bytes'] / 2**20:>6.1f}MiB"
        )
    speed = results[0]
    verdict = "meets" if speed["ratio"] <= 1.5 else "MISSES"
    print(f"\nb/a = {speed['ratio']:.2f} ({verdict} the target of 1.5)")
    worst = max(result["peak_rss_bytes"] for result in results)
    verdict = "meets" if worst <= 50e6 else "MISSES"
    print(
        f"peak RSS {worst / 2**20:.1f} MiB = {worst / 1e6:.1f} MB ({verdict} the target of 50 MB)"
    )


if __name__ == "__main__":
    main()
