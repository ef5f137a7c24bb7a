"""Evaluation on held-out data: ELBO, IWAE log-likelihood, KL and active units, plus every metric
that plugins register (class accuracy of samples, diversity, Frechet distances...)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .data import DataBundle, iterate_batches
from .errors import CVAEError, PluginError
from .model import CVAE, check_temperature
from .plugins import get_registry

__all__ = ["EvalContext", "evaluate", "held_out_stats", "active_units"]

ACTIVE_THRESHOLD = 0.01  # Burda et al. 2016: a unit is active if Cov_x(E_q[z_u]) exceeds this


@dataclass
class EvalContext:
    """What a metric plugin sees. `run_dir` (None outside a run) is where a metric may cache work,
    such as a classifier trained on the real training split; `seed` makes its randomness repeatable;
    `sample_mode` is how samples are decoded ("mean" or "sample"); `temperature` scales the prior's noise
    when a metric draws samples (pass it to `model.sample`). `source_dir` is another run whose caches a
    metric may reuse, and must not write to: the trained run a derived one (`cvae fit-prior`) came from, or
    an earlier variant of `cvae compare`; a metric should reuse a cache there only if it was made from the
    same data (the built-in judge checks a fingerprint of the training split)."""

    model: CVAE
    data: DataBundle
    device: torch.device
    run_dir: Path | None = None
    seed: int = 0
    sample_mode: str = "mean"
    temperature: float = 1.0
    source_dir: Path | None = None


def active_units(means: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """How many latent dimensions' posterior means vary across the data by more than `threshold`."""
    if len(means) < 2:
        return 0
    return int((means.var(0) > threshold).sum())


@torch.no_grad()
def held_out_stats(model: CVAE, split: Dataset, device: torch.device, batch_size: int = 256,
                   iwae_samples: int = 0) -> dict[str, Any]:
    """ELBO, reconstruction, KL (total and per dimension), active units and, with `iwae_samples`,
    the IWAE negative log-likelihood in nats and (for discrete likelihoods) bits per dimension."""
    was_training = model.training
    model.eval()
    sums = {"elbo": 0.0, "rec": 0.0, "kl": 0.0, "iwae": 0.0}
    kl_dims = 0.0  # per latent dimension, or one column for a prior whose KL does not factorise
    means, n = [], 0
    for conds, y in iterate_batches(split, batch_size, device=device):
        h = model.features(conds, len(y))
        mu, logvar = model.posterior(y, h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        rec = model.likelihood.log_prob(model.decoder(z, h), y)
        kl = model.prior.kl(mu, logvar, z, h)
        sums["rec"] += rec.sum().item()
        sums["kl"] += kl.sum().item()
        kl_dims += kl.sum(0)
        means.append(mu)
        if iwae_samples:
            sums["iwae"] += model.iwae(conds, y, k=iwae_samples).sum().item()
        n += len(y)
    model.train(was_training)
    dims = model.target.numel
    out: dict[str, Any] = {
        "test_elbo": (sums["rec"] - sums["kl"]) / n,
        "test_rec": sums["rec"] / n,
        "test_kl": sums["kl"] / n,
        "kl_per_dim": (kl_dims / n).tolist() if torch.is_tensor(kl_dims) else [],
        "active_units": active_units(torch.cat(means)),
        "latent_dim": model.latent_dim,
    }
    if iwae_samples:
        nll = -sums["iwae"] / n
        out["iwae_samples"] = iwae_samples
        out["nll_nats"] = nll
        # bits per dimension only mean something when the likelihood gives probability masses
        out["nll_bits_per_dim"] = nll / (dims * math.log(2)) if model.likelihood.discrete else None
    return out


def evaluate(model: CVAE, data: DataBundle, device: torch.device, *, run_dir: Path | None = None, seed: int = 0,
             iwae_samples: int = 100, batch_size: int = 256, sample_mode: str = "mean",
             temperature: float = 1.0, source_dir: Path | None = None) -> dict[str, Any]:
    """Every held-out figure and every registered metric that applies, without disturbing the
    caller's random state. `source_dir`: see `EvalContext`."""
    temperature = check_temperature(temperature)  # before the slow part
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        results = held_out_stats(model, data.test, device, batch_size, iwae_samples)
        results["sample_temperature"] = temperature
        context = EvalContext(model, data, device, run_dir, seed, sample_mode, temperature, source_dir)
        for spec in get_registry().specs("metric"):
            try:
                values = spec.factory()(context)
            except CVAEError:
                raise
            except Exception as exc:
                raise PluginError(f"metric {spec.name!r} (plugin {spec.plugin!r}) failed: {exc!r}") from exc
            if values:
                results.update(values)
    return results
