"""Likelihoods against torch.distributions or brute force, normalisation, sampling, and bad targets."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import distributions as D

from cvae import CVAEError, TargetInfo
from cvae.likelihoods import (
    Bernoulli,
    Categorical,
    DiscretizedLogistic,
    DiscretizedLogisticMixture,
    GaussianFixed,
    GaussianLearned,
)

SHAPE = (2, 3, 3)  # (channels, height, width): an image of any size must work


def _grid(target: TargetInfo, levels: int) -> torch.Tensor:
    return torch.linspace(target.low, target.high, levels)


def _random_on_grid(target: TargetInfo, levels: int, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, levels, (batch, *target.shape))
    return _grid(target, levels)[idx], idx


def _logistic_bin_probs(mu: torch.Tensor, log_scale: torch.Tensor, levels: int) -> torch.Tensor:
    """Brute force in float64: the logistic CDF differenced over each bin of [-1, 1], the tails folded
    into the edge bins. Returns probabilities with a trailing axis of `levels`."""
    mu, s = mu.double().unsqueeze(-1), log_scale.double().exp().unsqueeze(-1)
    centres = torch.linspace(-1.0, 1.0, levels, dtype=torch.float64)
    half = 1.0 / (levels - 1)
    hi, lo = centres + half, centres - half
    hi[-1], lo[0] = math.inf, -math.inf
    below = torch.sigmoid((hi - mu) / s) - torch.sigmoid((lo - mu) / s)  # CDF(hi) - CDF(lo)
    above = torch.sigmoid((mu - lo) / s) - torch.sigmoid((mu - hi) / s)  # the same through the survival function
    return torch.where(centres <= mu, below, above)  # whichever does not round to 1 - 1


# -- log_prob against references ---------------------------------------------------------------------


def test_bernoulli_matches_torch():
    target = TargetInfo(SHAPE, levels=2)
    params = 3 * torch.randn(5, 1, *SHAPE)
    y = torch.randint(0, 2, (5, *SHAPE)).float()
    ref = D.Bernoulli(logits=params[:, 0]).log_prob(y).flatten(1).sum(1)
    lik = Bernoulli(target)
    assert lik.discrete
    torch.testing.assert_close(lik.log_prob(params, y), ref)


def test_gaussian_fixed_matches_torch():
    target = TargetInfo(SHAPE, low=-5.0, high=5.0)
    params = torch.randn(5, 1, *SHAPE)
    y = torch.randn(5, *SHAPE)
    lik = GaussianFixed(target, sigma=0.3)
    ref = D.Normal(params[:, 0], 0.3).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, y), ref)
    assert not lik.discrete


def test_gaussian_learned_matches_torch_with_soft_clamped_sigma():
    lo, hi = -3.0, 1.0
    target = TargetInfo(SHAPE, low=-5.0, high=5.0)
    params = torch.randn(5, 2, *SHAPE)
    params[0, 1] = -50.0  # far below the floor
    params[1, 1] = 50.0  # far above the ceiling
    y = torch.randn(5, *SHAPE)
    lik = GaussianLearned(target, min_log_sigma=lo, max_log_sigma=hi)
    raw = hi - F.softplus(hi - params[:, 1])
    log_sigma = lo + F.softplus(raw - lo)
    ref = D.Normal(params[:, 0], log_sigma.exp()).log_prob(y).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, y), ref)
    # the clamp is soft but effective: sigma stays near [e^lo, e^hi] and is the identity in between
    assert (log_sigma[0] - lo).abs().max() < 1e-3
    assert log_sigma[1].min() > hi - 0.01 and log_sigma[1].max() < hi + math.log(2) + 1e-6
    mid = torch.tensor([-1.0])
    assert abs(lik._log_sigma(mid).item() - (-1.0)) < 0.05


@pytest.mark.parametrize("levels", [256, 17])
def test_categorical_matches_torch(levels):
    target = TargetInfo(SHAPE, low=-1.0, high=2.0, levels=levels)
    lik = Categorical(target)
    assert lik.params_per_element == levels
    params = 2 * torch.randn(4, levels, *SHAPE)
    y, idx = _random_on_grid(target, levels, 4)
    ref = D.Categorical(logits=params.movedim(1, -1)).log_prob(idx).flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, y), ref)


@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_logistic_matches_brute_force(levels):
    target = TargetInfo(SHAPE, low=0.0, high=1.0, levels=levels)
    lik = DiscretizedLogistic(target)
    params = torch.stack([torch.rand(4, *SHAPE) * 2.4 - 1.2, torch.rand(4, *SHAPE) * 4 - 5], dim=1)
    y, idx = _random_on_grid(target, levels, 4)
    probs = _logistic_bin_probs(params[:, 0], params[:, 1], levels)
    ref = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1).log().flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, y).double(), ref, rtol=5e-4, atol=1e-3)


@pytest.mark.parametrize("levels", [256, 17])
def test_discretized_logistic_mixture_matches_brute_force(levels):
    k = 3
    target = TargetInfo(SHAPE, low=-1.0, high=1.0, levels=levels)
    lik = DiscretizedLogisticMixture(target, components=k)
    assert lik.params_per_element == 3 * k
    logits = torch.randn(4, k, *SHAPE)
    mu = torch.rand(4, k, *SHAPE) * 2.4 - 1.2
    log_scale = torch.rand(4, k, *SHAPE) * 4 - 5
    params = torch.cat([logits, mu, log_scale], dim=1)
    y, idx = _random_on_grid(target, levels, 4)
    w = torch.softmax(logits.double(), dim=1)
    probs = (w.unsqueeze(-1) * _logistic_bin_probs(mu, log_scale, levels)).sum(1)
    ref = probs.gather(-1, idx.unsqueeze(-1)).squeeze(-1).log().flatten(1).sum(1)
    torch.testing.assert_close(lik.log_prob(params, y).double(), ref, rtol=5e-4, atol=1e-3)


# -- normalisation, including extreme parameters ---------------------------------------------------------

EXTREMES = [(0.0, 0.0), (0.3, -7.0), (0.5, -30.0), (1.0, -7.0), (-1.0, -7.0), (30.0, -7.0), (-1e4, -7.0),
            (1e4, -20.0), (0.0, 5.0), (-0.2, 2.0)]


def _all_levels_log_probs(lik, params: torch.Tensor, levels: int) -> torch.Tensor:
    """log p(level l) for every level l and every parameter row: (levels, rows). Target shape (1,)."""
    rows = params.shape[0]
    grid = _grid(lik.target, levels)
    p = params.unsqueeze(0).expand(levels, *params.shape).reshape(levels * rows, *params.shape[1:])
    y = grid.view(levels, 1, 1).expand(levels, rows, 1).reshape(levels * rows, 1)
    p = p.detach().requires_grad_(True)
    lp = lik.log_prob(p, y)
    lp.sum().backward()
    assert not torch.isnan(p.grad).any(), "NaN gradient"
    return lp.view(levels, rows).detach()


def _likelihood_and_extreme_params(kind: str, levels: int):
    target = TargetInfo((1,), low=0.0, high=1.0, levels=levels)
    if kind == "categorical":
        lik = Categorical(target)
        params = torch.cat([torch.randn(4, levels, 1), 1e3 * torch.randn(2, levels, 1),
                            torch.full((1, levels, 1), 1e4)], 0)
        params[-1, 3] = -1e4
    elif kind == "logistic":
        lik = DiscretizedLogistic(target)
        params = torch.tensor(EXTREMES).view(-1, 2, 1)
    else:
        lik = DiscretizedLogisticMixture(target, components=2)
        rows = []
        for (mu, ls), (mu2, ls2) in zip(EXTREMES, reversed(EXTREMES)):
            rows.append([0.0, 50.0, mu, mu2, ls, ls2])
            rows.append([1.0, -1.0, mu, mu2, ls, ls2])
        params = torch.tensor(rows).view(-1, 6, 1)
    return lik, params


@pytest.mark.parametrize("levels", [256, 17])
@pytest.mark.parametrize("kind", ["categorical", "logistic", "mixture"])
def test_discrete_probabilities_sum_to_one(kind, levels):
    lik, params = _likelihood_and_extreme_params(kind, levels)
    lp = _all_levels_log_probs(lik, params, levels)
    assert not torch.isnan(lp).any()
    assert (lp <= 1e-5).all()
    torch.testing.assert_close(lp.double().exp().sum(0), torch.ones(lp.shape[1], dtype=torch.float64),
                               rtol=0, atol=1e-5)


def test_discretized_logistic_puts_far_mass_in_the_edge_bins():
    lik = DiscretizedLogistic(TargetInfo((1,), levels=17))
    params = torch.tensor([[[1e4], [-7.0]], [[-1e4], [-7.0]]])
    lp = lik.log_prob(params, torch.tensor([[1.0], [0.0]]))
    torch.testing.assert_close(lp, torch.zeros(2))


# -- sample and mean ------------------------------------------------------------------------------------


def _all_likelihoods(levels: int = 17):
    discrete = TargetInfo(SHAPE, low=-1.0, high=3.0, levels=levels)
    binary = TargetInfo(SHAPE, levels=2)
    real = TargetInfo(SHAPE, low=-10.0, high=10.0)
    return [
        (Bernoulli(binary), 2),
        (GaussianFixed(real, sigma=0.5), None),
        (GaussianLearned(real), None),
        (Categorical(discrete), levels),
        (DiscretizedLogistic(discrete), levels),
        (DiscretizedLogisticMixture(discrete, components=3), levels),
    ]


@pytest.mark.parametrize("index", range(6))
def test_sample_and_mean_are_target_shaped_and_on_the_grid(index):
    lik, levels = _all_likelihoods()[index]
    t = lik.target
    params = 2 * torch.randn(7, lik.params_per_element, *t.shape)
    for draw in (lik.sample(params), lik.mean(params)):
        assert draw.shape == (7, *t.shape)
        assert torch.isfinite(draw).all()
    if levels is not None:
        s = lik.sample(params)
        pos = (s - t.low) / (t.high - t.low) * (levels - 1)
        torch.testing.assert_close(pos, pos.round(), rtol=0, atol=1e-4)
        assert s.min() >= t.low - 1e-6 and s.max() <= t.high + 1e-6
        m = lik.mean(params)
        assert m.min() >= t.low - 1e-6 and m.max() <= t.high + 1e-6
        # a log_prob of the samples is finite: they are values the likelihood knows
        assert torch.isfinite(lik.log_prob(params, s)).all()


def _histogram(lik, params_one: torch.Tensor, levels: int, n: int = 20000) -> torch.Tensor:
    t = lik.target
    s = lik.sample(params_one.expand(n, *params_one.shape[1:]))
    idx = ((s - t.low) / (t.high - t.low) * (levels - 1)).round().long().flatten()
    return torch.bincount(idx, minlength=levels).double() / n


@pytest.mark.parametrize("kind", ["categorical", "logistic", "mixture"])
def test_sample_histogram_matches_probabilities(kind):
    levels = 9
    target = TargetInfo((1,), low=0.0, high=1.0, levels=levels)
    if kind == "categorical":
        lik = Categorical(target)
        params = torch.randn(1, levels, 1)
    elif kind == "logistic":
        lik = DiscretizedLogistic(target)
        params = torch.tensor([[[0.2], [-1.5]]])
    else:
        lik = DiscretizedLogisticMixture(target, components=2)
        params = torch.tensor([[[0.0], [0.7], [-0.6], [0.5], [-2.0], [-1.0]]])
    grid = _grid(target, levels).view(levels, 1)
    probs = lik.log_prob(params.expand(levels, *params.shape[1:]), grid).exp().double()
    hist = _histogram(lik, params, levels)
    torch.testing.assert_close(hist, probs, rtol=0, atol=0.015)


def test_bernoulli_sample_frequency_matches_sigmoid():
    lik = Bernoulli(TargetInfo((1,), levels=2))
    params = torch.tensor([[[0.8]]])
    freq = lik.sample(params.expand(20000, 1, 1)).mean().item()
    assert abs(freq - torch.sigmoid(torch.tensor(0.8)).item()) < 0.015
    assert set(lik.sample(params.expand(100, 1, 1)).unique().tolist()) <= {0.0, 1.0}


def test_gaussian_samples_have_the_stated_scale():
    lik = GaussianFixed(TargetInfo((1,), low=-10, high=10), sigma=0.5)
    s = lik.sample(torch.full((20000, 1, 1), 1.5))
    assert abs(s.mean().item() - 1.5) < 0.02 and abs(s.std().item() - 0.5) < 0.02


# -- bad targets and options ------------------------------------------------------------------------------


def test_bernoulli_rejects_targets_outside_unit_interval():
    with pytest.raises(CVAEError, match=r"Bernoulli.*\[0, 1\].*\[-1, 1\]"):
        Bernoulli(TargetInfo((3,), low=-1.0, high=1.0))


@pytest.mark.parametrize("cls", [Categorical, DiscretizedLogistic, DiscretizedLogisticMixture])
def test_discrete_likelihoods_reject_continuous_targets(cls):
    with pytest.raises(CVAEError, match="continuous"):
        cls(TargetInfo((3,), low=-1.0, high=1.0))
    cls(TargetInfo((3,), low=-1.0, high=1.0), levels=5)  # an explicit number of levels is fine


@pytest.mark.parametrize("make, needle", [
    (lambda t: GaussianFixed(t, sigma=0.0), "sigma"),
    (lambda t: GaussianLearned(t, min_log_sigma=1.0, max_log_sigma=0.0), "min_log_sigma"),
    (lambda t: DiscretizedLogisticMixture(t, components=0, levels=4), "components"),
    (lambda t: Categorical(t, levels=1), "2 levels"),
])
def test_bad_likelihood_options_raise(make, needle):
    with pytest.raises(CVAEError, match=needle):
        make(TargetInfo((3,)))
