"""The installed console script and the plugins listing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from lightspeed_collector import __version__
from tests.conftest import listed_plugins, plugins_listing

SCRIPT = Path(sys.executable).parent / "lightspeed-collector"


def test_console_script_is_installed(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == f"lightspeed-collector {__version__}"
    usage = subprocess.run([str(SCRIPT)], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert usage.returncode == 2 and "COMMAND" in usage.stderr


def test_plugins_lists_builtins_with_hooks_and_components(tmp_path: Path) -> None:
    rows = listed_plugins(tmp_path)
    assert rows["echo"]["source"] == "built-in"
    assert "register_query_providers" in rows["echo"]["hooks"]
    assert "query provider echo" in rows["echo"]["registers"]
    assert "record sink filesystem" in rows["filesystem"]["registers"]
    assert "redactor regex" in rows["regex"]["registers"]
    assert f"echo {__version__} (built-in)" in plugins_listing(tmp_path)
