"""The `pixels` condition encoder: image observations, as gymnasium gives them, to a feature vector.

It follows the recipe of the `conv` architecture's encoder (cvae.convnets): convolutions with the
lecture's kernels (5x5, then 3x3) and stride 2, padding (k - 1) // 2, ReLU, He-normal weights, the
feature-map sizes computed for any image size; then one linear layer to `dim` features. The default
widths (16, 32, 32) are smaller than the lecture's (32, 64, 128): a policy queries it every step
on a CPU, and a 48-pixel picture of a point mass needs no more.

Observations are channels-last, (height, width, channels), with values 0..255 (uint8, or floats on
that scale); they are moved to [-1, 1] inside.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import cvae
from cvae.convnets import DEFAULT_KERNELS, feature_sizes

__all__ = ["PixelEncoder"]


class PixelEncoder(nn.Module):
    """(batch, H, W, C) images -> (batch, dim) features through strided convolutions."""

    def __init__(self, info: cvae.ConditionInfo, channels: Sequence[int] = (16, 32, 32), dim: int = 128,
                 kernels: Sequence[int] | None = None, strides: Sequence[int] | None = None) -> None:
        super().__init__()
        shape = tuple(int(s) for s in info.shape)
        if len(shape) != 3 or shape[2] not in (1, 3, 4):
            raise cvae.CVAEError(f"condition encoder 'pixels' needs image observations (height, width, channels) "
                                 f"with 1, 3 or 4 channels, got shape {shape}; vector observations use 'vector'")
        channels = [int(c) for c in channels]
        kernels = [int(k) for k in kernels] if kernels is not None else \
            [DEFAULT_KERNELS[min(i, len(DEFAULT_KERNELS) - 1)] for i in range(len(channels))]
        strides = [int(s) for s in strides] if strides is not None else [2] * len(channels)
        if not channels or min(channels) < 1 or int(dim) < 1 or len(kernels) != len(channels) \
                or len(strides) != len(channels) or min(kernels) < 1 or min(strides) < 1:
            raise cvae.CVAEError(f"condition encoder 'pixels': give one channel width, kernel and stride (all >= 1) "
                                 f"per layer and dim >= 1; got channels={channels}, kernels={kernels}, "
                                 f"strides={strides}, dim={dim}")
        self.shape = shape
        height, width = feature_sizes(shape[0], kernels, strides), feature_sizes(shape[1], kernels, strides)
        layers: list[nn.Module] = []
        c_in = shape[2]
        for c, k, s in zip(channels, kernels, strides):
            layers += [nn.Conv2d(c_in, c, k, stride=s, padding=(k - 1) // 2), nn.ReLU()]
            c_in = c
        self.convs = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(channels[-1] * height[-1] * width[-1], int(dim))
        for m in self.convs:
            if isinstance(m, nn.Conv2d):  # as the conv architecture: ReLU layers keep their scale
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        self.out_features = int(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.shape:
            raise cvae.CVAEError(f"condition encoder 'pixels' takes images of shape {self.shape} (height, width, "
                                 f"channels), got a batch of shape {tuple(images.shape)}")
        x = images.permute(0, 3, 1, 2).to(torch.get_default_dtype()) * (2.0 / 255.0) - 1.0
        return self.fc(self.convs(x))

    def parse(self, text: str) -> torch.Tensor:
        """An image observation from the command line: the path of a .npy file of the image's shape."""
        return cvae.data.load_array(text, self.shape, "image observation")

    def extra_repr(self) -> str:
        return f"shape={self.shape}, out_features={self.out_features}"
