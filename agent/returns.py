"""Return estimators and the return normaliser."""

from __future__ import annotations

import torch
from torch import nn


def lambda_return(
    last: torch.Tensor, term: torch.Tensor, reward: torch.Tensor, boot: torch.Tensor, disc: float, lam: float
) -> torch.Tensor:
    """TD(λ) returns in the official DreamerV3 convention.

    All inputs are ``[N, T]`` where entry t describes state t: ``reward[t]`` is
    the reward for arriving in state t, ``term[t]`` says state t is terminal,
    ``last[t]`` that the sequence is cut at t, ``boot[t]`` is the value of t.

    R_T−1 = r_T + γ_T · ((1 − λ_T) · v_T + λ_T · v_T) with the last step
    bootstrapping from ``boot[T−1]``; in general
    R_t = r_{t+1} + γ_{t+1} · ((1 − λ_{t+1}) · v_{t+1} + λ_{t+1} · R_{t+1}),
    where γ_{t+1} = disc · (1 − term_{t+1}) and λ_{t+1} = lam · (1 − last_{t+1}).

    Returns:
        ``[N, T−1]``: the return of states 0 … T−2.
    """
    live = (1.0 - term.float())[:, 1:] * disc
    cont = (1.0 - last.float())[:, 1:] * lam
    interm = reward[:, 1:] + (1.0 - cont) * live * boot[:, 1:]
    ret = boot[:, -1]
    out = []
    for t in reversed(range(live.shape[1])):
        ret = interm[:, t] + live[:, t] * cont[:, t] * ret
        out.append(ret)
    return torch.stack(out[::-1], 1)


def discount_weights(cont: torch.Tensor, inclusive: bool = True) -> torch.Tensor:
    """Weight of each imagined state in the actor and critic losses, ``[N, H+1] → [N, H+1]``.

    ``cont[t]`` is the predicted discount of reaching state t (γ · P(continue)).
    Inclusive (V3): ``w_t = Π_{i≤t} cont_i``. Exclusive (V1, V2, whose start
    state has weight 1): ``w_t = Π_{i<t} cont_i``.
    """
    if not inclusive:
        cont = torch.cat([torch.ones_like(cont[:, :1]), cont[:, :-1]], 1)
    return torch.cumprod(cont, 1)


class PercentileNormalizer(nn.Module):
    """Scale of returns: an EMA of the 5th and 95th percentiles.

    ``scale = max(limit, hi − lo)``; with ``limit = 1`` small returns are not
    blown up (DreamerV3's return normalisation). State is kept in buffers so
    it is checkpointed with the agent.

    Args:
        rate: EMA rate (0.01).
        limit: floor of the scale (1.0).
        low, high: percentiles (5, 95).
    """

    lo: torch.Tensor
    hi: torch.Tensor

    def __init__(self, *, rate: float = 0.01, limit: float = 1.0, low: float = 5.0, high: float = 95.0) -> None:
        super().__init__()
        self.rate, self.limit, self.low, self.high = rate, limit, low, high
        self.register_buffer("lo", torch.zeros(()))
        self.register_buffer("hi", torch.zeros(()))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Moves lo and hi toward the percentiles of ``x``."""
        q = torch.quantile(x.detach().float().flatten(), torch.tensor([self.low / 100, self.high / 100], device=x.device))
        # A non-finite return (an update the optimiser will skip) must not poison the EMA for good;
        # torch.where instead of an if: no device-to-host sync on a GPU.
        ok = torch.isfinite(q).all()
        self.lo.copy_(torch.where(ok, (1 - self.rate) * self.lo + self.rate * q[0], self.lo))
        self.hi.copy_(torch.where(ok, (1 - self.rate) * self.hi + self.rate * q[1], self.hi))

    def scale(self) -> torch.Tensor:
        """``max(limit, hi − lo)`` (no gradient)."""
        return torch.clamp(self.hi - self.lo, min=self.limit).detach()
