"""Trust Region Policy Optimization (Schulman et al. 2015), the math only.

Names follow the paper and Spinning Up's write-up of it:

    maximise   L(theta) = E[ pi_theta(a|s) / pi_old(a|s) * A(s, a) ]        (surrogate, eq. 14)
    subject to KL_bar(old || theta) <= delta                                  (trust region)

Linearising L and taking the quadratic approximation of the KL gives the natural gradient
direction s = F^-1 g, solved by conjugate gradient with Fisher-vector products F v (the Hessian
of the mean KL, Appendix C). The largest step inside the trust region is
alpha = sqrt(2 delta / s^T F s); a backtracking line search shrinks it until the exact KL is
within delta and the surrogate improves, and restores the old parameters if no step does.

No I/O here: tensors in, tensors and a typed stats record out.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.distributions import Distribution, kl_divergence

from trpo_pipeline.rl.adam import Adam
from trpo_pipeline.rl.config import AlgoConfig


@dataclass(frozen=True, kw_only=True)
class PolicyStats:
    """What the policy step of one TRPO update did (:func:`policy_step`)."""

    surrogate_before: float  # L(theta_old), includes the entropy bonus
    surrogate_after: float  # L(theta_new); equal to before when no step was taken
    kl: float  # mean KL(old || new) of the accepted step; 0 when none
    line_search_steps: int  # backtracking evaluations tried (0 when the step was skipped)
    line_search_accepted: bool  # a step inside the trust region improved the surrogate
    skipped: str  # why no step was attempted ("" when one was): zero gradient, bad curvature
    cg_residual: float  # ||g - F s|| after conjugate gradient
    step_size: float  # alpha = sqrt(2 delta / s^T F s) of the full step
    grad_norm: float  # ||g||
    entropy: float  # mean policy entropy before the step

    @classmethod
    def no_step(
        cls, surrogate: float, entropy: float, skipped: str, cg_residual: float, grad_norm: float
    ) -> PolicyStats:
        """A policy step that left the parameters as they were, for the reason ``skipped``."""
        return cls(
            surrogate_before=surrogate,
            surrogate_after=surrogate,
            kl=0.0,
            line_search_steps=0,
            line_search_accepted=False,
            skipped=skipped,
            cg_residual=cg_residual,
            step_size=0.0,
            grad_norm=grad_norm,
            entropy=entropy,
        )


@dataclass(frozen=True, kw_only=True)
class UpdateStats(PolicyStats):
    """What one TRPO update did, the policy step and the critic; logged per update.

    The inherited fields come first, so ``dataclasses.asdict`` gives the learning curve's
    columns in this order: the policy step's, then the critic's.
    """

    value_loss: float  # critic MSE, mean over the last fitting epoch
    explained_variance: float  # 1 - Var(R - V) / Var(R) of the critic before fitting


@dataclass(frozen=True)
class TrainingBatch:
    """The flat batch one update learns from: B real transitions (autoreset steps left out)."""

    obs: torch.Tensor  # [B, obs_dim], as the networks see them
    actions: torch.Tensor  # [B] (Discrete) or [B, act_dim] (Box)
    advantages: torch.Tensor  # [B] A_hat, GAE (normalised if enabled)
    returns: torch.Tensor  # [B] lambda-returns, the critic's regression targets
    values: torch.Tensor  # [B] V(s) before the update, for the explained variance


# --- flat parameter helpers -----------------------------------------------------------------


def flat_params(params: Sequence[nn.Parameter]) -> torch.Tensor:
    """All parameters as one (new) vector."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def set_flat_params(params: Sequence[nn.Parameter], flat: torch.Tensor) -> None:
    """Copy ``flat`` into the parameters in place (bit-exact, optimiser references stay valid)."""
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(flat[offset : offset + n].view_as(p))
            offset += n


