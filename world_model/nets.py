"""Building blocks: initialisation, norms, MLPs and block-diagonal layers."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class LatentFeat(NamedTuple):
    """Model features ``concat(deter, onehot(index))`` kept in index form.

    The stochastic part of the features is one-hot, so a linear layer over the
    features is ``W_deter · deter + Σ_s W_stoch[:, s·C + index_s]``: a sum of
    gathered columns instead of a product with a mostly-zero vector. Heads and
    MLPs accept this in place of the dense feature tensor and compute the same
    values (up to float rounding) with S·C/S times fewer multiplications in
    the first layer. Used where no gradient flows into the latent (imagined
    states); the straight-through posterior keeps the dense form.

    Attributes:
        deter: ``[..., D]``.
        indices: ``[..., S]`` int64 class indices (not ``index``, which would
            shadow ``tuple.index``).
        classes: C.
    """

    deter: torch.Tensor
    indices: torch.Tensor
    classes: int

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> LatentFeat:
        """Applies ``fn`` (e.g. a slice over time) to both tensors."""
        return LatentFeat(fn(self.deter), fn(self.indices), self.classes)

    def dense(self) -> torch.Tensor:
        """The equivalent dense features ``[..., D + S·C]``."""
        onehot = F.one_hot(self.indices, self.classes).to(self.deter.dtype)
        return torch.cat([self.deter, onehot.flatten(-2)], -1)


class _GatherSum(torch.autograd.Function):
    """``out[n] = Σ_s table[bags[n, s]]`` with a backward that scatters per slot.

    ``F.embedding_bag`` computes the same forward, but its dense backward is
    ~2.4× slower on CPU than one ``index_add_`` per slot (measured for
    16384 × 32 bags of 256 columns).
    """

    @staticmethod
    def forward(ctx: Any, table: torch.Tensor, bags: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bags)
        ctx.rows = table.shape[0]
        return F.embedding_bag(bags, table, mode="sum")

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor, None]:
        (grad,) = grads  # one output, one gradient
        (bags,) = ctx.saved_tensors
        grad_table = grad.new_zeros(ctx.rows, grad.shape[-1])
        for slot in range(bags.shape[1]):
            grad_table.index_add_(0, bags[:, slot], grad)
        return grad_table, None


def onehot_matmul(weight: torch.Tensor, index: torch.Tensor, classes: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``flatten(onehot(index)) @ weight.T`` as a sum of gathered columns.

    Args:
        weight: ``[out, S·C]``.
        index: ``[..., S]`` int64.
        classes: C.
        dtype: compute dtype (the autocast dtype, when there is one).

    Returns:
        ``[..., out]``.
    """
    stoch = index.shape[-1]
    table = weight.t()  # [S·C, out]
    if dtype is not None and table.dtype != dtype:
        table = table.to(dtype)
    offsets = torch.arange(stoch, device=index.device) * classes
    bags = (index + offsets).reshape(-1, stoch)  # [N, S]: rows of the table to sum
    if torch.is_grad_enabled() and table.requires_grad:
        return _GatherSum.apply(table, bags).reshape(*index.shape[:-1], -1)
    return F.embedding_bag(bags, table, mode="sum").reshape(*index.shape[:-1], -1)


def linear_latent(linear: nn.Linear, feat: LatentFeat) -> torch.Tensor:
    """``linear(feat.dense())`` computed from the index form (see :class:`LatentFeat`)."""
    deter_dim = feat.deter.shape[-1]
    out = F.linear(feat.deter, linear.weight[:, :deter_dim], linear.bias)
    return out + onehot_matmul(linear.weight[:, deter_dim:], feat.indices, feat.classes, out.dtype)


def trunc_normal_init_(weight: torch.Tensor, fan_in: int, scale: float = 1.0) -> None:
    """DreamerV3's ``trunc_normal_in`` initialiser.

    A normal truncated at ±2 standard deviations, rescaled by 1.1368 so that the
    truncated distribution has variance ``1 / fan_in``; ``scale`` multiplies
    the result (``outscale`` in the official code; 0 gives a zero layer).
    """
    std = 1.1368 * math.sqrt(1.0 / fan_in)
    with torch.no_grad():
        if scale == 0.0:
            weight.zero_()
            return
        nn.init.trunc_normal_(weight, mean=0.0, std=1.0, a=-2.0, b=2.0)
        weight.mul_(std * scale)


