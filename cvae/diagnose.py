"""The KL doctor: is a trained CVAE healthy, collapsed, over its KL budget, or undertrained?

Two failures need opposite remedies. In posterior collapse the KL sits near zero, z is ignored and
reconstructions are the blurry average that the condition alone predicts: beta must come down (or warm
up from about 0, or free bits must guarantee some KL). With a KL that is too high the posteriors sit
far from the prior: reconstructions are sharp, but samples drawn from the prior land where the decoder
was never trained: beta must go up. `measure` computes, on the held-out split (the validation
split when the run holds one out, else the test split):

- the KL, in total and per latent dimension, and the active units, counted as `cvae eval` does
  (variance of the posterior mean above 0.01) and relative to the prior (the same after whitening
  each posterior mean by the prior of its own condition: under a learned prior p(z | x) posterior
  means may vary with x while carrying nothing about y);
- reconstruction against baselines that ignore y: the mean squared error (per element) of
  reconstructions (the likelihood's mean decoded from the posterior mean) against that of the training
  split's mean target, which ignores z and y, and against decoding z at the prior's mean, which uses
  the condition x but not y ("what the condition leaves");
- what z contributes to the likelihood: log p(y | x, z) in nats per example with z drawn from q, z
  drawn from the prior, and z at the prior's mean;
- prior samples against reconstructions, with no plugin involved. In latent space, after whitening
  every latent by its own prior (which makes the prior N(0, I) for every condition): the coverage of
  prior draws, the fraction lying within the k-nearest-neighbour balls of the training split's
  posterior draws (the precision of Kynkaenniemi et al. 2019), against the coverage of held-out
  posterior draws; the ratio is about 1 when the aggregate posterior matches the prior and falls when
  prior draws land in regions the posteriors never visit. Also the KL from a Gaussian fitted to the
  whitened aggregate posterior to N(0, I). In data space: the same precision for decoded prior
  samples, reconstructions and the real held-out targets, against the training targets;
- the training history (metrics.jsonl): whether the held-out objective was still rising at the end.

`judge` turns the figures into a verdict with its evidence and advice whose numbers (beta, a KL target,
a warm-up length, a free-bits level, more epochs) are computed from the measurements and the run. The
rules use ratios and nats, never a dataset's name or size; `RULES` holds every threshold.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from .data import DataBundle, iterate_batches
from .errors import CVAEError
from .evaluate import active_units
from .model import CVAE

__all__ = ["RULES", "VERDICTS", "Diagnosis", "measure", "rate_distortion", "history_figures", "judge", "diagnose",
           "diagnose_run", "format_report"]

VERDICTS = ("healthy", "posterior collapse", "KL too high", "undertrained")

RULES: dict[str, float] = {
    # posterior collapse: z carries (almost) nothing although the condition leaves y partly unexplained
    "collapse_kl_nats": 0.5,            # KL below half a nat per example: z says almost nothing about y
    "collapse_z_explains": 0.1,         # ... or z explains under 10% of the squared error the condition leaves
    "residual_worth_explaining": 0.05,  # ... while the condition leaves at least 5% of the dataset-mean error
    "residual_structure": 0.3,          # ... and that residual has structure a code could compress (not white noise)
    # KL too high: prior draws fall where the posteriors never go (cause), and samples suffer for it (symptom)
    "prior_coverage_ratio": 0.5,        # latent coverage of prior draws below half that of held-out posteriors
    "sample_precision_ratio": 0.8,      # data-space precision of samples below 80% of reconstructions'
    # undertrained: the held-out objective still rising at the end of training
    "late_fraction": 0.2,               # look at the last fifth of the epochs
    "late_gain_fraction": 0.1,          # ... and call it undertrained if they gave over 10% of the whole gain
    # advice
    "target_distortion": 0.5,           # KL target: enough for z to explain half of what the condition leaves
    "warmup_fraction": 0.25,            # warm beta up over a quarter of the run's steps
    "overfit_nats": 1.0,                # report a held-out ELBO this far below its best epoch
}

NEIGHBOURS = 3           # k of the k-nearest-neighbour balls (Kynkaenniemi et al. use 3)
MAX_REFERENCE = 2000     # training examples used as references (a fixed random subset of larger splits)
MAX_QUERIES = 2000       # held-out examples measured


@dataclass
class Diagnosis:
    """A verdict (one of `VERDICTS`), the evidence for it, concrete advice, and every figure measured."""

    verdict: str
    evidence: list[str]
    advice: list[str]
    figures: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# -- measurement --------------------------------------------------------------------------------------------------


def _gather(split: Dataset, device: torch.device, batch_size: int, limit: int, seed: int) -> tuple[dict, torch.Tensor]:
    """A whole split as tensors, or a fixed random `limit` of its examples."""
    parts = list(iterate_batches(split, batch_size, device=device))
    conds = {k: torch.cat([c[k] for c, _ in parts]) for k in parts[0][0]}
    y = torch.cat([t for _, t in parts])
    if len(y) > limit:
        keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit].to(y.device)
        conds, y = {k: v[keep] for k, v in conds.items()}, y[keep]
    return conds, y


def _chunks(n: int, size: int) -> list[slice]:
    return [slice(s, min(n, s + size)) for s in range(0, n, size)]


def _latents(model: CVAE, conds: Mapping[str, torch.Tensor], y: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    """Per example: condition features, posterior and prior moments (a mixture prior by its moment-matched
    Gaussian), a posterior draw and a prior draw."""
    keys = ("h", "mu", "logvar", "p_mu", "p_logvar", "z", "prior_z")
    out: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    for s in _chunks(len(y), batch_size):
        h = model.features({k: v[s] for k, v in conds.items()}, len(y[s]))
        mu, logvar = model.posterior(y[s], h)
        p_mu, p_logvar = model.prior.params(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        for k, v in zip(keys, (h, mu, logvar, p_mu, p_logvar, z, model.prior.sample(h))):
            out[k].append(v)
    return {k: torch.cat(v) for k, v in out.items()}


def _gaussian_fit_kl(u: torch.Tensor) -> float:
    """KL(N(m, S) || N(0, I)) for the mean and covariance of the rows of u."""
    d = u.shape[1]
    m = u.mean(0).double()
    cov = torch.cov(u.T.double()).reshape(d, d) + 1e-6 * torch.eye(d, dtype=torch.float64, device=u.device)
    return float(0.5 * (torch.trace(cov) + (m**2).sum() - d - torch.linalg.slogdet(cov)[1]))


def _precision(queries: torch.Tensor, reference: torch.Tensor, k: int = NEIGHBOURS) -> float:
    """Fraction of `queries` inside at least one ball around a reference point whose radius is that
    point's distance to its k-th nearest other reference point (Kynkaenniemi et al. 2019)."""
    ref = reference.flatten(1).double()
    radii = torch.cdist(ref, ref).kthvalue(min(k + 1, len(ref)), dim=1).values  # +1: itself, at distance 0
    inside = [(torch.cdist(queries[s].flatten(1).double(), ref) <= radii[None]).any(1)
              for s in _chunks(len(queries), 512)]
    return float(torch.cat(inside).double().mean())


