"""The one-step policy as a pure torch module: the graph that is exported to ONNX.

``(observation keys…, deter, stoch, prev_action, is_first, noise) → (action, deter, stoch)``:
encoder, posterior step, actor head. Randomness enters only through ``noise``
(uniform numbers in [0, 1) drawn by the host), so the graph is deterministic
and sampling is reproducible. ``noise`` is laid out as

* ``[:, :S]``: one number per categorical latent (inverse-CDF sampling);
* continuous actions: ``[:, S:S+A]`` and ``[:, S+A:S+2A]``, turned into
  standard-normal noise by the Box–Muller transform;
* discrete actions: ``[:, S]``, one number for the action category.

With ``deterministic=True`` the latents and the action are the modes and the
noise is ignored (it stays an input so both exports share one signature).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reverie.agent.dreamer import Dreamer
from reverie.world_model import dists


def noise_size(stoch: int, act_dim: int, discrete: bool) -> int:
    """Width of the ``noise`` input."""
    return stoch + (1 if discrete else 2 * act_dim)


class PolicyStep(nn.Module):
    """One control step of a trained agent (shares its parameters).

    Args:
        agent: the trained agent.
        deterministic: act with the modes (deployment) instead of sampling.
    """

    def __init__(self, agent: Dreamer, *, deterministic: bool = False) -> None:
        super().__init__()
        self.encoder, self.rssm, self.actor = agent.wm.encoder, agent.wm.rssm, agent.actor
        self.obs_keys = list(agent.wm.obs_keys)
        self.discrete, self.act_dim = agent.discrete, agent.act_dim
        self.deterministic = deterministic
        self.noise_dim = noise_size(self.rssm.stoch, self.act_dim, self.discrete)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positional inputs: the observation keys in ``obs_keys`` order, then
        ``deter [B, D]``, ``stoch [B, S, C]``, ``prev_action [B, A]``,
        ``is_first [B]`` (bool) and ``noise [B, noise_dim]``.

        Returns:
            ``action [B, A]`` (continuous: clipped to [−1, 1]; discrete:
            one-hot), ``deter [B, D]``, ``stoch [B, S, C]``.
        """
        count = len(self.obs_keys)
        obs = dict(zip(self.obs_keys, inputs[:count]))
        deter, stoch, prev_action, is_first, noise = inputs[count:]
        S = self.rssm.stoch
        token = self.encoder(obs)
        state, _ = self.rssm.obs_step(
            {"deter": deter, "stoch": stoch}, prev_action, token, is_first, noise=noise[:, :S], mode=self.deterministic
        )
        feat = self.rssm.features(state)
        if self.deterministic:
            action = self.actor.sample(feat, mode=True)
            # Keeps `noise` in the graph's signature (the exporter drops unused
            # inputs) so both exports are interchangeable; adds exactly 0.
            action = action + (noise[:, :1] > 2.0).to(action.dtype) * 0.0
        elif self.discrete:
            logits, _ = self.actor.params(feat)
            action = dists.sample_onehot(logits, noise[:, S])
        else:
            u1 = noise[:, S : S + self.act_dim].clamp(1e-7, 1.0)
            u2 = noise[:, S + self.act_dim : S + 2 * self.act_dim]
            normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)  # Box–Muller
            action = self.actor.sample(feat, normal)
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        return action.detach(), state["deter"].detach(), state["stoch"].detach()
