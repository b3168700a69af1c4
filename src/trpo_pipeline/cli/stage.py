"""`trpo-stage train|evaluate|report|summary [--params FILE]`: one stage of the DVC pipeline by
hand (dvc.yaml runs each as ``python -m trpo_pipeline.stages.<stage>``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from trpo_pipeline.errors import fail
from trpo_pipeline.stages.common import Stage, run_stage
from trpo_pipeline.stages.evaluate import evaluate_stage
from trpo_pipeline.stages.report import report_stage
from trpo_pipeline.stages.summary import summary_stage
from trpo_pipeline.stages.train import train_stage

STAGES: dict[str, Stage] = {
    "train": train_stage,
    "evaluate": evaluate_stage,
    "report": report_stage,
    "summary": summary_stage,
}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in STAGES:
        fail("trpo-stage", f"say which stage to run: {' | '.join(STAGES)}")
    run_stage(args[0], STAGES[args[0]], args[1:])


if __name__ == "__main__":
    main()
