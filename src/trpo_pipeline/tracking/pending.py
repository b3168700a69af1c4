"""The pending-sync marker: what MLflow is still missing of a run recorded in a folder.

When the tracking store cannot be reached at the start of a run, or goes away during it,
training goes on: the run folder already holds the local record (learning_curve.csv,
train_metrics.json, the checkpoint, eval_metrics.json) and run.py writes beside it a small
:data:`PENDING` file naming what MLflow is still missing: the run (its id, or what is needed to
create it: experiment, name, tags, params), metrics that live in no file, the files to upload as
artifacts, the policy model and the run's final status. sync.py pushes it later.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trpo_pipeline.credentials import mask
from trpo_pipeline.rl.files import atomic_write

if TYPE_CHECKING:
    from mlflow.entities import Metric

PENDING = "mlflow_pending.json"


class PendingError(Exception):
    """A marker that cannot be read; ``str(err)`` is one line."""


@dataclass
class Pending:
    """What MLflow is missing of the run recorded in ``folder`` (the marker file's content).

    Paths are kept relative to ``folder`` so that the folder can be moved or copied whole.
    """

    folder: Path
    tracking_uri: str = ""  # masked: credentials never reach a file
    run_id: str | None = None  # None: the run was never created
    experiment: str | None = None
    run_name: str | None = None
    start_time: int | None = None  # ms since the epoch
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    curves: list[str] = field(default_factory=list)  # learning curves: train/* metrics per row
    metrics: list[list[Any]] = field(default_factory=list)  # [key, value, step, timestamp ms]
    artifacts: list[list[Any]] = field(default_factory=list)  # [file or folder, artifact path]
    model: dict[str, str] | None = None  # {"checkpoint": path, "env_id": ...}: the pyfunc policy
    status: str | None = None  # FINISHED / FAILED / KILLED once the run ended
    end_time: int | None = None
    reason: str = ""  # the first error, one line, masked

    @property
    def path(self) -> Path:
        return self.folder / PENDING

    @classmethod
    def load(cls, folder: Path) -> Pending | None:
        """The marker in ``folder``; None if there is none."""
        path = Path(folder) / PENDING
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            raise PendingError(f"{path}: unreadable ({err})") from None
        names = {f.name for f in fields(cls)} - {"folder"}
        return cls(folder=Path(folder), **{k: v for k, v in data.items() if k in names})

    def save(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k != "folder"}
        data["tracking_uri"] = mask(self.tracking_uri)
        data["reason"] = mask(self.reason)
        atomic_write(self.path, json.dumps(data, indent=2) + "\n")

    # what tracking/ records while MLflow is unreachable

    def _relative(self, path: Path) -> str:
        return os.path.relpath(Path(path).resolve(), self.folder.resolve())

    def add_curve(self, csv_path: Path) -> bool:
        rel = self._relative(csv_path)
        if rel in self.curves:
            return False
        self.curves.append(rel)
        return True

    def add_metrics(self, metrics: Iterable[Metric], curve: Path | None) -> bool:
        """Metrics a failed call did not deliver; train/* ones are rows of ``curve``."""
        changed = False
        for m in metrics:
            if curve is not None and m.key.startswith("train/"):
                changed |= self.add_curve(curve)
            else:
                self.metrics.append([m.key, m.value, m.step, m.timestamp])
                changed = True
        return changed

    def add_artifact(self, path: Path, artifact_path: str | None) -> bool:
        entry = [self._relative(path), artifact_path]
        if entry in self.artifacts:
            return False
        self.artifacts.append(entry)
        return True

    def set_model(self, checkpoint: Path, env_id: str) -> bool:
        self.model = {"checkpoint": self._relative(checkpoint), "env_id": env_id}
        return True

    def set_tag(self, key: str, value: str) -> bool:
        if self.tags.get(key) == value:
            return False
        self.tags[key] = value
        return True

    def set_status(self, status: str, end_time: int) -> bool:
        self.status, self.end_time = status, end_time
        return True
