"""A Hydra multirun is one MLflow parent run; each job is a child run of it.

conf/config.yaml registers :class:`MlflowParentRun` under ``hydra.callbacks``. It opens the
parent before the launcher starts any job and writes its id into the sweep folder, where every
job finds it (:func:`parent_run_id`), whichever launcher runs the jobs (basic, joblib's worker
processes, submitit on other machines sharing the folder). It closes the parent after the last
job: FAILED if a child (or the multirun) failed, else FINISHED; a parent that got no children
is deleted.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from trpo_pipeline import tracking
from trpo_pipeline.config import Config, TrackingConfig, config_from_dict
from trpo_pipeline.credentials import mask
from trpo_pipeline.launch.slurm_state import ended_state, queued, sweep_jobs
from trpo_pipeline.rl.files import atomic_write

PARENT_REF = "mlflow_parent_run.json"
JOB_TAG = "scheduler_job"  # a child run's scheduler job (restart.scheduler_job_id)
_POLL_S = 2.0  # how often a failed SLURM multirun asks whether its other jobs still run


def _tracking_config(config: DictConfig) -> TrackingConfig:
    values = OmegaConf.to_container(config.get("tracking") or {}, resolve=True)
    return config_from_dict({"tracking": values}).tracking


class MlflowParentRun(Callback):
    """Opens and closes the parent run of a multirun."""

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.tracking: TrackingConfig | None = None
        self.submitit_folder: str | None = None  # a SLURM sweep's: where its jobs are found

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.tracking = _tracking_config(config)
        sweep_dir = Path(str(config.hydra.sweep.dir))
        launcher = config.hydra.get("launcher") or {}
        if str(launcher.get("_target_", "")).endswith(".SlurmLauncher"):
            self.submitit_folder = str(launcher.submitit_folder)
        overrides = " ".join(config.hydra.overrides.task)
        self.run_id = tracking.start_parent_run(
            self.tracking,
            run_name=f"multirun {overrides}".strip(),
            tags={
                "launcher": "hydra-multirun",
                "sweep": overrides,
                "sweep_dir": str(sweep_dir),
                **tracking.source_tags("trpo-train -m"),
            },
        )
        if self.run_id is not None:
            atomic_write(sweep_dir / PARENT_REF, json.dumps({"run_id": self.run_id}) + "\n")
            # Hydra skips on_multirun_end when a job raises; the parent is then closed on exit.
            atexit.register(self._close, failed=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        _mask_file(Path(str(config.hydra.sweep.dir)) / "multirun.yaml")
        self._close(failed=False)

    def _close(self, *, failed: bool) -> None:
        if self.run_id is not None and self.tracking is not None:
            if failed:
                self._wait_for_jobs()
            run_id, self.run_id = self.run_id, None
            unfinished = tracking.finish_parent_run(self.tracking, run_id, failed=failed)
            if failed and unfinished:
                ended = self._close_ended_jobs(unfinished)
                print(_failed_jobs(unfinished, run_id, ended), file=sys.stderr)

    def _wait_for_jobs(self) -> None:
        """A job SLURM ended (scancel, a node failure) makes Hydra's launcher give up on the
        rest: wait until they have ended too, so that their runs are final when the parent is
        closed and the command ends after its jobs, as when none failed."""
        if self.submitit_folder is None:
            return
        jobs = sweep_jobs(self.submitit_folder)
        left = queued(jobs)
        if left:
            print(
                f"multirun: waiting for the {len(left)} job(s) still queued or running "
                f"({', '.join(left)}); Ctrl-C stops waiting, not them",
                file=sys.stderr,
                flush=True,
            )
        try:
            while left:
                time.sleep(_POLL_S)
                left = queued(left)
        except KeyboardInterrupt:
            print("multirun: stopped waiting; the parent run is closed now", file=sys.stderr)

    def _close_ended_jobs(self, children: list[Any]) -> dict[str, tuple[str, str]]:
        """Close the runs of jobs SLURM ended while they ran (scancel: SIGKILL gives a job no
        chance to); {run id: (SLURM's state, the run's new status)}."""
        ended = {}
        for child in children:
            job = child.data.tags.get(JOB_TAG, "")
            state = ended_state(job) if child.info.status == "RUNNING" else None
            if state is not None:
                ended[child.info.run_id] = state
        if ended and self.tracking is not None:
            tracking.close_runs(self.tracking, {r: status for r, (_, status) in ended.items()})
        return ended


def _failed_jobs(children: list[Any], parent_run_id: str, ended: dict[str, tuple[str, str]]) -> str:
    """Which jobs of a failed multirun did not finish, one line each (their MLflow runs)."""
    lines = [f"multirun: {len(children)} job(s) did not finish (MLflow parent {parent_run_id}):"]
    for c in children:
        state, status = ended.get(c.info.run_id, ("", c.info.status))
        why = f"  (SLURM: {state})" if state else ""
        lines.append(f"  {status:<8} {c.info.run_name}  run {c.info.run_id}{why}")
    return "\n".join(lines)


def _mask_file(path: Path) -> None:
    """Hydra saves the sweep's whole config (tracking.uri with its password, if the user gave
    one) as multirun.yaml: keep it, masked."""
    try:
        text = path.read_text()
    except OSError:
        return
    if mask(text) != text:
        atomic_write(path, mask(text))


def is_multirun_job() -> bool:
    """Inside a Hydra task: it is one job of a multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def parent_run_id() -> str | None:
    """Inside a Hydra job: the parent run of its multirun (None in a single run)."""
    from hydra.core.hydra_config import HydraConfig

    if not is_multirun_job():
        return None
    sweep_dir = Path(str(HydraConfig.get().sweep.dir))
    return tracking.read_ref(sweep_dir / PARENT_REF).get("run_id")


def job_run_name(cfg: Config) -> str:
    """A child run is named after its job's overrides; a single run after name and seed."""
    from hydra.core.hydra_config import HydraConfig

    if is_multirun_job():
        hc = HydraConfig.get()
        return hc.job.override_dirname or f"job{hc.job.num}"
    return tracking.default_run_name(cfg)
