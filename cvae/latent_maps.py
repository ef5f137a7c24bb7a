"""How much neighbouring positions of a latent map depend on each other: the measurement behind the
flaw of a factorised prior over fully-convolutional latents.

`neighbour_correlation(maps)` is the Pearson correlation, across examples and positions, between a
latent channel at one position and the same channel at its right and lower neighbours, averaged over
the channels that vary across the data (active: variance of the posterior mean above 0.01; collapsed
channels are constant noise and say nothing). The `latent_maps` metric reports it on the test split
for the posterior means (`neighbour_corr`: the aggregate posterior's dependence), for posterior draws
z ~ q(z | x, y) (`neighbour_corr_q`: the posterior noise dilutes it) and for prior draws z ~ p(z | x)
for the same conditions (`neighbour_corr_prior`: 0 for N(0, I) by construction; a prior that fits the
aggregate posterior should come close to `neighbour_corr_q`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .data import iterate_batches
from .evaluate import ACTIVE_THRESHOLD, EvalContext

__all__ = ["neighbour_correlation", "make_latent_map_metric"]

CHUNK = 256


def neighbour_correlation(maps: torch.Tensor, channels: torch.Tensor | None = None) -> float:
    """Mean over `channels` (a boolean mask; default: all) of the correlation between horizontally and
    vertically neighbouring positions of latent maps `(N, C, h, w)`; nan when nothing qualifies."""
    if maps.ndim != 4 or maps.shape[-1] * maps.shape[-2] < 2:
        return float("nan")
    maps = maps.double()
    corrs = []
    for c in range(maps.shape[1]):
        if channels is not None and not bool(channels[c]):
            continue
        m = maps[:, c]
        a = torch.cat([m[:, :, :-1].flatten(), m[:, :-1, :].flatten()])
        b = torch.cat([m[:, :, 1:].flatten(), m[:, 1:, :].flatten()])
        a, b = a - a.mean(), b - b.mean()
        denom = (a.square().sum() * b.square().sum()).sqrt()
        if denom > 0:
            corrs.append(float((a * b).sum() / denom))
    return float(sum(corrs) / len(corrs)) if corrs else float("nan")


@torch.no_grad()
def _latent_map_metric(context: EvalContext) -> dict[str, float] | None:
    model = context.model
    if len(getattr(model, "latent_shape", ())) != 3:
        return None
    was_training = model.training
    model.eval()
    try:
        means, q_draws, p_draws = [], [], []
        for conds, y in iterate_batches(context.data.test, CHUNK, device=context.device):
            h = model.features(conds, len(y))
            mu, logvar = model.posterior(y, h)
            means.append(mu)
            q_draws.append(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu))
            p_draws.append(model.prior.sample(h))
    finally:
        model.train(was_training)
    means_all = torch.cat(means)
    active = means_all.transpose(0, 1).flatten(1).var(1) > ACTIVE_THRESHOLD
    return {"neighbour_corr": neighbour_correlation(means_all, active),
            "neighbour_corr_q": neighbour_correlation(torch.cat(q_draws), active),
            "neighbour_corr_prior": neighbour_correlation(torch.cat(p_draws), active),
            "active_channels": int(active.sum())}


def make_latent_map_metric() -> Callable[[EvalContext], dict[str, float] | None]:
    """The `latent_maps` metric: neighbour correlations of posterior means and prior draws (models
    with latent maps only; None otherwise)."""
    return _latent_map_metric
