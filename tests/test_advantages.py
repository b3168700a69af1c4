"""advantages.py: GAE against hand-worked episodes, and the normaliser's edge cases."""

from __future__ import annotations

import pytest
import torch

from trpo_pipeline.rl.advantages import gae, normalize


def column(*xs: float) -> torch.Tensor:
    """A [T, 1] batch: one env."""
    return torch.tensor(xs, dtype=torch.float64).unsqueeze(1)


def flags(*xs: bool) -> torch.Tensor:
    return torch.tensor(xs).unsqueeze(1)


def test_gae_on_a_hand_worked_terminated_episode():
    gamma, lam = 0.9, 0.8
    r = [1.0, 2.0, 3.0]
    v = [0.5, 1.0, 1.5]  # V(s_0), V(s_1), V(s_2)
    v_next = [1.0, 1.5, 9.0]  # V(s_1), V(s_2), V(s_3); s_3 is terminal, so 9.0 must be unused

    adv, ret = gae(
        column(*r),
        column(*v),
        column(*v_next),
        flags(False, False, True),
        flags(False, False, False),
        gamma,
        lam,
    )

    d2 = 3.0 - 1.5  # r_2 - V(s_2): no bootstrap after a terminal state
    d1 = 2.0 + 0.9 * 1.5 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + 0.9 * 0.8 * a2
    a0 = d0 + 0.9 * 0.8 * a1
    torch.testing.assert_close(adv, column(a0, a1, a2))
    torch.testing.assert_close(ret, column(a0 + 0.5, a1 + 1.0, a2 + 1.5))


def test_lambda_one_gives_discounted_monte_carlo_returns():
    gamma = 0.95
    rewards = [0.5, -1.0, 2.0, 0.25, 1.0]
    values = [3.0, -2.0, 0.7, 1.1, 0.0]  # any critic: with lambda = 1 it cancels out
    next_values = [*values[1:], 42.0]
    terminated = flags(False, False, False, False, True)

    _, ret = gae(
        column(*rewards),
        column(*values),
        column(*next_values),
        terminated,
        torch.zeros_like(terminated),
        gamma,
        1.0,
    )

    expected = [sum(gamma**k * r for k, r in enumerate(rewards[t:])) for t in range(5)]
    torch.testing.assert_close(ret, column(*expected))


def test_truncation_bootstraps_from_the_next_value_and_termination_does_not():
    gamma, lam = 0.9, 0.8
    r, v, v_next = column(1.0, 2.0), column(0.3, 0.6), column(0.6, 5.0)
    ends = flags(False, True)
    not_ends = flags(False, False)

    adv_term, _ = gae(r, v, v_next, ends, not_ends, gamma, lam)
    adv_trunc, _ = gae(r, v, v_next, not_ends, ends, gamma, lam)

    # Last step: the truncated episode adds gamma * V(s_T); earlier steps see it through
    # the GAE recursion, discounted by gamma * lambda per step.
    diff = adv_trunc - adv_term
    torch.testing.assert_close(diff, column(gamma * lam * gamma * 5.0, gamma * 5.0))


def test_episodes_in_one_env_row_do_not_leak_across_a_done():
    gamma, lam = 0.99, 0.95
    # Env row: episode A (steps 0-1, terminated at 1), episode B (steps 2-3, cut by the batch).
    rewards = column(1.0, 1.0, 1.0, 1.0)
    values = column(0.2, 0.4, 0.6, 0.8)
    next_values = column(0.4, 0.0, 0.8, 1.0)
    terminated = flags(False, True, False, False)
    truncated = torch.zeros_like(terminated)
    adv, _ = gae(rewards, values, next_values, terminated, truncated, gamma, lam)

    # Changing anything in episode B leaves episode A's advantages unchanged.
    rewards_b = rewards.clone()
    rewards_b[2:] = torch.tensor([[100.0], [-50.0]], dtype=torch.float64)
    next_values_b = next_values.clone()
    next_values_b[3] = 77.0
    adv_b, _ = gae(rewards_b, values, next_values_b, terminated, truncated, gamma, lam)

    torch.testing.assert_close(adv_b[:2], adv[:2])
    assert not torch.allclose(adv_b[2:], adv[2:])
    # Episode A on its own gives the same numbers.
    alone, _ = gae(
        rewards[:2], values[:2], next_values[:2], terminated[:2], truncated[:2], gamma, lam
    )
    torch.testing.assert_close(adv[:2], alone)


def test_envs_are_independent_columns():
    torch.manual_seed(0)
    T, N = 6, 3
    r, v, vn = torch.randn(T, N), torch.randn(T, N), torch.randn(T, N)
    term, trunc = torch.rand(T, N) < 0.2, torch.rand(T, N) < 0.2
    adv, ret = gae(r, v, vn, term, trunc, 0.97, 0.9)
    for i in range(N):
        col = slice(i, i + 1)
        a_i, r_i = gae(r[:, col], v[:, col], vn[:, col], term[:, col], trunc[:, col], 0.97, 0.9)
        torch.testing.assert_close(adv[:, col], a_i)
        torch.testing.assert_close(ret[:, col], r_i)


def test_normalize_gives_zero_mean_unit_std():
    x = torch.tensor([1.0, 3.0, 7.0, -2.0])
    out = normalize(x)
    assert float(out.mean()) == pytest.approx(0.0, abs=1e-6)
    assert float(out.std()) == pytest.approx(1.0, rel=1e-6)
    torch.testing.assert_close(out, (x - x.mean()) / x.std(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("x", [torch.tensor([5.0]), torch.full((8,), 3.25)], ids=["one", "const"])
def test_normalize_edge_cases_are_finite_and_centred(x):
    out = normalize(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.zeros_like(x))
