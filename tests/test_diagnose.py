"""`cvae doctor`: each verdict reproduced on small synthetic problems whose right answer is known by construction,
the rules one by one, the rate-distortion estimate against its closed form, and the command line."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
from torch import nn

import cvae
from cvae import cli
from cvae.diagnose import RULES, _fmt, diagnose, diagnose_run, format_report, judge, measure, rate_distortion

import kltoys

# -- trained toy runs, shared by the tests below ------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """healthy: beta = 1 on data that a N(0, I)-prior VAE models exactly; collapse: beta = 1000, so every nat of KL
    costs more than any reconstruction can repay; undertrained: two epochs at a small learning rate; noise: a
    condition that explains everything but white noise, with beta = 1."""
    root = tmp_path_factory.mktemp("doctor")
    settings = {
        "healthy": ("train.epochs=20",),
        "collapse": ("train.epochs=20", "train.beta=1000"),
        "undertrained": ("train.epochs=2", "train.lr=0.0005"),
        "noise": ("train.epochs=20", 'data.name="labelled_noise"', 'model.prior="learned"',
                  "model.prior_options={hidden=[16]}", "model.likelihood_options={sigma=1.0}"),
    }
    with kltoys.toy_plugins():
        for name, overrides in settings.items():
            torch.manual_seed(0)
            kltoys.train(root / name, *overrides)
    return root


@pytest.fixture
def toys():
    with kltoys.toy_plugins():
        yield


def test_a_healthy_run_is_called_healthy(runs, toys):
    d = diagnose_run(runs / "healthy", "cpu")
    assert d.verdict == "healthy", format_report(d)
    f = d.figures
    assert f["kl"] > 1 and f["active_units_vs_prior"] >= 2  # the data has two latent directions
    assert f["z_explains"] > 0.9 and f["sample_precision_ratio"] > RULES["sample_precision_ratio"]
    assert len(f["kl_per_dim"]) == 4 and sum(f["kl_per_dim"]) == pytest.approx(f["kl"], rel=1e-5)


def test_a_collapsed_run_is_called_collapsed_with_computed_advice(runs, toys):
    d = diagnose_run(runs / "collapse", "cpu")
    assert d.verdict == "posterior collapse", format_report(d)
    f = d.figures
    assert f["kl"] < 0.05 and f["active_units_vs_prior"] == 0 and f["z_explains"] < 0.05
    assert abs(f["rec_z_posterior"] - f["rec_z_prior_mean"]) < 0.5  # z from q buys nothing
    advice = "\n".join(d.advice)
    new_beta = min(f["beta_for_target"], 1000 / 2)
    assert f"--set train.beta={_fmt(new_beta)}" in advice and new_beta < 1000
    assert f"target_kl={_fmt(f['target_kl'])}" in advice and f["target_kl"] > 0
    assert f"warmup_steps={math.ceil(0.25 * 20 * 16)}" in advice  # 20 epochs of 1024 / 64 batches
    assert f"train.free_bits={_fmt(f['target_kl'] / 4)}" in advice


def test_an_undertrained_run_is_called_undertrained(runs, toys):
    d = diagnose_run(runs / "undertrained", "cpu")
    assert d.verdict == "undertrained", format_report(d)
    assert d.figures["late_gain_fraction"] > RULES["late_gain_fraction"]
    assert any(f"--resume --set train.epochs={max(2 * 2, 2 + 10)}" in a for a in d.advice)


def test_a_kl_near_zero_is_right_when_only_white_noise_is_left(runs, toys):
    """The condition explains all the structure: a collapsed-looking KL is the right answer, not a collapse."""
    d = diagnose_run(runs / "noise", "cpu")
    assert d.figures["condition_leaves"] > 0.3  # much is left to explain...
    assert d.figures["residual_structure"] < RULES["residual_structure"]  # ... but it is white noise
    assert d.verdict == "healthy", format_report(d)


class Squeezed(nn.Module):
    """The encoder's posteriors squeezed towards 0 by `c` (means and standard deviations)."""

    def __init__(self, encoder: nn.Module, c: float) -> None:
        super().__init__()
        self.encoder, self.c = encoder, c

    def forward(self, y, h):
        mu, logvar = self.encoder(y, h)
        return self.c * mu, logvar + 2 * math.log(self.c)


class Unsqueezed(nn.Module):
    """The decoder of a squeezed encoder: it undoes the squeeze, so reconstructions do not change."""

    def __init__(self, decoder: nn.Module, c: float) -> None:
        super().__init__()
        self.decoder, self.c = decoder, c

    def forward(self, z, h):
        return self.decoder(z / self.c, h)


