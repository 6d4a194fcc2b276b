"""Observation decoder: symlog-MSE vectors and a transposed CNN for images."""

from __future__ import annotations

import torch
from torch import nn

from .encoder import CNN_LAYOUTS, ChannelNorm, conv2d, strided_conv2d
from .nets import MLP, Linear, make_act


class Decoder(nn.Module):
    """Reconstructs observations from model features.

    Vectors: an MLP and one linear output per key, trained with squared error
    against symlog(target). Images: a linear layer to a 4×4 map, then per stage
    a nearest-neighbour 2× upsample and a convolution, ending in a sigmoid;
    trained with squared error summed over pixels.

    ``cnn=strided`` (DreamerV1/V2): a linear layer to a 1×1 map of
    ``32 · depth`` channels, then transposed convolutions of stride 2 with
    kernels 5, 5, 6, 6 (1 → 5 → 13 → 30 → 64) and channels ``4, 2, 1 · depth``
    and the image's; the output is the mean of a unit-variance Gaussian over
    pixels in [0, 1] (no sigmoid).

    The official decoder also mixes a block-linear projection of ``deter``
    into the 4×4 map (``bspace``); reverie uses the plain linear projection
    (the official ``bspace=0`` branch). See docs/design.md.
    """

    def __init__(
        self,
        *,
        feat_dim: int,
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
        symlog_targets: bool = True,
        outscale: float = 1.0,
        cnn: str = "pool",
        cnn_act: str = "",
    ) -> None:
        super().__init__()
        if cnn not in CNN_LAYOUTS:
            raise ValueError(f"unknown cnn layout {cnn!r}; valid: {', '.join(CNN_LAYOUTS)}")
        self.cnn_layout = cnn
        self.vector_dims = dict(vector_dims)
        self.image_keys = sorted(image_channels)
        self.image_channels = [image_channels[k] for k in self.image_keys]
        self.symlog_targets = symlog_targets
        if self.vector_dims:
            self.mlp = MLP(feat_dim, layers, units, act=act, norm=norm)
            self.vector_out = Linear(self.mlp.out_features, sum(self.vector_dims.values()), outscale=outscale)
        if self.image_keys and cnn == "strided":
            if image_size != 64:
                raise ValueError(f"the strided decoder produces 64×64 images, not {image_size}×{image_size}")
            act_name = cnn_act or act
            self.space = nn.Sequential(Linear(feat_dim, 32 * depth), nn.Unflatten(-1, (1, 1, 32 * depth)))
            self.space_norm: nn.Module = nn.Identity()
            chans = [32 * depth, 4 * depth, 2 * depth, depth]
            stages: list[nn.Module] = []
            for cin, cout, k in zip(chans[:-1], chans[1:], (5, 5, 6)):
                stages += [strided_conv2d(cin, cout, k, transposed=True), ChannelNorm(cout, norm), make_act(act_name)]
            stages += [strided_conv2d(depth, sum(self.image_channels), 6, transposed=True)]
            self.cnn = nn.Sequential(*stages)
        elif self.image_keys:
            depths = [depth * m for m in mults]
            self.min_res = image_size // 2 ** len(mults)
            self.top_depth = depths[-1]
            self.space = nn.Sequential(
                Linear(feat_dim, self.min_res * self.min_res * depths[-1]),
                nn.Unflatten(-1, (self.min_res, self.min_res, depths[-1])),
            )
            self.space_norm = nn.Sequential(ChannelNorm(depths[-1], norm), make_act(act))
            stages = []
            cin = depths[-1]
            for cout in reversed(depths[:-1]):
                stages += [nn.Upsample(scale_factor=2), conv2d(cin, cout, kernel), ChannelNorm(cout, norm), make_act(act)]
                cin = cout
            stages += [nn.Upsample(scale_factor=2), conv2d(cin, sum(self.image_channels), kernel, outscale)]
            self.cnn = nn.Sequential(*stages)

    def forward(self, feat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions per key: vectors in symlog space, images in [0, 1] as ``[*lead, H, W, C]``."""
        preds: dict[str, torch.Tensor] = {}
        lead = feat.shape[:-1]
        if self.vector_dims:
            out = self.vector_out(self.mlp(feat))
            for key, part in zip(self.vector_dims, out.split(list(self.vector_dims.values()), -1)):
                preds[key] = part
        if self.image_keys:
            x = self.space(feat.reshape(-1, feat.shape[-1]))  # [N, h, w, C]
            x = self.space_norm(x.permute(0, 3, 1, 2))  # [N, C, h, w]
            x = self.cnn(x)
            # pool: a sigmoid into [0, 1]; strided: a Gaussian mean, centred at 0.5 like V1/V2's targets (x/255 − 0.5).
            x = (torch.sigmoid(x) if self.cnn_layout == "pool" else x + 0.5).permute(0, 2, 3, 1)  # [N, H, W, C]
            x = x.reshape(*lead, *x.shape[1:])
            for key, part in zip(self.image_keys, x.split(self.image_channels, -1)):
                preds[key] = part
        return preds
