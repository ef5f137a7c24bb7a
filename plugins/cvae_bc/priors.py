"""A learned conditional Gaussian-mixture prior p(z | x), as robomimic's BC-VAE offers.

A single Gaussian p(z | x) has to cover every posterior cluster at once (one per mode of the
demonstrations), so some of its samples land between the clusters, where the decoder was never
trained and returns an average of the modes. A mixture can give each cluster its own component.
The KL to a mixture has no closed form: it is estimated from the posterior draw z,
log q(z | x, y) - log p(z | x), which is unbiased (the engine passes z for this purpose).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

import cvae

__all__ = ["MixturePrior"]


class MixturePrior(cvae.Prior):
    """p(z | x) = sum_k w_k(x) N(mu_k(x), diag sigma_k(x)^2) with `components` components, from an
    MLP over the condition features (`hidden` widths)."""

    def __init__(self, *, cond_features: int, latent_dim: int, components: int = 5,
                 hidden: Sequence[int] = (128, 128), min_logvar: float = -8.0) -> None:
        super().__init__(latent_dim)
        if int(components) < 1:
            raise cvae.CVAEError(f"prior 'learned_mixture': components must be >= 1, got {components!r}")
        self.k, self.min_logvar = int(components), float(min_logvar)
        out = self.k * (1 + 2 * latent_dim)
        layers: list[nn.Module] = []
        width = cond_features
        for h in hidden if cond_features > 0 else ():
            layers += [nn.Linear(width, int(h)), nn.SiLU()]
            width = int(h)
        self.net = nn.Sequential(*layers, nn.Linear(width, out)) if cond_features > 0 else None
        # distinct starting means, so that the components do not stay copies of each other
        bias = torch.zeros(self.k, 1 + 2 * latent_dim)
        bias[:, 1:1 + latent_dim] = torch.randn(self.k, latent_dim)
        self.bias = nn.Parameter(bias.flatten())

    def mixture(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log-weights (batch, K), means and log-variances (batch, K, latent_dim)."""
        out = self.bias.expand(h.shape[0], -1)
        if self.net is not None:
            out = out + self.net(h)
        out = out.view(h.shape[0], self.k, 1 + 2 * self.latent_dim)
        mu, logvar = out[..., 1:1 + self.latent_dim], out[..., 1 + self.latent_dim:]
        logvar = self.min_logvar + F.softplus(logvar - self.min_logvar)
        return F.log_softmax(out[..., 0], dim=1), mu, logvar

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of the mixture's moment-matched Gaussian (a summary, not the prior)."""
        log_w, mu, logvar = self.mixture(h)
        w = log_w.exp().unsqueeze(-1)
        mean = (w * mu).sum(1)
        var = (w * (logvar.exp() + mu**2)).sum(1) - mean**2
        return mean, var.clamp(min=1e-8).log()

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        log_w, mu, logvar = self.mixture(h)
        z = z.unsqueeze(1)
        lp = -0.5 * (logvar + (z - mu) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_w + lp, dim=1)

    def kl(self, q_mu: torch.Tensor, q_logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """A one-sample estimate of KL(q || p) per example, spread evenly over the latent dimensions
        (so their sum is the estimate): (batch, latent_dim)."""
        log_q = -0.5 * (q_logvar + (z - q_mu) ** 2 * torch.exp(-q_logvar) + math.log(2 * math.pi))
        return log_q - (self.log_prob(z, h) / self.latent_dim).unsqueeze(1)

    def draw(self, h: torch.Tensor, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z from given noise: the component that uniform `u` (batch, 1) picks by inverse CDF, then
        its mean plus its scale times the standard normal `eps` (batch, latent_dim)."""
        log_w, mu, logvar = self.mixture(h)
        pick = (log_w.exp().cumsum(1) < u).sum(1).clamp(max=self.k - 1)
        rows = torch.arange(len(h), device=h.device)
        return mu[rows, pick] + torch.exp(0.5 * logvar[rows, pick]) * eps

    def sample(self, h: torch.Tensor) -> torch.Tensor:
        n = h.shape[0]
        return self.draw(h, torch.randn(n, self.latent_dim, device=h.device), torch.rand(n, 1, device=h.device))

    def mode(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of the most probable component."""
        log_w, mu, _ = self.mixture(h)
        return mu[torch.arange(h.shape[0], device=h.device), log_w.argmax(1)]
