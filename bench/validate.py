"""How fast `lightspeed-collector validate` checks a large folder, against check-jsonschema.

Generates 10,000 transcripts, then times, in this one run and on the very same files, both
commands as a CI job would call them (start-up included):

    lightspeed-collector validate FILE...
    check-jsonschema --schemafile transcript.json FILE...

check-jsonschema is given a self-contained copy of schemas/transcript.json (its references to
schemas/common.json inlined by `lightspeed-collector schemas --standalone`), so both check
exactly the same rules. It comes from PyPI, installed into a private venv under the system
temp folder on first use (or pass --check-jsonschema PATH). Target: ours at least 5x faster.

Run: .venv/bin/python bench/validate.py [--files 10000] [--repeat 1]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bytecode import compile_package

OURS = Path(sys.executable).parent / "lightspeed-collector"
PRIVATE_VENV = Path(tempfile.gettempdir()) / "lightspeed-collector-bench-check-jsonschema"

WORDS = (
    "pod", "node", "deployment", "restart", "crash", "log", "error", "namespace", "volume",
    "secret", "route", "service", "image", "registry", "pull", "timeout", "memory", "limit",
    "cpu", "quota", "operator", "upgrade", "cluster", "network",
)  # fmt: skip


def transcript(rng: random.Random) -> dict[str, object]:
    user = hashlib.sha256(str(rng.random()).encode()).hexdigest()
    conversation = str(uuid.UUID(int=rng.getrandbits(128), version=4))

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(words))

    return {
        "metadata": {
            "provider": "openai",
            "model": "granite-3-8b-instruct",
            "query_provider": None,
            "query_model": None,
            "user_id": user,
            "conversation_id": conversation,
            "timestamp": f"2026-11-{rng.randint(10, 28)}T{rng.randint(10, 23)}:{rng.randint(10, 59)}:{rng.randint(10, 59)}.{rng.randint(0, 999999):06}Z",
        },
        "redacted_query": text(rng.randint(8, 30)),
        "query_is_valid": True,
        "llm_response": text(rng.randint(60, 250)),
        "rag_chunks": [
            {"text": text(40), "source": f"https://docs.example.com/{rng.choice(WORDS)}"}
            for _ in range(rng.randint(0, 3))
        ],
        "truncated": False,
        "attachments": [
            {"attachment_type": "log", "content_type": "text/plain", "content": text(50)}
            for _ in range(rng.randint(0, 2))
        ],
    }


def generate(folder: Path, count: int) -> list[str]:
    rng = random.Random(6)
    names = []
    for index in range(count):
        relative = f"t/{index // 1000:02}/{index:05}.json"
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(transcript(rng), indent=2), "utf-8")
        names.append(relative)
    return names


def find_check_jsonschema(given: str | None) -> Path:
    if given:
        return Path(given)
    for candidate in (
        shutil.which("check-jsonschema"),
        Path(sys.executable).parent / "check-jsonschema",
        PRIVATE_VENV / "bin" / "check-jsonschema",
    ):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    print(f"installing check-jsonschema from PyPI into {PRIVATE_VENV} ...", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(PRIVATE_VENV)], check=True)
    subprocess.run(
        [str(PRIVATE_VENV / "bin" / "python"), "-m", "pip", "install", "-q", "check-jsonschema"],
        check=True,
    )
    return PRIVATE_VENV / "bin" / "check-jsonschema"


def timed(command: list[str], cwd: Path, expect: int) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if result.returncode != expect:
        raise SystemExit(
            f"{command[0]} exited {result.returncode}, expected {expect}:\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each; the best counts")
    parser.add_argument("--check-jsonschema", help="path of a check-jsonschema executable")
    args = parser.parse_args()

    compile_package()
    checker = find_check_jsonschema(args.check_jsonschema)
    with tempfile.TemporaryDirectory(prefix="validate-bench-") as temporary:
        work = Path(temporary)
        print(f"generating {args.files} transcripts ...", file=sys.stderr)
        files = generate(work, args.files)
        size = sum((work / name).stat().st_size for name in files)
        schema = work / "transcript.standalone.json"
        with schema.open("w", encoding="utf-8") as handle:
            subprocess.run(
                [str(OURS), "schemas", "--standalone", "transcript"], stdout=handle, check=True
            )
        ours_command = [str(OURS), "validate", "--kind", "transcript", *files]
        theirs_command = [str(checker), "--schemafile", str(schema), *files]
        env_note = f"{os.cpu_count()} cores"

        # Both must see the same rules: one broken record fails both.
        broken = work / "broken.json"
        record = json.loads((work / files[0]).read_text("utf-8"))
        record["metadata"]["user_id"] = "not-a-pseudonym"
        broken.write_text(json.dumps(record), "utf-8")
        timed([str(OURS), "validate", "--kind", "transcript", "broken.json"], work, 1)
        timed([str(checker), "--schemafile", str(schema), "broken.json"], work, 1)

        ours = min(timed(ours_command, work, 0) for _ in range(args.repeat))
        theirs = min(timed(theirs_command, work, 0) for _ in range(args.repeat))

    print(f"{args.files} transcripts, {size / 1e6:.1f} MB, {env_note}")
    print(f"lightspeed-collector validate:  {ours:7.2f} s  ({args.files / ours:8.0f} files/s)")
    print(f"check-jsonschema:               {theirs:7.2f} s  ({args.files / theirs:8.0f} files/s)")
    print(f"ratio: {theirs / ours:.1f}x faster (target: at least 5x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
