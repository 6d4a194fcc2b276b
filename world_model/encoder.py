"""Observation encoder: an MLP over symlog vectors and a CNN over 64×64 images.

Two CNN layouts (``cnn``): ``pool`` (DreamerV3: same-padded stride-1
convolutions, each followed by a 2×2 max-pool, 64 → 4) and ``strided``
(DreamerV1/V2: 4×4 convolutions of stride 2 without padding, 64 → 31 → 14 → 6 → 2).
"""

from __future__ import annotations

import torch
from torch import nn

from . import dists
from .nets import MLP, make_act, trunc_normal_init_


class ChannelNorm(nn.Module):
    """RMS (or layer) norm over the channel axis of ``[N, C, H, W]`` maps."""

    def __init__(self, channels: int, kind: str = "rms", eps: float = 1e-4) -> None:
        super().__init__()
        self.kind, self.eps = kind, eps
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels)) if kind == "layer" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalises ``[N, C, H, W]`` over C."""
        if self.kind == "none":
            return x
        if self.kind == "layer":
            x = x - x.mean(1, keepdim=True)
        x = x * torch.rsqrt(x.square().mean(1, keepdim=True) + self.eps) * self.scale[:, None, None]
        return x if self.shift is None else x + self.shift[:, None, None]


def conv2d(cin: int, cout: int, kernel: int, outscale: float = 1.0) -> nn.Conv2d:
    """Same-padded stride-1 convolution with DreamerV3's initialisation."""
    conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2)
    trunc_normal_init_(conv.weight, cin * kernel * kernel, outscale)
    assert conv.bias is not None  # built with the default bias=True
    nn.init.zeros_(conv.bias)
    return conv


CNN_LAYOUTS = ("pool", "strided")


def strided_conv2d(cin: int, cout: int, kernel: int, transposed: bool = False) -> nn.Module:
    """Unpadded stride-2 convolution (or transposed convolution), fan-in truncated-normal init."""
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, kernel, stride=2)
    trunc_normal_init_(conv.weight, cin * kernel * kernel)
    assert conv.bias is not None  # built with the default bias=True
    nn.init.zeros_(conv.bias)
    return conv


class Encoder(nn.Module):
    """Encodes a dict of observations into one token per step.

    Args:
        vector_dims: size of each vector key, in a fixed order.
        image_channels: channels of each image key (64×64), in a fixed order.
        layers, units: MLP depth and width for vectors.
        depth, mults: CNN channels are ``depth · mult`` per stage; each stage
            halves the resolution (64 → 4 for 4 stages; strided: 64 → 2).
        kernel: convolution kernel size (V3: 5; strided: 4).
        act, norm: activation and norm names.
        symlog_inputs: squash vector inputs with symlog.
        cnn: ``pool`` (V3) or ``strided`` (V1, V2).
        cnn_act: the CNN's activation if it differs from ``act`` (V1: relu).
    """

    def __init__(
        self,
        *,
        vector_dims: dict[str, int],
        image_channels: dict[str, int],
        layers: int = 3,
        units: int = 64,
        depth: int = 4,
        mults: tuple[int, ...] = (2, 3, 4, 4),
        kernel: int = 5,
        image_size: int = 64,
        act: str = "silu",
        norm: str = "rms",
        symlog_inputs: bool = True,
        cnn: str = "pool",
        cnn_act: str = "",
    ) -> None:
        super().__init__()
        if cnn not in CNN_LAYOUTS:
            raise ValueError(f"unknown cnn layout {cnn!r}; valid: {', '.join(CNN_LAYOUTS)}")
        self.vector_keys = list(vector_dims)
        self.image_keys = sorted(image_channels)
        self.symlog_inputs = symlog_inputs
        self.out_dim = 0
        if self.vector_keys:
            self.mlp = MLP(sum(vector_dims.values()), layers, units, act=act, norm=norm)
            self.out_dim += self.mlp.out_features
        if self.image_keys:
            stages: list[nn.Module] = []
            cin, final = sum(image_channels.values()), image_size
            for mult in mults:
                cout = depth * mult
                if cnn == "pool":
                    stages += [conv2d(cin, cout, kernel), nn.MaxPool2d(2)]
                    final //= 2
                else:
                    stages += [strided_conv2d(cin, cout, kernel)]
                    final = (final - kernel) // 2 + 1
                stages += [ChannelNorm(cout, norm), make_act(cnn_act or act)]
                cin = cout
            if final < 1:
                raise ValueError(f"{len(mults)} stages of kernel {kernel} leave nothing of a {image_size}×{image_size} image")
            self.cnn = nn.Sequential(*stages)
            self.out_dim += cin * final * final

    def forward(self, obs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Maps observations ``{key: [*lead, ...]}`` to tokens ``[*lead, out_dim]``."""
        outs = []
        if self.vector_keys:
            x = torch.cat([obs[k].float() for k in self.vector_keys], -1)
            lead = x.shape[:-1]
            if self.symlog_inputs:
                x = dists.symlog(x)
            outs.append(self.mlp(x))
        if self.image_keys:
            x = torch.cat([obs[k] for k in self.image_keys], -1)  # [*lead, H, W, C] uint8
            lead = x.shape[:-3]
            x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5  # [N, C, H, W]
            x = self.cnn(x)
            outs.append(x.reshape(*lead, -1))
        return torch.cat(outs, -1)
