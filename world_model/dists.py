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


# ----------------------------------------------------------------- Gaussians
def normal_from_uniform(uniform: torch.Tensor) -> torch.Tensor:
    """Standard-normal numbers ``[..., n]`` from uniforms ``[..., 2n]`` in [0, 1) (Box–Muller).

    Lets a graph that receives only uniform noise (the exported policy step)
    sample Gaussians deterministically.
    """
    u1, u2 = uniform.chunk(2, -1)
    radius = torch.sqrt(-2.0 * torch.log1p(-u1))  # log1p(−u): u may be 0, never 1
    return radius * torch.cos(2 * math.pi * u2)


def gaussian_stats(raw: torch.Tensor, min_std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV1's latent parameters from ``raw [..., S, 2]``: mean and ``softplus(std) + min_std``."""
    mean, std = raw.unbind(-1)
    return mean, F.softplus(std) + min_std


def gaussian_kl(mean1: torch.Tensor, std1: torch.Tensor, mean2: torch.Tensor, std2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, std1²) ‖ N(mean2, std2²)) of diagonal Gaussians, summed over the last axis."""
    var_ratio = (std1 / std2).square()
    mahal = ((mean1 - mean2) / std2).square()
    return 0.5 * (var_ratio + mahal - 1.0 - torch.log(var_ratio)).sum(-1)


def tanh_normal_params(
    mean_raw: torch.Tensor, std_raw: torch.Tensor, mean_scale: float = 5.0, init_std: float = 5.0, min_std: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV1's actor: pre-tanh mean ``scale·tanh(raw/scale)``, std ``softplus(raw + softplus⁻¹(init)) + min``."""
    mean = mean_scale * torch.tanh(mean_raw / mean_scale)
    std = F.softplus(std_raw + math.log(math.expm1(init_std))) + min_std
    return mean, std


def tanh_normal_logp(action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Elementwise log-density of ``tanh(N(mean, std²))`` at ``action`` in (−1, 1)."""
    action = action.clamp(-0.999999, 0.999999)
    pre = torch.atanh(action)
    # log|d tanh(x)/dx| = 2 (log 2 − x − softplus(−2x)), the stable form.
    log_det = 2.0 * (math.log(2.0) - pre - F.softplus(-2.0 * pre))
    return normal_logp(pre, mean, std) - log_det


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def erfinv(x: torch.Tensor) -> torch.Tensor:
    """Inverse error function from elementary operations (Giles 2010, single precision).

    ``torch.erfinv`` has no ONNX counterpart; this form exports, so the
    truncated-normal sample of the exported policy matches torch's.
    Absolute error below 5e-7 on (−1, 1) (tested against ``torch.erfinv``).
    """
    w = -torch.log((1.0 - x) * (1.0 + x))
    small = w < 5.0
    ws = torch.where(small, w - 2.5, torch.sqrt(torch.clamp(w, min=5.0)) - 3.0)
    central = (
        2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
        -0.00125372503, -0.00417768164, 0.246640727, 1.50140941,
    )  # fmt: skip
    tail = (
        -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
        -0.0076224613, 0.00943887047, 1.00167406, 2.83297682,
    )  # fmt: skip
    p_small = torch.full_like(x, central[0])
    p_tail = torch.full_like(x, tail[0])
    for a, b in zip(central[1:], tail[1:]):
        p_small = p_small * ws + a
        p_tail = p_tail * ws + b
    return torch.where(small, p_small, p_tail) * x


def trunc_normal_params(mean_raw: torch.Tensor, std_raw: torch.Tensor, min_std: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """DreamerV2's actor: mean ``tanh(raw)``, std ``2·sigmoid(raw/2) + min_std`` (before truncation to [−1, 1])."""
    return torch.tanh(mean_raw), 2.0 * torch.sigmoid(std_raw / 2.0) + min_std


def trunc_normal_sample(mean: torch.Tensor, std: torch.Tensor, normal: torch.Tensor, clip: float = 1e-6) -> torch.Tensor:
    """A reparameterised sample of N(mean, std²) truncated to [−1, 1], from standard-normal noise.

    The noise is mapped to a uniform u = Φ(ε) and through the inverse CDF of
    the truncated distribution, so gradients reach mean and std. Like the
    official ``TruncNormalDist`` the value is clipped to ±(1 − clip) with a
    straight-through gradient.
    """
    alpha, beta = _std_normal_cdf((-1.0 - mean) / std), _std_normal_cdf((1.0 - mean) / std)
    u = alpha + _std_normal_cdf(normal) * (beta - alpha)
    u = u.clamp(1e-6, 1.0 - 1e-6)
    x = mean + std * math.sqrt(2.0) * erfinv(2.0 * u - 1.0)
    clipped = x.clamp(-1.0 + clip, 1.0 - clip)
    return x + (clipped - x).detach()


def trunc_normal_logp_entropy(action: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Elementwise log-density at ``action`` and entropy of N(mean, std²) truncated to [−1, 1]."""
    a, b = (-1.0 - mean) / std, (1.0 - mean) / std
    mass = (_std_normal_cdf(b) - _std_normal_cdf(a)).clamp(min=1e-8)
    log_mass = torch.log(mass)
    logp = normal_logp(action, mean, std) - log_mass
    pdf = lambda z: torch.exp(-0.5 * z.square()) / math.sqrt(2 * math.pi)  # noqa: E731
    entropy = 0.5 * math.log(2 * math.pi * math.e) + torch.log(std) + log_mass + (a * pdf(a) - b * pdf(b)) / (2 * mass)
    return logp, entropy
