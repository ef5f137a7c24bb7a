"""Sampling temperature: every built-in prior scales its noise, the model and the CLI pass it on and
reject bad values, and a prior that cannot take a temperature says so."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cvae import CVAEError
from cvae.model import check_temperature
from cvae.priors import LearnedGaussianPrior, MixturePrior, Prior, StandardNormalPrior
from cvae.spatial_prior import PixelCNNPrior
from test_cli import assert_one_line_error, run_cli

H = torch.randn(6, 3, generator=torch.Generator().manual_seed(0))


def _draw(prior: Prior, temperature: float, seed: int = 1) -> torch.Tensor:
    torch.manual_seed(seed)
    with torch.no_grad():
        return prior.sample(H, temperature=temperature)


@pytest.mark.parametrize("prior", [StandardNormalPrior(cond_features=3, latent_dim=4),
                                   LearnedGaussianPrior(cond_features=3, latent_dim=4)])
def test_gaussian_priors_scale_their_noise(prior):
    with torch.no_grad():
        mean = prior.params(H)[0]
    one, half = _draw(prior, 1.0), _draw(prior, 0.5)
    torch.testing.assert_close(half - mean, 0.5 * (one - mean))
    assert (one - mean).abs().min() > 0  # the noise is not zero, so the check above has teeth


def test_mixture_keeps_its_component_and_scales_its_noise():
    prior = MixturePrior(cond_features=3, latent_dim=4, components=5)
    with torch.no_grad():
        _, means, _ = prior.components(H)
    one, half = _draw(prior, 1.0), _draw(prior, 0.5)
    picked = 2 * half - one  # = the picked component's mean when the same draw is scaled by 0.5
    distance = (picked[:, None, :] - means).abs().amax(-1).amin(1)
    assert distance.max() < 1e-5
    assert not torch.allclose(half, one)


def test_pixelcnn_scales_the_noise_of_each_position():
    prior = PixelCNNPrior(cond_features=3, latent_dim=2, hidden=8, layers=2, components=3)
    prior.latent_shape = (2, 3, 3)
    with torch.no_grad():
        _, means, _ = prior.components(torch.zeros(len(H), 2, 3, 3), H)
    one, half = _draw(prior, 1.0), _draw(prior, 0.5)
    # the first position sees no earlier draws: the same component, half the noise
    picked = 2 * half[:, :, 0, 0] - one[:, :, 0, 0]
    distance = (picked[:, None, :] - means[..., 0, 0]).abs().amax(-1).amin(1)
    assert distance.max() < 1e-5
    cold = _draw(prior, 1e-4)
    assert cold.std() < one.std()


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), float("inf"), True, "0.7"])
def test_bad_temperatures_are_named(bad):
    with pytest.raises(CVAEError, match="temperature must be a finite number > 0"):
        check_temperature(bad)


class NoTemperaturePrior(StandardNormalPrior):
    """A third-party prior written before temperatures: sample(h) only."""

    def sample(self, h: torch.Tensor) -> torch.Tensor:
        return super().sample(h)


def test_a_prior_without_temperature_samples_at_one_and_explains_otherwise(tiny, tiny_run):
    from cvae.runs import load_run

    model = load_run(tiny_run, "cpu").model
    labels = {"label": torch.tensor([0, 1, 2])}
    model.prior = NoTemperaturePrior(cond_features=model.cond_features, latent_dim=model.latent_dim)
    assert model.sample(labels).shape[0] == 3
    with pytest.raises(CVAEError, match="prior NoTemperaturePrior cannot sample at a temperature"):
        model.sample(labels, temperature=0.5)
    with pytest.raises(CVAEError, match="temperature must be"):
        model.sample(labels, temperature=0)


def test_cli_sample_temperature(tiny, tiny_run, capsys, tmp_path):
    paths = {t: tmp_path / f"t{t}.npz" for t in ("1", "0.05")}
    for t, path in paths.items():
        code, _, stderr = run_cli(capsys, "sample", tiny_run, "--out", path, "--n", 20, "--temperature", t)
        assert code == 0, stderr
    with np.load(paths["1"]) as warm, np.load(paths["0.05"]) as cold:
        assert warm["samples"].shape == cold["samples"].shape == (60, 1, 4, 4)
        spread = {name: s["samples"].reshape(3, 20, -1).std(axis=1).mean() for name, s in (("warm", warm), ("cold", cold))}
    # near the prior's mean the draws of a class look alike
    assert spread["cold"] < 0.5 * spread["warm"], spread
    code, stdout, stderr = run_cli(capsys, "sample", tiny_run, "--out", tmp_path / "bad.npz", "--temperature", "0")
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, "temperature must be a finite number > 0")
    assert not (tmp_path / "bad.npz").exists()


def test_cli_eval_records_its_temperature(tiny, tiny_run, capsys, tmp_path):
    import shutil

    run = shutil.copytree(tiny_run, tmp_path / "run")
    code, _, stderr = run_cli(capsys, "eval", run, "--iwae-samples", 2, "--temperature", "0.5")
    assert code == 0, stderr
    assert json.loads((run / "eval.json").read_text())["sample_temperature"] == 0.5
    code, _, stderr = run_cli(capsys, "eval", run, "--iwae-samples", 2, "--temperature", "-1")
    assert code == 2
    assert_one_line_error(stderr, "temperature must be a finite number > 0")
    assert json.loads((run / "eval.json").read_text())["sample_temperature"] == 0.5  # the earlier result stays


def test_config_rejects_a_bad_eval_temperature(tiny_config):
    assert tiny_config()["eval"]["temperature"] == 1.0
    with pytest.raises(CVAEError, match="eval.temperature.*finite and > 0"):
        tiny_config("eval.temperature=0")
