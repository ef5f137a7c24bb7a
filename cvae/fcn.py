"""Fully-convolutional encoder and decoder: z is a latent map (latent_dim, h, w), not a vector.

Every layer is a convolution, so a model trained on one image size decodes latent maps of any size:
the decoder turns an h x w map into an image of (h * factor) x (w * factor) pixels, where `factor` is
2 ** (number of stages). Encoder, per stage: a 3x3 convolution of stride 2 (halves the size) and a
3x3 convolution; then 1x1 heads give the mean and log-variance of z at every position. Decoder: a 3x3
convolution at the latent size, then per stage a 4x4 transposed convolution of stride 2 (exactly
doubles the size) and a 3x3 convolution, then a 3x3 convolution to `params_per_element` channels
per image channel.

Conditions enter as feature maps at every resolution: condition vectors (an embedded label) are
tiled, condition feature maps at the image size (a visible part of an image, through a map encoder)
are average-pooled to each stage's size.

A factorised N(0, I) prior over such a map treats neighbouring positions as independent, which the
aggregate posterior's are not; `cvae.spatial_prior` gives a prior that models that dependence.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .data import TargetInfo
from .errors import CVAEError
from .nets import activation as activation_class

__all__ = ["FCNEncoder", "FCNDecoder", "build_fcn", "condition_maps"]


def condition_maps(h: torch.Tensor, size: Sequence[int], where: str) -> torch.Tensor | None:
    """Condition features as maps of `size` (height, width): vectors (batch, F) are tiled, maps
    (batch, F, H, W) whose size is a whole multiple of `size` are average-pooled. None without features."""
    if h.shape[1] == 0:
        return None
    size = tuple(int(s) for s in size)
    if h.ndim == 2:
        return h[:, :, None, None].expand(-1, -1, *size)
    if h.ndim != 4:
        raise CVAEError(f"{where}: condition features must be vectors (batch, F) or maps (batch, F, H, W), "
                        f"got shape {tuple(h.shape)}")
    hh, ww = h.shape[2:]
    if hh % size[0] or ww % size[1]:
        raise CVAEError(f"{where}: condition maps of {hh}x{ww} do not fit a {size[0]}x{size[1]} feature map "
                        f"(their size must be a whole multiple of it)")
    return h if (hh, ww) == size else F.avg_pool2d(h, (hh // size[0], ww // size[1]))


def _cat(x: torch.Tensor, h: torch.Tensor, where: str) -> torch.Tensor:
    maps = condition_maps(h, x.shape[2:], where)
    return x if maps is None else torch.cat([x, maps], dim=1)


class FCNEncoder(nn.Module):
    """q(z | x, y): strided convolutions over the image and the condition maps, 1x1 heads per position."""

    def __init__(self, target: TargetInfo, cond_features: int, latent_dim: int, channels: Sequence[int],
                 activation: str) -> None:
        super().__init__()
        self.factor = 2 ** len(channels)
        finite = math.isfinite(target.low) and math.isfinite(target.high) and target.high > target.low
        self.shift, self.scale = ((target.low + target.high) / 2, 2 / (target.high - target.low)) if finite else (0.0, 1.0)
        act = activation_class(activation)
        self.stages = nn.ModuleList()
        width = target.shape[0]
        for c in channels:
            self.stages.append(nn.Sequential(nn.Conv2d(width + cond_features, c, 3, stride=2, padding=1), act(),
                                             nn.Conv2d(c, c, 3, padding=1), act()))
            width = c
        self.mu = nn.Conv2d(width + cond_features, latent_dim, 1)
        self.logvar = nn.Conv2d(width + cond_features, latent_dim, 1)

    def forward(self, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hh, ww = y.shape[-2:]
        if hh % self.factor or ww % self.factor:
            raise CVAEError(f"architecture 'fcn': a {hh}x{ww} image does not fit an encoder that downsamples by "
                            f"{self.factor}; use image sizes that are multiples of {self.factor}")
        x = (y - self.shift) * self.scale
        for stage in self.stages:
            x = stage(_cat(x, h, "architecture 'fcn'"))
        x = _cat(x, h, "architecture 'fcn'")
        return self.mu(x), self.logvar(x)


class FCNDecoder(nn.Module):
    """p(y | x, z): a latent map (latent_dim, h, w) -> likelihood parameters for a (h * factor) x
    (w * factor) image, `(batch, params_per_element, channels, height, width)`."""

    def __init__(self, target: TargetInfo, cond_features: int, latent_dim: int, params_per_element: int,
                 channels: Sequence[int], activation: str) -> None:
        super().__init__()
        self.factor = 2 ** len(channels)
        self.latent_dim, self.params_per_element, self.image_channels = latent_dim, params_per_element, target.shape[0]
        self.latent_shape = self.latent_shape_for(target.shape[1:])
        act = activation_class(activation)
        widths = list(reversed(channels))
        self.inp = nn.Sequential(nn.Conv2d(latent_dim + cond_features, widths[0], 3, padding=1), act())
        self.stages = nn.ModuleList()
        for i, c in enumerate(widths):
            out = widths[i + 1] if i + 1 < len(widths) else c
            self.stages.append(nn.Sequential(nn.ConvTranspose2d(c + cond_features, out, 4, stride=2, padding=1), act(),
                                             nn.Conv2d(out, out, 3, padding=1), act()))
        self.out = nn.Conv2d(widths[-1] + cond_features, params_per_element * self.image_channels, 3, padding=1)

    def latent_shape_for(self, size: Sequence[int]) -> tuple[int, int, int]:
        """The latent map (latent_dim, h, w) that decodes to images of `size` (height, width)."""
        size = tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < self.factor or size[0] % self.factor or size[1] % self.factor:
            raise CVAEError(f"architecture 'fcn': cannot make {'x'.join(map(str, size))} images; this decoder "
                            f"upsamples by {self.factor}, so heights and widths must be positive multiples of "
                            f"{self.factor}")
        return self.latent_dim, size[0] // self.factor, size[1] // self.factor

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if z.ndim != 4 or z.shape[1] != self.latent_dim or min(z.shape[2:]) < 1:
            raise CVAEError(f"architecture 'fcn': the decoder takes latent maps (batch, {self.latent_dim}, h, w) "
                            f"with h, w >= 1; got shape {tuple(z.shape)}")
        x = self.inp(_cat(z, h, "architecture 'fcn'"))
        for stage in self.stages:
            x = stage(_cat(x, h, "architecture 'fcn'"))
        x = self.out(_cat(x, h, "architecture 'fcn'"))
        return x.view(len(x), self.params_per_element, self.image_channels, *x.shape[2:])


def build_fcn(*, target: TargetInfo, cond_features: int, latent_dim: int, params_per_element: int,
              channels: Sequence[int] = (32, 64), activation: str = "relu") -> tuple[nn.Module, nn.Module]:
    """Fully-convolutional encoder and decoder for image targets `(channels, height, width)` whose
    sides are multiples of 2 ** len(channels). `channels`: the width of each stride-2 stage (one
    stage per halving; the latent map is the image size / 2 ** len(channels)); `latent_dim` is the
    number of latent channels per position."""
    if not target.is_image:
        raise CVAEError(f"architecture 'fcn' needs image targets (channels, height, width); this dataset's targets "
                        f"have shape {tuple(target.shape)}: use architecture 'mlp'")
    channels = [int(c) for c in channels]
    if not channels or min(channels) < 1:
        raise CVAEError(f"architecture 'fcn': channels must list at least one width >= 1, got {channels}")
    activation_class(activation, "architecture 'fcn'")  # an unknown name fails here, before any layer
    factor = 2 ** len(channels)
    if any(s % factor for s in target.shape[1:]):
        raise CVAEError(f"architecture 'fcn': {len(channels)} stride-2 stages need image sides that are multiples "
                        f"of {factor}, but the images are {target.shape[1]}x{target.shape[2]}; use fewer channels "
                        f"entries or resize the images")
    encoder = FCNEncoder(target, cond_features, latent_dim, channels, activation)
    decoder = FCNDecoder(target, cond_features, latent_dim, params_per_element, channels, activation)
    return encoder, decoder
