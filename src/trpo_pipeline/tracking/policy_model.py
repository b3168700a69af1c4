"""The trained policy as an MLflow pyfunc model: observations in, deterministic actions out.

MLflow loads this file as the model's code ("models from code": nothing is pickled) with the
checkpoint as its one artifact; tracking/ logs it. Usage::

    model = mlflow.pyfunc.load_model(f"runs:/{run_id}/policy")
    actions = model.predict(observations)  # (n, obs_dim) array or DataFrame -> (n, ...) actions

Observations go through the checkpoint's saved normaliser (when training used one); actions
are the argmax (discrete) or the mean clipped to the action bounds (continuous).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import mlflow
import numpy as np
import torch

from trpo_pipeline.rl.checkpoint import load_checkpoint
from trpo_pipeline.rl.config import run_config_from_dict
from trpo_pipeline.rl.normalizers import ObsNormalizer, preprocess
from trpo_pipeline.rl.policies import env_action, make_actor


class PolicyModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper around a checkpoint's actor and observation normaliser."""

    def load_context(self, context: Any) -> None:
        ckpt = load_checkpoint(Path(context.artifacts["checkpoint"]))
        cfg = run_config_from_dict(ckpt.config)
        env = gym.make(cfg.env.id, **cfg.env.kwargs)  # only for its spaces
        self.obs_dim = int(env.observation_space.shape[0])
        self.action_space = env.action_space
        env.close()
        self.actor = make_actor(self.obs_dim, self.action_space, cfg.policy)
        self.actor.load_state_dict(ckpt.actor)
        self.actor.eval()
        self.normalizer = (
            None
            if ckpt.obs_normalizer is None
            else ObsNormalizer.from_state_dict(ckpt.obs_normalizer)
        )

    # model_input stays unannotated: MLflow would read a type hint as an input schema to enforce.
    def predict(self, context: Any, model_input, params: dict | None = None) -> np.ndarray:  # noqa: ANN001
        obs = np.asarray(
            model_input.to_numpy() if hasattr(model_input, "to_numpy") else model_input,
            dtype=np.float64,
        )
        if obs.ndim == 1:
            obs = obs[None, :]
        if obs.ndim != 2 or obs.shape[1] != self.obs_dim:
            raise ValueError(
                f"observations must have shape (n, {self.obs_dim}), got {tuple(obs.shape)}"
            )
        x = torch.from_numpy(preprocess(obs, self.normalizer))
        with torch.inference_mode():
            action = self.actor.mode(x)
        return np.asarray(env_action(action, self.action_space))


mlflow.models.set_model(PolicyModel())
