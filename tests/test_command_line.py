"""launch/command_line.py reads a command line as Hydra does: through Hydra's own argument
parser (its one private call), and a multirun's jobs through Hydra's public override API in the
order Hydra's basic sweeper runs them. Checked on every trpo-* command line of the README."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from trpo_pipeline.launch.command_line import expand, read

README = Path(__file__).resolve().parents[1] / "README.md"
COMMANDS = ("trpo-train", "trpo-evaluate", "trpo-tune")


def readme_command_lines() -> list[list[str]]:
    """The arguments of every trpo-train/-evaluate/-tune line in the README's code blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)
    lines = []
    for line in "\n".join(blocks).splitlines():
        first = line.split(maxsplit=1)[0] if line.strip() else ""
        if Path(first).name in COMMANDS:
            lines.append(shlex.split(line, comments=True)[1:])
    return lines


LINES = readme_command_lines()


def test_the_readme_has_command_lines_to_check():
    assert len(LINES) >= 10
    assert any("-m" in argv for argv in LINES)


@pytest.mark.parametrize("argv", LINES, ids=[" ".join(a) or "(none)" for a in LINES])
def test_readme_command_lines_expand_to_the_jobs_hydra_runs(argv):
    command = read(argv)
    assert command is not None
    assert command.multirun == ("-m" in argv)
    overrides = [a for a in argv if not a.startswith("-")]
    assert command.overrides + command.hydra_overrides == sorted(
        overrides, key=lambda o: o.lstrip("+~").startswith(("hydra.", "hydra/"))
    )
    assert all(o.lstrip("+~").startswith(("hydra.", "hydra/")) for o in command.hydra_overrides)
    jobs = expand(command.overrides, command.multirun)
    if command.multirun:  # Hydra's own sweeper, the private class, as the reference
        parsed = OverridesParser.create().parse_overrides(command.overrides)
        (reference,) = BasicSweeper.split_arguments(parsed, None)
        assert jobs == reference
    else:
        assert jobs == [command.overrides]


def test_a_sweep_expands_in_hydra_order():
    jobs = expand(["seed=0,1", "algo.max_kl=0.005,0.01", "name=x"], multirun=True)
    assert jobs == [
        ["seed=0", "algo.max_kl=0.005", "name=x"],
        ["seed=0", "algo.max_kl=0.01", "name=x"],
        ["seed=1", "algo.max_kl=0.005", "name=x"],
        ["seed=1", "algo.max_kl=0.01", "name=x"],
    ]
    assert expand(["seed=0,1"], multirun=False) == [["seed=0,1"]]


@pytest.mark.parametrize(
    "argv", [["--help"], ["-h"], ["--hydra-help"], ["--version"], ["--cfg", "job"], ["--info"]]
)
def test_command_lines_that_run_no_job_are_not_checked(argv, capsys):
    assert read([*argv, "algo.max_kl=-1"]) is None
    assert capsys.readouterr() == ("", "")  # Hydra prints these itself, later


def test_flags_with_values_are_not_overrides():
    command = read(["-m", "--config-name", "config", "seed=1", "hydra/launcher=joblib"])
    assert command is not None
    assert command.overrides == ["seed=1"]
    assert command.hydra_overrides == ["hydra/launcher=joblib"]
