"""Likelihoods p(y | x, z): how decoder outputs become a distribution over targets.

Every likelihood reads decoder outputs of shape `(batch, params_per_element, *target.shape)` and sums
its log-probability over the data dimensions, giving one number per example. `discrete` says whether
that number is a log-probability mass (so bits per dimension are meaningful) or a log-density.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .data import TargetInfo
from .errors import CVAEError

__all__ = [
    "Likelihood",
    "Bernoulli",
    "GaussianFixed",
    "GaussianLearned",
    "Categorical",
    "DiscretizedLogistic",
    "DiscretizedLogisticMixture",
]


def _sum_data_dims(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).sum(1)


def _log_expm1(d: torch.Tensor) -> torch.Tensor:
    """log(exp(d) - 1) for d > 0, stable for tiny and huge d."""
    return d + torch.log(-torch.expm1(-d))


class Likelihood(nn.Module):
    """Base class: subclasses set `params_per_element` and `discrete` and implement the three methods."""

    params_per_element: int = 1
    discrete: bool = False

    def __init__(self, target: TargetInfo) -> None:
        super().__init__()
        self.target = target

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(y | params) summed over data dimensions: shape (batch,)."""
        raise NotImplementedError

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        """A draw from the distribution, shaped like the targets."""
        raise NotImplementedError

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        """The distribution's mean, shaped like the targets (what sample grids show by default)."""
        raise NotImplementedError

    def _need_range(self, low: float, high: float) -> None:
        t = self.target
        if t.low < low or t.high > high:
            raise CVAEError(f"likelihood {type(self).__name__} needs targets in [{low:g}, {high:g}], but the "
                            f"dataset's targets range over [{t.low:g}, {t.high:g}]; use 'gaussian' or "
                            f"'gaussian_learned' for unbounded targets")

    def _need_levels(self, levels: int | None) -> int:
        levels = levels or self.target.levels
        if levels is None:
            raise CVAEError(f"likelihood {type(self).__name__} needs discrete targets, but the dataset's targets "
                            f"are continuous; pass the option levels=N or use 'gaussian_learned'")
        if levels < 2 or not math.isfinite(self.target.high - self.target.low):
            raise CVAEError(f"likelihood {type(self).__name__} needs at least 2 levels over a finite range")
        return int(levels)

    def _to_index(self, y: torch.Tensor, levels: int) -> torch.Tensor:
        t = self.target
        return ((y - t.low) / (t.high - t.low) * (levels - 1)).round().clamp(0, levels - 1).long()

    def _from_unit(self, x: torch.Tensor) -> torch.Tensor:
        """Map [-1, 1] (the discretized likelihoods' scale) onto the target range, rounding included."""
        t = self.target
        return (t.low + (x.clamp(-1, 1) + 1) / 2 * (t.high - t.low)).clamp(t.low, t.high)

    def _from_index(self, idx: torch.Tensor, levels: int) -> torch.Tensor:
        t = self.target
        return t.low + idx.to(torch.get_default_dtype()) * (t.high - t.low) / (levels - 1)


class Bernoulli(Likelihood):
    """Independent Bernoulli per element (logits). Exact for binary targets; for grey values in [0, 1]
    it is the usual cross-entropy, which is not a normalised likelihood (so not `discrete`)."""

    params_per_element = 1

    def __init__(self, target: TargetInfo) -> None:
        super().__init__(target)
        self._need_range(0.0, 1.0)
        self.discrete = target.levels == 2

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -_sum_data_dims(F.binary_cross_entropy_with_logits(params[:, 0], y, reduction="none"))

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(torch.sigmoid(params[:, 0]))

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(params[:, 0])


class GaussianFixed(Likelihood):
    """Gaussian with a fixed standard deviation `sigma` per element (MSE with a stated scale)."""

    params_per_element = 1

    def __init__(self, target: TargetInfo, sigma: float = 0.1) -> None:
        super().__init__(target)
        if not sigma > 0:
            raise CVAEError(f"likelihood 'gaussian': sigma must be > 0, got {sigma}")
        self.sigma = float(sigma)

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu = params[:, 0]
        lp = -0.5 * ((y - mu) / self.sigma) ** 2 - math.log(self.sigma) - 0.5 * math.log(2 * math.pi)
        return _sum_data_dims(lp)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, 0] + self.sigma * torch.randn_like(params[:, 0])

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, 0]


