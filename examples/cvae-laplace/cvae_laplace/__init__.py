"""A Laplace likelihood for cvae: heavier tails than a Gaussian, so outliers pull less."""

import torch

import cvae


class Laplace(cvae.Likelihood):
    params_per_element = 2  # location and log-scale for every target element

    def log_prob(self, params, y):
        loc, log_scale = params[:, 0], params[:, 1].clamp(-7, 5)
        return torch.distributions.Laplace(loc, log_scale.exp()).log_prob(y).flatten(1).sum(1)

    def sample(self, params):
        return torch.distributions.Laplace(params[:, 0], params[:, 1].clamp(-7, 5).exp()).sample()

    def mean(self, params):
        return params[:, 0]


@cvae.hookimpl
def cvae_likelihoods():
    return [cvae.LikelihoodSpec("laplace", Laplace, "Laplace with a learned scale per element")]
