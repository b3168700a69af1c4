"""`trpo-report`: pick MLflow runs (experiment, tags, ids) and write the report on them.

Bad input (no runs matched, an unknown run id or experiment, a store that is not there, an
output folder that already holds something) ends with one line naming the problem and exit
status 2, before anything is written.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from trpo_pipeline.config import TrackingConfig
from trpo_pipeline.credentials import mask
from trpo_pipeline.errors import fail
from trpo_pipeline.tracking.store import resolve_tracking_uri

PROG = "trpo-report"
REPORTS_DIR = Path("reports")


def tracking_uri(given: str | None) -> str:
    """--tracking-uri, else $MLFLOW_TRACKING_URI, else the repository's mlflow.db: the store
    the pipeline writes."""
    return resolve_tracking_uri(TrackingConfig(uri=given))


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Compare MLflow runs: learning curves with a 95%% confidence band over "
        "seeds, the final evaluation table, the config diff and each run's provenance, as a "
        "self-contained report.html plus report.md with PNG figures. Runs must match every "
        "selector given.",
    )
    parser.add_argument("--experiment", metavar="NAME", help="runs of this MLflow experiment")
    parser.add_argument(
        "--tag",
        metavar="KEY=VALUE",
        type=_key_value,
        action="append",
        default=[],
        help="runs carrying this tag (repeatable; all must match), e.g. dvc_exp_name=my-exp",
    )
    parser.add_argument(
        "--run-id",
        metavar="ID",
        action="append",
        default=[],
        help="this run (repeatable); a multirun or study parent stands for its child runs",
    )
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="MLflow store (default: $MLFLOW_TRACKING_URI, else the repository's mlflow.db)",
    )
    parser.add_argument(
        "--out", metavar="DIR", type=Path, help="output folder (default: reports/<timestamp>)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="write into an --out folder that is not empty"
    )
    return parser


def _default_out() -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out, n = REPORTS_DIR / stamp, 1
    while out.exists():  # two reports within a second
        n += 1
        out = REPORTS_DIR / f"{stamp}-{n}"
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        fail(PROG, f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        fail(PROG, f"--out {out} is not empty; pass --overwrite to write the report into it anyway")


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if not (args.experiment or args.tag or args.run_id):
        fail(PROG, "say which runs to compare: --experiment NAME, --tag KEY=VALUE or --run-id ID")
    out = args.out if args.out is not None else _default_out()
    _check_out(out, args.overwrite)

    # Deferred: the report draws with matplotlib and reads MLflow, after the checks above.
    from trpo_pipeline.report.links import ui_command
    from trpo_pipeline.report.page import REPORT_MD, write_report
    from trpo_pipeline.report.runs import ReportError, select_runs

    uri = tracking_uri(args.tracking_uri)
    try:
        run_ids = select_runs(uri, args.experiment, dict(args.tag) or None, args.run_id or None)
        html = write_report(uri, run_ids, out)
    except ReportError as err:
        fail(PROG, str(err))
    print(f"report on {len(run_ids)} MLflow run{'s' * (len(run_ids) != 1)} from {mask(uri)}:")
    print(f"  {html}\n  {out / REPORT_MD} (+ PNG figures)")
    if command := ui_command(uri):
        print(f"browse the runs: {command}")


if __name__ == "__main__":
    main()
