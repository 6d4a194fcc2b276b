"""Output heads: scalar regression (two-hot or squared error) and Bernoulli (continuation)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import dists
from .nets import MLP, LatentFeat, Linear


class TwoHotHead(nn.Module):
    """Predicts a scalar as a softmax over symexp-spaced bins.

    The output layer is zero-initialised (``outscale=0``), so a fresh head
    predicts exactly 0: no large initial rewards or values to unlearn.
    """

    bins: torch.Tensor

    def __init__(
        self, in_dim: int, *, layers: int, units: int, bins: int = 255, act: str = "silu", norm: str = "rms", outscale: float = 0.0
    ) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, layers, units, act=act, norm=norm)
        self.out = Linear(self.mlp.out_features, bins, outscale=outscale)
        self.register_buffer("bins", dists.symexp_bins(bins), persistent=False)

    def logits(self, feat: torch.Tensor | LatentFeat) -> torch.Tensor:
        """``[..., F] → [..., bins]``.

        The lower bins and the mirrored upper bins go through two products of the same shape, so a bin
        and its mirror see the same arithmetic forward and backward, and get bitwise-equal updates
        whenever their gradients are equal. One 255-wide layer does not guarantee that: on a CPU its
        bias gradient (a sum over rows) rounded the 31 outermost bins differently from their mirrors
        once the rows numbered in the thousands (the critic's 1,024 × 15 imagined states). The outer
        bins lie at up to ±4.85e8, so that one-ulp asymmetry made critic values jump by multiples of
        0.38 on ~7 % of imagined states where the true values were ~0.1. The parameters are still one
        ``Linear`` (the same optimiser state and checkpoints).
        """
        hidden = self.mlp(feat)
        weight, bias, half = self.out.weight, self.out.bias, self.bins.shape[0] // 2
        low = F.linear(hidden, weight[:half], bias[:half])
        high = F.linear(hidden, weight[-half:].flip(0), bias[-half:].flip(0)).flip(-1)
        if self.bins.shape[0] % 2 == 0:
            return torch.cat([low, high], -1)
        return torch.cat([low, F.linear(hidden, weight[half : half + 1], bias[half : half + 1]), high], -1)

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """Expected value ``[...]`` of the predicted distribution."""
        return dists.twohot_mean(logits, self.bins)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Cross-entropy to the two-hot encoding of ``target`` ``[...]``."""
        return dists.twohot_loss(logits, target, self.bins)


class MSEHead(nn.Module):
    """Predicts a scalar directly, trained with squared error.

    DreamerV2's ``mse`` heads; DreamerV1's unit-variance Gaussian heads are the
    same up to a factor ½ and a constant (the V1 preset scales its loss terms
    by ½). Same interface as :class:`TwoHotHead`: ``logits`` are ``[..., 1]``.
    """

    def __init__(self, in_dim: int, *, layers: int, units: int, act: str = "elu", norm: str = "none", outscale: float = 1.0) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, layers, units, act=act, norm=norm)
        self.out = Linear(self.mlp.out_features, 1, outscale=outscale)

    def logits(self, feat: torch.Tensor | LatentFeat) -> torch.Tensor:
        """``[..., F] → [..., 1]``."""
        return self.out(self.mlp(feat))

    def mean(self, logits: torch.Tensor) -> torch.Tensor:
        """The prediction ``[...]``."""
        return logits.squeeze(-1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``(prediction − target)²``, ``[...]``."""
        return (logits.squeeze(-1) - target.float()).square()


#: Scalar head kinds by name (``dist`` in the head configs).
SCALAR_HEADS = {"twohot": TwoHotHead, "mse": MSEHead}
#: A reward or critic head (the two share ``logits``, ``mean`` and ``loss``).
ScalarHead = TwoHotHead | MSEHead


def scalar_head(in_dim: int, *, dist: str = "twohot", bins: int = 255, **kwargs: Any) -> ScalarHead:
    """A reward or critic head: ``dist=twohot`` (V3) or ``mse`` (V1, V2)."""
    if dist not in SCALAR_HEADS:
        raise ValueError(f"unknown head dist {dist!r}; valid: {', '.join(SCALAR_HEADS)}")
    if dist == "twohot":
        kwargs["bins"] = bins
    return SCALAR_HEADS[dist](in_dim, **kwargs)


class BinaryHead(nn.Module):
    """Predicts a probability (the continuation flag) as one logit."""

    def __init__(self, in_dim: int, *, layers: int, units: int, act: str = "silu", norm: str = "rms", outscale: float = 1.0) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, layers, units, act=act, norm=norm)
        self.out = Linear(self.mlp.out_features, 1, outscale=outscale)

    def logit(self, feat: torch.Tensor | LatentFeat) -> torch.Tensor:
        """``[..., F] → [...]``."""
        return self.out(self.mlp(feat)).squeeze(-1)

    def loss(self, logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood of a (soft) target in [0, 1]."""
        return -dists.binary_logp(logit, target)
