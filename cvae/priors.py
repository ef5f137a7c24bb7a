"""Priors p(z | x): the fixed standard normal, a Gaussian whose mean and scale a network computes from
the condition features (Sohn et al. 2015), a mixture of such Gaussians, and a mixture fitted after
training to the aggregate posterior of each condition (`cvae fit-prior`)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CVAEError
from .nets import mlp

__all__ = ["Prior", "StandardNormalPrior", "LearnedGaussianPrior", "MixturePrior", "FittedMixturePrior", "gaussian_kl",
           "gaussian_log_prob"]


def gaussian_kl(q_mu: torch.Tensor, q_logvar: torch.Tensor, p_mu: torch.Tensor, p_logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(q_mu, q_var) || N(p_mu, p_var)) per latent dimension, in closed form."""
    return 0.5 * (p_logvar - q_logvar + (q_logvar.exp() + (q_mu - p_mu) ** 2) * torch.exp(-p_logvar) - 1.0)


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) summed over latent dimensions."""
    lp = -0.5 * (logvar + (z - mu) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi))
    return lp.flatten(1).sum(1)


def _pick(log_w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The component each uniform `u` (batch, 1) selects by inverse CDF of the weights `exp(log_w)`
    (batch, k); never one of weight 0, which rounding in the cumulative sum could otherwise reach."""
    last = (log_w > -math.inf).sum(1, keepdim=True) - 1
    return torch.minimum((log_w.exp().cumsum(1) < u).sum(1, keepdim=True), last).squeeze(1)


