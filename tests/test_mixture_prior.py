"""The mixture-of-Gaussians prior: density, KL estimate, sampling and its use in a model."""

from __future__ import annotations

import pytest
import torch

import cvae
from cvae.priors import MixturePrior, gaussian_kl


def test_log_prob_matches_torch_mixture():
    torch.manual_seed(0)
    prior = MixturePrior(cond_features=3, latent_dim=4, components=5)
    h = torch.randn(6, 3)
    log_w, mu, logvar = prior.components(h)
    ref = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=log_w),
        torch.distributions.Independent(torch.distributions.Normal(mu, (0.5 * logvar).exp()), 1))
    z = torch.randn(6, 4)
    torch.testing.assert_close(prior.log_prob(z, h), ref.log_prob(z))


def test_one_component_kl_estimate_averages_to_the_closed_form():
    torch.manual_seed(0)
    prior = MixturePrior(cond_features=2, latent_dim=3, components=1)
    h = torch.randn(1, 2).expand(20000, 2)
    q_mu, q_logvar = torch.tensor([[0.5, -1.0, 0.2]]).expand(20000, 3), torch.tensor([[-0.5, 0.3, 0.0]]).expand(20000, 3)
    z = q_mu + (0.5 * q_logvar).exp() * torch.randn(20000, 3)
    with torch.no_grad():
        estimate = prior.kl(q_mu, q_logvar, z, h)
        _, mu, logvar = prior.components(h)
        exact = gaussian_kl(q_mu[:1], q_logvar[:1], mu[:1, 0], logvar[:1, 0]).sum()
    assert estimate.shape == (20000, 1)
    assert float(estimate.mean()) == pytest.approx(float(exact), abs=0.05)


def test_samples_follow_the_mixture_moments():
    torch.manual_seed(0)
    prior = MixturePrior(cond_features=0, latent_dim=2, components=3)
    h = torch.zeros(50000, 0)
    with torch.no_grad():
        z = prior.sample(h)
        mean, logvar = prior.params(h[:1])
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.05, rtol=0.05)
    torch.testing.assert_close(z.var(0), logvar[0].exp(), atol=0.1, rtol=0.05)


def test_mode_is_the_heaviest_components_mean():
    prior = MixturePrior(cond_features=0, latent_dim=2, components=3)
    with torch.no_grad():
        prior.bias[:3] = torch.tensor([0.0, 5.0, 0.0])
        log_w, mu, _ = prior.components(torch.zeros(1, 0))
        torch.testing.assert_close(prior.mode(torch.zeros(1, 0)), mu[:, 1])


def _mixture_model(registry, latent_dim: int, components: int, hidden: int) -> cvae.CVAE:
    """An unconditional MLP CVAE on (4,) targets with the core mixture prior."""
    target = cvae.TargetInfo((4,), low=-10, high=10)
    lik = registry.get("likelihood", "gaussian_learned").build(target)
    enc, dec = registry.get("architecture", "mlp").build(target=target, cond_features=0, latent_dim=latent_dim,
                                                          params_per_element=2, options={"hidden": [hidden]})
    prior = registry.get("prior", "mixture").build(cond_features=0, latent_dim=latent_dim,
                                                   options={"components": components})
    return cvae.CVAE(conditions={}, encoder=enc, decoder=dec, prior=prior, likelihood=lik, latent_dim=latent_dim,
                     target=target, condition_info={})


def test_a_model_with_the_mixture_prior_trains_and_reports_kl(core_registry):
    torch.manual_seed(0)
    model = _mixture_model(core_registry, latent_dim=2, components=4, hidden=16)
    prior = model.prior
    y = torch.cat([torch.randn(128, 4) + 3, torch.randn(128, 4) - 3])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(200):
        terms = model({}, y, free_bits=0.1)
        opt.zero_grad()
        terms.loss.backward()
        opt.step()
        first = first if first is not None else float(terms.loss.detach())
        assert terms.kl_per_dim.shape == (1,)
    assert float(terms.loss.detach()) < first
    assert all(p.grad is not None for p in prior.parameters())
    assert model.iwae({}, y[:8], k=16).shape == (8,)
    assert model.sample(n=5).shape == (5, 4)


def test_free_bits_pool_every_dimension_when_the_kl_is_one_column(core_registry):
    """A prior whose KL does not factorise gets max(KL, dims * free_bits), not one dimension's allowance."""
    model = _mixture_model(core_registry, latent_dim=3, components=2, hidden=8)
    y = torch.randn(32, 4)
    torch.manual_seed(0)
    plain = model({}, y)
    lam = float(plain.kl.detach()) / 3 + 0.5  # the pooled allowance (3 * lam) lies above the KL, one dimension's below
    torch.manual_seed(0)
    out = model({}, y, free_bits=lam)
    torch.testing.assert_close(out.loss, 3 * lam - out.rec)
    torch.manual_seed(0)
    small = model({}, y, free_bits=float(plain.kl.detach()) / 6)  # pooled allowance below the KL: the plain loss
    torch.testing.assert_close(small.loss, plain.loss)


def test_bad_component_count_is_a_clear_error():
    with pytest.raises(cvae.CVAEError, match="components"):
        MixturePrior(cond_features=0, latent_dim=2, components=0)


def test_draw_is_reproducible_given_the_noise_and_picks_components_by_their_weights():
    torch.manual_seed(0)
    prior = MixturePrior(cond_features=3, latent_dim=2, components=4)
    h = torch.randn(5, 3)
    eps, u = torch.randn(5, 2), torch.rand(5, 1)
    with torch.no_grad():
        torch.testing.assert_close(prior.draw(h, eps, u), prior.draw(h, eps, u))
        log_w, mu, logvar = prior.components(h)
        # u below the first weight picks the first component; eps = 0 gives its mean
        torch.testing.assert_close(prior.draw(h, torch.zeros(5, 2), torch.zeros(5, 1)), mu[:, 0])
        torch.testing.assert_close(prior.draw(h, torch.zeros(5, 2), torch.ones(5, 1)), mu[:, -1])
        n = 40000
        hh = h[:1].expand(n, 3)
        z = prior.draw(hh, torch.zeros(n, 2), torch.rand(n, 1))
        picked = (z[:, None, :] == mu[:1]).all(-1).float().mean(0)
    torch.testing.assert_close(picked, log_w[0].exp(), atol=0.01, rtol=0)
