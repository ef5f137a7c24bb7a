"""Fully connected building blocks, and the MLP encoder/decoder architecture for targets of any shape."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from .data import TargetInfo
from .errors import CVAEError

__all__ = ["activation", "mlp", "MLPEncoder", "MLPDecoder", "build_mlp"]

_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "elu": nn.ELU, "tanh": nn.Tanh, "gelu": nn.GELU}


def activation(name: str, where: str = "") -> type[nn.Module]:
    """The activation module class called `name`; a clear error (prefixed by `where`) for unknown names."""
    if name not in _ACTIVATIONS:
        raise CVAEError(f"{where + ': ' if where else ''}unknown activation {name!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    return _ACTIVATIONS[name]


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "silu") -> nn.Sequential:
    """Linear layers of the given hidden widths with an activation between them (none after the last)."""
    if activation not in _ACTIVATIONS:
        raise CVAEError(f"unknown activation {activation!r}; known: {', '.join(sorted(_ACTIVATIONS))}")
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), _ACTIVATIONS[activation]()]
        width = int(h)
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MLPEncoder(nn.Module):
    """q(z | x, y): flattened target and condition features -> mean and log-variance of z."""

    def __init__(self, target_numel: int, cond_features: int, latent_dim: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.net = mlp(target_numel + cond_features, hidden, 2 * latent_dim, activation)

    def forward(self, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.net(torch.cat([y.flatten(1), h], dim=1)).chunk(2, dim=1)
        return mu, logvar


class MLPDecoder(nn.Module):
    """p(y | x, z): latent and condition features -> likelihood parameters for every target element."""

    def __init__(self, target_shape: tuple[int, ...], cond_features: int, latent_dim: int, params_per_element: int,
                 hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        self.out_shape = (params_per_element, *target_shape)
        self.net = mlp(latent_dim + cond_features, hidden, math.prod(self.out_shape), activation)

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([z, h], dim=1)).view(-1, *self.out_shape)


def build_mlp(*, target: TargetInfo, cond_features: int, latent_dim: int, params_per_element: int,
              hidden: Sequence[int] = (512, 256), activation: str = "silu") -> tuple[nn.Module, nn.Module]:
    """MLP encoder and decoder; the decoder mirrors the encoder's hidden widths."""
    encoder = MLPEncoder(target.numel, cond_features, latent_dim, hidden, activation)
    decoder = MLPDecoder(target.shape, cond_features, latent_dim, params_per_element, list(reversed(hidden)), activation)
    return encoder, decoder
