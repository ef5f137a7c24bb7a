"""The conditional VAE and its one loss.

Reductions: the log-likelihood is summed over data dimensions and averaged over the batch; the KL is
summed over latent dimensions and averaged over the batch. `beta` multiplies the KL (beta = 1 is the
ELBO). Free bits (Kingma et al. 2016) give each latent dimension `free_bits` nats of KL for free:
the KL term is sum_d max(KL_d averaged over the batch, free_bits). With `free_bits_group` = k the
allowance is pooled over groups of k consecutive dimensions (the last group may be smaller): the term
is sum_g max(KL_g, k_g * free_bits), so a group may spend its nats on any of its dimensions. A prior
whose KL does not factorise over dimensions (`mixture`, `pixelcnn`: one column) gets the allowance of all
its dimensions pooled: max(KL, dims * free_bits).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from .data import ConditionInfo, TargetInfo
from .errors import CVAEError
from .likelihoods import Likelihood
from .priors import Prior, gaussian_log_prob

__all__ = ["CVAE", "LossTerms", "check_temperature"]


@dataclass
class LossTerms:
    """One batch's loss (to minimise) and its parts, as 0-d tensors; `kl_per_dim` is (latent_dim,)."""

    loss: torch.Tensor
    rec: torch.Tensor
    kl: torch.Tensor
    kl_per_dim: torch.Tensor


