"""trpo-pipeline: reproducible TRPO experiments with Hydra, DVC, MLflow and Optuna."""

__version__ = "0.1.0"
