"""Actor and critic trained in imagination (DreamerV1, V2 and V3)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from reverie.world_model import dists
from reverie.world_model.heads import ScalarHead
from reverie.world_model.nets import MLP, LatentFeat, Linear

ACTOR_DISTS = ("bounded_normal", "trunc_normal", "tanh_normal")


class Actor(nn.Module):
    """The policy head: a categorical for discrete actions; for continuous ones
    the version's distribution (``dist``):

    - ``bounded_normal`` (V3): N(tanh(μ), σ) with σ in [min_std, max_std]; the
      environment clips samples to [−1, 1].
    - ``trunc_normal`` (V2): N(tanh(μ), 2·sigmoid(σ/2) + min_std) truncated to [−1, 1].
    - ``tanh_normal`` (V1): tanh(N(mean_scale·tanh(μ/mean_scale), softplus(σ + c) + min_std)).

    Every sample is reparameterised (dynamics backpropagation needs it).

    Args:
        feat_dim: model feature size.
        act_dim: action size (one-hot size when discrete).
        discrete: categorical over ``act_dim`` classes instead of a continuous distribution.
        dist: continuous distribution, see above.
        layers, units, act, norm: the MLP.
        min_std, max_std: bounds of the standard deviation (max: bounded_normal only).
        outscale: initial scale of the output layer (0.01: near-uniform start).
        mean_scale, init_std: tanh_normal's mean bound and initial std.
        unimix: discrete actions: mix ``unimix`` of the uniform distribution
            into the action probabilities (V3: 0.01, so every action keeps a
            floor of ``unimix / A`` and log-probabilities stay bounded).
    """

    def __init__(
        self,
        feat_dim: int,
        act_dim: int,
        *,
        discrete: bool,
        dist: str = "bounded_normal",
        layers: int = 3,
        units: int = 64,
        act: str = "silu",
        norm: str = "rms",
        min_std: float = 0.1,
        max_std: float = 1.0,
        outscale: float = 0.01,
        mean_scale: float = 5.0,
        init_std: float = 5.0,
        unimix: float = 0.0,
    ) -> None:
        super().__init__()
        if dist not in ACTOR_DISTS:
            raise ValueError(f"unknown actor dist {dist!r}; valid: {', '.join(ACTOR_DISTS)}")
        self.discrete, self.act_dim, self.dist = discrete, act_dim, dist
        self.min_std, self.max_std = min_std, max_std
        self.mean_scale, self.init_std = mean_scale, init_std
        if not 0.0 <= unimix < 1.0:
            raise ValueError(f"actor unimix={unimix} must lie in [0, 1)")
        self.unimix = float(unimix)
        self.mlp = MLP(feat_dim, layers, units, act=act, norm=norm)
        self.out = Linear(self.mlp.out_features, act_dim if discrete else 2 * act_dim, outscale=outscale)

    def params(self, feat: torch.Tensor | LatentFeat) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Distribution parameters: ``(logits, None)`` or ``(mean, std)``, each ``[..., A]``."""
        x = self.out(self.mlp(feat))
        if self.discrete:
            return dists.unimix_logits(x, self.unimix), None
        mean, std = x.chunk(2, -1)
        if self.dist == "trunc_normal":
            return dists.trunc_normal_params(mean, std, self.min_std)
        if self.dist == "tanh_normal":
            return dists.tanh_normal_params(mean, std, self.mean_scale, self.init_std, self.min_std)
        return dists.bounded_normal_params(mean, std, self.min_std, self.max_std)

    def sample(self, feat: torch.Tensor | LatentFeat, noise: torch.Tensor | None = None, mode: bool = False) -> torch.Tensor:
        """An action ``[..., A]``.

        Args:
            noise: uniform noise for a discrete actor, standard-normal noise for
                a continuous one; drawn here when None.
            mode: return the most likely action (tanh_normal: tanh of the
                pre-squash mean, where V1 took the likeliest of 100 samples).
        """
        a, b = self.params(feat)
        if self.discrete:
            return dists.mode_onehot(a) if mode else dists.sample_onehot(a, noise)
        squash = self.dist == "tanh_normal"
        if mode:
            return torch.tanh(a) if squash else a
        assert b is not None, "a continuous actor's params() returns (mean, std)"
        if noise is None:
            noise = torch.randn_like(a)
        if self.dist == "trunc_normal":
            return dists.trunc_normal_sample(a, b, noise)
        sample = a + b * noise
        return torch.tanh(sample) if squash else sample

    def logp_entropy(self, feat: torch.Tensor | LatentFeat, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probability of ``action`` and the entropy, each ``[...]`` (summed over action dims).

        The tanh-normal has no closed-form entropy; its estimate is −log π(action).
        """
        a, b = self.params(feat)
        if self.discrete:
            return (a * action).sum(-1), dists.categorical_entropy(a)
        assert b is not None, "a continuous actor's params() returns (mean, std)"
        if self.dist == "trunc_normal":
            logp, entropy = dists.trunc_normal_logp_entropy(action, a, b)
            return logp.sum(-1), entropy.sum(-1)
        if self.dist == "tanh_normal":
            logp = dists.tanh_normal_logp(action, a, b).sum(-1)
            return logp, -logp.detach()
        return dists.normal_logp(action, a, b).sum(-1), dists.normal_entropy(b).sum(-1)


class SlowCritic(nn.Module):
    """A slowly following copy of the critic.

    V3: an EMA (``rate`` 0.02 every update), the regularisation target of the
    critic losses. V2: the target critic, copied (``rate`` 1) every
    ``every`` = 100 updates, whose values the returns bootstrap from.
    """

    updates: torch.Tensor  # a buffer, registered only when every > 1

    def __init__(self, critic: ScalarHead, *, rate: float = 0.02, every: int = 1) -> None:
        super().__init__()
        self.rate, self.every = rate, max(1, int(every))
        self.net = copy.deepcopy(critic)
        self.net.requires_grad_(False)
        if self.every > 1:
            # Counted in a buffer so a resumed run refreshes on the same updates.
            self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def update(self, critic: ScalarHead) -> None:
        """``slow ← (1 − rate) · slow + rate · critic``, on every ``every``-th call (the first included)."""
        if self.every > 1:
            due = int(self.updates) % self.every == 0
            self.updates += 1
            if not due:
                return
        torch._foreach_lerp_(list(self.net.parameters()), list(critic.parameters()), self.rate)

    @torch.no_grad()
    def mean(self, feat: torch.Tensor | LatentFeat) -> torch.Tensor:
        """The slow critic's value prediction ``[...]``."""
        return self.net.mean(self.net.logits(feat))
