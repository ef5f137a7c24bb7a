"""Convolutional encoder and decoder for images of any size and channel count.

The defaults follow the lecture's example for 64x64x3 images. Encoder: 5x5 convolution with 32
channels and stride 2, 3x3 convolution with 64 channels and stride 2, 3x3 convolution with 128 channels
and stride 2, flatten, a fully connected layer of 1024 units, and fully connected heads for the mean and
log-variance of z. Decoder: z and the condition features -> 1024 units -> the last feature map -> three
transposed convolutions back to the image, with `params_per_element` output channels per image channel.
With z of 256 dimensions and one parameter per element this has about 17.8M parameters, 94% of them in
the two large fully connected layers.

Any height and width works, odd ones included: every convolution pads by (kernel - 1) // 2, the
encoder's feature-map sizes are computed, and each transposed convolution gets the output padding
that restores its encoder size exactly (it always lies in [0, stride - 1]).

Condition features (vectors) enter the encoder after the flatten (`condition_input="flat"`, the
default) or as constant feature maps stacked onto the image (`"maps"`), and the decoder beside z; with
`decoder_maps=True` they also enter every transposed convolution as constant feature maps, so the
decoder can draw what the condition implies at each scale instead of relaying it through z's layer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .data import TargetInfo
from .errors import CVAEError
from .nets import activation as activation_class
from .pose_warp import POSE_DIMS, PoseWarp

__all__ = ["ConvEncoder", "ConvDecoder", "build_conv", "feature_sizes", "DEFAULT_KERNELS"]

DEFAULT_KERNELS = (5, 3, 3)  # the lecture's; layers beyond the third use 3x3
MAX_FLAT_FEATURES = 2**20  # a flattened feature map beyond this makes the FC layers absurd (over 1G weights)
CONDITION_INPUTS = ("flat", "maps")
NORMS = ("none", "batch")
INITS = ("he", "default")


def feature_sizes(size: int, kernels: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Spatial sizes of one dimension through the encoder's convolutions (padding (k - 1) // 2):
    `[size, after layer 1, ...]`; a layer whose input is smaller than its kernel is an error."""
    sizes = [int(size)]
    for i, (k, s) in enumerate(zip(kernels, strides)):
        padded = sizes[-1] + 2 * ((k - 1) // 2)
        if padded < k:
            raise CVAEError(f"architecture 'conv': layer {i + 1} ({k}x{k}, stride {s}) needs at least "
                            f"{k - 2 * ((k - 1) // 2)} pixels but gets a {sizes[-1]}-pixel feature map "
                            f"(image size {size}); use an odd kernel size, which works for every size >= 1")
        sizes.append((padded - k) // s + 1)
    return sizes


def _norm(norm: str, channels: int) -> list[nn.Module]:
    return [nn.BatchNorm2d(channels)] if norm == "batch" else []


def _he_init(module: nn.Module) -> None:
    """He (Kaiming) normal weights for ReLU-family layers and zero biases: with PyTorch's default
    initialisation the signal shrinks layer by layer and the first few hundred steps are wasted."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)


def _with_maps(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """`x` (batch, C, H, W) with the condition features `h` (batch, F) stacked on as F constant maps."""
    return torch.cat([x, h[:, :, None, None].expand(-1, -1, *x.shape[-2:])], dim=1)


def _output_padding(size_in: int, size_out: int, k: int, s: int) -> int:
    """The output padding that makes a transposed convolution (padding (k - 1) // 2) map size_in to size_out."""
    return size_out - ((size_in - 1) * s - 2 * ((k - 1) // 2) + k)


class ConvEncoder(nn.Module):
    """q(z | x, y): strided convolutions, flatten, one fully connected layer, heads for mu and log-variance."""

    def __init__(self, target: TargetInfo, cond_features: int, latent_dim: int, channels: Sequence[int],
                 kernels: Sequence[int], strides: Sequence[int], fc: int, activation: str,
                 condition_input: str, flat_shape: tuple[int, int, int], norm: str = "none") -> None:
        super().__init__()
        c_in = target.shape[0]
        self.condition_input = condition_input
        self.maps = condition_input == "maps" and cond_features > 0
        # inputs are moved to [-1, 1] when the target range is finite: it keeps the first layer's scale sane
        finite = math.isfinite(target.low) and math.isfinite(target.high) and target.high > target.low
        self.shift, self.scale = ((target.low + target.high) / 2, 2 / (target.high - target.low)) if finite else (0.0, 1.0)
        layers: list[nn.Module] = []
        width = c_in + (cond_features if self.maps else 0)
        for c, k, s in zip(channels, kernels, strides):
            layers += [nn.Conv2d(width, c, k, stride=s, padding=(k - 1) // 2), *_norm(norm, c), activation_class(activation)()]
            width = c
        self.convs = nn.Sequential(*layers, nn.Flatten())
        flat = math.prod(flat_shape)
        self.fc = nn.Sequential(nn.Linear(flat + (0 if self.maps else cond_features), fc), activation_class(activation)())
        self.mu = nn.Linear(fc, latent_dim)
        self.logvar = nn.Linear(fc, latent_dim)

    def forward(self, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = (y - self.shift) * self.scale
        if self.maps:
            hidden = self.fc(self.convs(_with_maps(x, h)))
        else:
            hidden = self.fc(torch.cat([self.convs(x), h], dim=1) if h.shape[1] else self.convs(x))
        return self.mu(hidden), self.logvar(hidden)


class ConvDecoder(nn.Module):
    """p(y | x, z): [z, h] -> fully connected layer -> the encoder's last feature map -> transposed
    convolutions mirroring the encoder -> `params_per_element` channels per image channel."""

    def __init__(self, target: TargetInfo, cond_features: int, latent_dim: int, params_per_element: int,
                 channels: Sequence[int], kernels: Sequence[int], strides: Sequence[int], fc: int, activation: str,
                 heights: Sequence[int], widths: Sequence[int], norm: str = "none", maps: bool = False) -> None:
        super().__init__()
        self.maps = maps and cond_features > 0
        self.out_shape = (params_per_element, *target.shape)
        self.map_shape = (channels[-1], heights[-1], widths[-1])
        act = activation_class(activation)
        self.fc = nn.Sequential(nn.Linear(latent_dim + cond_features, fc), act(),
                                nn.Linear(fc, math.prod(self.map_shape)), act())
        outs = [*reversed(channels[:-1]), params_per_element * target.shape[0]]
        layers: list[nn.Module] = []
        width, extra = channels[-1], cond_features if self.maps else 0
        n = len(channels)
        for j, c in enumerate(outs):
            i = n - 1 - j  # the encoder layer this one undoes
            k, s = kernels[i], strides[i]
            pad = (_output_padding(heights[i + 1], heights[i], k, s), _output_padding(widths[i + 1], widths[i], k, s))
            layers.append(nn.ConvTranspose2d(width + extra, c, k, stride=s, padding=(k - 1) // 2, output_padding=pad))
            if j < n - 1:
                layers += [*_norm(norm, c), act()]
            width = c
        self.deconvs = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        x = self.fc(torch.cat([z, h], dim=1) if h.shape[1] else z).view(-1, *self.map_shape)
        if not self.maps:
            return self.deconvs(x).view(-1, *self.out_shape)
        for layer in self.deconvs:
            x = layer(_with_maps(x, h) if isinstance(layer, nn.ConvTranspose2d) else x)
        return x.view(-1, *self.out_shape)


def build_conv(*, target: TargetInfo, cond_features: int, latent_dim: int, params_per_element: int,
               channels: Sequence[int] = (32, 64, 128), kernels: Sequence[int] | None = None,
               strides: Sequence[int] | None = None, fc: int = 1024, activation: str = "relu",
               condition_input: str = "flat", decoder_maps: bool = False, norm: str = "none",
               init: str = "he", pose_warp: bool = False) -> tuple[nn.Module, nn.Module]:
    """Convolutional encoder and mirrored decoder for image targets `(channels, height, width)`.

    `channels`: output channels of each encoder convolution (the decoder mirrors them);
    `kernels`: their square kernel sizes (default 5 for the first layer, 3 for the others);
    `strides`: their strides (default 2 each); `fc`: width of the fully connected layer on each side;
    `condition_input`: "flat" (condition features join the flattened feature map) or "maps" (they are
    broadcast to constant feature maps stacked onto the input image); `decoder_maps`: condition features
    also join the input of every transposed convolution as constant maps; `norm`: "none" or "batch" (batch
    normalisation after each hidden convolution); `init`: "he" (He-normal hidden layers, zero biases)
    or "default" (PyTorch's own initialisation); `pose_warp`: the decoder draws in a canonical pose and a
    warp turns and moves the drawing by an angle and a shift read from the first 3 latent dimensions
    (`cvae.pose_warp`)."""
    if not target.is_image:
        raise CVAEError(f"architecture 'conv' needs image targets (channels, height, width); this dataset's targets "
                        f"have shape {tuple(target.shape)}: use architecture 'mlp'")
    channels = [int(c) for c in channels]
    n = len(channels)
    kernels = [int(k) for k in kernels] if kernels is not None else [DEFAULT_KERNELS[min(i, 2)] for i in range(n)]
    strides = [int(s) for s in strides] if strides is not None else [2] * n
    if n == 0 or min(channels) < 1:
        raise CVAEError(f"architecture 'conv': channels must list at least one width >= 1, got {channels}")
    if len(kernels) != n or len(strides) != n:
        raise CVAEError(f"architecture 'conv': channels, kernels and strides need one entry per layer; got "
                        f"{n} channels, {len(kernels)} kernels, {len(strides)} strides")
    if min(kernels) < 1 or min(strides) < 1 or int(fc) < 1:
        raise CVAEError(f"architecture 'conv': kernels, strides and fc must be >= 1; got kernels={kernels}, "
                        f"strides={strides}, fc={fc}")
    activation_class(activation, "architecture 'conv'")  # an unknown name fails here, before any layer
    if condition_input not in CONDITION_INPUTS:
        raise CVAEError(f"architecture 'conv': condition_input must be one of {', '.join(CONDITION_INPUTS)}, "
                        f"got {condition_input!r}")
    for name, flag in (("decoder_maps", decoder_maps), ("pose_warp", pose_warp)):
        if not isinstance(flag, bool):
            raise CVAEError(f"architecture 'conv': {name} must be true or false, got {flag!r}")
    if pose_warp and latent_dim <= POSE_DIMS:
        raise CVAEError(f"architecture 'conv': pose_warp reads an angle and a shift from the first {POSE_DIMS} "
                        f"latent dimensions and draws from the rest, so model.latent_dim must be above {POSE_DIMS}, "
                        f"got {latent_dim}")
    if norm not in NORMS or init not in INITS:
        raise CVAEError(f"architecture 'conv': norm must be one of {', '.join(NORMS)} and init one of "
                        f"{', '.join(INITS)}; got norm={norm!r}, init={init!r}")
    _, height, width = target.shape
    heights, widths = feature_sizes(height, kernels, strides), feature_sizes(width, kernels, strides)
    flat_shape = (channels[-1], heights[-1], widths[-1])
    if math.prod(flat_shape) > MAX_FLAT_FEATURES:
        raise CVAEError(f"architecture 'conv': a {height}x{width} image leaves a {flat_shape} feature map "
                        f"({math.prod(flat_shape):,} features) before the fully connected layer; add stride-2 "
                        f"layers (channels, kernels, strides) or downsample the images")
    encoder = ConvEncoder(target, cond_features, latent_dim, channels, kernels, strides, int(fc), activation,
                          condition_input, flat_shape, norm)
    drawn_dim = latent_dim - POSE_DIMS if pose_warp else latent_dim
    decoder = ConvDecoder(target, cond_features, drawn_dim, params_per_element, channels, kernels, strides, int(fc),
                          activation, heights, widths, norm, decoder_maps)
    if init == "he":  # hidden layers only: the output layers keep small weights, so mu, log-variance and
        # the likelihood parameters start near zero
        for part in (encoder.convs, encoder.fc, decoder.fc, decoder.deconvs[:-1]):
            _he_init(part)
    return encoder, PoseWarp(decoder) if pose_warp else decoder