class Linear(nn.Linear):
    """``nn.Linear`` with DreamerV3's initialisation (zero bias).

    Args:
        in_features: input size.
        out_features: output size.
        outscale: multiplies the initial weights (0 for a zero-initialised head).
    """

    def __init__(self, in_features: int, out_features: int, *, outscale: float = 1.0, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        trunc_normal_init_(self.weight, in_features, outscale)
        if self.bias is not None:
            nn.init.zeros_(self.bias)


class BlockLinear(nn.Module):
    """A block-diagonal linear layer: ``blocks`` independent linears side by side.

    Input ``[N, in]`` is split into ``blocks`` groups of ``in / blocks``; group
    ``g`` maps to output features ``g · out/blocks … (g+1) · out/blocks``.
    """

    def __init__(self, in_features: int, out_features: int, blocks: int) -> None:
        super().__init__()
        if in_features % blocks or out_features % blocks:
            raise ValueError(f"BlockLinear: {in_features} and {out_features} must divide by blocks={blocks}")
        self.blocks = blocks
        self.weight = nn.Parameter(torch.empty(blocks, in_features // blocks, out_features // blocks))
        self.bias = nn.Parameter(torch.zeros(out_features))
        # The official initialiser computes the fan-in of the kernel
        # [blocks, in/blocks, out/blocks] as blocks · in/blocks = in.
        trunc_normal_init_(self.weight, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in] → [..., out]``."""
        lead = x.shape[:-1]
        x = x.reshape(-1, self.blocks, x.shape[-1] // self.blocks)  # [N, G, in/G]
        x = torch.bmm(x.transpose(0, 1), self.weight).transpose(0, 1)  # [N, G, out/G]
        return x.reshape(*lead, -1) + self.bias


class RMSNorm(nn.Module):
    """``x / sqrt(mean(x²) + eps) · weight`` over the last axis, computed in fp32.

    Same parameters as ``nn.RMSNorm``; written out because ONNX export has no
    symbolic for ``aten::rms_norm`` before opset 23.
    """

    def __init__(self, dim: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises over the last axis."""
        y = x.float()
        # Written as Pow → ReduceMean → Add → Sqrt → Div → Mul, the pattern
        # onnxruntime fuses into one SimplifiedLayerNormalization kernel.
        y = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight
        return y.to(x.dtype)


def make_norm(kind: str, dim: int) -> nn.Module:
    """``rms`` (DreamerV3), ``layer`` (DreamerV2) or ``none``; eps 1e-4 as in the official code."""
    if kind == "rms":
        return RMSNorm(dim, eps=1e-4)
    if kind == "layer":
        return nn.LayerNorm(dim, eps=1e-4)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; valid: rms, layer, none")


def make_act(kind: str) -> nn.Module:
    """Activation by name: ``silu`` (V3), ``elu`` (V1/V2), ``relu``, ``none``."""
    table = {"silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU, "tanh": nn.Tanh, "none": nn.Identity}
    if kind not in table:
        raise ValueError(f"unknown activation {kind!r}; valid: {sorted(table)}")
    return table[kind]()


class MLP(nn.Sequential):
    """``layers`` × (Linear → norm → activation).

    Args:
        in_features: input size.
        layers: number of hidden layers (0 gives the identity).
        units: hidden width.
        act: activation name.
        norm: norm name.
    """

    def __init__(self, in_features: int, layers: int, units: int, *, act: str = "silu", norm: str = "rms") -> None:
        modules: list[nn.Module] = []
        size = in_features
        for _ in range(layers):
            modules += [Linear(size, units), make_norm(norm, units), make_act(act)]
            size = units
        super().__init__(*modules)
        self.out_features = size

    def forward(self, x: torch.Tensor | LatentFeat) -> torch.Tensor:
        """Applies the layers; ``x`` may be dense features or a :class:`LatentFeat`."""
        if isinstance(x, LatentFeat):
            if not len(self):
                x = x.dense()
            else:
                first, *rest = list(self)
                assert isinstance(first, nn.Linear), "an MLP with layers starts with a Linear (see __init__)"
                out = linear_latent(first, x)
                for module in rest:
                    out = module(out)
                return out
        return super().forward(x)