def rate_distortion(features: torch.Tensor, y: torch.Tensor, distortion: float) -> dict[str, float]:
    """How many nats a code about y needs beyond the condition, the beta that would buy them, and how
    much structure there is to code.

    The residuals of y after a (ridge) linear fit on the condition features are treated as a Gaussian
    source: reverse water-filling over their principal variances (Cover & Thomas, section 10.3) gives
    the rate R that leaves `distortion` of their variance unexplained ("rate"); the slope of that curve
    gives the KL weight at which a decoder with a Gaussian likelihood (its variance fitted to the
    remaining error) would stop there: beta = theta * (elements) / D, with theta the water level and D
    the remaining squared error ("beta"). A Gaussian source is the hardest to code, so R is an upper
    bound and beta a first guess. "structure" is 1 - R / R_white, where R_white is the rate that white
    noise of the same variance would need: about 0 when the residuals are unstructured noise (which no
    latent code compresses, so a KL near 0 is then right), towards 1 when a few directions dominate."""
    r = y.flatten(1).double()
    if features.shape[1] > 0:
        x = torch.cat([features.double(), torch.ones(len(r), 1, dtype=torch.float64, device=r.device)], 1)
        ridge = 1e-3 * len(r) * torch.eye(x.shape[1], dtype=torch.float64, device=r.device)
        r = r - x @ torch.linalg.solve(x.T @ x + ridge, x.T @ r)
    else:
        r = r - r.mean(0)
    n, dims = r.shape
    if n < 2:
        return {"rate": 0.0, "beta": 1.0, "structure": 0.0}
    # the nonzero principal variances, from whichever of the two Gram matrices is smaller
    gram = r.T @ r if dims <= n else r @ r.T
    lam = (torch.linalg.eigvalsh(gram) / (n - 1)).clamp(min=0).flip(0)
    total = float(lam.sum())
    if total <= 0:
        return {"rate": 0.0, "beta": 1.0, "structure": 0.0}
    goal = distortion * total
    lo, hi = 0.0, float(lam[0])  # the water level theta solves sum(min(theta, lam)) = goal
    for _ in range(200):
        theta = 0.5 * (lo + hi)
        lo, hi = (theta, hi) if float(lam.clamp(max=theta).sum()) < goal else (lo, theta)
    theta = 0.5 * (lo + hi)
    if theta <= 0:
        return {"rate": float("inf"), "beta": 1.0, "structure": 1.0}
    rate = float(0.5 * torch.log(lam[lam > theta] / theta).sum())
    white = 0.5 * min(dims, n - 1) * math.log(1 / distortion)
    return {"rate": rate, "beta": theta * dims / goal, "structure": max(0.0, 1 - rate / white)}


