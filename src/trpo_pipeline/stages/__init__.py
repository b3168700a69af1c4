"""The DVC pipeline's stages (dvc.yaml: train -> evaluate -> report; tune/dvc.yaml: tune) and
the params.yaml they read.

``python -m trpo_pipeline.stages.<stage>`` runs one stage on the committed params.yaml, never on
a Hydra composition, so what DVC tracks is exactly what runs. The three stages make one MLflow
run: train opens it and writes its id to outputs/train/mlflow_run.json, evaluate continues it
(or starts one for this execution when DVC reused a cached training, see
``tracking.run_for_evaluation``) and writes outputs/eval/mlflow_run.json, report adds the report
to that run. Each stage module imports only what it runs, which is what its deps in dvc.yaml
list (tests/test_dvc_deps.py).
"""