def test_posteriors_far_from_the_prior_are_called_kl_too_high(runs, toys):
    """By construction: the healthy model with its posteriors squeezed 20-fold towards the prior's mean and a
    decoder that undoes the squeeze. Reconstructions are exactly the same, the KL is higher, and prior samples
    reach the decoder 20 times further out than anything it was trained on."""
    run = cvae.load_run(runs / "healthy", "cpu")
    data = cvae.load_data(run.config)
    before = measure(run.model, data)
    run.model.encoder = Squeezed(run.model.encoder, 0.05)
    run.model.decoder = Unsqueezed(run.model.decoder, 0.05)
    d = diagnose(run.model, data, run={"beta": 1.0, "steps": run.step, "epochs": run.epoch, "prior": "standard"})
    f = d.figures
    assert f["mse_reconstruction"] == pytest.approx(before["mse_reconstruction"], rel=1e-4)
    assert f["kl"] > before["kl"] + 4 * (math.log(20) - 0.5) - 0.5  # about ln 20 - 1/2 more in each dim
    assert d.verdict == "KL too high", format_report(d)
    assert f["prior_coverage_ratio"] < 0.1 and f["sample_precision_ratio"] < 0.1
    advice = "\n".join(d.advice)
    assert f"--set train.beta={_fmt(max(f['beta_for_target'], 2.0))}" in advice
    assert "--set model.prior=learned" in advice
    assert "cvae fit-prior RUN_DIR --out NEW_DIR" in advice  # no run directory given: a placeholder
    fitted = judge(d.figures, {"beta": 1.0, "prior": "fitted_mixture", "run_dir": "runs/x"})
    assert fitted.verdict == "KL too high" and not any("fit-prior" in a for a in fitted.advice)
    assert any("cvae fit-prior runs/x --out" in a for a in judge(d.figures, {"beta": 1.0, "run_dir": "runs/x"}).advice)


# -- the rules, one at a time, on figures ------------------------------------------------------------------------

HEALTHY = {
    "latent_dim": 4, "kl": 5.0, "kl_per_dim": [2.0, 2.0, 0.5, 0.5], "active_units": 2, "active_units_vs_prior": 2,
    "train_examples": 1000, "rec_z_posterior": -10.0, "rec_z_prior": -30.0, "rec_z_prior_mean": -25.0,
    "z_gain_nats": 15.0, "mse_mean_target": 1.0, "mse_z_prior_mean": 0.9, "mse_reconstruction": 0.1,
    "condition_leaves": 0.9, "z_explains": 0.89, "reconstruction_vs_mean": 0.1, "coverage_prior": 0.8,
    "coverage_posterior": 0.8, "prior_coverage_ratio": 1.0, "aggregate_gaussian_kl": 0.1, "precision_samples": 0.8,
    "precision_reconstructions": 0.8, "precision_test": 0.8, "sample_precision_ratio": 1.0, "residual_structure": 0.7,
    "target_kl": 3.0, "beta_for_target": 2.0,
}


@pytest.mark.parametrize("change, verdict", [
    ({}, "healthy"),
    ({"kl": 0.1}, "posterior collapse"),
    ({"z_explains": 0.05}, "posterior collapse"),
    ({"active_units_vs_prior": 0}, "posterior collapse"),
    ({"kl": 0.1, "condition_leaves": 0.01}, "healthy"),        # nothing left to explain
    ({"kl": 0.1, "residual_structure": 0.1}, "healthy"),       # only white noise left
    ({"prior_coverage_ratio": 0.3, "sample_precision_ratio": 0.5}, "KL too high"),
    ({"prior_coverage_ratio": 0.3}, "healthy"),                # a mismatch the decoder shrugs off
    ({"sample_precision_ratio": 0.5}, "healthy"),              # poor samples, but not from the latents
    ({"late_gain": 5.0, "late_gain_fraction": 0.3, "late_epochs": 2, "epochs": 10}, "undertrained"),
    ({"late_gain": 0.5, "late_gain_fraction": 0.05, "late_epochs": 2, "epochs": 10}, "healthy"),
    ({"kl": 0.1, "late_gain": 5.0, "late_gain_fraction": 0.3, "late_epochs": 2, "epochs": 10}, "undertrained"),
])
def test_each_rule(change, verdict):
    assert judge({**HEALTHY, **change}, {"beta": 1.0, "steps": 100}).verdict == verdict


def _says(advice: list[str], setting: str) -> bool:
    """Whether some advice line sets exactly `setting` (e.g. "train.beta=3", not "train.beta=30")."""
    return any(re.search(re.escape(setting) + r"(\s|$)", line) for line in advice)


def test_advice_follows_the_measurements():
    collapse = judge({**HEALTHY, "kl": 0.01, "target_kl": 6.0, "beta_for_target": 3.0}, {"beta": 30.0, "steps": 400})
    for setting in ("train.beta=3", "target_kl=6", "warmup_steps=100", "train.free_bits=1.5"):
        assert _says(collapse.advice, setting), (setting, collapse.advice)
    # a collapse at a beta already below the estimate: halve beta instead
    assert _says(judge({**HEALTHY, "kl": 0.01}, {"beta": 1.0}).advice, "train.beta=0.5")
    high = {**HEALTHY, "prior_coverage_ratio": 0.2, "sample_precision_ratio": 0.3, "kl": 50.0}
    assert _says(judge(high, {"beta": 0.0}).advice, "train.beta=2")
    assert _says(judge(high, {"beta": 4.0}).advice, "train.beta=8")  # already above the estimate: double it
    assert any("exceeds log(training examples) = 6.91 nats by 43.1" in e for e in judge(high, {"beta": 0.0}).evidence)


