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

:class:`ObserveStep` and :class:`AdvanceStep` are the same step in two parts
(format 2 of ``signature``): the critical path from observation to action,
and the recurrent advance that runs after the action is sent.
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
        L = self.rssm.noise_dim
        token = self.encoder(obs)
        state, _ = self.rssm.obs_step(
            {"deter": deter, "stoch": stoch}, prev_action, token, is_first, noise=noise[:, :L], mode=self.deterministic
        )
        action = self.act(self.rssm.features(state), noise)
        return action, state["deter"].detach(), state["stoch"].detach()

    def act(self, feat: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The actor head: ``feat [B, F]`` and the step's ``noise`` → the action ``[B, A]`` (see the module docstring)."""
        L, A = self.rssm.noise_dim, self.act_dim
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
        return action.detach()


class ObserveStep(nn.Module):
    """The critical path of a control step: what must run between an observation and its action.

    ``(observation keys…, deter [B, D], post_deter [B, H], noise) → (action [B, A], stoch [B, S, C])``:
    the encoder, the posterior from ``h_t`` (``deter``, already advanced) and
    ``post_deter = post_deter(h_t)`` (computed by :class:`AdvanceStep`), and
    the actor head. The same operations as :class:`PolicyStep` after its
    recurrent step, in the same order.

    Args:
        step: the fused step whose modules it shares.
    """

    def __init__(self, step: PolicyStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positional inputs: the observation keys in ``obs_keys`` order, then ``deter``, ``post_deter`` and ``noise``."""
        step, rssm = self.step, self.step.rssm
        count = len(step.obs_keys)
        obs = dict(zip(step.obs_keys, inputs[:count]))
        deter, post_deter, noise = inputs[count:]
        logits = rssm.post_logits_proj(post_deter, rssm.post_token(step.encoder(obs)))
        stoch = rssm.sample(logits, noise[:, : rssm.noise_dim], step.deterministic)
        action = step.act(rssm.features({"deter": deter, "stoch": stoch}), noise)
        return action, stoch.detach()


class AdvanceStep(nn.Module):
    """The recurrent advance, off the critical path: ``(deter, stoch, action) → (deter_out, post_deter_out)``.

    ``h_{t+1} = f(h_t, z_t, a_t)`` needs nothing from the next observation, so
    it runs after the action is sent; it also projects ``h_{t+1}`` for the
    next posterior (``post_deter``). The first step of an episode starts from
    this step's value at all-zero inputs, as :meth:`RSSM.obs_step` does.

    Args:
        step: the fused step whose modules it shares.
    """

    def __init__(self, step: PolicyStep) -> None:
        super().__init__()
        self.step = step

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``deter [B, D]``, ``stoch [B, S, C]`` (or ``[B, S]``), ``action [B, A]`` → ``deter [B, D]``, ``post_deter [B, H]``."""
        rssm = self.step.rssm
        deter = rssm.core(deter, stoch, rssm.embed_action(action))
        return deter.detach(), rssm.post_deter(deter).detach()
