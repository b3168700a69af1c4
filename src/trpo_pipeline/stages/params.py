"""params.yaml: conf/ composed exactly as ``dvc exp run -S ...`` does with Hydra composition
enabled (.dvc/config), so that the two never disagree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from trpo_pipeline.launch.compose import compose


def compose_params(overrides: Sequence[str] = (), conf_dir: Path | None = None) -> str:
    """conf/ composed and resolved, as the YAML text `dvc exp run` writes to params.yaml."""
    from omegaconf import OmegaConf

    cfg = compose(overrides, conf_dir)
    OmegaConf.resolve(cfg)
    return OmegaConf.to_yaml(cfg)
