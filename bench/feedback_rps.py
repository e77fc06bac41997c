"""How many feedbacks per second the service stores, against a bare Falcon+waitress app.

Both servers run as separate processes on loopback and are driven by the same client: N
threads with keep-alive connections posting the same feedback body for a fixed time. The
service runs with its defaults (fsync on, regex redaction, schema validation, access log);
the baseline only reads the body and answers 200. Rounds alternate A, B, A, B so drift of a
shared machine hits both; the medians and their ratio are printed, and, where ``/proc``
exists, each server's CPU time per request, which shows where the difference comes from.

Target: the service sustains at least 50% of the bare app's rate.

    python bench/feedback_rps.py [--clients 8] [--seconds 5] [--rounds 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from servers import start_server

HERE = Path(__file__).resolve().parent


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> int:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    response.read()
    return response.status


def drive(url: str, body: bytes, clients: int, seconds: float) -> float:
    """Requests per second answered 200 by ``url`` under ``clients`` concurrent clients."""
    parts = urlsplit(url)
    counts = [0] * clients
    errors: list[int] = []
    start_line = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(index: int) -> None:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        start_line.wait()
        while time.monotonic() < stop_at[0]:
            status = post(conn, "/v1/feedback", body)
            if status == 200:
                counts[index] += 1
            else:
                errors.append(status)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    stop_at[0] = time.monotonic() + seconds
    started = time.monotonic()
    start_line.wait()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    if errors:
        raise SystemExit(f"{len(errors)} requests failed, e.g. status {errors[0]}")
    return sum(counts) / elapsed


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process so far, or ``None`` where ``/proc`` is absent."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed_drive(
    process: subprocess.Popen[bytes], url: str, body: bytes, clients: int, seconds: float
) -> tuple[float, float | None]:
    """The rate, and the server's CPU time per request in µs: where its time goes."""
    before = cpu_seconds(process.pid)
    rate = drive(url, body, clients, seconds)
    after = cpu_seconds(process.pid)
    if before is None or after is None:
        return rate, None
    return rate, (after - before) / (rate * seconds) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", action="store_true", help="diagnosis only: skip fsync")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="feedback-bench-") as tmp:
        root = Path(tmp)
        config = {
            "service": {"port": 0, "state_dir": str(root / "state")},
            "user_data_collection": {
                "feedback_storage": str(root / "feedback"),
                "transcripts_storage": str(root / "transcripts"),
            },
        }
        if args.no_fsync:
            config["plugins"] = {"filesystem": {"fsync": False}}
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        ours, ours_url = start_server(
            [
                sys.executable,
                "-m",
                "lightspeed_collector",
                "serve",
                "-c",
                str(root / "config.yaml"),
            ],
            root / "service.log",
            root,
        )
        bare, bare_url = start_server(
            [sys.executable, str(HERE / "bare_app.py"), "8"], root / "bare.log", root
        )
        try:
            parts = urlsplit(ours_url)
            conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            conn.request(
                "POST",
                "/v1/query",
                body=b'{"query": "hello"}',
                headers={"Content-Type": "application/json"},
            )
            conversation_id = json.loads(conn.getresponse().read())["conversation_id"]
            conn.close()
            body = json.dumps(
                {
                    "conversation_id": conversation_id,
                    "user_question": "How do I scale a deployment to five replicas?",
                    "llm_response": "Run kubectl scale deployment/web --replicas=5, or set spec.replicas.",
                    "sentiment": 1,
                    "user_feedback": "Clear and correct, thanks.",
                    "categories": ["other"],
                }
            ).encode()
            drive(ours_url, body, args.clients, 1.0)  # warm-up
            drive(bare_url, body, args.clients, 1.0)
            ours_rates, bare_rates, ratios = [], [], []
            ours_cpu: list[float] = []
            bare_cpu: list[float] = []
            for _ in range(args.rounds):
                a, a_cpu = timed_drive(ours, ours_url, body, args.clients, args.seconds)
                b, b_cpu = timed_drive(bare, bare_url, body, args.clients, args.seconds)
                ours_rates.append(a)
                bare_rates.append(b)
                ratios.append(a / b)
                if a_cpu is not None and b_cpu is not None:
                    ours_cpu.append(a_cpu)
                    bare_cpu.append(b_cpu)
            stored = sum(1 for _ in (root / "feedback").glob("*.json"))
        finally:
            for process in (ours, bare):
                process.terminate()
                process.wait(timeout=15)

    fsync = "off" if args.no_fsync else "on"
    print(f"clients={args.clients} seconds={args.seconds} rounds={args.rounds} fsync={fsync}")
    print(
        f"service   feedback/s: median {statistics.median(ours_rates):8.1f}  rounds {[round(r) for r in ours_rates]}"
    )
    print(
        f"bare app  requests/s: median {statistics.median(bare_rates):8.1f}  rounds {[round(r) for r in bare_rates]}"
    )
    print(
        f"ratio service/bare:   median {statistics.median(ratios):.2f}  rounds {[round(r, 2) for r in ratios]}  (target >= 0.50)"
    )
    if ours_cpu:
        print(
            f"server CPU per request (user + system): service {statistics.median(ours_cpu):.0f} µs, "
            f"bare app {statistics.median(bare_cpu):.0f} µs"
        )
    print(f"feedback files stored: {stored}")


if __name__ == "__main__":
    main()
