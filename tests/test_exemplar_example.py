"""examples/exemplar_sampler.py: other ways of drawing z, judged by the class metrics beside the prior."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch

import cvae
from cvae import config as config_mod
from cvae.train import Trainer
from conftest import load_example
from cvae_labels.metrics import class_sample_metrics


@pytest.fixture(scope="module")
def example():
    return load_example("exemplar_sampler")


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("digits") / "run"
    cfg = config_mod.load_config(None, ["train.epochs=2", "train.progress=false", "eval.at_end=false", 'device="cpu"'])
    Trainer(cfg, out).fit()
    return out


def test_exemplar_draws_without_noise_are_reconstructions_of_training_images(example, digits_run):
    run = cvae.load_run(digits_run, device="cpu")
    data = cvae.load_data(run.config)
    labels, mu, logvar = example.training_posteriors(run.model, data.train)
    assert mu.shape == (len(data.train), run.model.latent_dim) and labels.shape == (len(data.train),)
    exact = example.exemplar_sampler(run.model, labels, mu, torch.full_like(logvar, -200.0))(3, 20)
    with torch.no_grad():
        rows = (labels == 3).nonzero().flatten()
        h = run.model.features({"label": labels[rows]}, len(rows))
        reconstructions = run.model.decode(mu[rows], h)
    assert exact.shape == (20, *data.target.shape)
    distance = torch.cdist(exact.flatten(1), reconstructions.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    assert distance.min(1).values.max() < 1e-5
    noisy = example.exemplar_sampler(run.model, labels, mu, logvar)(3, 20)
    assert not torch.allclose(noisy, exact)  # with the posterior's own noise the draws move


def test_mixture_sampler_draws_each_class_from_its_own_fit(example, digits_run):
    run = cvae.load_run(digits_run, device="cpu")
    data = cvae.load_data(run.config)
    labels, mu, _ = example.training_posteriors(run.model, data.train)
    moved = mu + 100.0 * labels[:, None]  # classes far apart: a draw shows which fit it came from
    seen = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(run.model, "decode", lambda z, h: seen.append(z) or torch.zeros(len(z), *data.target.shape))
    try:
        example.mixture_sampler(run.model, labels, moved, components=2)(4, 30)
    finally:
        monkey.undo()
    assert ((seen[0].mean(1) / 100.0).round() == 4).all()


def test_main_prints_one_row_per_sampler(example, digits_run, capsys, monkeypatch):
    monkeypatch.setattr(example, "class_sample_metrics",
                        functools.partial(class_sample_metrics, steps=100, width=16, members=1, samples_per_class=20))
    example.main(str(digits_run), "3")
    rows = capsys.readouterr().out.splitlines()
    assert [r.split("  ")[0].strip() for r in rows] == ["prior p(z | c)", "3-component mixture", "exemplars q(z | x_n, c)"]
    assert all("novelty_ratio" in r and "sample_accuracy" in r for r in rows)
