"""Files a run uploads: text files with passwords masked, the policy as a pyfunc model."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from trpo_pipeline.credentials import mask
from trpo_pipeline.tracking.store import quiet_mlflow

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODEL_NAME = "policy"
VIDEO_ARTIFACTS = "video"  # the evaluation's MP4s and posters (the MLflow UI previews MP4)
# Text files uploaded as artifacts are masked first (params.yaml, dvc.lock may hold a URI).
_TEXT_ARTIFACTS = frozenset({".yaml", ".yml", ".json", ".lock", ".md", ".txt", ".csv", ".html"})


def upload_artifact(
    client: MlflowClient, run_id: str | None, path: Path, artifact_path: str | None
) -> None:
    """Upload one file; a text file that quotes a password (params.yaml, dvc.lock: a tracking
    URI with credentials) is uploaded as a masked copy of the same name."""
    path = Path(path)
    if path.suffix in _TEXT_ARTIFACTS and path.stat().st_size < 50_000_000:
        text = path.read_text(errors="surrogateescape")
        masked = mask(text)
        if masked != text:
            with tempfile.TemporaryDirectory() as tmp:
                copy = Path(tmp) / path.name
                copy.write_text(masked, errors="surrogateescape")
                client.log_artifact(run_id, str(copy), artifact_path)
            return
    client.log_artifact(run_id, str(path), artifact_path)


def log_policy_model(uri: str, run_id: str | None, checkpoint: Path, env_id: str) -> str:
    """Log the checkpoint's policy as the pyfunc model ``policy`` of run ``run_id``."""
    import gymnasium
    import mlflow
    import numpy
    import torch

    package = Path(__file__).resolve().parents[1]  # trpo_pipeline/, shipped with the model
    quiet_mlflow()
    mlflow.set_tracking_uri(uri)
    # MLflow asks for type hints on predict(); policy_model.py leaves them out on purpose (MLflow
    # would enforce them as a schema), so that advice is noise. MLflow resets the warning
    # filters inside log_model, so the warnings are caught and all others shown afterwards.
    with mlflow.start_run(run_id=run_id), warnings.catch_warnings(record=True) as caught:
        info = mlflow.pyfunc.log_model(
            name=MODEL_NAME,
            python_model=str(
                package / "tracking" / "policy_model.py"
            ),  # models from code: no pickle
            artifacts={"checkpoint": str(checkpoint)},
            code_paths=[str(package)],
            pip_requirements=[
                f"torch=={torch.__version__.split('+')[0]}",
                f"gymnasium=={gymnasium.__version__}",
                f"numpy=={numpy.__version__}",
                f"mlflow=={mlflow.__version__}",
            ],
            metadata={"env_id": env_id, "deterministic": True},
        )
    for w in caught:
        if "Add type hints to the `predict` method" not in str(w.message):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    return info.model_uri