class Prior(nn.Module):
    """A diagonal Gaussian over z given condition features `h`; subclasses implement `params`.

    `latent_shape` is the shape of one z: `(latent_dim,)`, or `(latent_dim, h, w)` for a fully-convolutional
    architecture (the CVAE sets it from the decoder). Only priors with `maps = True` accept latent maps."""

    maps = False

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.latent_shape: tuple[int, ...] = (latent_dim,)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of p(z | x), each (batch, latent_dim)."""
        raise NotImplementedError

    def kl(self, q_mu: torch.Tensor, q_logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        """KL(q(z | x, y) || p(z | x)) per latent dimension, (batch, latent_dim), or (batch, 1) for a prior
        whose KL does not factorise (free bits then apply to the total). `z` is the posterior
        draw, for priors that can only estimate the KL by sampling; Gaussian priors ignore it."""
        return gaussian_kl(q_mu, q_logvar, *self.params(h))

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(z, *self.params(h))

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """A draw from p(z | x) with its noise scaled by `temperature` (1: the prior itself; below 1:
        nearer the mean, as in Kingma & Dhariwal 2018)."""
        mu, logvar = self.params(h)
        return mu + temperature * torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def mode(self, h: torch.Tensor) -> torch.Tensor:
        return self.params(h)[0]


class StandardNormalPrior(Prior):
    """Fixed N(0, I), whatever the condition; for latent maps, independent at every position."""

    maps = True

    def __init__(self, *, cond_features: int, latent_dim: int) -> None:
        super().__init__(latent_dim)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        zeros = h.new_zeros(h.shape[0], *self.latent_shape)
        return zeros, zeros

    def kl(self, q_mu: torch.Tensor, q_logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return 0.5 * (q_logvar.exp() + q_mu**2 - 1.0 - q_logvar)

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        z = torch.randn(h.shape[0], *self.latent_shape, device=h.device, dtype=h.dtype)  # policy latency: one op
        return z if temperature == 1 else temperature * z


class LearnedGaussianPrior(Prior):
    """N(mu(x), sigma(x)^2) from an MLP over the condition features. With no condition it learns a
    single mean and scale, which is equivalent to N(0, I) up to an affine map of z."""

    def __init__(self, *, cond_features: int, latent_dim: int, hidden: list[int] | tuple[int, ...] = (128, 128),
                 min_logvar: float = -8.0) -> None:
        super().__init__(latent_dim)
        self.net = mlp(cond_features, list(hidden), 2 * latent_dim) if cond_features > 0 else None
        self.bias = nn.Parameter(torch.zeros(2 * latent_dim))
        self.min_logvar = float(min_logvar)

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.bias.expand(h.shape[0], -1)
        if self.net is not None:
            out = out + self.net(h)
        mu, logvar = out.chunk(2, dim=1)
        return mu, self.min_logvar + F.softplus(logvar - self.min_logvar)  # soft floor keeps gradients


class MixturePrior(Prior):
    """A mixture of `components` diagonal Gaussians whose weights, means and scales an MLP computes from
    the condition features (unconditional parameters without conditions). It can fit an aggregate
    posterior with several modes per condition, where one Gaussian leaves holes that decode to
    implausible samples. Its KL has no closed form: it is estimated from the posterior draw `z` as
    log q(z | x, y) - log p(z | x), and does not factorise over dimensions (one column is returned)."""

    def __init__(self, *, cond_features: int, latent_dim: int, components: int = 10,
                 hidden: list[int] | tuple[int, ...] = (128, 128), min_logvar: float = -8.0) -> None:
        super().__init__(latent_dim)
        if components < 1:
            raise CVAEError(f"prior 'mixture': components must be >= 1, got {components}")
        self.k = int(components)
        size = self.k * (1 + 2 * latent_dim)
        self.net = mlp(cond_features, list(hidden), size) if cond_features > 0 else None
        # spread the components' initial means so they do not start identical
        self.bias = nn.Parameter(torch.cat([torch.zeros(self.k), torch.randn(self.k * latent_dim),
                                            torch.zeros(self.k * latent_dim)]))
        self.min_logvar = float(min_logvar)

    def components(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log mixture weights (batch, k) and component means and log-variances (batch, k, latent_dim)."""
        out = self.bias.expand(h.shape[0], -1)
        if self.net is not None:
            out = out + self.net(h)
        logits, mu, logvar = out.split([self.k, self.k * self.latent_dim, self.k * self.latent_dim], dim=1)
        shape = (h.shape[0], self.k, self.latent_dim)
        logvar = self.min_logvar + F.softplus(logvar.reshape(shape) - self.min_logvar)
        return F.log_softmax(logits, dim=1), mu.reshape(shape), logvar

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixture's overall mean and log-variance (moment matched)."""
        log_w, mu, logvar = self.components(h)
        w = log_w.exp().unsqueeze(-1)
        mean = (w * mu).sum(1)
        var = (w * (logvar.exp() + mu**2)).sum(1) - mean**2
        return mean, var.clamp(min=1e-8).log()

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        log_w, mu, logvar = self.components(h)
        per = -0.5 * (logvar + (z.unsqueeze(1) - mu) ** 2 * torch.exp(-logvar) + math.log(2 * math.pi)).sum(-1)
        return torch.logsumexp(log_w + per, dim=1)

    def kl(self, q_mu: torch.Tensor, q_logvar: torch.Tensor, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return (gaussian_log_prob(z, q_mu, q_logvar) - self.log_prob(z, h)).unsqueeze(1)

    def draw(self, h: torch.Tensor, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z from given noise, so that a caller can hold it fixed (a policy's z per episode): the
        component that the uniform `u` (batch, 1) picks by inverse CDF of the weights, then its mean
        plus its scale times the standard normal `eps` (batch, latent_dim)."""
        log_w, mu, logvar = self.components(h)
        pick = _pick(log_w, u)
        rows = torch.arange(len(h), device=h.device)
        return mu[rows, pick] + torch.exp(0.5 * logvar[rows, pick]) * eps

    def sample(self, h: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """A component drawn by its weight (temperature does not touch the weights), then its mean plus
        `temperature` times its scale times standard normal noise."""
        n = h.shape[0]
        return self.draw(h, temperature * torch.randn(n, self.latent_dim, device=h.device, dtype=h.dtype),
                         torch.rand(n, 1, device=h.device, dtype=h.dtype))

    def mode(self, h: torch.Tensor) -> torch.Tensor:
        """The mean of the most probable component."""
        log_w, mu, _ = self.components(h)
        return mu[torch.arange(len(h), device=h.device), log_w.argmax(1)]


class FittedMixturePrior(MixturePrior):
    """A mixture of `components` Gaussians for each of `keys` distinct condition-feature rows, fitted after
    training to the training split's posterior draws with those conditions (ex-post density estimation,
    as in Ghosh et al. 2020): the aggregate posterior is the prior that best fits a trained encoder, and a
    single Gaussian per condition leaves holes in it that decode to implausible samples. `cvae fit-prior`
    fits the tables (buffers, saved in the checkpoint); a row of condition features uses the nearest key's
    mixture. Nothing here is trained by gradient.

    With `rank` r = 0 each component is diagonal, N(mean, D). With r > 0 its covariance is
    D^1/2 (I + U diag(s2) U^T) D^1/2, U (latent_dim, r) orthonormal: diagonal plus r correlated directions,
    which follow a curved cloud of posteriors (a shape's rotation, say) where axis-aligned components
    leave gaps. Both densities and draws stay exact and cost O(latent_dim * r) per component."""

    def __init__(self, *, cond_features: int, latent_dim: int, components: int = 50, keys: int = 1,
                 rank: int = 0) -> None:
        Prior.__init__(self, latent_dim)
        if int(components) < 1 or int(keys) < 1:
            raise CVAEError(f"prior 'fitted_mixture': components and keys must be >= 1, got {components} and {keys}")
        if not 0 <= int(rank) <= latent_dim:
            raise CVAEError(f"prior 'fitted_mixture': rank must be in [0, latent_dim = {latent_dim}], got {rank}")
        self.k, self.rank = int(components), int(rank)
        self.register_buffer("keys", torch.zeros(int(keys), cond_features))
        self.register_buffer("log_weights", torch.full((int(keys), self.k), -math.log(self.k)))
        self.register_buffer("means", torch.zeros(int(keys), self.k, latent_dim))
        self.register_buffer("logvars", torch.zeros(int(keys), self.k, latent_dim))
        if self.rank:
            self.register_buffer("bases", torch.zeros(int(keys), self.k, latent_dim, self.rank))
            self.register_buffer("spectra", torch.zeros(int(keys), self.k, self.rank))

    def _rows(self, h: torch.Tensor) -> torch.Tensor:
        """The index of the key nearest to each row of condition features."""
        if len(self.keys) == 1:
            return torch.zeros(len(h), dtype=torch.long, device=h.device)
        return torch.cdist(h.to(self.keys.dtype), self.keys).argmin(1)

    def components(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Log weights, means and the diagonal parts D (as log-variances) of each row's mixture; with
        rank > 0 the correlated parts are in `bases` and `spectra`."""
        rows = self._rows(h)
        return self.log_weights[rows], self.means[rows], self.logvars[rows]

    def params(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.rank:
            return super().params(h)
        rows = self._rows(h)
        # the diagonal of each component's covariance, D (1 + sum_j s2_j U_ij^2), once per key, not per row
        diagonal = self.logvars.exp() * (1 + (self.bases**2 * self.spectra.unsqueeze(-2)).sum(-1))
        w = self.log_weights[rows].exp().unsqueeze(-1)
        mean = (w * self.means[rows]).sum(1)
        var = (w * (diagonal[rows] + self.means[rows] ** 2)).sum(1) - mean**2
        return mean, var.clamp(min=1e-8).log()

    def log_prob(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if not self.rank:
            return super().log_prob(z, h)
        rows = self._rows(h)
        out = z.new_empty(len(z))
        for key in rows.unique().tolist():  # one key at a time: no per-example copy of the bases
            sel = rows == key
            x = (z[sel].unsqueeze(1) - self.means[key]) * torch.exp(-0.5 * self.logvars[key])  # (n, k, d) whitened
            s2 = self.spectra[key]
            along = torch.einsum("nkd,kdr->nkr", x, self.bases[key])
            across = x - torch.einsum("nkr,kdr->nkd", along, self.bases[key])
            # (I + U S U^T)^-1 is I across U and 1 / (1 + s2) along it; log det(I + U S U^T) = sum log(1 + s2).
            # Summing the two parts, not subtracting from |x|^2, keeps float32 exact when s2 is large.
            mahalanobis = (across**2).sum(-1) + (along**2 / (1 + s2)).sum(-1)
            log_det = self.logvars[key].sum(-1) + torch.log1p(s2).sum(-1)
            per = -0.5 * (mahalanobis + log_det + self.latent_dim * math.log(2 * math.pi))
            out[sel] = torch.logsumexp(self.log_weights[key] + per, dim=1)
        return out

    def draw(self, h: torch.Tensor, eps: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """As `MixturePrior.draw`; with rank > 0 the noise goes through the symmetric square root of
        I + U S U^T, which is I + U ((1 + s2)^1/2 - 1) U^T, so `eps` keeps its shape (batch, latent_dim)."""
        rows = self._rows(h)
        pick = _pick(self.log_weights[rows], u)
        if self.rank:
            basis = self.bases[rows, pick]  # (batch, d, r)
            gain = torch.sqrt(1 + self.spectra[rows, pick]) - 1
            eps = eps + (basis @ (gain * (basis.mT @ eps.unsqueeze(-1)).squeeze(-1)).unsqueeze(-1)).squeeze(-1)
        return self.means[rows, pick] + torch.exp(0.5 * self.logvars[rows, pick]) * eps
