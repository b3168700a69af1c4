"""What sb3-contrib's ``target_kl`` bounds, shown on one of its own batches.

sb3-contrib's TRPO measures the KL with its DiagGaussianDistribution, which holds one
``torch.distributions.Normal`` per action dimension; ``kl_divergence(...).mean()`` then averages
over the batch *and* the action dimensions. Its trust region is therefore ``target_kl`` on the
KL per action dimension: ``act_dim * target_kl`` on the KL of the whole action, which is what
TRPO (and this engine's ``algo.max_kl``) bounds. Its Hessian is the Fisher divided by act_dim,
so its ``cg_damping`` is ``act_dim * cg_damping`` in this engine's units.

This script trains sb3-contrib's TRPO (rl-zoo's block for the task, as benchmarks/bench.py
runs it) up to update ``--update``, keeps that batch and the actor, lets sb3-contrib take its
step, then takes this engine's ``policy_step`` from the same actor on the same batch twice:
with the numbers as written (``max_kl = target_kl``, ``cg_damping = cg_damping``) and scaled by
act_dim. The scaled step lands on sb3-contrib's parameters (to float32 rounding). The KL
column is the KL of the whole action: this engine's KL(old || new), and for sb3-contrib its
logged KL(new || old) per dimension times act_dim.

    .venv-bench/bin/python benchmarks/trust_region.py --envs ant hopper
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass
from typing import Any

import torch
from harness import ENVS, BenchEnv
from runners import sb3_model_kwargs, zoo_hyperparams, zoo_venv


@dataclass(frozen=True)
class Sb3Batch:
    """One sb3-contrib update: its batch, its actor before and after, what it reported."""

    obs: torch.Tensor
    actions: torch.Tensor
    advantages: torch.Tensor  # normalised as sb3-contrib's train() does
    actor_before: dict[str, torch.Tensor]
    actor_after: dict[str, torch.Tensor]
    objective_after: float
    kl_per_dim: float  # sb3-contrib's logged KL(new || old), averaged over action dimensions
    hp: dict[str, Any]


def sb3_batch(env: BenchEnv, update: int, seed: int) -> Sb3Batch:
    """Train sb3-contrib's TRPO to ``update`` and capture that update."""
    from sb3_contrib import TRPO

    hp, _ = zoo_hyperparams(env)
    if hp.get("use_sde"):  # gSDE's noise weights have no counterpart in this engine's actor
        raise SystemExit(f"--envs {env.key}: rl-zoo's block uses gSDE; only plain Gaussians map")
    venv = zoo_venv(env, hp, seed)
    if len(venv.action_space.shape) != 1:  # Discrete: one categorical, the units agree
        raise SystemExit(f"--envs {env.key}: only Box action spaces have a per-dimension KL")
    captured: dict[str, Any] = {}

    class Capturing(TRPO):
        def train(self) -> None:
            self.updates = getattr(self, "updates", 0) + 1
            if self.updates < update:
                return super().train()
            data = next(self.rollout_buffer.get(batch_size=None))
            adv = data.advantages
            captured.update(
                obs=data.observations.float(),
                actions=data.actions,
                advantages=(adv - adv.mean()) / (adv.std() + 1e-8),
                actor_before=copy.deepcopy(self.policy.state_dict()),
            )
            super().train()
            captured.update(
                actor_after=copy.deepcopy(self.policy.state_dict()),
                objective_after=self.logger.name_to_value["train/policy_objective"],
                kl_per_dim=self.logger.name_to_value["train/kl_divergence_loss"],
            )
            return None

    model = Capturing(
        hp.get("policy", "MlpPolicy"), venv, seed=seed, device="cpu", **sb3_model_kwargs(hp)
    )
    model.learn(total_timesteps=update * model.n_steps * model.n_envs)  # `update` updates
    return Sb3Batch(**captured, hp=hp)


def our_actor(sb3_state: dict[str, torch.Tensor], act_dim: int) -> Any:
    """This engine's Gaussian actor holding sb3-contrib's actor weights (64x64 tanh policies)."""
    from trpo_pipeline.rl.config import PolicyConfig
    from trpo_pipeline.rl.policies import GaussianActor

    hidden = sb3_state["mlp_extractor.policy_net.0.weight"].shape[0]
    obs_dim = sb3_state["mlp_extractor.policy_net.0.weight"].shape[1]
    actor = GaussianActor(obs_dim, act_dim, PolicyConfig(hidden_sizes=(hidden, hidden)))
    names = {
        "mu.0": "mlp_extractor.policy_net.0",
        "mu.2": "mlp_extractor.policy_net.2",
        "mu.4": "action_net",
    }
    ours = {
        f"{mine}.{p}": sb3_state[f"{theirs}.{p}"]
        for mine, theirs in names.items()
        for p in ("weight", "bias")
    }
    actor.load_state_dict(ours | {"log_std": sb3_state["log_std"]})
    return actor


def compare(env: BenchEnv, update: int, seed: int) -> list[str]:
    from trpo_pipeline.rl import trpo
    from trpo_pipeline.rl.config import AlgoConfig

    batch = sb3_batch(env, update, seed)
    act_dim = batch.actions.shape[1]
    target_kl = float(batch.hp.get("target_kl", 0.01))
    damping = float(batch.hp.get("cg_damping", 0.1))
    theirs = trpo.flat_params(list(our_actor(batch.actor_after, act_dim).parameters()))
    rows = [
        f"| {env.env_id} (act_dim {act_dim}), update {update} | sb3-contrib, target_kl "
        f"{target_kl:g}, cg_damping {damping:g} | {batch.objective_after:.4f} | "
        f"{batch.kl_per_dim * act_dim:.4f} | 0 |"
    ]
    for scale in sorted({1, act_dim}):  # one action: the units agree, one row
        actor = our_actor(batch.actor_before, act_dim)
        cfg = AlgoConfig(
            max_kl=scale * target_kl,
            cg_damping=scale * damping,
            cg_iters=int(batch.hp.get("cg_max_steps", 15)),
            fvp_subsample=1.0,
        )
        step = trpo.policy_step(actor, batch.obs, batch.actions, batch.advantages, cfg)
        gap = float((trpo.flat_params(list(actor.parameters())) - theirs).abs().max())
        rows.append(
            f"| | trpo-pipeline, max_kl {cfg.max_kl:g}, cg_damping {cfg.cg_damping:g} | "
            f"{step.surrogate_after:.4f} | {step.kl:.4f} | {gap:.1e} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["ant"], choices=sorted(ENVS))
    parser.add_argument("--update", type=int, default=10, help="the sb3-contrib update compared")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    print(
        "| batch | step | surrogate after | KL of the action "
        "| largest parameter gap to sb3-contrib's |"
    )
    print("|---|---|---|---|---|")
    for key in args.envs:
        print("\n".join(compare(ENVS[key], args.update, args.seed)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
