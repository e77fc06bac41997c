"""Shared fixtures: configurations under tmp_path and a real server process on loopback."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from lightspeed_collector.config import Config, build_config
from tests.export_support import Stub, start_stub
from tests.openai_standin import StandIn

NOBODY = 65534


def unprivileged() -> list[str]:
    """A command prefix that runs as a user to whom permission bits apply: none needed for
    anyone but root, to whom they do not; root drops to nobody with setpriv."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root, and setpriv is not there to run as another user")
    return [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder another user can reach (pytest's own is private to the user running it)."""
    folder = Path(tempfile.mkdtemp(prefix="lightspeed-shared-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        for directory, subdirectories, _ in os.walk(folder):
            for name in subdirectories:
                os.chmod(os.path.join(directory, name), 0o755)
        shutil.rmtree(folder)


def base_settings(root: Path) -> dict[str, Any]:
    return {
        "service": {"host": "127.0.0.1", "port": 0, "state_dir": str(root / "state")},
        "user_data_collection": {
            "feedback_storage": str(root / "feedback"),
            "transcripts_storage": str(root / "transcripts"),
        },
    }


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def run_config_check(root: Path, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """``lightspeed-collector config check`` on the base settings under ``root`` plus ``extra``."""
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(merge(base_settings(root), extra)))
    return subprocess.run(
        [sys.executable, "-m", "lightspeed_collector", "config", "check", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def plugins_listing(cwd: Path, *options: str) -> str:
    """What ``lightspeed-collector plugins`` (the installed script) prints."""
    script = Path(sys.executable).parent / "lightspeed-collector"
    result = subprocess.run(
        [str(script), "plugins", *options],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        check=True,
    )
    return result.stdout


def listed_plugins(cwd: Path) -> dict[str, dict[str, Any]]:
    """The plugins listing as JSON, by plugin name."""
    return {row["name"]: row for row in json.loads(plugins_listing(cwd, "--format", "json"))}


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., Config]:
    """Build a validated Config whose storage lives under tmp_path."""

    def make(extra: dict[str, Any] | None = None) -> Config:
        return build_config(merge(base_settings(tmp_path), extra or {}))

    return make


@dataclass
class RunningServer:
    url: str
    root: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text("utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_server(
    root: Path,
    extra: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
    prefix: list[str] | None = None,
) -> RunningServer:
    """Start ``lightspeed-collector serve`` on a free loopback port and wait until ready;
    ``prefix`` goes before the command (``unprivileged()``, to run as another user)."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "config.yaml"
    config_path.write_text(yaml.safe_dump(merge(base_settings(root), extra or {})))
    log_path = root / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                *(prefix or []),
                sys.executable,
                "-m",
                "lightspeed_collector",
                "serve",
                "-c",
                str(config_path),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=root,
            env={**os.environ, **(env or {})},
        )
    deadline = time.monotonic() + 30
    url = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        found = re.search(
            r"listening on (http://[^\s\"]+)", log_path.read_text("utf-8", errors="replace")
        )
        if found:
            url = found.group(1)
            try:
                if requests.get(f"{url}/liveness", timeout=2).status_code == 200:
                    return RunningServer(url, root, process, log_path)
            except requests.ConnectionError:
                pass
        time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"server did not become ready (url={url}):\n{log_path.read_text()}")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., RunningServer]]:
    servers: list[RunningServer] = []

    def factory(
        extra: dict[str, Any] | None = None, name: str = "server", env: dict[str, str] | None = None
    ) -> RunningServer:
        server = start_server(tmp_path / name, extra, env)
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def server(server_factory: Callable[..., RunningServer]) -> RunningServer:
    return server_factory()


@pytest.fixture
def stubs(tmp_path: Path) -> Iterator[Callable[..., Stub]]:
    """Starts ingress stubs (real processes) on demand; each is stopped after the test."""
    started: list[Stub] = []

    def start(*options: str, name: str = "stub") -> Stub:
        stub = start_stub(tmp_path / name, *options)
        started.append(stub)
        return stub

    yield start
    for stub in started:
        stub.stop()


@pytest.fixture
def standin() -> Iterator[StandIn]:
    """A fake OpenAI-compatible model server; its ``slow`` answers take 2.5 s."""
    server = StandIn(slow_seconds=2.5).start()
    yield server
    server.stop()


def openai_settings(standin: StandIn, **settings: Any) -> dict[str, Any]:
    """Service settings whose default provider, ``llm``, is an openai instance asking
    ``standin``; ``settings`` add to or replace the instance's own."""
    instance = {
        "type": "openai",
        "url": standin.url,
        "model": "gpt-4o-mini",
        "timeout_seconds": 1,
        **settings,
    }
    return {"query": {"default_provider": "llm", "providers": {"llm": instance}}}
