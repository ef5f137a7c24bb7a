"""Judge other ways of drawing z with the class metrics, beside the run's own prior: what the copy
check (`novelty_ratio`) is for.

- exemplars: z from the posterior of a random training image of the class, q(z | x_n, c). It scores
  far better than a prior that misses its posteriors, but if the decoder ignores the posterior's noise
  the "samples" are reconstructions of training images, and `novelty_ratio` says so;
- a Gaussian mixture of K diagonal components per class, fitted to the class's training posterior
  means after training (ex-post density estimation): new samples, judged like the prior's.

    python examples/exemplar_sampler.py RUN_DIR [K ...]      # K defaults to 10 and 50
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch
from sklearn.mixture import GaussianMixture

import cvae
from cvae.evaluate import EvalContext
from cvae_labels.metrics import class_sample_metrics

FIGURES = ("sample_accuracy", "diversity_ratio", "frechet_ratio", "novelty_ratio")
Sampler = Callable[[int, int], torch.Tensor]


@torch.no_grad()
def training_posteriors(model: cvae.CVAE, train: torch.utils.data.Dataset) -> tuple[torch.Tensor, ...]:
    """Labels, posterior means and log-variances of the whole training split."""
    conditions, y = next(iter(cvae.iterate_batches(train, len(train))))
    labels = conditions["label"]
    mu, logvar = model.posterior(y, model.features({"label": labels}, len(y)))
    return labels, mu, logvar


def exemplar_sampler(model: cvae.CVAE, labels: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                     seed: int = 0) -> Sampler:
    gen = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def sample(c: int, n: int) -> torch.Tensor:
        rows = (labels == c).nonzero().flatten()
        pick = rows[torch.randint(len(rows), (n,), generator=gen)]
        z = mu[pick] + (0.5 * logvar[pick]).exp() * torch.randn(mu[pick].shape, generator=gen)
        return model.decode(z, model.features({"label": labels[pick]}, n))

    return sample


def mixture_sampler(model: cvae.CVAE, labels: torch.Tensor, mu: torch.Tensor, components: int,
                    seed: int = 0) -> Sampler:
    fits = {int(c): GaussianMixture(components, covariance_type="diag", reg_covar=1e-4, random_state=seed)
            .fit(mu[labels == c].double().numpy()) for c in labels.unique()}

    @torch.no_grad()
    def sample(c: int, n: int) -> torch.Tensor:
        z = torch.from_numpy(fits[c].sample(n)[0]).to(mu.dtype)
        z = z[torch.randperm(n, generator=torch.Generator().manual_seed(seed + c))]  # sample() sorts by component
        return model.decode(z, model.features({"label": torch.full((n,), c, dtype=labels.dtype)}, n))

    return sample


def main(run_dir: str, *components: str) -> None:
    run = cvae.load_run(run_dir, device="cpu")
    data = cvae.load_data(run.config)
    context = EvalContext(run.model, data, run.device, run_dir=run.path, seed=run.config["seed"])
    labels, mu, logvar = training_posteriors(run.model, data.train)
    samplers: dict[str, Sampler | None] = {"prior p(z | c)": None}
    for k in map(int, components or ("10", "50")):
        samplers[f"{k}-component mixture"] = mixture_sampler(run.model, labels, mu, k)
    samplers["exemplars q(z | x_n, c)"] = exemplar_sampler(run.model, labels, mu, logvar)
    for name, sampler in samplers.items():
        out = class_sample_metrics(context, sampler=sampler)
        by_class = " ".join(f"{a:.2f}" for a in out["sample_accuracy_by_class"])
        print(f"{name:<24}", "  ".join(f"{k} {out[k]:.3g}" for k in FIGURES), f" by class {by_class}", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
