"""Actor and critic trained in imagination (DreamerV3)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from reverie.world_model import dists
from reverie.world_model.heads import TwoHotHead
from reverie.world_model.nets import MLP, Linear


class Actor(nn.Module):
    """The policy head: a bounded normal for continuous actions, a categorical for discrete ones.

    Args:
        feat_dim: model feature size.
        act_dim: action size (one-hot size when discrete).
        discrete: categorical over ``act_dim`` classes instead of a normal.
        layers, units, act, norm: the MLP.
        min_std, max_std: bounds of the normal's standard deviation.
        outscale: initial scale of the output layer (0.01: near-uniform start).
    """

    def __init__(
        self,
        feat_dim: int,
        act_dim: int,
        *,
        discrete: bool,
        layers: int = 3,
        units: int = 64,
        act: str = "silu",
        norm: str = "rms",
        min_std: float = 0.1,
        max_std: float = 1.0,
        outscale: float = 0.01,
    ) -> None:
        super().__init__()
        self.discrete, self.act_dim = discrete, act_dim
        self.min_std, self.max_std = min_std, max_std
        self.mlp = MLP(feat_dim, layers, units, act=act, norm=norm)
        self.out = Linear(self.mlp.out_features, act_dim if discrete else 2 * act_dim, outscale=outscale)

    def params(self, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Distribution parameters: ``(logits, None)`` or ``(mean, std)``, each ``[..., A]``."""
        x = self.out(self.mlp(feat))
        if self.discrete:
            return torch.log_softmax(x, -1), None
        mean, std = x.chunk(2, -1)
        return dists.bounded_normal_params(mean, std, self.min_std, self.max_std)

    def sample(self, feat: torch.Tensor, noise: torch.Tensor | None = None, mode: bool = False) -> torch.Tensor:
        """An action ``[..., A]``.

        Args:
            noise: uniform noise for a discrete actor, standard-normal noise for
                a continuous one; drawn here when None.
            mode: return the most likely action.
        """
        a, b = self.params(feat)
        if self.discrete:
            return dists.mode_onehot(a) if mode else dists.sample_onehot(a, noise)
        if mode:
            return a
        if noise is None:
            noise = torch.randn_like(a)
        return a + b * noise

    def logp_entropy(self, feat: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``action`` and the entropy, each ``[...]`` (summed over action dims)."""
        a, b = self.params(feat)
        if self.discrete:
            return (a * action).sum(-1), dists.categorical_entropy(a)
        return dists.normal_logp(action, a, b).sum(-1), dists.normal_entropy(b).sum(-1)


class SlowCritic(nn.Module):
    """An EMA copy of the critic, the regularisation target of the critic losses."""

    def __init__(self, critic: TwoHotHead, *, rate: float = 0.02) -> None:
        super().__init__()
        self.rate = rate
        self.net = copy.deepcopy(critic)
        self.net.requires_grad_(False)

    @torch.no_grad()
    def update(self, critic: TwoHotHead) -> None:
        """``slow ← (1 − rate) · slow + rate · critic``."""
        torch._foreach_lerp_(list(self.net.parameters()), list(critic.parameters()), self.rate)

    @torch.no_grad()
    def mean(self, feat: torch.Tensor) -> torch.Tensor:
        """The slow critic's value prediction ``[...]``."""
        return self.net.mean(self.net.logits(feat))


def policy_loss(
    logp: torch.Tensor, entropy: torch.Tensor, advantage: torch.Tensor, weight: torch.Tensor, entropy_scale: float
) -> torch.Tensor:
    """REINFORCE with an entropy bonus: ``−weight · (logπ(a) · sg(adv) + η · H[π])``, ``[N, H]``."""
    return -weight.detach() * (logp * advantage.detach() + entropy_scale * entropy)


def critic_loss(
    critic: TwoHotHead, logits: torch.Tensor, target: torch.Tensor, slow_target: torch.Tensor, weight: torch.Tensor, slowreg: float
) -> torch.Tensor:
    """Two-hot regression to the return plus ``slowreg`` × regression to the slow critic, ``[N, T]``."""
    loss = critic.loss(logits, target.detach()) + slowreg * critic.loss(logits, slow_target.detach())
    return weight.detach() * loss
