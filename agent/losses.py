"""Every loss term of the Dreamer update in one place, as named terms, so the maths can be checked against the papers here.

World model, over replayed sequences (each term ``[B, T]``):

* ``rec/<key>``: reconstruction of each sensor, a squared error summed over
  the key's elements (a Gaussian negative log-likelihood up to a constant);
  vector targets in symlog space where the decoder predicts symlog (V3),
  images as ``x / 255``;
* ``rew``: negative log-likelihood of the reward (two-hot cross-entropy over
  symexp-spaced bins in V3, squared error in V1/V2), of ``tanh(r)`` when
  ``reward_transform`` is ``tanh`` (V2 on Atari);
* ``con``: Bernoulli negative log-likelihood of the continuation target
  ``(1 − is_terminal) · γ`` (V2's discount head, V3's ``contdisc``);
* ``dyn`` = KL(sg(post) ‖ prior) and ``rep`` = KL(post ‖ sg(prior)) (V2, V3),
  or ``kl`` = KL(post ‖ prior) (V1), each clipped below at the free nats.

Behaviour, over imagined trajectories of ``H`` steps from every replayed
posterior state (averaged over the horizon, so each term is ``[B, T]``):

* ``policy``: ``−w · ((1 − mix) · log π(a) · sg(adv) + mix · R + η · H[π])``;
* ``value``: ``w · (−log p(sg(R)) + slowreg · −log p(sg(v_slow)))``;
* ``repval``: the same regression on the replayed sequences, towards
  λ-returns of the replayed rewards bootstrapped from the imagined returns.

The optimiser sees ``Σ scale[name] · mean(term)``, where every ``rec/<key>``
takes ``scale["rec"]`` (:func:`total_loss`). The returns, the normalisers and
the imagination itself live in :mod:`reverie.agent.returns` and
:mod:`reverie.agent.dreamer`; the distributions' log-likelihoods in
:mod:`reverie.world_model.dists` and :mod:`reverie.world_model.heads`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping
from typing import Any

import torch

from reverie.world_model import dists
from reverie.world_model.heads import ScalarHead
from reverie.world_model.model import WorldModel

#: Prefix of the reconstruction terms.
REC = "rec/"


# ------------------------------------------------------------------ world model
def kl_terms(
    kl: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    post: torch.Tensor,
    prior: torch.Tensor,
    *,
    mode: str = "split",
    free_nats: float = 1.0,
    free_avg: bool = False,
) -> dict[str, torch.Tensor]:
    """The KL terms of DreamerV1, V2 and V3, with free nats.

    ``split``: ``dyn = KL(sg(post) ‖ prior)`` trains the prior and ``rep =
    KL(post ‖ sg(prior))`` the posterior; their loss scales set the balance
    (V3: 1 and 0.1, V2: 0.8 and 0.2). ``joint``: ``kl = KL(post ‖ prior)``
    trains both (V1). Each term is clipped from below at ``free_nats``, per
    step (V3) or after averaging over the batch (``free_avg``, V1 and V2);
    below the threshold a term is constant and sends no gradient.

    Args:
        kl: ``(lhs, rhs) → [...]``, the KL between latent distributions given by raw parameters.
        post, prior: raw parameters ``[..., S, C or 2]``.

    Returns:
        ``{dyn, rep}`` or ``{kl}``, each ``[...]`` (scalars with ``free_avg``).
    """
    if mode == "joint":
        terms = {"kl": kl(post, prior)}
    elif mode == "split":
        terms = {"dyn": kl(post.detach(), prior), "rep": kl(post, prior.detach())}
    else:
        raise ValueError(f"unknown kl mode {mode!r}; valid: split, joint")
    if free_avg:
        terms = {k: v.mean() for k, v in terms.items()}
    if free_nats:
        terms = {k: torch.clamp(v, min=free_nats) for k, v in terms.items()}
    return terms


def reconstruction_losses(
    preds: dict[str, torch.Tensor], obs: dict[str, torch.Tensor], *, vector_keys: Any, symlog_targets: bool
) -> dict[str, torch.Tensor]:
    """``{rec/<key>: [*lead]}``: squared error summed over each key's elements.

    Args:
        preds: the decoder's outputs (vectors in the target space, images in [0, 1] or centred at 0.5).
        obs: the observations (images uint8).
        vector_keys: the keys that are vectors (the rest are images).
        symlog_targets: compare vectors in symlog space (V3).
    """
    losses = {}
    for key, pred in preds.items():
        target = obs[key]
        if key in vector_keys:
            target = dists.symlog(target.float()) if symlog_targets else target.float()
            losses[REC + key] = (pred - target).square().sum(-1)
        else:
            losses[REC + key] = (pred - target.float() / 255.0).square().sum((-3, -2, -1))
    return losses


def continuation_target(is_terminal: torch.Tensor, horizon: float) -> torch.Tensor:
    """``(1 − is_terminal) · γ`` with ``γ = 1 − 1/horizon``: the head predicts the discount of reaching the next state."""
    return (~is_terminal).float() * (1.0 - 1.0 / horizon)


def world_model_losses(
    wm: WorldModel, obs: dict[str, torch.Tensor], prev_actions: torch.Tensor, start: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The world-model terms over a batch of sequences.

    Args:
        wm: the world model.
        obs: ``{key: [B, T, ...]}`` with the sensor keys, ``reward``,
            ``is_first`` and ``is_terminal``.
        prev_actions: ``[B, T, A]``.
        start: carry before the first step.

    Returns:
        ``{name: [B, T]}`` (``rec/<key>``, ``rew``, ``con`` and the KL terms),
        the posterior ``{deter, stoch, logits}`` as ``[B, T, ...]``, and scalar metrics.
    """
    rssm = wm.rssm
    post, prior_logits = wm.observe(obs, prev_actions, start)
    feat = rssm.features(post)
    losses = kl_terms(rssm.kl, post["logits"], prior_logits, mode=wm.kl_mode, free_nats=wm.free_nats, free_avg=wm.free_avg)
    losses |= reconstruction_losses(wm.decoder(feat), obs, vector_keys=wm.decoder.vector_dims, symlog_targets=wm.decoder.symlog_targets)
    reward = obs["reward"].float()
    losses["rew"] = wm.reward.loss(wm.reward.logits(feat), torch.tanh(reward) if wm.reward_transform == "tanh" else reward)
    if wm.cont is not None:
        losses["con"] = wm.cont.loss(wm.cont.logit(feat), continuation_target(obs["is_terminal"], wm.horizon))
    with torch.no_grad():
        metrics = {
            "wm/prior_ent": rssm.entropy(prior_logits).mean(),
            "wm/post_ent": rssm.entropy(post["logits"]).mean(),
            "wm/kl": rssm.kl(post["logits"], prior_logits).mean(),
        }
    return losses, post, metrics


