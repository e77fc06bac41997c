"""Starting a server process for a benchmark and learning the address it listens on.

Servers are started on port 0 and log ``listening on http://HOST:PORT``; reading that line
back avoids guessing free ports.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path


def start_server(
    command: list[str], log: Path, cwd: Path | None = None, timeout: float = 30
) -> tuple[subprocess.Popen[bytes], str]:
    """Start ``command`` with its output in ``log``; return the process and its base URL."""
    handle = log.open("wb")
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, cwd=cwd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(r"listening on (http://\S+)", log.read_text(errors="replace"))
        if found:
            return process, found.group(1)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    raise SystemExit(f"server did not start: {' '.join(command)}\n{log.read_text()}")
