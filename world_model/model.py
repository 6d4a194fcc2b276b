"""The world model: encoder, RSSM, decoder, reward and continuation heads (its loss terms: :mod:`reverie.agent.losses`)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reverie.envs.base import Space

from .decoder import Decoder
from .encoder import Encoder
from .heads import BinaryHead, scalar_head
from .nets import LatentFeat
from .rssm import RSSM


def split_obs_space(obs_space: dict[str, Space], keys: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Vector sizes and image channels of the model keys."""
    vectors, images = {}, {}
    for key in keys:
        space = obs_space[key]
        if space.is_image:
            images[key] = space.shape[-1]
        elif len(space.shape) == 1:
            vectors[key] = space.shape[0]
        else:
            raise ValueError(
                f"observation {key!r}: unsupported shape {space.shape} dtype {space.dtype}; expected a 1-D vector or a uint8 H×W×C image"
            )
    return vectors, images


class WorldModel(nn.Module):
    """The world model of DreamerV1, V2 and V3 (the differences are options).

    Args:
        obs_space: the environment's observation spaces.
        obs_keys: the sensor keys the model encodes and reconstructs.
        act_dim: size of the action vector.
        rssm, encoder, decoder, reward_head, cont_head: keyword arguments of
            the parts (see their classes).
        free_nats: free bits (nats) of each KL term.
        kl_mode: ``split`` gives two terms, ``dyn`` = KL(sg(post) ‖ prior)
            and ``rep`` = KL(post ‖ sg(prior)), weighted by their loss scales
            (V3: 1 and 0.1; V2's KL balancing: 0.8 and 0.2). ``joint`` gives
            one term ``kl`` = KL(post ‖ prior) with gradients to both (V1).
        free_avg: apply the free nats to the batch mean of the KL (V1, V2)
            instead of to each step (V3).
        horizon: discount horizon, γ = 1 − 1/horizon. The continuation target
            is ``(1 − terminal) · γ`` (V2's discount head, V3's ``contdisc``),
            so the prediction carries the discount.
        use_cont: learn a continuation head; without one (V1) imagination
            uses γ throughout.
        reward_transform: ``identity``, or ``tanh`` to squash reward targets
            (V2 on Atari, ``clip_rewards: tanh``).
    """

    def __init__(
        self,
        *,
        obs_space: dict[str, Space],
        obs_keys: list[str],
        act_dim: int,
        rssm: dict[str, Any],
        encoder: dict[str, Any],
        decoder: dict[str, Any],
        reward_head: dict[str, Any],
        cont_head: dict[str, Any],
        free_nats: float = 1.0,
        kl_mode: str = "split",
        free_avg: bool = False,
        horizon: float = 333.0,
        use_cont: bool = True,
        reward_transform: str = "identity",
    ) -> None:
        super().__init__()
        if kl_mode not in ("split", "joint"):
            raise ValueError(f"unknown kl mode {kl_mode!r}; valid: split, joint")
        if reward_transform not in ("identity", "tanh"):
            raise ValueError(f"unknown reward_transform {reward_transform!r}; valid: identity, tanh")
        vectors, images = split_obs_space(obs_space, obs_keys)
        size = next((obs_space[k].shape[0] for k in images), 64)
        self.obs_keys = list(obs_keys)
        self.free_nats, self.kl_mode, self.free_avg = free_nats, kl_mode, free_avg
        self.horizon, self.use_cont, self.reward_transform = horizon, use_cont, reward_transform
        self.encoder = Encoder(vector_dims=vectors, image_channels=images, image_size=size, **encoder)
        self.rssm = RSSM(token_dim=self.encoder.out_dim, act_dim=act_dim, **rssm)
        feat = self.rssm.feat_dim
        self.decoder = Decoder(feat_dim=feat, vector_dims=vectors, image_channels=images, image_size=size, **decoder)
        self.reward = scalar_head(feat, **reward_head)
        self.cont = BinaryHead(feat, **cont_head) if use_cont else None

    def discount(self, feat: torch.Tensor | LatentFeat) -> torch.Tensor:
        """The predicted discount of reaching each state, ``γ · P(continue)`` ``[...]`` (γ alone without a head)."""
        if self.cont is None:
            deter = feat.deter if isinstance(feat, LatentFeat) else feat
            return torch.full(deter.shape[:-1], 1.0 - 1.0 / self.horizon, device=deter.device, dtype=deter.dtype)
        return torch.sigmoid(self.cont.logit(feat))

    def observe(
        self, obs: dict[str, torch.Tensor], prev_actions: torch.Tensor, start: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """The posterior over a batch of sequences and the prior at each of its states.

        Args:
            obs: ``{key: [B, T, ...]}`` with the sensor keys and ``is_first``.
            prev_actions: ``[B, T, A]``.
            start: carry before the first step.

        Returns:
            The posterior ``{deter, stoch, logits}`` as ``[B, T, ...]`` and the
            prior's raw parameters ``[B, T, S, C or 2]`` (the losses are in
            :mod:`reverie.agent.losses`).
        """
        tokens = self.encoder({k: obs[k] for k in self.obs_keys})
        _, post = self.rssm.observe(start, tokens, prev_actions, obs["is_first"])
        return post, self.rssm.prior_logits(post["deter"])