def test_overfitting_is_reported_with_the_best_epoch():
    d = judge({**HEALTHY, "best_elbo": -80.0, "best_elbo_epoch": 37, "last_elbo": -85.0}, {"beta": 1.0})
    assert d.verdict == "healthy" and any("--set train.epochs=37" in a for a in d.advice)
    # picked on the test split, the advice says how to pick it on a validation split instead; picked there, not
    assert any("picked on the test split: add --set data.validation=0.1" in a for a in d.advice)
    assert any("held-out (test) ELBO peaked at epoch 37" in e for e in d.evidence)
    v = judge({**HEALTHY, "best_elbo": -80.0, "best_elbo_epoch": 37, "last_elbo": -85.0,
               "history_split": "validation"}, {"beta": 1.0})
    (advice,) = [a for a in v.advice if "--set train.epochs=37" in a]
    assert "data.validation" not in advice and advice.startswith("let training keep its best epoch")
    assert "--set train.keep_best=true --set train.patience=5" in advice
    assert any("held-out (validation) ELBO peaked" in e for e in v.evidence)


# -- the rate-distortion estimate ---------------------------------------------------------------------------------


def test_rate_distortion_matches_reverse_water_filling():
    """Independent Gaussians with variances 4, 1 and 0.25: leaving 2.25 / 5.25 of the variance puts the water level
    at 1, so only the first coordinate is coded, at 0.5 ln 4 nats, and beta = theta * 3 / D = 3 / 2.25."""
    g = torch.Generator().manual_seed(0)
    y = torch.randn(200_000, 3, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5], dtype=torch.float64)
    rd = rate_distortion(torch.zeros(len(y), 0), y, 2.25 / 5.25)
    assert rd["rate"] == pytest.approx(0.5 * math.log(4), rel=0.02)
    assert rd["beta"] == pytest.approx(3 / 2.25, rel=0.02)


def test_rate_distortion_removes_the_condition_and_sees_white_noise():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (5000,), generator=g)
    onehot = nn.functional.one_hot(labels, 3).double()
    noise = torch.randn(5000, 6, generator=g, dtype=torch.float64)
    white = rate_distortion(onehot, 10 * onehot @ torch.randn(3, 6, generator=g, dtype=torch.float64) + noise, 0.5)
    assert white["structure"] < 0.05  # the class means are the condition's; what is left is white
    structured = rate_distortion(torch.zeros(5000, 0), noise * torch.tensor([5.0, 1, 1, 1, 1, 1], dtype=torch.float64), 0.5)
    assert structured["structure"] > 0.5


# -- the command line ---------------------------------------------------------------------------------------------


def test_doctor_cli_text_and_json(runs, toys, capsys):
    assert cli.main(["doctor", str(runs / "collapse"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "verdict: posterior collapse" in out and "advice:" in out and "--set train.beta=" in out
    assert cli.main(["doctor", str(runs / "healthy"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"] == "healthy" and report["evidence"] and report["advice"]
    assert report["figures"]["latent_dim"] == 4 and report["figures"]["checkpoint"].endswith(".pt")


def test_doctor_cli_exit_2_for_a_missing_or_empty_run(tmp_path, toys, capsys):
    assert cli.main(["doctor", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["doctor", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cvae doctor: error:") and "Traceback" not in err


def test_doctor_refuses_a_damaged_history_and_skips_a_last_line_cut_short(runs, toys, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs / "healthy", run)
    history = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(history + '{"epoch": 99, "te')  # killed while writing a row
    assert cli.main(["doctor", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "healthy"
    for damaged in ("junk\n", "junk\n" + history, history.replace("}\n", "}\nnot json\n", 1)):
        (run / "metrics.jsonl").write_text(damaged)
        assert cli.main(["doctor", str(run)]) == 2
        err = capsys.readouterr().err
        assert "metrics.jsonl, line" in err and "training history is damaged" in err and len(err.splitlines()) == 1


def test_doctor_on_a_fitted_run_says_its_training_settings_are_for_the_source(runs, toys, capsys, tmp_path):
    assert cli.main(["fit-prior", str(runs / "collapse"), "--out", str(tmp_path / "fitted"), "--components", "2"]) == 0
    capsys.readouterr()
    assert cli.main(["doctor", str(tmp_path / "fitted"), "--json"]) == 0
    advice = json.loads(capsys.readouterr().out)["advice"]
    assert any("--set" in a for a in advice[1:])
    assert advice[0].startswith(f"this run's prior was fitted after training {runs / 'collapse'}")
