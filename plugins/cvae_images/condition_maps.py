"""The condition encoder "image_map": an image condition (such as the visible part of an image in the
completion data) -> feature maps of the same size, for fully-convolutional models (architecture
'fcn'), which pool them to each of their resolutions. Unlike "image", it keeps where things are."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

import cvae
import cvae.nets

__all__ = ["ImageMapEncoder"]


class ImageMapEncoder(nn.Module):
    """(C, H, W) -> (dim, H, W): 3x3 convolutions of `channels` widths (stride 1), then a 1x1 convolution."""

    def __init__(self, info: cvae.ConditionInfo, channels: Sequence[int] = (16,), dim: int = 8,
                 activation: str = "relu") -> None:
        super().__init__()
        if len(info.shape) != 3:
            raise cvae.CVAEError(f"condition encoder 'image_map' needs an image condition (channels, height, width), "
                                 f"got shape {tuple(info.shape)}")
        channels = [int(c) for c in channels]
        if min(channels, default=1) < 1 or int(dim) < 1:
            raise cvae.CVAEError(f"condition encoder 'image_map': channels and dim must be >= 1, got {channels}, {dim}")
        act = cvae.nets.activation(activation, "condition encoder 'image_map'")
        self.shape = tuple(int(s) for s in info.shape)
        layers: list[nn.Module] = []
        width = self.shape[0]
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, padding=1), act()]
            width = c
        self.net = nn.Sequential(*layers, nn.Conv2d(width, int(dim), 1))
        self.out_features = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.get_default_dtype()))

    def extra_repr(self) -> str:
        return f"shape={self.shape}, out_features={self.out_features}"
