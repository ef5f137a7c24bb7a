"""A learned autoregressive prior over latent maps (PixelCNN-style, van den Oord et al. 2016).

z is a map (C, h, w). In raster order (row by row, left to right), the C latents at position i have a
mixture of `components` diagonal Gaussians whose parameters depend on the condition and on the
latents at every earlier position:

    p(z | x) = prod_i p(z_i | z_<i, x).

Masked convolutions compute all the conditionals in one pass for a given z (training, KL), and
sampling draws one position at a time (h * w passes, cheap on the small maps of a fully-convolutional
VAE). The condition enters as maps (a tiled label embedding, or condition maps pooled to the latent
size) added to every layer. The KL has no closed form: it is the single-sample estimate
log q(z | x, y) - log p(z | x) at the posterior draw z, one column per example.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CVAEError
from .fcn import condition_maps
from .priors import Prior, gaussian_log_prob

__all__ = ["MaskedConv2d", "PixelCNNPrior"]


class MaskedConv2d(nn.Conv2d):
    """A convolution that sees only earlier positions in raster order: type "A" also hides the
    current position (the first layer, so the output at i never sees z_i), type "B" shows it (later
    layers, whose inputs at i already depend only on positions before i)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, mask_type: str) -> None:
        if mask_type not in ("A", "B") or kernel_size % 2 == 0:
            raise CVAEError(f"masked convolution: need mask type 'A' or 'B' and an odd kernel size, got "
                            f"{mask_type!r}, {kernel_size}")
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        mask = torch.zeros(kernel_size, kernel_size)
        c = kernel_size // 2
        mask[:c] = 1
        mask[c, :c + (mask_type == "B")] = 1
        self.register_buffer("mask", mask[None, None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, padding=self.padding)


class PixelCNNPrior(Prior):
    """p(z | x) over latent maps, autoregressive over positions with masked convolutions; see the module
    docstring. `hidden` channels, `layers` masked convolutions (the first `kernel` x `kernel`, type A;
    the rest 3x3, type B, with residual connections), `components` Gaussians per position."""

    maps = True

    def __init__(self, *, cond_features: int, latent_dim: int, hidden: int = 64, layers: int = 4, kernel: int = 5,
                 components: int = 1, min_logvar: float = -8.0) -> None:
        super().__init__(latent_dim)
        if hidden < 1 or layers < 1 or components < 1:
            raise CVAEError(f"prior 'pixelcnn': hidden, layers and components must be >= 1, got {hidden}, {layers}, "
                            f"{components}")
        if not min_logvar < 0:
            raise CVAEError(f"prior 'pixelcnn': min_logvar must be < 0 (a floor below the unit variance it starts "
                            f"at), got {min_logvar}")
        self.k, self.min_logvar = int(components), float(min_logvar)
        self.first = MaskedConv2d(latent_dim, hidden, int(kernel), "A")
        self.convs = nn.ModuleList(MaskedConv2d(hidden, hidden, 3, "B") for _ in range(int(layers) - 1))
        # the condition reaches every layer through a 1x1 convolution (per position, so causality holds)
        self.cond = nn.Conv2d(cond_features, hidden * int(layers), 1) if cond_features > 0 else None
        self.bias = nn.Parameter(torch.zeros(hidden * int(layers), 1, 1))  # unconditional part of the same
        self.head = nn.Conv2d(hidden, self.k * (1 + 2 * latent_dim), 1)
        nn.init.zeros_(self.head.weight)  # start at N(0, I) per position (one component: exactly)
        with torch.no_grad():
            self.head.bias.zero_()
            self.head.bias[self.k:self.k * (1 + latent_dim)] = 0.5 * torch.randn(self.k * latent_dim) * (self.k > 1)
            self.head.bias[self.k * (1 + latent_dim):] = math.log(math.expm1(-self.min_logvar)) + self.min_logvar

    def _check(self, z: torch.Tensor) -> None:
        if z.ndim != 4 or z.shape[1] != self.latent_dim:
            raise CVAEError(f"prior 'pixelcnn' models latent maps (batch, {self.latent_dim}, h, w); got shape "
                            f"{tuple(z.shape)}: use it with architecture 'fcn'")

    def components(self, z: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """For every position, given the latents before it: log mixture weights (batch, k, h, w) and
        component means and log-variances (batch, k, C, h, w)."""
        self._check(z)
        b, c, hh, ww = z.shape
        extra = self.bias.expand(b, -1, hh, ww)
        maps = condition_maps(h, (hh, ww), "prior 'pixelcnn'") if self.cond is not None else None
        if maps is not None:
            extra = extra + self.cond(maps)
        parts = extra.chunk(1 + len(self.convs), dim=1)
        x = F.silu(self.first(z) + parts[0])
        for conv, part in zip(self.convs, parts[1:]):
            x = x + F.silu(conv(x) + part)
        logits, mu, logvar = self.head(x).split([self.k, self.k * c, self.k * c], dim=1)
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)  # soft floor keeps gradients
        shape = (b, self.k, c, hh, ww)
        return F.log_softmax(logits, dim=1), mu.reshape(shape), logvar.reshape(shape)

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """log p(z | x) per example, (batch,): every conditional in one pass."""
        log_w, mu, logvar = self.components(z, h)
        per = -0.5 * (logvar + (z.unsqueeze(1) - mu) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi)).sum(2)
        return torch.logsumexp(log_w + per, dim=1).flatten(1).sum(1)

    def kl(self, q_mu: torch.Tensor, q_logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return (gaussian_log_prob(z, q_mu, q_logvar) - self.log_prob(z, h)).unsqueeze(1)

    def _rollout(self, h: torch.Tensor, greedy: bool,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latent maps of `self.latent_shape` drawn one position at a time (or, `greedy`, the mean of the
        most probable component at each), with the mean and log-variance used at each position. A draw
        scales each position's Gaussian noise by `temperature`; components are picked by their weights."""
        if len(self.latent_shape) != 3:
            raise CVAEError(f"prior 'pixelcnn' models latent maps (C, h, w), but this model's latents have shape "
                            f"{self.latent_shape}: use it with architecture 'fcn'")
        c, hh, ww = self.latent_shape
        z = h.new_zeros(h.shape[0], c, hh, ww)
        means, logvars = torch.zeros_like(z), torch.zeros_like(z)
        rows = torch.arange(len(z), device=z.device)
        for r in range(hh):
            for col in range(ww):
                log_w, mu, logvar = (t[..., r, col] for t in self.components(z, h))
                pick = log_w.argmax(1) if greedy else torch.distributions.Categorical(logits=log_w).sample()
                m, lv = mu[rows, pick], logvar[rows, pick]
                z[:, :, r, col] = m if greedy else m + temperature * torch.exp(0.5 * lv) * torch.randn_like(m)
                means[:, :, r, col], logvars[:, :, r, col] = m, lv
        return z, means, logvars

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        return self._rollout(h, greedy=False, temperature=temperature)[0]

    def mode(self, h: torch.Tensor) -> torch.Tensor:
        """Greedy decoding: at each position the mean of its most probable component (not the joint mode)."""
        return self._rollout(h, greedy=True)[0]

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditional mean and log-variance at each position along the greedy rollout (the prior
        has no closed-form marginals; this is what diagnostics that ask for a Gaussian get)."""
        return self._rollout(h, greedy=True)[1:]
