"""DreamerV3's optimiser: adaptive gradient clipping, then LaProp.

Per parameter tensor: the gradient is clipped so its norm is at most
``agc · max(1e-3, ‖param‖)``; it is divided by the root of an EMA of squared
gradients (β₂ = 0.999, bias-corrected, ε = 1e-20); the result is averaged with
momentum (β₁ = 0.9, bias-corrected) and applied with a learning rate that
warms up linearly from 0 over ``warmup`` updates. Reference: danijar/dreamerv3
``embodied/jax/opt.py``; LaProp (Ziyin et al., 2020).

Both optimisers here skip a step whose gradient norm is not finite: nothing
changes (parameters, moments, step count) and ``info['skipped']`` is 1. The
official code applies such a step; one NaN would then ruin every parameter
it reaches and the checkpoints after it, which a long robot run cannot afford.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class LaProp(torch.optim.Optimizer):
    """LaProp with adaptive gradient clipping and a linear warm-up.

    Args:
        params: parameters to optimise.
        lr: learning rate after warm-up (4e-5).
        beta1: momentum rate (0.9).
        beta2: squared-gradient EMA rate (0.999).
        eps: added to the RMS (1e-20).
        agc: adaptive clipping ratio (0.3); 0 disables.
        warmup: warm-up updates (1000); 0 disables.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter],
        *,
        lr: float = 4e-5,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-20,
        agc: float = 0.3,
        warmup: int = 1000,
    ) -> None:
        super().__init__(params, dict(lr=lr, beta1=beta1, beta2=beta2, eps=eps, agc=agc, warmup=warmup, count=0))

    @torch.no_grad()
    def step(self, closure: None = None) -> dict[str, float]:  # type: ignore[override]  # returns the update's info, not a loss
        """One update; returns the learning rate used and the gradient norm."""
        info: dict[str, float] = {"skipped": 0.0}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads: tuple[torch.Tensor, ...] | list[torch.Tensor] = [p.grad for p in params]
            info["grad_norm"] = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            if not math.isfinite(info["grad_norm"]):
                info["skipped"] = 1.0
                continue
            # The update count lives in the group so state_dict() saves it.
            count = group["count"]
            group["count"] = count + 1
            if group["agc"]:
                gnorm = torch.stack(torch._foreach_norm(grads))
                pnorm = torch.stack(torch._foreach_norm(params))
                upper = group["agc"] * torch.clamp(pnorm, min=1e-3)
                factor = 1.0 / torch.clamp(gnorm / upper, min=1.0)
                grads = torch._foreach_mul(grads, list(factor.unbind()))
            states = [self.state[p] for p in params]
            for p, s in zip(params, states):
                if "nu" not in s:
                    s["nu"] = torch.zeros_like(p)
                    s["mu"] = torch.zeros_like(p)
            nus = [s["nu"] for s in states]
            mus = [s["mu"] for s in states]
            t = count + 1
            b1, b2 = group["beta1"], group["beta2"]
            # nu ← β₂ nu + (1 − β₂) g²;  u = g / (sqrt(nu / (1 − β₂^t)) + ε)
            torch._foreach_mul_(nus, b2)
            torch._foreach_addcmul_(nus, grads, grads, value=1 - b2)
            denom = torch._foreach_div(nus, 1 - b2**t)
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            updates = torch._foreach_div(grads, denom)
            # mu ← β₁ mu + (1 − β₁) u;  step = lr · mu / (1 − β₁^t)
            torch._foreach_mul_(mus, b1)
            torch._foreach_add_(mus, updates, alpha=1 - b1)
            lr = group["lr"] * (min(count, group["warmup"]) / group["warmup"] if group["warmup"] else 1.0)
            info["lr"] = lr
            if lr:
                torch._foreach_add_(params, mus, alpha=-lr / (1 - b1**t))
        return info


class ClippedAdam(torch.optim.AdamW):
    """DreamerV1/V2's optimisers: one Adam per module group (world model,
    actor, critic), each with its own learning rate, gradient clipping by the
    group's global norm, and decoupled weight decay ``p ← (1 − wd) · p``.

    One optimiser object with a parameter group per module keeps checkpoints
    simple; the groups do not interact. V2's weight decay is not scaled by the
    learning rate, so it is passed to AdamW (which multiplies by lr) as ``wd / lr``.

    Args:
        groups: ``{name: (params, lr)}``, e.g. ``model``, ``actor``, ``critic``.
        eps: Adam's ε (V1: 1e-7, the TF default; V2: 1e-5).
        clip: global-norm clip per group (100); 0 disables.
        wd: decoupled weight decay per update (V2: 1e-6; V1: 0).
    """

    def __init__(
        self, groups: dict[str, tuple[list[torch.nn.Parameter], float]], *, eps: float = 1e-5, clip: float = 100.0, wd: float = 0.0
    ) -> None:
        param_groups = [
            {"params": list(params), "lr": lr, "name": name, "clip": clip, "weight_decay": wd / lr if lr else 0.0}
            for name, (params, lr) in groups.items()
        ]
        super().__init__(param_groups, eps=eps, betas=(0.9, 0.999))

    @torch.no_grad()
    def step(self, closure: None = None) -> dict[str, float]:  # type: ignore[override]  # returns the update's info, not a loss
        """Clips each group, then one Adam update; returns the world model's gradient norm and learning rate."""
        info: dict[str, float] = {"skipped": 0.0}
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            if group["clip"]:
                norm = torch.nn.utils.clip_grad_norm_(params, group["clip"])
            else:
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in params])))
            info[f"grad_norm/{group['name']}"] = float(norm)
        if all(math.isfinite(v) for k, v in info.items() if k.startswith("grad_norm/")):
            super().step()
        else:
            info["skipped"] = 1.0
        first = self.param_groups[0]
        info["grad_norm"] = info.get(f"grad_norm/{first['name']}", 0.0)
        info["lr"] = first["lr"]
        return info
