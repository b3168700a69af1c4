"""`trpo-params`: write params.yaml (conf/ composed for the default experiment, plus overrides),
which the DVC stages read; `--check` only says whether it is up to date."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from trpo_pipeline.config import ConfigError, config_from_dict
from trpo_pipeline.errors import fail
from trpo_pipeline.rl.files import atomic_write
from trpo_pipeline.stages.common import PARAMS
from trpo_pipeline.stages.params import compose_params

PROG = "trpo-params"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write params.yaml: conf/ composed for the default experiment (plus "
        "overrides), which the DVC stages read.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. algo.max_kl=0.02")
    parser.add_argument("--output", type=Path, default=PARAMS, help="default: %(default)s")
    parser.add_argument(
        "--check", action="store_true", help="only check that the file is up to date (exit 1)"
    )
    args = parser.parse_args(argv)
    try:
        text = compose_params(args.overrides)
        config_from_dict(yaml.safe_load(text))  # what the stages will accept
    except ConfigError as err:
        fail(PROG, str(err))
    if args.check:
        current = args.output.read_text() if args.output.is_file() else ""
        if current != text:
            print(
                f"{PROG}: {args.output} differs from conf/; run trpo-params to rewrite it",
                file=sys.stderr,
            )
            raise SystemExit(1)
        print(f"{args.output} is up to date with conf/")
        return
    atomic_write(args.output, text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