def flat_grad(
    y: torch.Tensor,
    params: Sequence[nn.Parameter],
    *,
    retain_graph: bool | None = None,
    create_graph: bool = False,
) -> torch.Tensor:
    """dy/dparams as one vector; parameters ``y`` does not depend on get zeros.

    As in ``torch.autograd.grad``, the graph is kept when ``create_graph`` unless told otherwise.
    """
    grads = torch.autograd.grad(
        y, params, retain_graph=retain_graph, create_graph=create_graph, allow_unused=True
    )
    return torch.cat(
        [
            (torch.zeros_like(p) if g is None else g).reshape(-1)
            for g, p in zip(grads, params, strict=True)
        ]
    )


# --- conjugate gradient and the Fisher-vector product --------------------------------------


def conjugate_gradient(
    Avp: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    iters: int,
    residual_tol: float = 1e-10,
) -> tuple[torch.Tensor, float]:
    """Approximately solve A x = b for symmetric positive-definite A given only x -> A x.

    Returns ``(x, ||b - A x||)``. Stops early on a tiny residual, and on non-positive curvature
    (p^T A p <= 0), where CG's assumptions fail; the caller then sees it in s^T F s.
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = r @ r
    for _ in range(iters):
        if rr <= residual_tol:
            break
        Ap = Avp(p)
        pAp = p @ Ap
        if not pAp > 0:
            break
        alpha = rr / pAp
        x += alpha * p
        r -= alpha * Ap
        rr_new = r @ r
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x, float(rr.sqrt())


def mean_kl(old: Distribution, new: Distribution) -> torch.Tensor:
    """KL_bar(old || new), averaged over states."""
    return kl_divergence(old, new).mean()


def fisher_vector_product(
    actor: nn.Module, obs: torch.Tensor, damping: float
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v -> (F + damping I) v, F the Hessian of KL_bar(pi_old || pi_theta) at theta = old.

    The gradient of the KL is built once with its graph kept, so each product is one
    backward pass (Pearlmutter's trick) instead of a fresh forward and two backwards.
    """
    params = list(actor.parameters())
    with torch.no_grad():
        old = actor(obs)
    grad_kl = flat_grad(mean_kl(old, actor(obs)), params, create_graph=True)

    def fvp(v: torch.Tensor) -> torch.Tensor:
        return flat_grad(grad_kl @ v, params, retain_graph=True) + damping * v

    return fvp


# --- the policy step --------------------------------------------------------------------------


def surrogate(
    dist: Distribution,
    actions: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantages: torch.Tensor,
    entropy_coef: float,
) -> torch.Tensor:
    """L(theta) = mean(ratio * A) + c * mean entropy, ratio = pi_theta / pi_old (eq. 14)."""
    ratio = torch.exp(dist.log_prob(actions) - old_log_prob)
    objective = (ratio * advantages).mean()
    if entropy_coef:
        objective = objective + entropy_coef * dist.entropy().mean()
    return objective


def line_search(
    actor: nn.Module,
    evaluate: Callable[[], tuple[float, float]],
    theta_old: torch.Tensor,
    full_step: torch.Tensor,
    surrogate_old: float,
    max_kl: float,
    steps: int,
    shrink: float,
) -> tuple[bool, int, float, float]:
    """Backtrack theta_old + shrink^k * full_step, k = 0..steps-1.

    ``evaluate()`` returns (surrogate, mean KL) at the actor's current parameters. A step is
    accepted when both are finite, KL <= max_kl and the surrogate improved. Without an accepted
    step the parameters are restored to ``theta_old`` exactly.
    Returns ``(accepted, steps tried, surrogate, kl)``.
    """
    params = list(actor.parameters())
    for k in range(steps):
        set_flat_params(params, theta_old + shrink**k * full_step)
        new_surrogate, kl = evaluate()
        if (
            math.isfinite(new_surrogate)
            and math.isfinite(kl)
            and kl <= max_kl
            and new_surrogate > surrogate_old
        ):
            return True, k + 1, new_surrogate, kl
    set_flat_params(params, theta_old)
    return False, steps, surrogate_old, 0.0


def fisher_states(obs: torch.Tensor, fraction: float) -> torch.Tensor:
    """The states the Fisher-vector products average over: all, or a random ``fraction``.

    The Fisher is an average over states; a random subset estimates it at a fraction of the
    cost of every product (the trust-region check still uses the full batch).
    """
    if fraction < 1.0:
        keep = max(2, int(fraction * obs.shape[0]))
        return obs[torch.randperm(obs.shape[0])[:keep]]
    return obs


