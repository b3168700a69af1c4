"""The package's own import graph, read from the sources: what the layout tests check."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "trpo_pipeline"


def source(module: str) -> Path | None:
    """The file of a module of the package (a package's __init__.py), None if there is none."""
    path = SRC.joinpath(*module.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def all_modules() -> list[str]:
    return sorted(
        ".".join(p.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")
        for p in (SRC / PACKAGE).rglob("*.py")
    )


def imports(module: str, *, type_checking: bool = False) -> list[tuple[str, ast.stmt, bool]]:
    """(imported own module, the import statement, inside a function) for every import of the
    package's own modules in ``module``; ``if TYPE_CHECKING:`` blocks only if asked for."""
    path = source(module)
    assert path is not None, module
    found: list[tuple[str, ast.stmt, bool]] = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and "TYPE_CHECKING" in ast.unparse(child.test)
                and not type_checking
            ):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from . import x
                    base = ".".join(
                        [*package.split(".")[: len(package.split(".")) - child.level + 1], base]
                    ).strip(".")
                if base.startswith(PACKAGE):
                    targets = [base]
                    targets += [
                        f"{base}.{a.name}" for a in child.names if source(f"{base}.{a.name}")
                    ]
                    found.extend((t, child, in_function) for t in targets)
            elif isinstance(child, ast.Import):
                found.extend(
                    (a.name, child, in_function) for a in child.names if a.name.startswith(PACKAGE)
                )
            nested = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            visit(child, nested)

    visit(ast.parse(path.read_text()), False)
    return found


def closure(start: str) -> set[str]:
    """Every own module that running ``start`` can import (function bodies included, since
    they run; TYPE_CHECKING blocks left out, since they never do), packages' __init__ too."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or source(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # packages run __init__
        todo += [target for target, _, _ in imports(module)]
    return seen
