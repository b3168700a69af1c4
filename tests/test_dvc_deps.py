"""Each DVC stage's code deps are exactly what it runs: every module the stage imports is under
one of its deps (so `dvc repro` re-runs it when that code changes), and every dep holds at least
one of them (so editing code the stage never runs, the TRPO step for the report, never re-runs
it)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from imports import PACKAGE, SRC, closure, source

ROOT = SRC.parent
STAGES = [
    ("dvc.yaml", "train", f"{PACKAGE}.stages.train"),
    ("dvc.yaml", "evaluate", f"{PACKAGE}.stages.evaluate"),
    ("dvc.yaml", "report", f"{PACKAGE}.stages.report"),
    ("tune/dvc.yaml", "tune", f"{PACKAGE}.stages.tune"),
]


def covers(dep: Path, file: Path) -> bool:
    return file == dep or dep in file.parents


@pytest.mark.parametrize(("dvc_file", "stage", "module"), STAGES, ids=[s[1] for s in STAGES])
def test_stage_deps_are_the_code_it_runs(dvc_file: str, stage: str, module: str) -> None:
    deps = yaml.safe_load((ROOT / dvc_file).read_text())["stages"][stage]["deps"]
    declared = [ROOT / d for d in deps if d.startswith("src/")]
    files = {source(m) for m in closure(module) if m != PACKAGE}
    missing = sorted(
        str(f.relative_to(ROOT)) for f in files if not any(covers(d, f) for d in declared)
    )
    assert not missing, f"{dvc_file} stage {stage}: add deps covering {missing}"
    needless = [str(d.relative_to(ROOT)) for d in declared if not any(covers(d, f) for f in files)]
    assert not needless, f"{dvc_file} stage {stage}: deps it does not import: {needless}"


def test_a_trpo_step_change_does_not_touch_the_report_stage() -> None:
    """The case the precise deps are for: the report reads the engine's config, not its math."""
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["report"]["deps"]
    trpo = ROOT / "src" / PACKAGE / "rl" / "trpo.py"
    assert not any(covers(ROOT / d, trpo) for d in deps)