@torch.no_grad()
def measure(model: CVAE, data: DataBundle, device: torch.device | str = "cpu", *, seed: int = 0,
            batch_size: int = 256) -> dict[str, Any]:
    """Every figure named in the module docstring, measured on `data.validation` when there is one, else
    on `data.test` (the training split supplies the mean-target baseline and the references), without
    disturbing the caller's random state."""
    if len(getattr(model, "latent_shape", ())) > 1:
        raise CVAEError(f"cvae doctor measures vector latents; this model's latents are maps "
                        f"{tuple(model.latent_shape)} (architecture 'fcn'): `cvae eval` reports their KL, active "
                        f"units and neighbour correlations")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return _measure(model, data, device, seed, batch_size)
    finally:
        model.train(was_training)


def _measure(model: CVAE, data: DataBundle, device: torch.device, seed: int, batch_size: int) -> dict[str, Any]:
    lik, dec = model.likelihood, model.decoder
    held = data.validation if data.validation is not None else data.test
    test_c, test_y = _gather(held, device, batch_size, MAX_QUERIES, seed)
    train_c, train_y = _gather(data.train, device, batch_size, MAX_REFERENCE, seed + 1)
    te = _latents(model, test_c, test_y, batch_size)
    tr = _latents(model, train_c, train_y, batch_size)
    n, d = te["mu"].shape

    kl_rows, rec_q, rec_prior, rec_at_mean, recon, recon_drawn, at_mean, samples = ([] for _ in range(8))
    for s in _chunks(n, batch_size):
        h, y = te["h"][s], test_y[s]
        kl_rows.append(model.prior.kl(te["mu"][s], te["logvar"][s], te["z"][s], h))
        rec_q.append(lik.log_prob(dec(te["z"][s], h), y))
        params_prior = dec(te["prior_z"][s], h)
        rec_prior.append(lik.log_prob(params_prior, y))
        samples.append(lik.sample(params_prior))
        params_mean = dec(model.prior.mode(h), h)
        rec_at_mean.append(lik.log_prob(params_mean, y))
        at_mean.append(lik.mean(params_mean))
        params_rec = dec(te["mu"][s], h)
        recon.append(lik.mean(params_rec))
        recon_drawn.append(lik.sample(params_rec))
    kl_rows_t = torch.cat(kl_rows)
    rq, rp, rm = (float(torch.cat(v).mean()) for v in (rec_q, rec_prior, rec_at_mean))

    def mse(a: torch.Tensor) -> float:
        return float(((a - test_y) ** 2).mean())

    mse_mean = mse(train_y.mean(0, keepdim=True).expand_as(test_y))
    mse_rec, mse_at_mean = mse(torch.cat(recon)), mse(torch.cat(at_mean))

    def whiten(z: torch.Tensor, lat: dict[str, torch.Tensor]) -> torch.Tensor:
        return (z - lat["p_mu"]) * torch.exp(-0.5 * lat["p_logvar"])

    u_train = whiten(tr["z"], tr)
    u_post, u_prior = whiten(te["z"], te), whiten(te["prior_z"], te)
    coverage_post, coverage_prior = _precision(u_post, u_train), _precision(u_prior, u_train)
    precision_rec, precision_samples = _precision(torch.cat(recon_drawn), train_y), _precision(torch.cat(samples), train_y)
    rd = rate_distortion(tr["h"], train_y, RULES["target_distortion"])

    return {
        "held_out_split": "validation" if data.validation is not None else "test",
        "test_examples": n,
        "train_examples": len(data.train),
        "latent_dim": d,
        "target_elements": model.target.numel,
        "kl": float(kl_rows_t.sum(1).mean()),
        "kl_per_dim": kl_rows_t.mean(0).tolist(),
        "active_units": active_units(te["mu"]),
        "active_units_vs_prior": active_units(whiten(te["mu"], te)),
        "rec_z_posterior": rq,
        "rec_z_prior": rp,
        "rec_z_prior_mean": rm,
        "z_gain_nats": rq - rm,
        "mse_mean_target": mse_mean,
        "mse_z_prior_mean": mse_at_mean,
        "mse_reconstruction": mse_rec,
        "condition_leaves": mse_at_mean / mse_mean if mse_mean > 0 else 0.0,
        "z_explains": 1 - mse_rec / mse_at_mean if mse_at_mean > 0 else 0.0,
        "reconstruction_vs_mean": mse_rec / mse_mean if mse_mean > 0 else float("nan"),
        "coverage_prior": coverage_prior,
        "coverage_posterior": coverage_post,
        "prior_coverage_ratio": coverage_prior / coverage_post if coverage_post > 0 else 0.0,
        "aggregate_gaussian_kl": _gaussian_fit_kl(u_post),
        "precision_samples": precision_samples,
        "precision_reconstructions": precision_rec,
        "precision_test": _precision(test_y, train_y),
        "sample_precision_ratio": precision_samples / precision_rec if precision_rec > 0 else 0.0,
        "residual_structure": rd["structure"],
        "target_kl": rd["rate"],
        "beta_for_target": rd["beta"],
    }


