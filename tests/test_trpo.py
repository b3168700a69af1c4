"""trpo.py: each piece of the TRPO step against an independent computation."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch
from torch.func import functional_call

from trpo_pipeline.rl import trpo
from trpo_pipeline.rl.adam import Adam
from trpo_pipeline.rl.config import AlgoConfig, PolicyConfig
from trpo_pipeline.rl.policies import CategoricalActor, Critic, GaussianActor

OBS_DIM = 3
TINY = PolicyConfig(hidden_sizes=(4,), critic_hidden_sizes=(8,))


def make_actor(kind: str, policy: PolicyConfig = TINY) -> CategoricalActor | GaussianActor:
    if kind == "categorical":
        return CategoricalActor(OBS_DIM, 3, policy)
    return GaussianActor(OBS_DIM, 2, policy)


def params_of(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def unchanged(module: torch.nn.Module, before: list[torch.Tensor]) -> bool:
    return all(torch.equal(a, b) for a, b in zip(module.parameters(), before, strict=True))


def mean_kl_by_hand(kind: str, old: tuple[torch.Tensor, ...], new: object) -> torch.Tensor:
    """KL(old || new) averaged over states, written out from the closed forms."""
    if kind == "categorical":
        (old_logp,) = old
        new_logp = torch.log_softmax(new.logits, -1)
        return (old_logp.exp() * (old_logp - new_logp)).sum(-1).mean()
    mu0, std0 = old
    mu1, std1 = new.mean, new.stddev
    per_dim = torch.log(std1 / std0) + (std0**2 + (mu0 - mu1) ** 2) / (2 * std1**2) - 0.5
    return per_dim.sum(-1).mean()


def dist_stats(kind: str, dist: object) -> tuple[torch.Tensor, ...]:
    if kind == "categorical":
        return (torch.log_softmax(dist.logits, -1).detach(),)
    return dist.mean.detach(), dist.stddev.detach()


# --- conjugate gradient ---------------------------------------------------------------------


def random_spd(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(n, n, dtype=torch.float64, generator=g)
    return m @ m.T + n * torch.eye(n, dtype=torch.float64)


def test_conjugate_gradient_matches_a_direct_solve():
    n = 12
    A = random_spd(n, seed=0)
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    x, residual = trpo.conjugate_gradient(lambda v: A @ v, b, iters=n, residual_tol=1e-30)

    torch.testing.assert_close(x, torch.linalg.solve(A, b), rtol=1e-9, atol=1e-10)
    assert residual < 1e-8


def test_conjugate_gradient_reports_the_true_residual_when_stopped_early():
    n = 12
    A = random_spd(n, seed=2)
    b = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    x, residual = trpo.conjugate_gradient(lambda v: A @ v, b, iters=3)

    true_residual = float(torch.linalg.norm(b - A @ x))
    assert true_residual > 1e-6  # three iterations cannot solve a 12-dim system exactly
    assert residual == pytest.approx(true_residual, rel=1e-6)


# --- Fisher-vector product -----------------------------------------------------------------


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_fisher_vector_product_is_the_hessian_of_the_mean_kl(kind):
    torch.manual_seed(0)
    actor = make_actor(kind).double()
    with torch.no_grad():  # a generic point, not the near-uniform initial policy
        for p in actor.parameters():
            p.add_(0.5 * torch.randn_like(p))
    obs = torch.randn(16, OBS_DIM, dtype=torch.float64)
    names = [name for name, _ in actor.named_parameters()]
    shapes = [p.shape for p in actor.parameters()]
    theta_old = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])
    with torch.no_grad():
        old = dist_stats(kind, actor(obs))

    def kl_at(theta: torch.Tensor) -> torch.Tensor:
        chunks = theta.split([math.prod(s) for s in shapes])
        params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        return mean_kl_by_hand(kind, old, functional_call(actor, params, (obs,)))

    H = torch.autograd.functional.hessian(kl_at, theta_old)
    fvp = trpo.fisher_vector_product(actor, obs, damping=0.0)
    F = torch.stack([fvp(e) for e in torch.eye(theta_old.numel(), dtype=torch.float64)], dim=1)

    assert H.abs().max() > 1e-2  # a Hessian with something in it
    torch.testing.assert_close(F, H, rtol=1e-8, atol=1e-10)

    v = torch.randn_like(theta_old)
    damped = trpo.fisher_vector_product(actor, obs, damping=0.3)
    torch.testing.assert_close(damped(v), H @ v + 0.3 * v, rtol=1e-8, atol=1e-10)


# --- line search ----------------------------------------------------------------------------


def test_line_search_accepts_the_first_step_inside_the_trust_region():
    actor = make_actor("gaussian")
    params = list(actor.parameters())
    theta_old = trpo.flat_params(params)
    full_step = torch.randn_like(theta_old)
    full_step /= full_step.norm()
    max_kl, shrink = 0.01, 0.5

    def evaluate() -> tuple[float, float]:
        # "KL" = squared distance from theta_old; the surrogate always improves.
        return 1.0, float((trpo.flat_params(params) - theta_old).pow(2).sum())

    accepted, tried, surrogate, kl = trpo.line_search(
        actor, evaluate, theta_old, full_step, 0.0, max_kl, steps=10, shrink=shrink
    )

    k = math.ceil(math.log(max_kl) / (2 * math.log(shrink)))  # first shrink**(2k) <= max_kl
    assert (accepted, tried, surrogate) == (True, k + 1, 1.0)
    assert kl <= max_kl
    torch.testing.assert_close(trpo.flat_params(params), theta_old + shrink**k * full_step)


@pytest.mark.parametrize("failure", ["surrogate never improves", "trust region too small"])
def test_line_search_restores_parameters_bit_exactly_on_failure(failure):
    torch.manual_seed(0)
    actor = make_actor("categorical")
    obs = torch.randn(32, OBS_DIM)
    params = list(actor.parameters())
    before = params_of(actor)
    with torch.no_grad():
        old = actor(obs)
    theta_old = trpo.flat_params(params)
    full_step = 0.1 * torch.randn_like(theta_old)
    tried_params: list[torch.Tensor] = []

    def evaluate() -> tuple[float, float]:
        tried_params.append(trpo.flat_params(params))
        with torch.no_grad():
            kl = float(trpo.mean_kl(old, actor(obs)))
        if failure == "surrogate never improves":
            return -1.0, kl
        return 1.0, kl

    max_kl = 1.0 if failure == "surrogate never improves" else 1e-30
    accepted, tried, surrogate, kl = trpo.line_search(
        actor, evaluate, theta_old, full_step, 0.0, max_kl, steps=5, shrink=0.5
    )

    assert (accepted, tried, surrogate, kl) == (False, 5, 0.0, 0.0)
    assert len(tried_params) == 5
    assert all(not torch.equal(t, theta_old) for t in tried_params)  # it did move them
    assert unchanged(actor, before)


# --- the policy step ------------------------------------------------------------------------


def policy_batch(kind: str, n: int = 256, seed: int = 0):
    torch.manual_seed(seed)
    actor = make_actor(kind, PolicyConfig(hidden_sizes=(16,)))
    obs = torch.randn(n, OBS_DIM)
    with torch.no_grad():
        actions = actor(obs).sample()
    advantages = torch.randn(n)
    return actor, obs, actions, advantages


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_policy_step_improves_the_surrogate_inside_the_trust_region(kind):
    actor, obs, actions, advantages = policy_batch(kind)
    cfg = AlgoConfig(max_kl=0.01)
    with torch.no_grad():
        old = actor(obs)
        old_stats, old_log_prob = dist_stats(kind, old), old.log_prob(actions)

    step = trpo.policy_step(actor, obs, actions, advantages, cfg)

    assert step.line_search_accepted and step.skipped == ""
    assert 0.0 < step.kl <= cfg.max_kl
    assert step.surrogate_after > step.surrogate_before
    with torch.no_grad():  # the reported numbers are those of the new policy
        new = actor(obs)
        kl = float(mean_kl_by_hand(kind, old_stats, new))
        L_new = float((torch.exp(new.log_prob(actions) - old_log_prob) * advantages).mean())
        L_old = float(advantages.mean())  # ratio 1 at theta_old
    assert step.kl == pytest.approx(kl, rel=1e-4, abs=1e-9)
    assert step.surrogate_after == pytest.approx(L_new, rel=1e-5)
    assert step.surrogate_before == pytest.approx(L_old, rel=1e-5, abs=1e-7)


def test_full_natural_gradient_step_lands_on_the_trust_region_boundary():
    # alpha = sqrt(2 delta / s^T F s) makes the quadratic KL model equal delta; for a small
    # delta the exact KL of the full step is close to it, and the first step is accepted.
    actor, obs, actions, advantages = policy_batch("gaussian")
    cfg = AlgoConfig(max_kl=1e-5, cg_damping=0.0, cg_iters=20, fvp_subsample=1.0)

    step = trpo.policy_step(actor, obs, actions, advantages, cfg)

    assert step.line_search_accepted and step.line_search_steps == 1
    assert step.kl == pytest.approx(cfg.max_kl, rel=0.05)


def test_policy_step_skips_a_zero_gradient():
    actor, obs, actions, advantages = policy_batch("categorical")
    before = params_of(actor)

    step = trpo.policy_step(actor, obs, actions, torch.zeros_like(advantages), AlgoConfig())

    assert step.skipped == "zero gradient"
    assert not step.line_search_accepted and step.line_search_steps == 0 and step.kl == 0.0
    assert unchanged(actor, before)


def test_policy_step_skips_a_non_finite_gradient_without_writing_nan():
    actor, obs, actions, advantages = policy_batch("gaussian")
    advantages[3] = float("nan")
    before = params_of(actor)

    step = trpo.policy_step(actor, obs, actions, advantages, AlgoConfig())

    assert "non-finite gradient" in step.skipped
    assert not step.line_search_accepted
    assert unchanged(actor, before)
    assert all(torch.isfinite(p).all() for p in actor.parameters())


def test_policy_step_skips_non_finite_curvature_without_writing_nan():
    # A collapsed Gaussian (std ~ 4e-18): the gradient is finite, but the Fisher scales with
    # 1 / std^2 and its products overflow float32.
    torch.manual_seed(0)
    actor = GaussianActor(OBS_DIM, 1, PolicyConfig(hidden_sizes=(8,), log_std_init=-40.0))
    obs = torch.zeros(64, OBS_DIM)
    with torch.no_grad():
        actions = actor(obs).sample()
    advantages = torch.randn(64)
    cfg = AlgoConfig(cg_damping=0.0)
    g = trpo.flat_grad(
        trpo.surrogate(actor(obs), actions, actor(obs).log_prob(actions).detach(), advantages, 0),
        list(actor.parameters()),
    )
    assert torch.isfinite(g).all()
    assert not torch.isfinite(trpo.fisher_vector_product(actor, obs, 0.0)(g)).all()
    before = params_of(actor)

    step = trpo.policy_step(actor, obs, actions, advantages, cfg)

    assert "curvature" in step.skipped
    assert not step.line_search_accepted and step.kl == 0.0
    assert unchanged(actor, before)
    assert all(torch.isfinite(p).all() for p in actor.parameters())


# --- the critic -----------------------------------------------------------------------------


def test_fit_critic_reduces_the_loss_and_leaves_the_actor_alone():
    torch.manual_seed(0)
    actor, critic = make_actor("gaussian"), Critic(OBS_DIM, TINY)
    optimizer = Adam(critic.parameters(), lr=1e-2)
    obs = torch.randn(256, OBS_DIM)
    returns = obs @ torch.tensor([1.0, -2.0, 0.5]) + 3.0
    actor_before, critic_before = params_of(actor), params_of(critic)
    with torch.no_grad():
        loss_before = float((critic(obs) - returns).pow(2).mean())

    last_epoch_loss = trpo.fit_critic(critic, optimizer, obs, returns, epochs=20, minibatch=32)

    with torch.no_grad():
        loss_after = float((critic(obs) - returns).pow(2).mean())
    assert loss_after < 0.5 * loss_before
    assert last_epoch_loss < loss_before
    assert unchanged(actor, actor_before)
    assert not unchanged(critic, critic_before)


def test_explained_variance_on_known_inputs():
    returns = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert trpo.explained_variance(returns.clone(), returns) == pytest.approx(1.0)
    assert trpo.explained_variance(torch.full((4,), 2.5), returns) == pytest.approx(0.0)
    # R - V = [0, 0, 0, -1]: mean -1/4, unbiased variance (3 * 1/16 + 9/16) / 3 = 1/4;
    # Var(R) = (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3.
    values = torch.tensor([1.0, 2.0, 3.0, 5.0])
    expected = 1.0 - (1 / 4) / (5 / 3)
    assert trpo.explained_variance(values, returns) == pytest.approx(expected)
    assert math.isnan(trpo.explained_variance(values, torch.full((4,), 7.0)))


# --- the whole update -----------------------------------------------------------------------

CURVE_STATS_COLUMNS = (  # the learning curve's columns after the progress ones, in this order
    "surrogate_before",
    "surrogate_after",
    "kl",
    "line_search_steps",
    "line_search_accepted",
    "skipped",
    "cg_residual",
    "step_size",
    "grad_norm",
    "entropy",
    "value_loss",
    "explained_variance",
)


def test_update_stats_are_the_policy_steps_then_the_critics_in_the_curves_order():
    policy = [f.name for f in dataclasses.fields(trpo.PolicyStats)]
    assert [f.name for f in dataclasses.fields(trpo.UpdateStats)] == list(CURVE_STATS_COLUMNS)
    assert list(CURVE_STATS_COLUMNS[: len(policy)]) == policy


def test_fisher_states_are_all_or_a_random_subset_of_distinct_states():
    obs = torch.arange(40.0).reshape(20, 2)
    assert trpo.fisher_states(obs, 1.0) is obs
    subset = trpo.fisher_states(obs, 0.25)
    assert subset.shape == (5, 2)
    assert len({tuple(row.tolist()) for row in subset}) == 5
    assert all(any(torch.equal(row, o) for o in obs) for row in subset)
    assert trpo.fisher_states(obs, 0.01).shape[0] == 2  # never fewer than two states


def test_update_is_the_policy_step_then_the_critic_fit_on_one_batch():
    # Done by hand on copies from the same RNG state, the pieces give the same bits: the
    # update adds nothing, and draws its random numbers (the Fisher subsample, then the
    # critic's minibatches) in this order.
    actor, obs, actions, adv = policy_batch("gaussian")
    critic = Critic(OBS_DIM, TINY)
    returns = torch.randn(obs.shape[0])
    with torch.no_grad():
        values = critic(obs)
    cfg = AlgoConfig(fvp_subsample=0.5, vf_epochs=2, vf_minibatch=64)
    by_hand_actor, by_hand_critic = copy.deepcopy(actor), copy.deepcopy(critic)
    batch = trpo.TrainingBatch(
        obs=obs, actions=actions, advantages=adv, returns=returns, values=values
    )

    torch.manual_seed(1)
    stats = trpo.update(actor, critic, Adam(critic.parameters(), lr=1e-3), batch, cfg)
    torch.manual_seed(1)
    step = trpo.policy_step(by_hand_actor, obs, actions, adv, cfg)
    ev = trpo.explained_variance(values, returns)
    optimizer = Adam(by_hand_critic.parameters(), lr=1e-3)
    value_loss = trpo.fit_critic(by_hand_critic, optimizer, obs, returns, 2, 64)

    assert stats == trpo.UpdateStats(
        **dataclasses.asdict(step), value_loss=value_loss, explained_variance=ev
    )
    assert stats.line_search_accepted
    assert unchanged(actor, params_of(by_hand_actor))
    assert unchanged(critic, params_of(by_hand_critic))
