"""Fit a trained run's prior again, after training: a Gaussian mixture per distinct condition, fitted
by EM (scikit-learn) to the training split's posterior draws. The result is a new run directory whose
model is the old encoder and decoder with a `fitted_mixture` prior; `cvae eval` and `cvae sample` use
it like any run. The source run is only read."""

from __future__ import annotations

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from .build import build_model, load_data
from .checkpoint import atomic_write, save_checkpoint
from .data import DataBundle, iterate_batches
from .errors import CVAEError
from .model import CVAE
from .runs import Run, load_run

__all__ = ["MAX_KEYS", "check_fittable", "default_components", "fit_prior", "fit_mixture_tables", "training_posterior_draws"]

REG = 1e-4  # scikit-learn's reg_covar, and the least variance of any fitted direction: no component collapses
MAX_COMPONENTS, DRAWS_PER_COMPONENT = 50, 20  # the default number of components (see default_components)
MAX_KEYS = 1000  # distinct condition rows: beyond this each has too few examples for a mixture of its own


@torch.no_grad()
def training_posterior_draws(model: CVAE, data: DataBundle, device: torch.device, draws: int = 1,
                             batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Condition features (n * draws, F), posterior draws z ~ q(z | x, y) and the posteriors' variances
    (each (n * draws, latent_dim)) of the training split, on the CPU."""
    model.eval()
    hs, zs, variances = [], [], []
    for conditions, y in iterate_batches(data.train, batch_size, device=device):
        h = model.features(conditions, len(y))
        mu, logvar = model.posterior(y, h)
        for _ in range(draws):
            zs.append((mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)).cpu())
            hs.append(h.cpu())
            variances.append(logvar.exp().cpu())
    return torch.cat(hs), torch.cat(zs), torch.cat(variances)


def _fit_condition(z: np.ndarray, components: int, rank: int, seed: int, floor: np.ndarray) -> dict[str, np.ndarray]:
    """One condition's mixture: weights (k,), means and variances (k, d), and with rank r > 0 the bases
    (k, d, r) and spectra (k, r) of `FittedMixturePrior`. For r > 0 the components are full-covariance
    Gaussians in the r principal directions of `z`; the other directions get each component's own variance
    there (by its responsibilities), so the covariance is B C B^T + D with B the principal directions.
    D is added in every direction, the principal ones included, and is at least `floor` (d,)."""
    n, d = z.shape
    if n < 2:  # EM needs two points: one draw is one Gaussian at it, as wide as the floor
        return {"weights": np.ones(1), "means": z, "variances": floor[None].copy(), "bases": np.zeros((1, d, rank)),
                "spectra": np.zeros((1, rank))}
    k = min(components, n)
    r = min(rank, d, n - 1)  # n points span at most n - 1 directions about their mean
    with warnings.catch_warnings():  # EM stopped at its iteration limit is still a usable fit
        warnings.simplefilter("ignore", ConvergenceWarning)
        if r < 1:
            gmm = GaussianMixture(k, covariance_type="diag", reg_covar=REG, random_state=seed).fit(z)
            return {"weights": gmm.weights_, "means": gmm.means_, "variances": np.maximum(gmm.covariances_, floor),
                    "bases": np.zeros((k, d, rank)), "spectra": np.zeros((k, rank))}
        centre = z.mean(0)
        directions = np.linalg.svd(z - centre, full_matrices=False)[2][:r]  # (r, d)
        inside = (z - centre) @ directions.T
        rest = (z - centre) - inside @ directions
        gmm = GaussianMixture(k, covariance_type="full", reg_covar=REG, random_state=seed).fit(inside)
    resp = gmm.predict_proba(inside)  # (n, k)
    mass = np.maximum(resp.sum(0), 1e-12)[:, None]
    rest_mean = resp.T @ rest / mass
    variances = np.maximum(resp.T @ rest**2 / mass - rest_mean**2, floor)
    bases, spectra = np.zeros((k, d, rank)), np.zeros((k, rank))
    for j in range(k):
        # whitened by D, the component's low-rank part W = B^T chol(C) factors as U diag(s) V^T
        w = directions.T @ np.linalg.cholesky(gmm.covariances_[j]) / np.sqrt(variances[j])[:, None]
        u, s, _ = np.linalg.svd(w, full_matrices=False)
        bases[j, :, :r], spectra[j, :r] = u, s**2
    return {"weights": gmm.weights_, "means": centre + gmm.means_ @ directions + rest_mean, "variances": variances,
            "bases": bases, "spectra": spectra}


def _check_latent(model: CVAE) -> None:
    if len(model.latent_shape) != 1:
        raise CVAEError(f"fit-prior needs a flat latent; this run's latents are maps {tuple(model.latent_shape)} "
                        f"(a fully-convolutional run: train it with prior 'pixelcnn' instead)")


def _check_keys(n: int) -> None:
    if n > MAX_KEYS:
        raise CVAEError(f"fit-prior: the conditions take {n} distinct values in the training split; a mixture "
                        f"per value needs at most {MAX_KEYS} of them (class labels, not continuous observations)")


@torch.no_grad()
def check_fittable(model: CVAE, data: DataBundle, device: torch.device, batch_size: int = 512) -> None:
    """What `fit_prior` will need of a model about to be trained on `data`: a flat latent, and conditions
    with at most MAX_KEYS distinct values in the training split (counted on the untrained condition
    encoders' features, as the fit counts them on the trained ones'). The model is left as it was."""
    _check_latent(model)
    training = model.training
    model.eval()  # normalisation layers must not learn from this pass
    features = [model.features(c, len(y)) for c, y in iterate_batches(data.train, batch_size, device=device)]
    model.train(training)
    h = torch.cat(features)
    _check_keys(len(torch.unique(h, dim=0)) if h.shape[1] else 1)


def fit_mixture_tables(h: torch.Tensor, z: torch.Tensor, components: int, seed: int = 0, rank: int = 0,
                       posterior_var: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """For each distinct row of `h`, a `components`-Gaussian mixture fitted to its rows of `z`: diagonal
    with `rank` 0, diagonal plus `rank` correlated directions otherwise (see `FittedMixturePrior`). A
    condition with fewer rows gets fewer components; the missing ones get weight 0. `posterior_var`, the
    posterior variance behind each row of `z`, sets a floor: no component is narrower in any dimension
    than the condition's mean posterior, since the aggregate posterior is a mixture of those posteriors
    and a narrower component (a few points in many dimensions) only fits the draws it was given.
    Returns the `fitted_mixture` prior's buffers: keys, log_weights, means, logvars (and bases, spectra
    for rank > 0)."""
    if not torch.isfinite(z).all():
        raise CVAEError("fit-prior: the run's posterior draws are not finite (NaN or infinite): its encoder is broken")
    if not 0 <= rank <= z.shape[1]:
        raise CVAEError(f"fit-prior: the rank must be in [0, latent size = {z.shape[1]}], got {rank}")
    if h.shape[1] == 0:  # no conditions: one mixture for the whole training split
        keys, which = h[:1], torch.zeros(len(h), dtype=torch.long)
    else:
        keys, which = torch.unique(h, dim=0, return_inverse=True)
    _check_keys(len(keys))
    d = z.shape[1]
    tables = {"keys": keys, "log_weights": torch.full((len(keys), components), -math.inf),
              "means": torch.zeros(len(keys), components, d), "logvars": torch.zeros(len(keys), components, d)}
    if rank:
        tables |= {"bases": torch.zeros(len(keys), components, d, rank), "spectra": torch.zeros(len(keys), components, rank)}
    for i in range(len(keys)):
        rows = which == i
        floor = np.maximum(posterior_var[rows].double().mean(0).numpy() if posterior_var is not None else 0.0, REG)
        fit = _fit_condition(z[rows].double().numpy(), components, rank, seed, np.broadcast_to(floor, (d,)))
        k = len(fit["weights"])
        tables["log_weights"][i, :k] = torch.from_numpy(np.log(np.maximum(fit["weights"], 1e-300)))
        tables["means"][i, :k] = torch.from_numpy(fit["means"])
        tables["logvars"][i, :k] = torch.from_numpy(np.log(fit["variances"]))
        if rank:
            tables["bases"][i, :k] = torch.from_numpy(fit["bases"])
            tables["spectra"][i, :k] = torch.from_numpy(fit["spectra"])
    return tables


def default_components(h: torch.Tensor) -> int:
    """One Gaussian per DRAWS_PER_COMPONENT draws of the rarest condition, at least 1 and at most
    MAX_COMPONENTS: more components than that fit the training draws, not the posteriors behind them (on
    digits, about 140 draws per class, 50 components lower the test ELBO by 13 nats, 3 by 1)."""
    counts = torch.unique(h, dim=0, return_counts=True)[1] if h.shape[1] else torch.tensor([len(h)])
    return int(min(MAX_COMPONENTS, max(1, int(counts.min()) // DRAWS_PER_COMPONENT)))


def fit_prior(run_dir: str | Path, out: str | Path, *, components: int | None = None, rank: int = 32, draws: int = 1,
              seed: int = 0, device: str = "auto") -> tuple[Run, DataBundle]:
    """Write to `out` a run whose model is `run_dir`'s with its prior replaced by a fitted mixture of
    `components` Gaussians per condition (None: `default_components`); returns that run, read back from
    disk, and its data."""
    if (components is not None and int(components) < 1) or int(draws) < 1 or int(rank) < 0:
        shown = "the default" if components is None else components
        raise CVAEError(f"fit-prior: --components and --draws must be >= 1 and --rank >= 0, got {shown}, {draws} "
                        f"and {rank}")
    out = Path(out)
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        raise CVAEError(f"{out} already holds a run; choose another --out")
    run = load_run(run_dir, device)
    _check_latent(run.model)
    data = load_data(run.config)
    torch.manual_seed(seed)
    h, z, posterior_var = training_posterior_draws(run.model, data, run.device, int(draws))
    rank = min(int(rank), z.shape[1])  # a rank beyond the latent size means full covariances
    components = default_components(h) if components is None else int(components)
    tables = fit_mixture_tables(h, z, components, seed, rank, posterior_var)

    config = copy.deepcopy(run.config)
    config["model"]["prior"] = "fitted_mixture"
    config["model"]["prior_options"] = {"components": components, "keys": len(tables["keys"]), "rank": rank}
    model = build_model(config, data.target, data.conditions).to(run.device)
    state = {k: v for k, v in run.model.state_dict().items() if not k.startswith("prior.")}
    state.update({f"prior.{k}": v.to(run.device) for k, v in tables.items()})
    model.load_state_dict(state)
    model.eval()

    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode()))
    save_checkpoint(out / "checkpoints", {
        "config": config, "target": data.target.to_dict(),
        "conditions": {k: v.to_dict() for k, v in data.conditions.items()},
        "model": {k: v.cpu() for k, v in model.state_dict().items()}, "epoch": run.epoch, "step": run.step, "batch": 0,
        "fitted_prior": {"from": str(run.checkpoint.resolve()), "components": components, "rank": rank, "draws": int(draws),
                         "seed": int(seed)}})
    return load_run(out, device), data
