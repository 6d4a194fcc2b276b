"""The world model: encoder, RSSM, decoder, reward and continuation heads, and its loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reverie.envs.base import Space

from .decoder import Decoder
from .encoder import Encoder
from .heads import BinaryHead, scalar_head
from .nets import LatentFeat
from .rssm import RSSM, kl_terms


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

    def kl_losses(self, post_logits: torch.Tensor, prior_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """The KL terms of :attr:`kl_mode` with free nats (see :func:`kl_terms`)."""
        return kl_terms(self.rssm.kl, post_logits, prior_logits, mode=self.kl_mode, free_nats=self.free_nats, free_avg=self.free_avg)

    def discount(self, feat: torch.Tensor) -> torch.Tensor:
        """The predicted discount of reaching each state, ``γ · P(continue)`` ``[...]`` (γ alone without a head)."""
        if self.cont is None:
            deter = feat.deter if isinstance(feat, LatentFeat) else feat
            return torch.full(deter.shape[:-1], 1.0 - 1.0 / self.horizon, device=deter.device, dtype=deter.dtype)
        return torch.sigmoid(self.cont.logit(feat))

    def loss(
        self, obs: dict[str, torch.Tensor], prev_actions: torch.Tensor, start: dict[str, torch.Tensor]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """World-model losses over a batch of sequences.

        Args:
            obs: ``{key: [B, T, ...]}`` with the sensor keys, ``reward``,
                ``is_first`` and ``is_terminal``.
            prev_actions: ``[B, T, A]``.
            start: carry before the first step.

        Returns:
            losses ``{name: [B, T]}`` (the KL terms, ``rew``, ``con`` and one
            per reconstructed key), the posterior ``{deter, stoch, logits}`` as
            ``[B, T, ...]``, and scalar metrics.
        """
        tokens = self.encoder({k: obs[k] for k in self.obs_keys})
        _, post = self.rssm.observe(start, tokens, prev_actions, obs["is_first"])
        prior_logits = self.rssm.prior_logits(post["deter"])
        feat = self.rssm.features(post)
        losses = self.kl_losses(post["logits"], prior_logits)
        losses.update(self.decoder.loss(self.decoder(feat), obs))
        reward = obs["reward"].float()
        losses["rew"] = self.reward.loss(self.reward.logits(feat), torch.tanh(reward) if self.reward_transform == "tanh" else reward)
        if self.cont is not None:
            cont_target = (~obs["is_terminal"]).float() * (1.0 - 1.0 / self.horizon)
            losses["con"] = self.cont.loss(self.cont.logit(feat), cont_target)
        with torch.no_grad():
            metrics = {
                "wm/prior_ent": self.rssm.entropy(prior_logits).mean(),
                "wm/post_ent": self.rssm.entropy(post["logits"]).mean(),
                "wm/kl": self.rssm.kl(post["logits"], prior_logits).mean(),
            }
        return losses, post, metrics
