"""Building blocks: initialisation, norms, MLPs and block-diagonal layers."""

from __future__ import annotations

import math

import torch
from torch import nn


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
        lead = x.shape[:-1]
        x = x.reshape(-1, self.blocks, x.shape[-1] // self.blocks)  # [N, G, in/G]
        x = torch.bmm(x.transpose(0, 1), self.weight).transpose(0, 1)  # [N, G, out/G]
        return x.reshape(*lead, -1) + self.bias


def make_norm(kind: str, dim: int) -> nn.Module:
    """``rms`` (DreamerV3), ``layer`` (DreamerV2) or ``none``; eps 1e-4 as in the official code."""
    if kind == "rms":
        return nn.RMSNorm(dim, eps=1e-4)
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
