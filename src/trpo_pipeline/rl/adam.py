"""Adam (Kingma & Ba 2015, Algorithm 1) for the critic's few parameter tensors.

The arithmetic is torch.optim.Adam's (single-tensor path, no weight decay, no amsgrad), step for
step and bit for bit (tests/test_adam.py). It exists because constructing any torch.optim
optimizer imports torch._dynamo, about a second of start-up: a third of a CartPole-v1 run.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class Adam:
    """m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
    theta <- theta - lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.t += 1
        b1, b2 = self.betas
        step_size = self.lr / (1 - b1**self.t)
        bias_correction2_sqrt = math.sqrt(1 - b2**self.t)
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in live]
        grads = [p.grad for p in params]
        m, v = [self.m[i] for i in live], [self.v[i] for i in live]
        # The single-tensor arithmetic, element for element, one call per operation for all
        # tensors (torch's _foreach ops): the critic's ~300 steps per update on small tensors
        # are bound by the calls, not the arithmetic.
        torch._foreach_lerp_(m, grads, 1 - b1)
        torch._foreach_mul_(v, b2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - b2)
        denom = torch._foreach_sqrt(v)
        torch._foreach_div_(denom, bias_correction2_sqrt)
        torch._foreach_add_(denom, self.eps)
        torch._foreach_addcdiv_(params, m, denom, value=-step_size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "t": self.t,
            "lr": self.lr,
            "betas": list(self.betas),
            "eps": self.eps,
            "m": [m.clone() for m in self.m],
            "v": [v.clone() for v in self.v],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if len(state["m"]) != len(self.params):
            raise ValueError("optimizer state has a different number of parameter tensors")
        self.t, self.lr, self.eps = int(state["t"]), float(state["lr"]), float(state["eps"])
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        for mine, saved in zip(self.m + self.v, state["m"] + state["v"], strict=True):
            mine.copy_(saved)
