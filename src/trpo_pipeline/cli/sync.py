"""`trpo-sync RUN_DIR [RUN_DIR ...]`: push what run folders recorded while MLflow was away."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from trpo_pipeline.credentials import mask
from trpo_pipeline.tracking.pending import PENDING
from trpo_pipeline.tracking.store import quiet_http
from trpo_pipeline.tracking.sync import SyncError, sync_folder

PROG = "trpo-sync"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Push to MLflow what run folders recorded while MLflow was unreachable "
        f"(the folders holding {PENDING}). Safe to repeat: only what the MLflow run lacks is "
        "sent, so every metric ends up there exactly once.",
    )
    parser.add_argument("run_dirs", nargs="+", type=Path, metavar="RUN_DIR")
    parser.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="push to this store (default: the one the run was tracked in)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="also push a run that never ended (killed): it is marked KILLED",
    )
    args = parser.parse_args(argv)
    failed = 0
    with quiet_http():
        for folder in args.run_dirs:
            try:
                pushed = sync_folder(folder, args.tracking_uri, force=args.force)
            except SyncError as err:
                # One line per folder that could not be pushed; the others still are.
                print(f"{PROG}: error: {folder}: {mask(str(err))}", file=sys.stderr)
                failed += 1
                continue
            print(f"{folder}: " + ("nothing to sync" if pushed is None else pushed.describe()))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
