"""Open-loop prediction: the world model observes a few context steps, then imagines the rest from the recorded actions.

This is what Dreamer users look at first to judge a world model (the official
implementation's ``openloop`` report): the posterior runs over the first K
steps of a recorded sequence, the prior then rolls forward over the remaining
H steps driven only by the actions that were really taken, and every step is
decoded beside the truth. The error is measured per step in the space of the
reconstruction loss, so horizon 1 of a perfect model scores what its loss
would, and the curve over the horizon shows how fast the dream drifts.

Pure torch, batch-major ``[B, T, ...]``; drawing and writing live in
``reverie.agent.dream_report``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from reverie.world_model import dists
from reverie.world_model.model import WorldModel

from .losses import REC, reconstruction_losses


@dataclass(frozen=True)
class OpenLoop:
    """Truth, prediction and error of an open-loop rollout, on the CPU.

    Steps ``0 … context − 1`` are posterior reconstructions (the model saw
    them), steps ``context … T − 1`` are imagined; horizon h is step
    ``context − 1 + h``.

    Attributes:
        context: K, the number of observed steps.
        truth: ``{key: [B, T, ...]}`` the recorded sensor values (images uint8
            H×W×C, vectors float32).
        pred: ``{key: [B, T, ...]}`` the decoded predictions in the same units
            (images float in [0, 1], vectors in raw units, i.e. symexp of the
            decoder's symlog output when the decoder predicts symlog targets).
        error: ``{key: [B, T]}`` the per-step error in the loss's space: the
            decoder's reconstruction loss (squared error of the (symlog)
            vector summed over its dimensions, of the image in [0, 1] summed
            over pixels).
        reward, reward_pred: ``[B, T]`` the reward target (``tanh``-squashed
            when the model learns squashed rewards) and the reward head's mean.
        cont, cont_pred: ``[B, T]`` the continuation target ``(1 − terminal) · γ``
            and the predicted ``γ · P(continue)``; None without a continuation head.
    """

    context: int
    truth: dict[str, torch.Tensor]
    pred: dict[str, torch.Tensor]
    error: dict[str, torch.Tensor]
    reward: torch.Tensor
    reward_pred: torch.Tensor
    cont: torch.Tensor | None
    cont_pred: torch.Tensor | None

    @property
    def length(self) -> int:
        """T = context + horizon."""
        return int(self.reward.shape[1])

    @property
    def horizon(self) -> int:
        """H, the number of imagined steps."""
        return self.length - self.context

    def error_by_horizon(self) -> dict[str, torch.Tensor]:
        """Mean error over sequences at horizons 1 … H: ``{key: [H]}`` and ``total`` (the sum over keys)."""
        out = {key: err[:, self.context :].mean(0) for key, err in self.error.items()}
        out["total"] = torch.stack(list(out.values())).sum(0)
        return out


@torch.no_grad()
def open_loop(
    wm: WorldModel,
    obs: dict[str, torch.Tensor],
    prev_actions: torch.Tensor,
    *,
    context: int,
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> OpenLoop:
    """Observes the first ``context`` steps, imagines the rest from the recorded actions, decodes all.

    Args:
        wm: the world model.
        obs: ``{key: [B, T, ...]}`` with the model's sensor keys, ``reward``,
            ``is_first`` and ``is_terminal``. ``is_first`` may be set only
            within the context: the prior cannot see an episode start.
        prev_actions: ``[B, T, A]``; entry t is the action taken before step t
            (zeroed by the model where ``is_first``).
        context: K, the number of observed steps, 1 ≤ K ≤ T (K = T is the
            posterior reconstruction of the whole sequence).
        noise: uniform numbers ``[B, T, noise_dim]`` for the latent samples
            (entry t draws the latent of step t); drawn from ``generator``
            when None.
        generator: the generator for ``noise`` (torch's global one when None).

    Returns:
        The :class:`OpenLoop` result, on the CPU.

    Raises:
        ValueError: for a context outside ``[1, T]``, or an episode start
            inside the imagined steps.
    """
    rssm = wm.rssm
    is_first = obs["is_first"].bool()
    B, T = is_first.shape
    if not 1 <= context <= T:
        raise ValueError(f"context={context} must lie in [1, {T}] (the sequence length)")
    if is_first[:, context:].any():
        seq, step = (int(i) for i in is_first[:, context:].nonzero()[0])
        raise ValueError(
            f"sequence {seq} starts an episode at step {context + step}, inside the imagined steps; use windows within one episode"
        )
    device = prev_actions.device
    if noise is None:
        noise = torch.rand(B, T, rssm.noise_dim, device=device, generator=generator)
    prev_actions = prev_actions.float()

    # Context: the posterior, as in training (observe), from a zero carry.
    tokens = wm.encoder({k: obs[k][:, :context] for k in wm.obs_keys})  # [B, K, E]
    state, post = rssm.observe(rssm.initial(B, device), tokens, prev_actions[:, :context], is_first[:, :context], noise[:, :context])
    deters, stochs = [post["deter"]], [post["stoch"]]
    # Imagination: the prior, driven by the recorded actions only.
    for t in range(context, T):
        state, _ = rssm.img_step(state, prev_actions[:, t], noise[:, t])
        deters.append(state["deter"][:, None])
        stochs.append(state["stoch"][:, None])
    feat = rssm.features({"deter": torch.cat(deters, 1), "stoch": torch.cat(stochs, 1)})  # [B, T, F]

    decoded = wm.decoder(feat)
    rec = reconstruction_losses(decoded, obs, vector_keys=wm.decoder.vector_dims, symlog_targets=wm.decoder.symlog_targets)
    error = {k.removeprefix(REC): v.float().cpu() for k, v in rec.items()}
    pred = {}
    for key, value in decoded.items():
        if key in wm.decoder.vector_dims:
            pred[key] = dists.symexp(value) if wm.decoder.symlog_targets else value
        else:
            pred[key] = value.clamp(0.0, 1.0)  # the strided (V1/V2) decoder's Gaussian mean is unbounded
    reward = obs["reward"].float()
    reward = torch.tanh(reward) if wm.reward_transform == "tanh" else reward
    reward_pred = wm.reward.mean(wm.reward.logits(feat))
    cont = cont_pred = None
    if wm.cont is not None:
        cont = ((~obs["is_terminal"].bool()).float() * (1.0 - 1.0 / wm.horizon)).cpu()
        cont_pred = wm.discount(feat).float().cpu()
    return OpenLoop(
        context=context,
        truth={k: obs[k].cpu() for k in wm.obs_keys},
        pred={k: v.float().cpu() for k, v in pred.items()},
        error=error,
        reward=reward.cpu(),
        reward_pred=reward_pred.float().cpu(),
        cont=cont,
        cont_pred=cont_pred,
    )