def policy_step(
    actor: nn.Module,
    obs: torch.Tensor,
    actions: torch.Tensor,
    advantages: torch.Tensor,
    cfg: AlgoConfig,
) -> PolicyStats:
    """One natural-gradient step of the actor inside the KL trust region."""
    params = list(actor.parameters())
    with torch.no_grad():
        old = actor(obs)
        old_log_prob = old.log_prob(actions)
        entropy = float(old.entropy().mean())

    def loss(dist: Distribution) -> torch.Tensor:
        return surrogate(dist, actions, old_log_prob, advantages, cfg.entropy_coef)

    L_old = loss(actor(obs))
    g = flat_grad(L_old, params)
    L_old_value = float(L_old.detach())
    grad_norm = float(g.norm())
    if not math.isfinite(grad_norm):
        return PolicyStats.no_step(L_old_value, entropy, "non-finite gradient", 0.0, grad_norm)
    if grad_norm == 0.0:
        return PolicyStats.no_step(L_old_value, entropy, "zero gradient", 0.0, 0.0)

    Fv = fisher_vector_product(actor, fisher_states(obs, cfg.fvp_subsample), cfg.cg_damping)
    s, residual = conjugate_gradient(Fv, g, cfg.cg_iters)  # s ~ F^-1 g
    sFs = float(s @ Fv(s))
    if not math.isfinite(sFs) or sFs <= 0.0:
        bad = "non-positive or non-finite curvature"
        return PolicyStats.no_step(L_old_value, entropy, bad, residual, grad_norm)
    alpha = math.sqrt(2.0 * cfg.max_kl / sFs)

    def evaluate() -> tuple[float, float]:
        with torch.no_grad():
            dist = actor(obs)
            return float(loss(dist)), float(mean_kl(old, dist))

    accepted, tried, L_new, kl = line_search(
        actor,
        evaluate,
        flat_params(params),
        alpha * s,
        L_old_value,
        cfg.max_kl,
        cfg.line_search_steps,
        cfg.line_search_shrink,
    )
    return PolicyStats(
        surrogate_before=L_old_value,
        surrogate_after=L_new,
        kl=kl,
        line_search_steps=tried,
        line_search_accepted=accepted,
        skipped="",
        cg_residual=residual,
        step_size=alpha,
        grad_norm=grad_norm,
        entropy=entropy,
    )


# --- the critic ---------------------------------------------------------------------------------


def fit_critic(
    critic: nn.Module,
    optimizer: Adam,
    obs: torch.Tensor,
    returns: torch.Tensor,
    epochs: int,
    minibatch: int,
) -> float:
    """Regress V(s) on the lambda-returns with minibatch Adam; returns the last epoch's mean MSE."""
    n = obs.shape[0]
    losses: list[torch.Tensor] = []
    for _ in range(epochs):
        losses = []
        for idx in torch.randperm(n).split(minibatch):
            loss = (critic(obs[idx]) - returns[idx]).pow(2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return float(torch.stack(losses).mean())


def explained_variance(values: torch.Tensor, returns: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R): 1 is a perfect critic, 0 predicts no better than the mean."""
    var = returns.var()
    if not var > 0:
        return float("nan")
    return float(1.0 - (returns - values).var() / var)


def update(
    actor: nn.Module,
    critic: nn.Module,
    critic_optimizer: Adam,
    batch: TrainingBatch,
    cfg: AlgoConfig,
) -> UpdateStats:
    """One TRPO update on a flat batch of real transitions: the policy step, then the critic.

    The order is the order of the random draws (the Fisher subsample, then the critic's
    minibatches), which a resumed run repeats.
    """
    step = policy_step(actor, batch.obs, batch.actions, batch.advantages, cfg)
    ev = explained_variance(batch.values, batch.returns)
    value_loss = fit_critic(
        critic, critic_optimizer, batch.obs, batch.returns, cfg.vf_epochs, cfg.vf_minibatch
    )
    return UpdateStats(**dataclasses.asdict(step), value_loss=value_loss, explained_variance=ev)
