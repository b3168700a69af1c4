"""The learning curve: a CSV row per update, written as training goes, cut back on resume.

The columns are what the rows say (``UpdateRecord.row()`` in rl/train.py); this module only
writes them and keeps the file consistent with the checkpoint a run resumes from.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from trpo_pipeline.rl.files import atomic_output

Row = Mapping[str, float | int | str]


class CurveWriter:
    """Appends learning-curve rows to a CSV, flushed per update so a crash loses at most one."""

    def __init__(self, path: Path, *, append: bool) -> None:
        self.file = path.open("a" if append else "w", newline="")
        self.writer: csv.DictWriter | None = None
        self.header_written = append

    def write(self, row: Row) -> None:
        """Append ``row``; the first row's keys are the columns (and the header of a new file)."""
        if self.writer is None:
            self.writer = csv.DictWriter(self.file, fieldnames=list(row))
            if not self.header_written:
                self.writer.writeheader()
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> CurveWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def open_curve(path: Path, keep_updates: int) -> CurveWriter:
    """Start the learning curve; on resume keep the rows up to the checkpoint's update.

    Rows written after the checkpoint (and a row cut short by a kill) are dropped, by writing
    the kept rows to a temporary file that replaces the old one.
    """
    if not (keep_updates and path.exists()):
        return CurveWriter(path, append=False)
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields = list(reader.fieldnames or [])
        rows = [
            r
            for r in reader
            if None not in r.values() and r["update"].isdigit() and int(r["update"]) <= keep_updates
        ]
    with atomic_output(path, newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return CurveWriter(path, append=True)
