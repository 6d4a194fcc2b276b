"""Distributions and transforms used by DreamerV3.

Everything here is a pure function of tensors so it can be tested against
hand-computed values and exported to ONNX.

Reference: Hafner et al., "Mastering diverse control tasks through world
models", Nature 2025, and the official code (danijar/dreamerv3).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def symlog(x: torch.Tensor) -> torch.Tensor:
    """sign(x) · ln(1 + |x|): compresses large magnitudes, keeps small ones."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`symlog`: sign(x) · (exp(|x|) − 1)."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def symexp_bins(num_bins: int = 255, limit: float = 20.0) -> torch.Tensor:
    """Bin centres spaced uniformly in symlog space over [−limit, limit].

    Built from one half and mirrored so the bins are exactly symmetric, which
    makes a uniform distribution predict exactly zero.
    """
    if num_bins % 2 == 1:
        half = symexp(torch.linspace(-limit, 0.0, (num_bins - 1) // 2 + 1))
        return torch.cat([half, -half[:-1].flip(0)])
    half = symexp(torch.linspace(-limit, 0.0, num_bins // 2))
    return torch.cat([half, -half.flip(0)])


def _twohot_neighbours(target: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two bins around each target and the weight of the upper one.

    Returns:
        ``below`` (last bin ≤ target) and ``above`` (the next bin) as indices
        ``[...]``, clipped to the range, and ``weight_above`` in [0, 1];
        ``below`` gets ``1 − weight_above``.
    """
    num = bins.shape[0]
    target = target.detach().to(bins.dtype).contiguous()
    below = (torch.bucketize(target, bins, right=True) - 1).clamp(0, num - 1)
    above = (below + 1).clamp(max=num - 1)
    lo, hi = bins[below], bins[above]
    span = hi - lo
    weight_above = torch.where(span > 0, (target - lo) / torch.where(span > 0, span, torch.ones_like(span)), torch.zeros_like(span))
    return below, above, weight_above.clamp(0.0, 1.0)


def twohot_encode(target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Spreads each target over its two neighbouring bins.

    Args:
        target: values of any shape ``[...]``.
        bins: sorted bin centres ``[K]``.

    Returns:
        Weights ``[..., K]`` that sum to one, with ``weights @ bins == target``
        for targets inside the bin range (clipped to the range otherwise).
    """
    num = bins.shape[0]
    below, above, weight_above = _twohot_neighbours(target, bins)
    weights = F.one_hot(below, num).to(bins.dtype) * (1 - weight_above)[..., None]
    return weights + F.one_hot(above, num).to(bins.dtype) * weight_above[..., None]


def twohot_mean(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected value of the bins under softmax(logits).

    The bins are symmetric (``bins[K−1−i] = −bins[i]``), so the mean is
    ``Σ_{i<K/2} (p_i − p_{K−1−i}) · bins_i``: symmetric probabilities give
    exactly zero (a plain left-to-right sum would not, from rounding).
    """
    probs = torch.softmax(logits, -1)
    half = bins.shape[0] // 2
    diff = probs[..., :half] - probs[..., -half:].flip(-1)  # [..., K//2]
    return diff @ bins[:half]


def twohot_loss(logits: torch.Tensor, target: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between softmax(logits) ``[..., K]`` and the two-hot target ``[...]``.

    Equals ``−Σ_k twohot_encode(target)_k · log_softmax(logits)_k`` but gathers
    the two non-zero bins instead of building the dense weights.
    """
    below, above, weight_above = _twohot_neighbours(target, bins)
    logp = torch.log_softmax(logits.float(), -1)
    lp_below = logp.gather(-1, below.unsqueeze(-1)).squeeze(-1)
    lp_above = logp.gather(-1, above.unsqueeze(-1)).squeeze(-1)
    return -((1 - weight_above) * lp_below + weight_above * lp_above)


def unimix_logits(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """Log-probabilities of ``(1 − unimix) · softmax(logits) + unimix / K``.

    The uniform mix puts a floor of ``unimix / K`` under every class, which
    keeps KL terms and log-likelihoods bounded.
    """
    if not unimix:
        return torch.log_softmax(logits, -1)
    probs = torch.softmax(logits, -1)
    probs = (1 - unimix) * probs + unimix / logits.shape[-1]
    return torch.log(probs)


def unimix_probs(logits: torch.Tensor, unimix: float) -> torch.Tensor:
    """``(1 − unimix) · softmax(logits) + unimix / K``."""
    probs = torch.softmax(logits, -1)
    return (1 - unimix) * probs + unimix / logits.shape[-1] if unimix else probs


def sample_index(probs: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """Categorical sample by inverse CDF: the first class whose cumulative probability exceeds u.

    Args:
        probs: probabilities ``[..., K]``.
        uniform: one number in [0, 1) per categorical, ``[...]``; drawn here
            when None. Passing it makes sampling reproducible and lets an
            exported graph stay deterministic.

    Returns:
        ``[...]`` int64 class indices.
    """
    probs = probs.detach()
    if uniform is None:
        uniform = torch.rand(probs.shape[:-1], device=probs.device, dtype=probs.dtype)
    below = (torch.cumsum(probs, -1) <= uniform.unsqueeze(-1).to(probs.dtype)).sum(-1)
    return below.clamp(max=probs.shape[-1] - 1)


def sample_onehot(logits: torch.Tensor, uniform: torch.Tensor | None = None) -> torch.Tensor:
    """One-hot sample with straight-through gradients.

    Args:
        logits: log-probabilities ``[..., K]`` (already unimixed).
        uniform: one number in [0, 1) per categorical ``[...]`` (see
            :func:`sample_index`); drawn here when None.

    Returns:
        ``onehot + probs − stopgrad(probs)``: the forward value is one-hot, the
        gradient is that of the probabilities.
    """
    probs = torch.softmax(logits, -1)
    index = sample_index(probs, uniform)
    onehot = F.one_hot(index, logits.shape[-1]).to(logits.dtype)
    return onehot + probs - probs.detach()


def mode_onehot(logits: torch.Tensor) -> torch.Tensor:
    """The most likely class as one-hot, with straight-through gradients."""
    onehot = F.one_hot(torch.argmax(logits, -1), logits.shape[-1]).to(logits.dtype)
    probs = torch.softmax(logits, -1)
    return onehot + probs - probs.detach()


def categorical_kl(lhs_logits: torch.Tensor, rhs_logits: torch.Tensor) -> torch.Tensor:
    """KL(lhs ‖ rhs) between categoricals over the last axis, summed over ``[..., S]``.

    Args:
        lhs_logits, rhs_logits: log-probabilities ``[..., S, K]``.

    Returns:
        ``[...]``: the KL of the factorised distribution (sum over the S latents).
    """
    lhs_logp = torch.log_softmax(lhs_logits, -1)
    rhs_logp = torch.log_softmax(rhs_logits, -1)
    return (lhs_logp.exp() * (lhs_logp - rhs_logp)).sum((-2, -1))


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy over the last axis."""
    logp = torch.log_softmax(logits, -1)
    return -(logp.exp() * logp).sum(-1)


def bounded_normal_params(
    mean_raw: torch.Tensor, std_raw: torch.Tensor, min_std: float = 0.1, max_std: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV3's actor distribution parameters.

    mean = tanh(mean_raw); std = (max − min) · sigmoid(std_raw + 2) + min.
    """
    mean = torch.tanh(mean_raw)
    std = (max_std - min_std) * torch.sigmoid(std_raw + 2.0) + min_std
    return mean, std


def normal_logp(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of N(mean, std²) at x."""
    return -0.5 * ((x - mean) / std) ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)


def normal_entropy(std: torch.Tensor) -> torch.Tensor:
    """Elementwise entropy of N(·, std²)."""
    return 0.5 * torch.log(2 * math.pi * std**2) + 0.5


def binary_logp(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Log-likelihood of a (possibly soft) target in [0, 1] under Bernoulli(sigmoid(logit))."""
    return target * F.logsigmoid(logit) + (1 - target) * F.logsigmoid(-logit)
