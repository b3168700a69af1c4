"""adam.py: the same updates as torch.optim.Adam, bit for bit, and a faithful state round trip."""

from __future__ import annotations

import torch
from torch import nn

from trpo_pipeline.rl.adam import Adam


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))


def _train(net: nn.Module, opt, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 4, generator=gen)
        y = torch.randn(32, 1, generator=gen)
        opt.zero_grad()
        (net(x) - y).pow(2).mean().backward()
        opt.step()


def test_updates_equal_torch_adams_bit_for_bit():
    ours, theirs = _net(), _net()
    _train(ours, Adam(ours.parameters(), lr=3e-3), steps=25)
    _train(theirs, torch.optim.Adam(theirs.parameters(), lr=3e-3, foreach=False), steps=25)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)


def test_a_restored_optimizer_continues_exactly():
    straight, resumed = _net(), _net()
    opt = Adam(straight.parameters(), lr=1e-2)
    _train(straight, opt, steps=5)
    saved_params = [p.detach().clone() for p in straight.parameters()]
    saved_state = opt.state_dict()
    _train(straight, opt, steps=5, seed=2)

    with torch.no_grad():
        for p, s in zip(resumed.parameters(), saved_params, strict=True):
            p.copy_(s)
    other = Adam(resumed.parameters(), lr=1.0)
    other.load_state_dict(saved_state)
    _train(resumed, other, steps=5, seed=2)
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
