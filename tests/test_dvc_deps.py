"""Every source file a DVC stage runs is one of its deps, so `dvc repro` re-runs the stage when
that code changes (and no dep names a file that is gone, which would stop `dvc repro`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "trpo_pipeline"


def _source(module: str) -> Path | None:
    path = SRC.joinpath(*module.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").exists() else None


def _imports(node: ast.AST) -> set[str]:
    """trpo_pipeline modules imported anywhere under ``node`` (function bodies included, since
    they run; ``if TYPE_CHECKING:`` blocks left out, since they never do)."""
    found: set[str] = set()
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            continue
        if isinstance(child, ast.ImportFrom) and (child.module or "").startswith(PACKAGE):
            module = child.module or ""
            found.add(module)
            found |= {f"{module}.{a.name}" for a in child.names if _source(f"{module}.{a.name}")}
        elif isinstance(child, ast.Import):
            found |= {a.name for a in child.names if a.name.startswith(PACKAGE)}
        found |= _imports(child)
    return found


def _closure(modules: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(modules)
    while todo:
        module = todo.pop()
        source = _source(module)
        if module in seen or source is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(2, len(parts))]  # packages run __init__
        todo += _imports(ast.parse(source.read_text()))
    return seen


def _dep_path(module: str) -> str:
    """What dvc.yaml names for a module: its file, or the folder of its top-level package."""
    top = ".".join(module.split(".")[:2])
    source = _source(top)
    assert source is not None
    path = source.parent if source.name == "__init__.py" else source
    return path.relative_to(ROOT).as_posix()


def _stage_function_modules(name: str) -> set[str]:
    """The stages module's own imports plus those of ``<name>_stage`` (stages.py holds every
    stage of dvc.yaml; the other stages' lazy imports do not run)."""
    tree = ast.parse((SRC / PACKAGE / "stages.py").read_text())
    top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    runs = ast.Module(body=[*top, functions[f"{name}_stage"], functions["main"]], type_ignores=[])
    return _closure(_imports(runs)) | {f"{PACKAGE}.stages"}


STAGES = [
    ("dvc.yaml", "train", lambda: _stage_function_modules("train")),
    ("dvc.yaml", "evaluate", lambda: _stage_function_modules("evaluate")),
    ("dvc.yaml", "report", lambda: _stage_function_modules("report")),
    ("tune/dvc.yaml", "tune", lambda: _closure({f"{PACKAGE}.tune_cli"})),
]


@pytest.mark.parametrize(("dvc_file", "stage", "modules"), STAGES, ids=[s[1] for s in STAGES])
def test_stage_deps_cover_the_code_it_runs(dvc_file: str, stage: str, modules) -> None:
    deps = yaml.safe_load((ROOT / dvc_file).read_text())["stages"][stage]["deps"]
    declared = {d for d in deps if d.startswith("src/")}
    needed = {_dep_path(m) for m in modules() if m != PACKAGE}
    assert not needed - declared, f"{dvc_file} stage {stage}: add {sorted(needed - declared)}"
    gone = [d for d in declared if not (ROOT / d).exists()]
    assert not gone, f"{dvc_file} stage {stage}: deps that no longer exist: {gone}"
