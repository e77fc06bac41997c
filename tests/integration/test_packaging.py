"""The built wheel installs only ``lightspeed_collector`` and carries the schemas."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    build_dir = tmp_path_factory.mktemp("build-src")
    # Build from a copy so the check does not leave build/ and *.egg-info in the checkout.
    for name in ("pyproject.toml", "README.md", "core", "plugins", "schemas"):
        source = ROOT / name
        target = build_dir / name
        if source.is_dir():
            subprocess.run(["cp", "-r", str(source), str(target)], check=True)
        else:
            target.write_bytes(source.read_bytes())
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(out),
            str(build_dir),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [built] = out.glob("lightspeed_collector-*.whl")
    return built


def test_wheel_has_only_the_package_at_top_level(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"lightspeed_collector"}
    for schema in ("feedback", "transcript", "config", "common"):
        assert f"lightspeed_collector/schemas/{schema}.json" in names
    assert "lightspeed_collector/plugins/echo.py" in names
    assert "lightspeed_collector/web/app.py" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert (
        "lightspeed-collector = lightspeed_collector.cli:main"
        in zipfile.ZipFile(wheel).read(entry_points).decode()
    )


def test_schemas_load_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    zipfile.ZipFile(wheel).extractall(tmp_path)
    script = (
        "import json, lightspeed_collector, lightspeed_collector.validation as v;"
        "print(json.dumps([lightspeed_collector.__file__, v.load_schema('transcript')['$id'],"
        " list(v.schema_names())]))"
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    module_file, schema_id, names = json.loads(result.stdout)
    assert module_file.startswith(str(tmp_path))
    assert schema_id == "urn:lightspeed-collector:schema:transcript"
    assert "feedback" in names