# --------------------------------------------------------------------- behaviour
def policy_loss(
    logp: torch.Tensor,
    entropy: torch.Tensor,
    advantage: torch.Tensor,
    weight: torch.Tensor,
    entropy_scale: float,
    returns: torch.Tensor | None = None,
    mix: float = 0.0,
) -> torch.Tensor:
    """REINFORCE and/or dynamics backpropagation with an entropy bonus, ``[N, H]``.

    ``−weight · ((1 − mix) · logπ(a) · sg(adv) + mix · R + η · H[π])``: with
    ``mix = 0`` pure REINFORCE (V3, V2 for discrete actions); with ``mix = 1``
    the λ-returns ``R`` themselves, whose gradient reaches the actor through
    the differentiable imagined rollout (V1, V2 for continuous actions).
    """
    objective: torch.Tensor | float = logp * advantage.detach() if mix < 1 else 0.0
    if mix > 0:
        if returns is None:
            raise ValueError("dynamics backpropagation (mix > 0) needs the returns")
        objective = (1 - mix) * objective + mix * returns
    return -weight.detach() * (objective + entropy_scale * entropy)


def critic_loss(
    critic: ScalarHead,
    logits: torch.Tensor,
    target: torch.Tensor,
    slow_target: torch.Tensor | None,
    weight: torch.Tensor,
    slowreg: float,
) -> torch.Tensor:
    """Regression to the return plus ``slowreg`` × regression to the slow critic (none when 0, and then ``slow_target`` may be None), ``[N, T]``."""
    loss = critic.loss(logits, target.detach())
    if slowreg:
        if slow_target is None:
            raise ValueError("the slow-critic regulariser (slowreg > 0) needs the slow critic's values")
        loss = loss + slowreg * critic.loss(logits, slow_target.detach())
    return weight.detach() * loss


# ------------------------------------------------------------------------ total
def scale_of(name: str, scales: Mapping[str, float]) -> float:
    """The loss scale of a named term (every ``rec/<key>`` takes ``scales["rec"]``)."""
    return scales["rec"] if name.startswith(REC) else scales[name]


def total_loss(losses: Mapping[str, torch.Tensor], scales: Mapping[str, float]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``(Σ scale · mean(term), {name: scale · mean(term)})``: what the optimiser minimises, and its parts (``losses`` is never empty)."""
    scaled = {name: scale_of(name, scales) * term.mean() for name, term in losses.items()}
    # reduce, not sum(): the same additions, but a tensor for the type checker (sum() would start from the int 0).
    return functools.reduce(operator.add, scaled.values()), scaled