class GaussianLearned(Likelihood):
    """Gaussian whose per-element log standard deviation the decoder predicts, soft-clamped to
    [min_log_sigma, max_log_sigma] so the likelihood cannot blow up on flat regions."""

    params_per_element = 2

    def __init__(self, target: TargetInfo, min_log_sigma: float = -5.0, max_log_sigma: float = 2.0) -> None:
        super().__init__(target)
        if not min_log_sigma < max_log_sigma:
            raise CVAEError("likelihood 'gaussian_learned': min_log_sigma must be below max_log_sigma")
        self.lo, self.hi = float(min_log_sigma), float(max_log_sigma)

    def _log_sigma(self, raw: torch.Tensor) -> torch.Tensor:
        raw = self.hi - F.softplus(self.hi - raw)
        return self.lo + F.softplus(raw - self.lo)

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, log_sigma = params[:, 0], self._log_sigma(params[:, 1])
        lp = -0.5 * ((y - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return _sum_data_dims(lp)

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, 0] + torch.exp(self._log_sigma(params[:, 1])) * torch.randn_like(params[:, 0])

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return params[:, 0]


class Categorical(Likelihood):
    """A softmax over every one of `levels` values per element (256 for 8-bit images)."""

    discrete = True

    def __init__(self, target: TargetInfo, levels: int | None = None) -> None:
        super().__init__(target)
        self.levels = self._need_levels(levels)
        self.params_per_element = self.levels

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -_sum_data_dims(F.cross_entropy(params, self._to_index(y, self.levels), reduction="none"))

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        logits = params.movedim(1, -1)
        idx = torch.distributions.Categorical(logits=logits).sample()
        return self._from_index(idx, self.levels)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        values = self._from_index(torch.arange(self.levels, device=params.device), self.levels)
        shape = (1, self.levels) + (1,) * (params.ndim - 2)
        return (F.softmax(params, dim=1) * values.view(shape)).sum(1)


def _discretized_logistic_log_prob(mu: torch.Tensor, log_scale: torch.Tensor, idx: torch.Tensor,
                                   levels: int) -> torch.Tensor:
    """Per-element log-probability of bin `idx` of `levels` bins spanning [-1, 1], for a logistic
    with location `mu` and log-scale `log_scale` (all of one shape); the edge bins take the tails."""
    half = 1.0 / (levels - 1)
    i = idx.to(mu.dtype)
    inv = torch.exp(-log_scale)
    # bin edges computed the same way from both sides, so neighbouring bins share an edge exactly
    upper = ((2 * i + 1) * half - 1.0 - mu) * inv
    lower = ((2 * i - 1) * half - 1.0 - mu) * inv
    # log(sigmoid(upper) - sigmoid(lower)), written so that neither tail loses precision
    mid = lower + _log_expm1(upper - lower) - F.softplus(upper) - F.softplus(lower)
    left = -F.softplus(-upper)
    right = -F.softplus(lower)
    return torch.where(idx == 0, left, torch.where(idx == levels - 1, right, mid))


def _sample_logistic_bin(mu: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """The bin index of a logistic draw, the tails folded into the edge bins."""
    u = torch.rand_like(mu).clamp(1e-6, 1 - 1e-6)
    x = (mu + torch.exp(log_scale) * (torch.log(u) - torch.log1p(-u))).clamp(-1, 1)
    return ((x + 1) / 2 * (levels - 1)).round()


class DiscretizedLogistic(Likelihood):
    """A logistic density integrated over each value's bin (PixelCNN++ style) for discrete data."""

    params_per_element = 2
    discrete = True

    def __init__(self, target: TargetInfo, levels: int | None = None, min_log_scale: float = -7.0) -> None:
        super().__init__(target)
        self.levels = self._need_levels(levels)
        self.min_log_scale = float(min_log_scale)

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, log_scale = params[:, 0], params[:, 1].clamp(min=self.min_log_scale)
        return _sum_data_dims(_discretized_logistic_log_prob(mu, log_scale, self._to_index(y, self.levels), self.levels))

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        mu, log_scale = params[:, 0], params[:, 1].clamp(min=self.min_log_scale)
        return self._from_index(_sample_logistic_bin(mu, log_scale, self.levels), self.levels)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        return self._from_unit(params[:, 0])


class DiscretizedLogisticMixture(Likelihood):
    """A mixture of `components` discretized logistics per element; the decoder predicts the mixture
    logits, locations and log-scales (3 * components outputs per element)."""

    discrete = True

    def __init__(self, target: TargetInfo, components: int = 3, levels: int | None = None,
                 min_log_scale: float = -7.0) -> None:
        super().__init__(target)
        if components < 1:
            raise CVAEError(f"likelihood 'discretized_logistic_mixture': components must be >= 1, got {components}")
        self.levels = self._need_levels(levels)
        self.k = int(components)
        self.params_per_element = 3 * self.k
        self.min_log_scale = float(min_log_scale)

    def _split(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, mu, log_scale = params.split(self.k, dim=1)
        return F.log_softmax(logits, dim=1), mu, log_scale.clamp(min=self.min_log_scale)

    def log_prob(self, params: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        log_w, mu, log_scale = self._split(params)
        idx = self._to_index(y, self.levels).unsqueeze(1).expand_as(mu)
        per = _discretized_logistic_log_prob(mu, log_scale, idx, self.levels)
        return _sum_data_dims(torch.logsumexp(log_w + per, dim=1))

    def sample(self, params: torch.Tensor) -> torch.Tensor:
        log_w, mu, log_scale = self._split(params)
        pick = torch.distributions.Categorical(logits=log_w.movedim(1, -1)).sample().unsqueeze(1)
        mu, log_scale = mu.gather(1, pick).squeeze(1), log_scale.gather(1, pick).squeeze(1)
        return self._from_index(_sample_logistic_bin(mu, log_scale, self.levels), self.levels)

    def mean(self, params: torch.Tensor) -> torch.Tensor:
        log_w, mu, _ = self._split(params)
        return self._from_unit((log_w.exp() * mu.clamp(-1, 1)).sum(1))
