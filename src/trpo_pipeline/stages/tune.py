"""The tune stage (tune/dvc.yaml): the study of params.yaml, as the other stages read it.

``python -m trpo_pipeline.stages.tune --params params.yaml --output-dir outputs/tune``; a trial
is params.yaml with its sampled values, trained in <output-dir>/<study>/trial_<n>/.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from trpo_pipeline.config import ConfigError
from trpo_pipeline.errors import fail
from trpo_pipeline.launch.compose import compose_config, find_conf_dir
from trpo_pipeline.stages.common import PARAMS, read_params
from trpo_pipeline.tune.command import PROG, interrupt_on_sigterm, run_study_command
from trpo_pipeline.tune.space import with_values


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, default=PARAMS)
    parser.add_argument("--output-dir", type=Path, help="default: tune.output_dir")
    args = parser.parse_args(argv)
    conf_dir = find_conf_dir()
    try:
        cfg = read_params(args.params)
        default = compose_config([], conf_dir)
        study_dir = (args.output_dir or Path(cfg.tune.output_dir)) / cfg.tune.study_name
        interrupt_on_sigterm()
        run_study_command(
            cfg, lambda values: with_values(cfg, values), study_dir, default, conf_dir
        )
    except ConfigError as err:
        fail(PROG, str(err))


if __name__ == "__main__":
    main()
