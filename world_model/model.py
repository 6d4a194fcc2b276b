"""The world model: encoder, RSSM, decoder, reward and continuation heads, and its loss."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from reverie.envs.base import Space

from . import dists
from .decoder import Decoder
from .encoder import Encoder
from .heads import BinaryHead, TwoHotHead
from .rssm import RSSM, kl_losses


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
    """DreamerV3's world model.

    Args:
        obs_space: the environment's observation spaces.
        obs_keys: the sensor keys the model encodes and reconstructs.
        act_dim: size of the action vector.
        rssm, encoder, decoder, reward_head, cont_head: keyword arguments of
            the parts (see their classes).
        free_nats: free bits of each KL term.
        horizon: the continuation target is ``(1 − terminal) · (1 − 1/horizon)``
            (the official ``contdisc``), so the predicted continuation already
            carries the discount.
        image_size: side of square image observations.
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
        horizon: float = 333.0,
    ) -> None:
        super().__init__()
        vectors, images = split_obs_space(obs_space, obs_keys)
        size = next((obs_space[k].shape[0] for k in images), 64)
        self.obs_keys = list(obs_keys)
        self.free_nats, self.horizon = free_nats, horizon
        self.encoder = Encoder(vector_dims=vectors, image_channels=images, image_size=size, **encoder)
        self.rssm = RSSM(token_dim=self.encoder.out_dim, act_dim=act_dim, **rssm)
        feat = self.rssm.feat_dim
        self.decoder = Decoder(feat_dim=feat, vector_dims=vectors, image_channels=images, image_size=size, **decoder)
        self.reward = TwoHotHead(feat, **reward_head)
        self.cont = BinaryHead(feat, **cont_head)

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
            losses ``{name: [B, T]}`` (``dyn``, ``rep``, ``rew``, ``con`` and one
            per reconstructed key), the posterior ``{deter, stoch, logits}`` as
            ``[B, T, ...]``, and scalar metrics.
        """
        tokens = self.encoder({k: obs[k] for k in self.obs_keys})
        _, post = self.rssm.observe(start, tokens, prev_actions, obs["is_first"])
        prior_logits = self.rssm.prior_logits(post["deter"])
        dyn, rep = kl_losses(post["logits"], prior_logits, unimix=self.rssm.unimix, free_nats=self.free_nats)
        feat = self.rssm.features(post)
        losses = {"dyn": dyn, "rep": rep}
        losses.update(self.decoder.loss(self.decoder(feat), obs))
        losses["rew"] = self.reward.loss(self.reward.logits(feat), obs["reward"])
        cont_target = (~obs["is_terminal"]).float() * (1.0 - 1.0 / self.horizon)
        losses["con"] = self.cont.loss(self.cont.logit(feat), cont_target)
        with torch.no_grad():
            metrics = {
                "wm/prior_ent": dists.categorical_entropy(self.rssm.dist_logits(prior_logits)).sum(-1).mean(),
                "wm/post_ent": dists.categorical_entropy(self.rssm.dist_logits(post["logits"])).sum(-1).mean(),
            }
        return losses, post, metrics
