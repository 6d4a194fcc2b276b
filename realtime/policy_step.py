"""The one-step policy as a pure torch module: the graph that is exported to ONNX.

``(observation keys…, deter, stoch, prev_action, is_first, noise) → (action, deter, stoch)``:
encoder, posterior step, actor head. Randomness enters only through ``noise``
(uniform numbers in [0, 1) drawn by the host), so the graph is deterministic
and sampling is reproducible. ``noise`` is laid out as

* ``[:, :L]``: the latent's numbers, ``L = rssm.noise_dim`` (one per
  categorical latent for inverse-CDF sampling, V2/V3; two per Gaussian
  dimension for the Box–Muller transform, V1);
* continuous actions: ``[:, L:L+A]`` and ``[:, L+A:L+2A]``, turned into
  standard-normal noise by the Box–Muller transform;
* discrete actions: ``[:, L]``, one number for the action category;
* with exploration noise (V1's ``expl_noise``, continuous actions): two more
  blocks of ``A``, Box–Muller noise added to the action before clipping.

With ``deterministic=True`` the latents and the action are the modes and the
noise is ignored (it stays an input so both exports share one signature).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from reverie.agent.dreamer import Dreamer
from reverie.world_model import dists


def noise_size(latent: int, act_dim: int, discrete: bool, explore: bool = False) -> int:
    """Width of the ``noise`` input: ``latent`` numbers for z, then the action's (and the exploration noise's)."""
    if discrete:
        return latent + 1
    return latent + 2 * act_dim * (2 if explore else 1)


def _box_muller(uniform: torch.Tensor, width: int) -> torch.Tensor:
    """Standard normals ``[B, width]`` from uniforms ``[B, 2·width]`` (u1 clamped away from 0)."""
    u1, u2 = uniform[:, :width].clamp(1e-7, 1.0), uniform[:, width : 2 * width]
    return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)


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
        self.expl_noise = 0.0 if self.discrete else float(agent.expl_noise)
        self.noise_dim = noise_size(self.rssm.noise_dim, self.act_dim, self.discrete, explore=self.expl_noise > 0)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positional inputs: the observation keys in ``obs_keys`` order, then
        ``deter [B, D]``, ``stoch [B, S, C]`` (``[B, S]`` for a Gaussian z), ``prev_action [B, A]``,
        ``is_first [B]`` (bool) and ``noise [B, noise_dim]``.

        Returns:
            ``action [B, A]`` (continuous: clipped to [−1, 1]; discrete:
            one-hot), ``deter [B, D]``, ``stoch [B, S, C]``.
        """
        count = len(self.obs_keys)
        obs = dict(zip(self.obs_keys, inputs[:count]))
        deter, stoch, prev_action, is_first, noise = inputs[count:]
        L, A = self.rssm.noise_dim, self.act_dim
        token = self.encoder(obs)
        state, _ = self.rssm.obs_step(
            {"deter": deter, "stoch": stoch}, prev_action, token, is_first, noise=noise[:, :L], mode=self.deterministic
        )
        feat = self.rssm.features(state)
        if self.deterministic:
            action = self.actor.sample(feat, mode=True)
            # Keeps `noise` in the graph's signature (the exporter drops unused
            # inputs) so both exports are interchangeable; adds exactly 0.
            action = action + (noise[:, :1] > 2.0).to(action.dtype) * 0.0
        elif self.discrete:
            logits, _ = self.actor.params(feat)
            action = dists.sample_onehot(logits, noise[:, L])
        else:
            action = self.actor.sample(feat, _box_muller(noise[:, L:], A))
            if self.expl_noise:
                action = action + self.expl_noise * _box_muller(noise[:, L + 2 * A :], A)
        if not self.discrete:
            action = action.clamp(-1.0, 1.0)
        return action.detach(), state["deter"].detach(), state["stoch"].detach()