class CVAE(nn.Module):
    """Encoder q(z | x, y), decoder p(y | x, z), prior p(z | x) and a likelihood, for condition
    encoders named like the dataset's conditions (none at all for a plain VAE)."""

    def __init__(self, *, conditions: Mapping[str, nn.Module], encoder: nn.Module, decoder: nn.Module, prior: Prior,
                 likelihood: Likelihood, latent_dim: int, target: TargetInfo,
                 condition_info: Mapping[str, ConditionInfo]) -> None:
        super().__init__()
        missing = sorted(set(conditions) - set(condition_info))
        if missing:
            raise CVAEError(f"condition encoders {missing} have no ConditionInfo; the data describes "
                            f"{sorted(condition_info) or 'no conditions'}")
        self.conditions = nn.ModuleDict(dict(sorted(conditions.items())))
        self.encoder, self.decoder, self.prior, self.likelihood = encoder, decoder, prior, likelihood
        self.latent_dim, self.target = latent_dim, target
        self.condition_info = dict(condition_info)
        # a fully-convolutional decoder declares its latent map (C, h, w); other architectures take vectors
        self.latent_shape = tuple(getattr(decoder, "latent_shape", (latent_dim,)))
        if len(self.latent_shape) > 1 and not prior.maps:
            raise CVAEError(f"prior {type(prior).__name__} models latent vectors, but the architecture makes latent "
                            f"maps {self.latent_shape}; use a prior for maps ('standard' or 'pixelcnn')")
        prior.latent_shape = self.latent_shape

    @property
    def cond_features(self) -> int:
        return sum(m.out_features for m in self.conditions.values())

    # -- inputs ------------------------------------------------------------------------------------

    def features(self, conditions: Mapping[str, torch.Tensor], batch: int | None = None) -> torch.Tensor:
        """Condition features h(x), (batch, cond_features); checks names and shapes on the way."""
        if set(conditions) != set(self.conditions):
            missing = sorted(set(self.conditions) - set(conditions))
            unknown = sorted(set(conditions) - set(self.conditions))
            raise CVAEError(f"conditions do not match the model: missing {missing}, unknown {unknown}; "
                            f"this model takes {sorted(self.conditions) or 'no conditions'}")
        rows = {name: len(value) for name, value in sorted(conditions.items()) if value.ndim > 0}
        if len(set(rows.values())) > 1:
            raise CVAEError(f"conditions must have one row per example, got {rows} rows")
        parts = []
        for name, enc in self.conditions.items():
            value = conditions[name]
            expected = tuple(self.condition_info[name].shape)
            if value.ndim == 0 or tuple(value.shape[1:]) != expected:
                raise CVAEError(f"condition {name!r} has shape {tuple(value.shape)}; expected "
                                f"{('batch', *expected)}")
            parts.append(enc(value))
        if len(parts) > 1 and any(p.ndim > 2 for p in parts):  # feature maps: vectors become constant maps
            size = next(p.shape[2:] for p in parts if p.ndim > 2)
            if any(p.ndim > 2 and p.shape[2:] != size for p in parts):
                raise CVAEError(f"condition feature maps differ in size: {[tuple(p.shape[2:]) for p in parts]}")
            parts = [p if p.ndim > 2 else p.view(*p.shape, *[1] * len(size)).expand(*p.shape, *size) for p in parts]
        if parts:
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if batch is None:
            raise CVAEError("a model without conditions needs the number of examples (n) to sample")
        return torch.zeros(batch, 0, device=self._device())

    def _check_target(self, y: torch.Tensor) -> None:
        if y.ndim == 0 or tuple(y.shape[1:]) != tuple(self.target.shape):
            raise CVAEError(f"targets have shape {tuple(y.shape)}; this model expects "
                            f"{('batch', *self.target.shape)}")

    def _inputs(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Check a batch `(conditions, y)` and return its condition features."""
        self._check_target(y)
        rows = {name: len(value) for name, value in sorted(conditions.items()) if value.ndim > 0}
        if any(r != len(y) for r in rows.values()):
            raise CVAEError(f"the batch has {len(y)} targets but its conditions have {rows} rows")
        return self.features(conditions, len(y))

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    # -- training ----------------------------------------------------------------------------------

    def posterior(self, y: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x, y)."""
        return self.encoder(y, h)

    def forward(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor, beta: float = 1.0,
                free_bits: float = 0.0, free_bits_group: int = 1) -> LossTerms:
        """The beta-weighted negative ELBO of a batch, with its parts."""
        h = self._inputs(conditions, y)
        mu, logvar = self.posterior(y, h)
        # under autocast the layers' outputs are low precision: the densities are computed in y's dtype
        mu, logvar = mu.to(y.dtype), logvar.to(y.dtype)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = self.likelihood.log_prob(self.decoder(z, h).to(y.dtype), y).mean()
        kl_per_dim = self.prior.kl(mu, logvar, z, h).to(y.dtype).mean(0)
        kl = kl_per_dim.sum()
        if free_bits > 0 and kl_per_dim.numel() != mu[0].numel():  # one column: pool over every dimension
            kl_term = torch.clamp(kl, min=mu[0].numel() * free_bits)
        else:
            kl_term = _free_bits(kl_per_dim, free_bits, free_bits_group) if free_bits > 0 else kl
        # beta = 1 skips a multiplication (and its backward): the step is launch-bound on small models
        loss = (kl_term if beta == 1 else beta * kl_term) - rec
        return LossTerms(loss=loss, rec=rec, kl=kl, kl_per_dim=kl_per_dim)

    # -- evaluation --------------------------------------------------------------------------------

    @torch.no_grad()
    def elbo(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example ELBO, reconstruction log-likelihood and KL (beta = 1), each (batch,)."""
        h = self._inputs(conditions, y)
        mu, logvar = self.posterior(y, h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = self.likelihood.log_prob(self.decoder(z, h), y)
        kl = self.prior.kl(mu, logvar, z, h).flatten(1).sum(1)
        return {"elbo": rec - kl, "rec": rec, "kl": kl}

    @torch.no_grad()
    def iwae(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor, k: int = 100,
             chunk: int = 2048) -> torch.Tensor:
        """Importance-weighted estimate of log p(y | x) per example with `k` samples (Burda et al.):
        a lower bound that tightens as k grows. Samples are drawn `chunk` rows at a time."""
        if k < 1:
            raise CVAEError(f"IWAE needs k >= 1 samples, got {k}")
        h = self._inputs(conditions, y)
        mu, logvar = self.posterior(y, h)
        b = len(y)
        per_chunk = max(1, chunk // b)
        log_w = []
        for start in range(0, k, per_chunk):
            kk = min(per_chunk, k - start)
            mu_k, logvar_k, h_k, y_k = (t.repeat(kk, *([1] * (t.ndim - 1))) for t in (mu, logvar, h, y))
            z = mu_k + torch.exp(0.5 * logvar_k) * torch.randn_like(mu_k)
            lw = (self.likelihood.log_prob(self.decoder(z, h_k), y_k) + self.prior.log_prob(z, h_k)
                  - gaussian_log_prob(z, mu_k, logvar_k))
            log_w.append(lw.view(kk, b))
        return torch.logsumexp(torch.cat(log_w, 0), dim=0) - math.log(k)

    @torch.no_grad()
    def encode(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """The posterior mean of z: a representation of y given x."""
        return self.posterior(y, self._inputs(conditions, y))[0]

    @torch.no_grad()
    def decode(self, z: torch.Tensor, h: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        """Targets from latents: the likelihood's mean (`mode="mean"`) or a draw (`"sample"`)."""
        params = self.decoder(z, h)
        if mode == "mean":
            return self.likelihood.mean(params)
        if mode == "sample":
            return self.likelihood.sample(params)
        raise CVAEError(f"unknown decode mode {mode!r}; use 'mean' or 'sample'")

    @torch.no_grad()
    def reconstruct(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor, mode: str = "mean") -> torch.Tensor:
        """Decode the posterior mean of each example."""
        h = self._inputs(conditions, y)
        return self.decode(self.posterior(y, h)[0], h, mode)

    @torch.no_grad()
    def sample(self, conditions: Mapping[str, torch.Tensor] | None = None, n: int | None = None,
               mode: str = "mean", z: str = "prior", size: tuple[int, int] | None = None,
               temperature: float = 1.0) -> torch.Tensor:
        """Generate one target per row of the conditions (or `n` for a plain VAE): z from the prior
        (`z="prior"`) or at the prior's mean (`z="mean"`), then decode. `size` (height, width) asks a
        fully-convolutional model for images of another size than it was trained on. `temperature`
        scales the prior's noise: below 1 trades diversity for draws nearer the prior's mean."""
        if z not in ("prior", "mean"):
            raise CVAEError(f"unknown z rule {z!r}; use 'prior' or 'mean'")
        check_temperature(temperature)
        h = self.features(conditions or {}, n)
        trained = self.prior.latent_shape
        if size is not None:
            if not hasattr(self.decoder, "latent_shape_for"):
                raise CVAEError(f"this model's decoder ({type(self.decoder).__name__}) makes one image size, "
                                f"{tuple(self.target.shape[1:])}; only a fully-convolutional architecture "
                                f"('fcn') samples at other sizes")
            self.prior.latent_shape = tuple(self.decoder.latent_shape_for(size))
        try:
            if z == "mean":
                latent = self.prior.mode(h)
            elif temperature == 1:
                latent = self.prior.sample(h)
            else:
                if "temperature" not in inspect.signature(self.prior.sample).parameters:
                    raise CVAEError(f"prior {type(self.prior).__name__} cannot sample at a temperature (its sample() "
                                    f"takes no `temperature`); sample at temperature 1")
                latent = self.prior.sample(h, temperature=temperature)
        finally:
            self.prior.latent_shape = trained
        return self.decode(latent, h, mode)


def check_temperature(temperature: float) -> float:
    """A sampling temperature must be a finite number > 0 (1 draws from the prior itself)."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise CVAEError(f"temperature must be a finite number > 0 (1 samples the prior itself, 0.7 is a usual "
                        f"lower choice), got {temperature!r}")
    return float(temperature)


def _free_bits(kl_per_dim: torch.Tensor, free_bits: float, group: int) -> torch.Tensor:
    """sum over groups of `group` consecutive dimensions of max(group KL, dims in group * free_bits)."""
    per = kl_per_dim.flatten()
    if group <= 1:
        return per.clamp(min=free_bits).sum()
    pad = (-len(per)) % group
    sums = torch.nn.functional.pad(per, (0, pad)).view(-1, group).sum(1)
    sizes = torch.full_like(sums, group)
    sizes[-1] = group - pad
    return torch.maximum(sums, sizes * free_bits).sum()
