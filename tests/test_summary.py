"""`make run`'s last lines (stages/summary.py): the report, and the MLflow UI opened on the
pipeline's runs (the training view) and on its run."""

from __future__ import annotations

import json
from pathlib import Path

from trpo_pipeline.stages.summary import summary


def write_ref(folder: Path) -> None:
    ref = folder / "outputs" / "eval" / "mlflow_run.json"
    ref.parent.mkdir(parents=True)
    ref.write_text(json.dumps({"run_id": "abc123", "experiment_id": "7"}))


def test_a_local_store_prints_the_command_and_the_training_view(tmp_path, monkeypatch, tiny_config):
    monkeypatch.chdir(tmp_path)
    write_ref(tmp_path)
    cfg = tiny_config(tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    lines = summary(cfg).splitlines()
    assert lines[0] == f"report:    {tmp_path / 'outputs/report/report.html'}"
    assert lines[1] == f"MLflow run abc123 in sqlite:///{tmp_path}/mlflow.db"
    assert lines[2].startswith("MLflow UI: ") and " ui --backend-store-uri sqlite:///" in lines[2]
    assert lines[2].endswith(
        ", then open http://127.0.0.1:5000/#/experiments/7?workflowType=machine_learning"
    )
    assert lines[3] == (
        "  the run: http://127.0.0.1:5000/#/experiments/7/runs/abc123?workflowType=machine_learning"
    )


def test_a_server_prints_its_own_address_without_the_password(tmp_path, monkeypatch, tiny_config):
    monkeypatch.chdir(tmp_path)
    write_ref(tmp_path)
    cfg = tiny_config(tracking={"uri": "https://ann:s3cret@mlflow.example.org"})
    text = summary(cfg)
    assert "s3cret" not in text
    assert (
        "MLflow UI: open https://mlflow.example.org/#/experiments/7"
        "?workflowType=machine_learning in a browser"
    ) in text
