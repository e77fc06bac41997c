"""The generated configuration reference must match the schemas it is generated from."""

from __future__ import annotations

import difflib
import importlib.util
import json
from pathlib import Path
from types import ModuleType

DOCS = Path(__file__).resolve().parents[2] / "docs"


def load_generator() -> ModuleType:
    # docs/ is not a package; load the script by path, as `python docs/...` would run it.
    spec = importlib.util.spec_from_file_location(
        "generate_config_reference", DOCS / "generate_config_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_reference_is_up_to_date() -> None:
    expected = load_generator().render()
    committed = (DOCS / "configuration-reference.md").read_text("utf-8")
    if committed != expected:
        diff = "".join(
            difflib.unified_diff(
                committed.splitlines(keepends=True),
                expected.splitlines(keepends=True),
                "docs/configuration-reference.md (committed)",
                "docs/configuration-reference.md (from the schemas)",
                n=1,
            )
        )
        raise AssertionError(
            "docs/configuration-reference.md is out of date with schemas/config.json or a "
            "built-in plugin's settings schema; run "
            "`.venv/bin/python docs/generate_config_reference.py` and commit the result.\n" + diff
        )


def test_reference_lists_every_configuration_key() -> None:
    generator = load_generator()
    reference = generator.render()
    schema = json.loads(generator.CONFIG_SCHEMA.read_text("utf-8"))

    def paths(node: dict[str, object], prefix: str) -> list[str]:
        found: list[str] = []
        properties = node.get("properties", {})
        assert isinstance(properties, dict)
        for key, sub in properties.items():
            found.append(f"{prefix}{key}")
            found.extend(paths(sub, f"{prefix}{key}."))
        return found

    missing = [path for path in paths(schema, "") if f"`{path}" not in reference]
    assert not missing, f"keys missing from the configuration reference: {missing}"
