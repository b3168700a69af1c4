"""The architecture the folders show holds in the code: the engine (rl/) imports nothing of the
pipeline and none of its libraries, no two modules of the package import each other (directly
or around a loop), and a function-level import of the package's own code says why it is
deferred."""

from __future__ import annotations

import ast

import pytest

from imports import PACKAGE, all_modules, imports, source

ENGINE = f"{PACKAGE}.rl"
PIPELINE_LIBRARIES = ("mlflow", "hydra", "omegaconf", "optuna", "dvc")


def engine_modules() -> list[str]:
    return [m for m in all_modules() if m == ENGINE or m.startswith(f"{ENGINE}.")]


def third_party_imports(module: str) -> set[str]:
    tree = ast.parse(source(module).read_text())
    names: set[str] = set()
    for node in ast.walk(tree):  # every import, function bodies and TYPE_CHECKING included
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("module", engine_modules())
def test_the_engine_imports_no_pipeline_library(module: str) -> None:
    used = third_party_imports(module) & set(PIPELINE_LIBRARIES)
    assert not used, f"{module} imports {sorted(used)}: the engine must stay usable alone"


@pytest.mark.parametrize("module", engine_modules())
def test_the_engine_imports_nothing_of_the_pipeline(module: str) -> None:
    outside = {
        target
        for target, _, _ in imports(module, type_checking=True)
        if target != PACKAGE and not (target == ENGINE or target.startswith(f"{ENGINE}."))
    }
    assert not outside, f"{module} imports pipeline modules {sorted(outside)}"


def import_graph() -> dict[str, set[str]]:
    """module -> the own modules it imports (module and function level, TYPE_CHECKING too); a
    package's parent packages are not edges (Python runs them first, they import nothing back)."""
    return {
        m: {t for t, _, _ in imports(m, type_checking=True) if t != m and t != PACKAGE}
        for m in all_modules()
    }


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_in_the_package() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("module", all_modules())
def test_function_level_imports_of_own_code_say_why(module: str) -> None:
    """Allowed only to defer a heavy third-party import, with a comment saying so."""
    lines = source(module).read_text().splitlines()
    silent = []
    for _, node, in_function in imports(module):
        if not in_function:
            continue
        j = node.lineno - 2  # up through the import block this statement is part of
        while j >= 0 and lines[j].strip().startswith(("from ", "import ", ")")):
            j -= 1
        if not (lines[j].strip().startswith("#") or "#" in lines[node.lineno - 1]):
            silent.append(node.lineno)
    assert not silent, f"{module}: function-level imports without a comment at lines {silent}"
