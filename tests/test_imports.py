"""The package's import graph: no cycles, and the store loads without the sources or pygame."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gym_prefs"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """gym_prefs modules ``path`` imports anywhere (functions included), but not for type checking only."""
    tree = ast.parse(path.read_text())
    type_checking_only = {
        id(node)
        for block in ast.walk(tree)
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
        for statement in block.body
        for node in ast.walk(statement)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_checking_only:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name in known}
    return found - {module_name(path)}


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    known = {module_name(path) for path in paths}
    # The package's __init__ loads its names lazily, so it is no one's dependency.
    return {module_name(path): imported_modules(path, known) - {"gym_prefs"} for path in paths}


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    state: dict[str, str] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(cycle) for cycle in cycles)


@pytest.mark.parametrize(
    ("module", "must_not_load"),
    [
        ("gym_prefs.store", ("gym_prefs.sources", "pygame", "torch", "stable_baselines3")),
        ("gym_prefs.datasets", ("gym_prefs.sources", "pygame", "torch", "stable_baselines3")),
        ("gym_prefs.records", ("gym_prefs.store", "gym_prefs.sources", "torch", "gymnasium")),
        ("gym_prefs.viewer", ("gym_prefs.cli", "gym_prefs.callback", "torch", "stable_baselines3")),
    ],
)
def test_a_part_loads_without_what_it_does_not_need(module, must_not_load):
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    unwanted = [name for name in loaded if any(name == bad or name.startswith(bad + ".") for bad in must_not_load)]
    assert not unwanted, f"importing {module} loads {unwanted}"