# -- history ------------------------------------------------------------------------------------------------------


def history_figures(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """From metrics.jsonl rows: the held-out objective rec - beta * kl per epoch (what training maximises,
    measured on held-out data: the validation split's `val_*` figures when the run has one, else the test
    split's `test_*`), how much of its gain came in the last fifth of the epochs, and the best epoch of
    the held-out ELBO."""
    prefix = "val" if any("val_elbo" in r for r in rows) else "test"
    elbo, rec, kl = (f"{prefix}_{k}" for k in ("elbo", "rec", "kl"))
    rows = [r for r in rows if all(isinstance(r.get(k), (int, float)) for k in ("epoch", rec, kl, "beta", elbo))]
    if len(rows) < 2:
        return {}
    objective = [r[rec] - r["beta"] * r[kl] for r in rows]
    late = max(1, round(RULES["late_fraction"] * len(rows)))
    total_gain = objective[-1] - objective[0]
    late_gain = objective[-1] - objective[-1 - late]
    best = max(range(len(rows)), key=lambda i: rows[i][elbo])
    return {
        "epochs": rows[-1]["epoch"],
        "steps": rows[-1].get("step"),
        "last_beta": rows[-1]["beta"],
        "late_epochs": late,
        "late_gain": late_gain,
        "total_gain": total_gain,
        "late_gain_fraction": late_gain / total_gain if total_gain > 0 else 0.0,
        "history_split": "validation" if prefix == "val" else "test",
        "best_elbo_epoch": rows[best]["epoch"],
        "best_elbo": rows[best][elbo],
        "last_elbo": rows[-1][elbo],
    }


# -- the verdict --------------------------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    """A number for advice: 3 significant figures, no exponent for everyday sizes."""
    return f"{x:.3g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.2e}"


def judge(figures: Mapping[str, Any], run: Mapping[str, Any] | None = None) -> Diagnosis:
    """The verdict from `measure`'s figures plus `history_figures` (if any) and facts about the run:
    `run` may give "beta" (the KL weight it trained with), "free_bits", "schedule", "steps", "epochs" and
    "run_dir" (used in the suggested commands)."""
    f, run = dict(figures), dict(run or {})
    beta = float(run.get("beta", f.get("last_beta", 1.0)))
    steps = int(run.get("steps") or f.get("steps") or 0)
    epochs = int(run.get("epochs") or f.get("epochs") or 0)
    where = str(run.get("run_dir", "RUN_DIR"))
    d, kl = int(f["latent_dim"]), float(f["kl"])
    per_dim = f.get("kl_per_dim") or []
    top = max(range(len(per_dim)), key=lambda i: per_dim[i]) if per_dim else None
    target, beta_t = float(f["target_kl"]), float(f["beta_for_target"])

    kl_line = (f"KL {kl:.3g} nats per example over {d} latent dims"
               + (f" (largest {per_dim[top]:.3g} in dim {top})" if top is not None and len(per_dim) > 1 else "")
               + f"; active units {f['active_units']} of {d} ({f['active_units_vs_prior']} relative to the prior)")
    z_line = (f"z explains {100 * f['z_explains']:.0f}% of the squared error the condition leaves (MSE "
              f"{f['mse_reconstruction']:.3g} decoding q's mean vs {f['mse_z_prior_mean']:.3g} at the prior's mean); "
              f"reconstructions have {100 * f['reconstruction_vs_mean']:.0f}% of the squared error of the "
              f"dataset-mean baseline ({f['mse_mean_target']:.3g})")
    lik_line = (f"log p(y|x,z): {f['rec_z_posterior']:.2f} nats with z from q, {f['rec_z_prior']:.2f} with z from the "
                f"prior, {f['rec_z_prior_mean']:.2f} at the prior's mean (z from q gains {f['z_gain_nats']:.2f})")
    cover_line = (f"prior draws land among the posteriors {100 * f['prior_coverage_ratio']:.0f}% as often as held-out "
                  f"posterior draws do (latent coverage {f['coverage_prior']:.2f} vs {f['coverage_posterior']:.2f}; "
                  f"Gaussian-fit KL of the aggregate posterior to the prior {f['aggregate_gaussian_kl']:.2f} nats)")
    sample_line = (f"data-space precision: samples {f['precision_samples']:.2f}, reconstructions "
                   f"{f['precision_reconstructions']:.2f}, real {f.get('held_out_split', 'test')} targets "
                   f"{f['precision_test']:.2f} (ratio samples / reconstructions {f['sample_precision_ratio']:.2f})")

    warmup = max(1, math.ceil(RULES["warmup_fraction"] * steps)) if steps else None
    free_bits = target / d if d else 0.0
    controller = (f"hold the KL at {_fmt(target)} nats (enough for z to explain half of what a linear fit on the "
                  f"condition leaves, by reverse water-filling): --set train.schedule=kl_target "
                  f"--set train.schedule_options.target_kl={_fmt(target)}")

    undertrained = "late_gain_fraction" in f and f["late_gain"] > 0 and f["late_gain_fraction"] > RULES["late_gain_fraction"]
    residual = (f["condition_leaves"] >= RULES["residual_worth_explaining"]
                and f["residual_structure"] >= RULES["residual_structure"])
    collapsed = residual and (kl < RULES["collapse_kl_nats"] or f["active_units_vs_prior"] == 0
                              or f["z_explains"] < RULES["collapse_z_explains"])
    too_high = (f["prior_coverage_ratio"] < RULES["prior_coverage_ratio"]
                and f["sample_precision_ratio"] < RULES["sample_precision_ratio"])

    evidence: list[str] = []
    advice: list[str] = []
    if undertrained:
        verdict = "undertrained"
        per_epoch = f["late_gain"] / f["late_epochs"]
        evidence.append(f"the held-out objective (rec - beta * KL) rose {f['late_gain']:.3g} nats over the last "
                        f"{f['late_epochs']} of {epochs} epochs, {100 * f['late_gain_fraction']:.0f}% of its whole gain "
                        f"({per_epoch:.3g} nats per epoch at the end)")
        evidence += [kl_line, z_line]
        more = max(2 * epochs, epochs + 10)
        advice.append(f"train longer before judging the KL: cvae train --out {where} --resume --set train.epochs={more}")
        if collapsed or too_high:
            advice.append(f"then run cvae doctor again: it already sees signs of "
                          f"{'posterior collapse' if collapsed else 'a KL that is too high'}")
    elif collapsed and not (too_high and kl >= RULES["collapse_kl_nats"]):
        verdict = "posterior collapse"
        evidence += [kl_line, z_line, lik_line]
        evidence.append(f"the condition alone leaves {100 * f['condition_leaves']:.0f}% of the dataset-mean squared "
                        f"error, and that residual is structured ({_fmt(target)} nats would halve it, "
                        f"{100 * f['residual_structure']:.0f}% less than white noise would need): z has something to carry")
        new_beta = min(beta_t, beta / 2) if beta > 0 else beta_t
        advice.append(f"lower beta from {_fmt(beta)} to about {_fmt(new_beta)} (the beta at which a Gaussian model of "
                      f"the residuals would spend {_fmt(target)} nats): --set train.beta={_fmt(new_beta)}")
        advice.append("or " + controller)
        if warmup:
            advice.append(f"or warm beta up from 0 over a quarter of this run's {steps} steps: --set train.schedule=linear "
                          f"--set train.schedule_options.warmup_steps={warmup}")
        advice.append(f"or free bits, {_fmt(target)} nats spread over {d} dims: --set train.free_bits={_fmt(free_bits)}")
    elif too_high:
        verdict = "KL too high"
        evidence += [cover_line, sample_line, lik_line, kl_line]
        log_n = math.log(max(2, int(f["train_examples"])))
        if kl > log_n:
            evidence.append(f"the KL exceeds log(training examples) = {log_n:.2f} nats by {kl - log_n:.3g}: at least that "
                            f"much is mismatch between the aggregate posterior and the prior (Hoffman & Johnson 2016)")
        new_beta = max(beta_t, 2 * beta)
        advice.append(f"raise beta from {_fmt(beta)} to about {_fmt(new_beta)} (the beta at which a Gaussian model of the "
                      f"residuals would spend {_fmt(target)} nats): --set train.beta={_fmt(new_beta)}")
        advice.append("or " + controller)
        if run.get("prior") == "standard":
            advice.append("or let the prior follow the posteriors: --set model.prior=learned (or mixture)")
        if run.get("prior") != "fitted_mixture":
            advice.append(f"or keep this training and fit the prior to its posteriors (conditions with few values, such "
                          f"as class labels): cvae fit-prior {run.get('run_dir', 'RUN_DIR')} --out NEW_DIR")
    else:
        verdict = "healthy"
        evidence += [kl_line, z_line, cover_line, sample_line]
        advice.append(f"nothing to fix in the KL; to trade sharper reconstructions against safer samples, hold the KL "
                      f"where you want it with --set train.schedule=kl_target --set "
                      f"train.schedule_options.target_kl=N (now {_fmt(kl)} nats)")
    overfit = "best_elbo" in f and f["best_elbo"] - f["last_elbo"] > RULES["overfit_nats"]
    if overfit and verdict in ("healthy", "posterior collapse"):  # with too high a KL the ELBO falls as the KL grows
        split = f.get("history_split", "test")
        evidence.append(f"the held-out ({split}) ELBO peaked at epoch {f['best_elbo_epoch']} ({f['best_elbo']:.2f}) and "
                        f"ended at {f['last_elbo']:.2f}: the model overfits")
        stop = f"stop near epoch {f['best_elbo_epoch']} (--set train.epochs={f['best_elbo_epoch']}) or raise train.weight_decay"
        if split == "validation":  # the epoch is picked honestly: training can keep it and stop by itself
            advice.append(f"let training keep its best epoch and stop by itself: --set train.keep_best=true --set "
                          f"train.patience=5; or {stop}")
        else:
            advice.append(f"{stop}; that epoch was picked on the test split: add --set data.validation=0.1 to pick it "
                          f"on a validation split and keep the test figures unbiased (then train.keep_best and "
                          f"train.patience pick and stop for you)")
    return Diagnosis(verdict, evidence, advice, f)


# -- runs ---------------------------------------------------------------------------------------------------------


def diagnose(model: CVAE, data: DataBundle, device: torch.device | str = "cpu", *, history: Sequence[Mapping] = (),
             run: Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 256) -> Diagnosis:
    """Measure a model on `data`, add its training history (metrics.jsonl rows, if any) and judge."""
    figures = measure(model, data, device, seed=seed, batch_size=batch_size)
    figures.update(history_figures(history))
    return judge(figures, run)


def _read_history(path: Path) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl. A last line cut short (training killed mid-write) is left out; a damaged
    line before it is an error, since the verdict reads the whole history."""
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if not isinstance(row, dict):
            if number == len(lines) and line.startswith("{"):
                break
            raise CVAEError(f"{path}, line {number}: not a JSON object, so the training history is damaged; move "
                            f"the file away to diagnose the run without its history")
        rows.append(row)
    return rows


def diagnose_run(run_dir: str | Path, device: str = "auto") -> Diagnosis:
    """`cvae doctor RUN_DIR`: the run as `load_run` opens it (the epoch train.keep_best kept, else the newest
    checkpoint), measured on its held-out split."""
    from .build import load_data
    from .runs import load_run

    run = load_run(run_dir, device)
    data = load_data(run.config)
    history = [r for r in _read_history(run.path / "metrics.jsonl") if r.get("epoch", 0) <= run.epoch]
    tc = run.config["train"]
    beta = history[-1]["beta"] if history and tc["schedule"] != "constant" else tc["beta"]
    facts = {"beta": beta, "free_bits": tc["free_bits"], "schedule": tc["schedule"], "prior": run.config["model"]["prior"],
             "steps": run.step,
             "epochs": run.epoch, "run_dir": str(run.path)}
    diagnosis = diagnose(run.model, data, run.device, history=history, run=facts, seed=run.config["seed"],
                         batch_size=run.config["eval"]["batch_size"])
    diagnosis.figures.update({"run_dir": str(run.path), "checkpoint": str(run.checkpoint), "beta": beta,
                              "schedule": tc["schedule"], "free_bits": tc["free_bits"]})
    if run.derived_from is not None and any("--set" in a for a in diagnosis.advice):  # a fitted run is not trained
        diagnosis.advice.insert(0, f"this run's prior was fitted after training {run.derived_from}: the settings below "
                                   f"are for training that run again (its command with them added, into a new --out), "
                                   f"then fitting the new run's prior")
    return diagnosis


_TABLE = (
    ("kl", "KL, nats per example"),
    ("active_units", "active units"),
    ("active_units_vs_prior", "active units relative to the prior"),
    ("rec_z_posterior", "log p(y|x,z), z from q"),
    ("rec_z_prior", "log p(y|x,z), z from the prior"),
    ("rec_z_prior_mean", "log p(y|x,z), z at the prior mean"),
    ("mse_mean_target", "MSE of the training mean target"),
    ("mse_z_prior_mean", "MSE decoding the prior mean"),
    ("mse_reconstruction", "MSE of reconstructions"),
    ("z_explains", "share of the remaining error z explains"),
    ("prior_coverage_ratio", "latent coverage, prior / posterior draws"),
    ("aggregate_gaussian_kl", "Gaussian-fit KL, aggregate posterior to prior"),
    ("precision_samples", "precision of samples"),
    ("precision_reconstructions", "precision of reconstructions"),
    ("precision_test", "precision of real held-out targets"),
    ("residual_structure", "structure of what the condition leaves"),
    ("target_kl", "suggested KL target, nats"),
    ("beta_for_target", "beta for that target (Gaussian estimate)"),
    ("late_gain_fraction", "share of the gain in the last fifth of epochs"),
)


def format_report(diagnosis: Diagnosis) -> str:
    """The doctor's text report: verdict, evidence, advice, then the figures."""
    f = diagnosis.figures
    head = f"cvae doctor: {f.get('run_dir', 'model')}"
    if "beta" in f:
        head += f" (beta {_fmt(float(f['beta']))}, schedule {f.get('schedule')}, free bits {f.get('free_bits')}"
        head += f", epoch {f['epochs']})" if "epochs" in f else ")"
    lines = [head, f"verdict: {diagnosis.verdict}", "evidence:"]
    lines += [f"  - {e}" for e in diagnosis.evidence]
    lines.append("advice:")
    lines += [f"  - {a}" for a in diagnosis.advice]
    lines.append(f"figures ({f.get('held_out_split', 'test')} split, {f.get('test_examples')} examples):")
    for key, label in _TABLE:
        if key in f:
            value = f[key]
            lines.append(f"  {label:<46} {value:.4g}" if isinstance(value, float) else f"  {label:<46} {value}")
    return "\n".join(lines)
