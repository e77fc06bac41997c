"""Every hook in core/hookspecs.py is documented for plugin authors and exercised by a test.

"Exercised" means a test registers (or installs) a real plugin that implements the hook, so
the kernel's side of the contract, calling the hook as documented, is under test. Built-in
plugins do not count: a hook only they implement could stop being called unnoticed by the
tests that use them.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

from lightspeed_collector import hookspecs

ROOT = Path(__file__).resolve().parents[2]
TESTS = ROOT / "tests"
EXAMPLES = ROOT / "docs" / "examples"
PLUGIN_GUIDE = ROOT / "docs" / "plugins.md"

HOOKS = {
    name: function
    for name, function in vars(hookspecs).items()
    if callable(function) and hasattr(function, "lightspeed_collector_spec")
}


@dataclass(frozen=True)
class Implementation:
    hook: str
    file: Path
    owner: str | None
    """The class holding the implementation, or None for a module-level function."""


def _is_hookimpl(decorator: ast.expr) -> bool:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Name):
        return target.id == "hookimpl"
    return isinstance(target, ast.Attribute) and target.attr == "hookimpl"


def implementations(files: list[Path]) -> list[Implementation]:
    found = []
    for file in files:
        tree = ast.parse(file.read_text("utf-8"))
        for node in tree.body:
            functions = [(node, None)] if isinstance(node, ast.FunctionDef) else []
            if isinstance(node, ast.ClassDef):
                functions = [(n, node.name) for n in node.body if isinstance(n, ast.FunctionDef)]
            for function, owner in functions:
                if function.name in HOOKS and any(map(_is_hookimpl, function.decorator_list)):
                    found.append(Implementation(function.name, file, owner))
    return found


def read_test_modules() -> dict[Path, str]:
    return {path: path.read_text("utf-8") for path in TESTS.rglob("test_*.py")}


def _module_name(file: Path) -> str:
    return ".".join(file.relative_to(ROOT).with_suffix("").parts)


def is_used_by_a_test(implementation: Implementation, tests: dict[Path, str]) -> bool:
    """The implementing plugin is reachable from some test: defined in a test module and
    named outside its own definition, imported from a helper module, or (for the example
    packages) installed by a test."""
    file = implementation.file
    if file.is_relative_to(EXAMPLES):
        package_folder = file.relative_to(EXAMPLES).parts[0]
        return any(
            package_folder in source and "pip" in source and "def test_" in source
            for source in tests.values()
        )
    if file in tests:
        if implementation.owner is None:
            return "register(" in tests[file] or "extra_plugins" in tests[file]
        uses = re.findall(rf"\b{implementation.owner}\b", tests[file])
        return len(uses) > 1
    module = _module_name(file)
    package, _, leaf = module.rpartition(".")
    for source in tests.values():
        imported = module in source or re.search(
            rf"from {re.escape(package)} import [^\n]*\b{leaf}\b", source
        )
        if not imported:
            continue
        if implementation.owner is None or re.search(rf"\b{implementation.owner}\b", source):
            return True
    return False


def test_every_hook_has_a_docstring_for_plugin_authors() -> None:
    undocumented = [name for name, function in HOOKS.items() if not inspect.getdoc(function)]
    assert not undocumented


def test_every_hook_is_documented_in_the_plugin_guide() -> None:
    guide = PLUGIN_GUIDE.read_text("utf-8")
    sections = dict(re.findall(r"^### `(\w+)\(([^)]*)\)", guide, flags=re.MULTILINE))
    missing = sorted(set(HOOKS) - set(sections))
    assert not missing, f"hooks without a '### `name(...)`' section in docs/plugins.md: {missing}"
    unknown = sorted(set(sections) - set(HOOKS))
    assert not unknown, f"docs/plugins.md documents hooks that do not exist: {unknown}"
    for name, function in HOOKS.items():
        documented = [arg.strip() for arg in sections[name].split(",") if arg.strip()]
        assert documented == list(inspect.signature(function).parameters), name


def test_every_hook_is_exercised_by_a_test() -> None:
    tests = read_test_modules()
    candidates = sorted(TESTS.rglob("*.py")) + sorted(EXAMPLES.rglob("*.py"))
    exercised = {
        implementation.hook
        for implementation in implementations(candidates)
        if is_used_by_a_test(implementation, tests)
    }
    missing = sorted(set(HOOKS) - exercised)
    assert not missing, (
        f"hooks that no test drives through a plugin implementing them: {missing}; add a test "
        "that registers a throwaway plugin with that hook (see tests/plugins/throwaway.py)"
    )


def test_the_scan_finds_implementations_and_tells_used_from_unused(tmp_path: Path) -> None:
    """The scan itself: a meta-test that found nothing would pass for the wrong reason."""
    helper = TESTS / "plugins" / "throwaway.py"
    found = implementations([helper])
    assert Implementation("record_stored", helper, "RecordingObserver") in found
    tests = read_test_modules()
    assert is_used_by_a_test(Implementation("startup", helper, "LifecycleObserver"), tests)
    assert not is_used_by_a_test(Implementation("startup", helper, "NoSuchPlugin"), tests)
    unused = tmp_path / "test_unused.py"
    unused.write_text(
        "from lightspeed_collector import hookimpl\n"
        "class Lonely:\n"
        "    @hookimpl\n"
        "    def shutdown(self) -> None: ...\n"
    )
    [lonely] = implementations([unused])
    assert not is_used_by_a_test(lonely, {unused: unused.read_text()})
