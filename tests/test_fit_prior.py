"""`cvae fit-prior`: a Gaussian mixture per condition, fitted after training to the aggregate posterior,
as the `fitted_mixture` prior of a new run that `cvae sample` and `cvae eval` use like any other."""

from __future__ import annotations

import copy
import hashlib
import math

import pytest
import torch

import cvae
from conftest import TINY_SETTINGS
from cvae.cli import main
from cvae.expost import MAX_KEYS, default_components, fit_mixture_tables
from cvae.priors import FittedMixturePrior


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def two_clusters_per_key(n: int = 400, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Condition rows (one-hot of 2 keys) and 2-D latents: key 0 at (+-3, 0), key 1 at (0, +-3), scale 0.2."""
    g = torch.Generator().manual_seed(seed)
    key = torch.arange(n) % 2
    side = torch.randint(0, 2, (n,), generator=g) * 2 - 1.0
    centre = torch.where(key[:, None] == 0, torch.stack([3 * side, 0 * side], 1), torch.stack([0 * side, 3 * side], 1))
    z = centre + 0.2 * torch.randn(n, 2, generator=g)
    return torch.nn.functional.one_hot(key, 2).float(), z, centre


def fitted_prior(h: torch.Tensor, z: torch.Tensor, components: int, rank: int = 0,
                 posterior_var: torch.Tensor | None = None) -> FittedMixturePrior:
    tables = fit_mixture_tables(h, z, components, rank=rank, posterior_var=posterior_var)
    prior = FittedMixturePrior(cond_features=h.shape[1], latent_dim=z.shape[1], components=components,
                               keys=len(tables["keys"]), rank=rank)
    prior.load_state_dict(tables)
    return prior


def test_the_fit_recovers_each_conditions_modes():
    h, z, _ = two_clusters_per_key()
    prior = fitted_prior(h, z, components=2)
    for key, expected in ((0, [[-3.0, 0.0], [3.0, 0.0]]), (1, [[0.0, -3.0], [0.0, 3.0]])):
        _, means, logvars = prior.components(h[key:key + 1])
        found = sorted(means[0].tolist(), key=sum)
        assert torch.allclose(torch.tensor(found), torch.tensor(expected), atol=0.1)
        assert torch.allclose(logvars.exp().sqrt(), torch.full_like(logvars, 0.2), atol=0.05)


def test_samples_come_from_the_mixture_of_their_own_condition():
    h, z, _ = two_clusters_per_key()
    prior = fitted_prior(h, z, components=2)
    torch.manual_seed(0)
    draws = prior.sample(h)
    key0 = h[:, 0] == 1
    assert (draws[key0, 0].abs() > 2).all() and (draws[key0, 1].abs() < 1).all()
    assert (draws[~key0, 1].abs() > 2).all() and (draws[~key0, 0].abs() < 1).all()
    assert 0.3 < float((draws[key0, 0] > 0).double().mean()) < 0.7  # both modes, as often as the data


def test_held_out_likelihood_beats_one_gaussian_per_condition():
    h, z, _ = two_clusters_per_key()
    h_new, z_new, _ = two_clusters_per_key(seed=1)
    mixture, single = fitted_prior(h, z, components=2), fitted_prior(h, z, components=1)
    assert mixture.log_prob(z_new, h_new).mean() > single.log_prob(z_new, h_new).mean() + 1  # nats per point
    # and the KL estimate has the mixture prior's one-column shape
    assert mixture.kl(z_new, torch.zeros_like(z_new), z_new, h_new).shape == (len(z_new), 1)


def test_conditions_with_fewer_examples_than_components_get_zero_weights():
    h = torch.tensor([[1.0, 0.0]] * 5 + [[0.0, 1.0]] * 2)
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    tables = fit_mixture_tables(h, z, components=4)
    weights = tables["log_weights"].exp()
    assert torch.allclose(weights.sum(1), torch.ones(2))
    few = int((tables["keys"] == torch.tensor([0.0, 1.0])).all(1).nonzero())  # the key with 2 examples
    assert (weights[few] > 0).sum() == 2 and (weights[1 - few] > 0).sum() == 4
    prior = fitted_prior(h, z, components=4)
    assert torch.isfinite(prior.log_prob(z, h)).all() and torch.isfinite(prior.sample(h)).all()


def low_rank_prior(d: int = 5, rank: int = 2, components: int = 2, seed: int = 0) -> FittedMixturePrior:
    """One key, random tables: means, diagonals, orthonormal bases and spectra."""
    g = torch.Generator().manual_seed(seed)
    prior = FittedMixturePrior(cond_features=0, latent_dim=d, components=components, rank=rank)
    prior.log_weights.copy_(torch.log_softmax(torch.randn(1, components, generator=g), 1))
    prior.means.copy_(2 * torch.randn(1, components, d, generator=g))
    prior.logvars.copy_(0.5 * torch.randn(1, components, d, generator=g))
    prior.bases.copy_(torch.linalg.qr(torch.randn(1, components, d, rank, generator=g))[0])
    prior.spectra.copy_(5 * torch.rand(1, components, rank, generator=g))
    return prior


def component_covariances(prior: FittedMixturePrior) -> torch.Tensor:
    """The covariance each component stands for, written out: D^1/2 (I + U diag(s2) U^T) D^1/2."""
    root = prior.logvars[0].mul(0.5).exp()
    inner = torch.eye(prior.latent_dim) + prior.bases[0] @ torch.diag_embed(prior.spectra[0]) @ prior.bases[0].mT
    return root[:, :, None] * inner * root[:, None, :]


def test_low_rank_components_have_the_density_and_draws_of_their_full_covariance():
    prior = low_rank_prior()
    h, cov = torch.zeros(4000, 0), component_covariances(prior)
    z = torch.randn(7, prior.latent_dim)
    full = torch.distributions.MultivariateNormal(prior.means[0], covariance_matrix=cov)
    expected = torch.logsumexp(prior.log_weights[0] + full.log_prob(z.unsqueeze(1)), dim=1)
    assert torch.allclose(prior.log_prob(z, h[:7]), expected, atol=1e-4)
    # draws through `draw` with the first component forced: their covariance is the component's
    torch.manual_seed(1)
    draws = prior.draw(h, torch.randn(len(h), prior.latent_dim), torch.zeros(len(h), 1))
    assert torch.allclose(draws.mean(0), prior.means[0, 0], atol=0.15)
    assert torch.allclose(torch.cov(draws.T), cov[0], atol=0.1 * float(cov[0].abs().max()))
    # params: the moment-matched mean and the diagonal of the mixture's covariance
    w = prior.log_weights[0].exp()
    mean = (w[:, None] * prior.means[0]).sum(0)
    var = (w[:, None] * (cov.diagonal(dim1=1, dim2=2) + prior.means[0] ** 2)).sum(0) - mean**2
    got_mean, got_logvar = prior.params(h[:1])
    assert torch.allclose(got_mean[0], mean, atol=1e-5) and torch.allclose(got_logvar[0].exp(), var, rtol=1e-4)


RING_PLANE = torch.linalg.qr(torch.randn(6, 2, generator=torch.Generator().manual_seed(99)))[0]


def test_the_density_stays_exact_in_float32_when_the_spectra_are_large():
    prior = low_rank_prior(d=32, rank=32)
    prior.spectra.mul_(2e4)  # s2 up to 1e5: the full-rank fit of a tight cloud
    h = torch.zeros(50, 0)
    torch.manual_seed(0)
    z = prior.sample(h)
    exact = copy.deepcopy(prior).double().log_prob(z.double(), h.double())
    assert (prior.log_prob(z, h).double() - exact).abs().max() < 1e-2


def noisy_ring(n: int, seed: int) -> torch.Tensor:
    """A circle of radius 3 in a random plane of 6-D space, with noise 0.05 off it: a curved cloud, like
    the posteriors of one shape over its rotations."""
    g = torch.Generator().manual_seed(seed)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    return 3 * torch.stack([angle.cos(), angle.sin()], 1) @ RING_PLANE.T + 0.05 * torch.randn(n, 6, generator=g)


def distance_from_ring(x: torch.Tensor) -> torch.Tensor:
    inside = x @ RING_PLANE
    return ((inside.norm(dim=1) - 3) ** 2 + ((x - inside @ RING_PLANE.T) ** 2).sum(1)).sqrt()


def test_rank_follows_a_curved_cloud_that_diagonal_components_miss():
    z, z_new = noisy_ring(1500, 0), noisy_ring(1500, 1)
    h = torch.zeros(len(z), 0)
    diagonal, low_rank = fitted_prior(h, z, components=8), fitted_prior(h, z, components=8, rank=2)
    assert low_rank.log_prob(z_new, h).mean() > diagonal.log_prob(z_new, h).mean() + 1  # nats per point
    torch.manual_seed(0)  # draws stay near the ring (held-out data: 0.11 on average; diagonal: 0.49)
    assert distance_from_ring(low_rank.sample(h)).mean() < 0.5 * distance_from_ring(diagonal.sample(h)).mean()
    full = fitted_prior(h, z, components=8, rank=6)  # rank = latent_dim: full covariances
    assert torch.isfinite(full.log_prob(z_new, h)).all()


def test_no_component_is_narrower_than_the_posteriors_it_was_fitted_to():
    # 40 draws in 8 dimensions, 10 full-covariance components: about 4 points each, so unfloored
    # components collapse onto the few draws they were given and miss new ones
    g = torch.Generator().manual_seed(0)
    z, z_new, h = torch.randn(40, 8, generator=g), torch.randn(400, 8, generator=g), torch.zeros(40, 0)
    noise = torch.full_like(z, 0.3)
    bare, floored = fitted_prior(h, z, 10, rank=8), fitted_prior(h, z, 10, rank=8, posterior_var=noise)
    used = floored.log_weights[0] > -math.inf
    assert (floored.logvars[0, used].exp() >= 0.3 - 1e-6).all()
    assert floored.log_prob(z_new, h[:1].expand(400, 0)).mean() > bare.log_prob(z_new, h[:1].expand(400, 0)).mean() + 1


def test_the_default_number_of_components_follows_the_rarest_condition():
    one_hot = torch.eye(2)
    assert default_components(one_hot[torch.tensor([0] * 100 + [1] * 45)]) == 2  # 45 draws // 20
    assert default_components(one_hot[torch.tensor([0] * 5000 + [1] * 3000)]) == 50  # at most 50
    assert default_components(one_hot[torch.tensor([0] * 7 + [1] * 3)]) == 1  # at least 1
    assert default_components(torch.zeros(300, 0)) == 15  # no conditions: all draws


def test_a_condition_with_one_example_gets_one_gaussian_at_it():
    h = torch.tensor([[1.0, 0.0]] * 6 + [[0.0, 1.0]])
    z = torch.randn(7, 3, generator=torch.Generator().manual_seed(0))
    for rank in (0, 2):
        prior = fitted_prior(h, z, 4, rank=rank, posterior_var=torch.full_like(z, 0.1))
        log_w, means, logvars = prior.components(h[-1:])
        assert int((log_w > -math.inf).sum()) == 1 and torch.allclose(means[0, 0], z[-1])
        assert torch.allclose(logvars[0, 0].exp(), torch.full((3,), 0.1))


def test_continuous_conditions_are_refused():
    h = torch.randn(MAX_KEYS + 1, 2)
    with pytest.raises(cvae.CVAEError, match="distinct values"):
        fit_mixture_tables(h, torch.randn(MAX_KEYS + 1, 2), components=1)


def test_cli_writes_a_new_run_that_samples_and_evaluates(tiny, tiny_run, capsys, tmp_path):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tiny_run / "checkpoints").iterdir()}
    out = tmp_path / "fitted"
    code, stdout, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", out, "--components", 3, "--draws", 2)
    assert code == 0, stderr
    # the default rank (32) is capped at the latent size (4): full covariances
    assert "fitted 3 Gaussians (full covariance) for each of 3 condition values to 384 posterior draws" in stdout
    assert "test_elbo" in stdout and (out / "eval.json").is_file() and (out / "samples.png").is_file()
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tiny_run / "checkpoints").iterdir()}
    assert after == before  # the trained run is only read

    run, source = cvae.load_run(out), cvae.load_run(tiny_run)
    assert run.config["model"]["prior"] == "fitted_mixture" and run.step == source.step
    assert run.derived_from == tiny_run and source.derived_from is None  # metrics may reuse the source's caches
    assert run.config["model"]["prior_options"] == {"components": 3, "keys": 3, "rank": 4}
    for name, value in source.model.state_dict().items():  # encoder, decoder and conditions are the trained ones
        if not name.startswith("prior."):
            assert torch.equal(run.model.state_dict()[name], value), name
    code, stdout, stderr = run_cli(capsys, "sample", out, "--out", tmp_path / "s.npz", "--n", 4)
    assert code == 0, stderr
    code, _, stderr = run_cli(capsys, "eval", out, "--json")
    assert code == 0, stderr


def test_cli_fits_low_rank_components(tiny, tiny_run, capsys, tmp_path):
    out = tmp_path / "low-rank"
    code, stdout, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", out, "--components", 2, "--rank", 3)
    assert code == 0, stderr
    assert "fitted 2 Gaussians (rank 3 plus diagonal) for each of 3 condition values" in stdout
    run = cvae.load_run(out)
    assert run.config["model"]["prior_options"]["rank"] == 3 and run.model.prior.bases.shape[-1] == 3
    assert torch.isfinite(run.model.sample({"label": torch.arange(3)})).all()
    code, stdout, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", tmp_path / "diagonal", "--rank", 0)
    # the rarest label has 50 training examples: the default is one Gaussian per 20 draws
    assert code == 0 and "fitted 2 Gaussians (diagonal)" in stdout, stderr
    assert not hasattr(cvae.load_run(tmp_path / "diagonal").model.prior, "bases")


def test_cli_errors(tiny, tiny_run, capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", tmp_path / "x", "--components", 0)
    assert code == 2 and "--components and --draws must be >= 1" in stderr
    code, _, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", tmp_path / "x", "--rank", -1)
    assert code == 2 and "--rank >= 0" in stderr
    code, _, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", tiny_run)
    assert code == 2 and "already holds a run" in stderr
    out = tmp_path / "fitted"
    assert run_cli(capsys, "fit-prior", tiny_run, "--out", out, "--components", 2)[0] == 0
    code, _, stderr = run_cli(capsys, "fit-prior", tiny_run, "--out", out)
    assert code == 2 and "already holds a run" in stderr
    code, _, stderr = run_cli(capsys, "train", "--out", out, "--resume")
    assert code == 2 and "cannot be trained further" in stderr and str(tiny_run) in stderr


def test_training_with_the_fitted_prior_is_refused(tiny_config, tmp_path):
    from cvae.train import Trainer

    with pytest.raises(cvae.CVAEError, match="fitted after training by `cvae fit-prior"):
        Trainer(tiny_config('model.prior="fitted_mixture"', "model.prior_options={}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_without_conditions_one_mixture_fits_everything():
    z = torch.cat([torch.randn(200, 2) * 0.1 - 2, torch.randn(200, 2) * 0.1 + 2])
    tables = fit_mixture_tables(torch.zeros(400, 0), z, components=2)
    assert tables["keys"].shape == (1, 0)
    assert sorted(tables["means"][0, :, 0].round().tolist()) == [-2.0, 2.0]


def test_non_finite_posteriors_are_refused():
    z = torch.zeros(10, 2)
    z[3, 1] = math.nan
    with pytest.raises(cvae.CVAEError, match="not finite"):
        fit_mixture_tables(torch.zeros(10, 1), z, components=1)


# -- fit_prior.after_training: one `cvae train` command trains and fits --------------------------------------

def _train_settings(*extra: str) -> list[str]:
    return [x for s in (*TINY_SETTINGS, "train.epochs=2", "eval.iwae_samples=8", *extra) for x in ("--set", s)]


def _prior_tables(run_dir) -> dict[str, torch.Tensor]:
    return {k: v for k, v in cvae.load_run(run_dir).model.state_dict().items() if k.startswith("prior.")}


def test_train_fits_the_prior_after_training_as_fit_prior_does(tiny, capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "train", "--out", out, *_train_settings("fit_prior.after_training=true"))
    assert code == 0, stderr
    assert f"posterior draws of the training split -> {out / 'fitted'}" in stdout
    fitted = cvae.load_run(out / "fitted")
    assert fitted.config["model"]["prior"] == "fitted_mixture" and fitted.derived_from == out
    assert (out / "fitted" / "eval.json").is_file() and (out / "fitted" / "samples.png").is_file()
    # the same fit as the separate command with its defaults
    assert run_cli(capsys, "fit-prior", out, "--out", tmp_path / "by-hand")[0] == 0
    by_hand, after = _prior_tables(tmp_path / "by-hand"), _prior_tables(out / "fitted")
    assert by_hand.keys() == after.keys() and all(torch.equal(by_hand[k], after[k]) for k in by_hand)
    # and the training is the one a run without the option gets (its checks before training change nothing)
    assert run_cli(capsys, "train", "--out", tmp_path / "plain", *_train_settings())[0] == 0
    plain, trained = cvae.load_run(tmp_path / "plain").model.state_dict(), cvae.load_run(out).model.state_dict()
    assert all(torch.equal(plain[k], trained[k]) for k in plain)

    # trained further, the run's fit is replaced by one of the new model
    code, _, stderr = run_cli(capsys, "train", "--out", out, "--resume", "--set", "train.epochs=3")
    assert code == 0, stderr
    assert cvae.load_run(out / "fitted").step == cvae.load_run(out).step > fitted.step


def test_fit_settings_of_the_config_are_fit_priors_defaults(tiny, capsys, tmp_path):
    out = tmp_path / "run"
    settings = _train_settings("fit_prior.after_training=true", "fit_prior.components=2", "fit_prior.rank=0",
                               "fit_prior.draws=2", "eval.at_end=false")
    code, stdout, stderr = run_cli(capsys, "train", "--out", out, *settings)
    assert code == 0, stderr
    assert "fitted 2 Gaussians (diagonal) for each of 3 condition values to 384 posterior draws" in stdout
    assert not (out / "fitted" / "eval.json").exists()  # eval.at_end=false holds for the fitted run too
    code, stdout, _ = run_cli(capsys, "fit-prior", out, "--out", tmp_path / "again", "--rank", 1)
    assert "fitted 2 Gaussians (rank 1 plus diagonal) for each of 3 condition values to 384 posterior draws" in stdout


def test_a_folder_in_the_way_of_the_fit_is_reported_before_training(tiny, capsys, tmp_path):
    out = tmp_path / "run"
    (out / "fitted").mkdir(parents=True)
    (out / "fitted" / "notes.txt").write_text("mine")
    code, _, stderr = run_cli(capsys, "train", "--out", out, *_train_settings("fit_prior.after_training=true"))
    assert code == 2 and f"{out / 'fitted'} exists and is not this run's fitted prior" in stderr
    assert not (out / "checkpoints").exists() and (out / "fitted" / "notes.txt").read_text() == "mine"
    code, _, stderr = run_cli(capsys, "train", "--out", out, *_train_settings("fit_prior.rank=-1"))
    assert code == 2 and "fit_prior.rank" in stderr


@pytest.mark.parametrize("settings, needle", [
    (("model.architecture=fcn", "model.architecture_options={channels=[4]}", "model.latent_dim=2",
      "model.prior=standard", "model.prior_options={}", 'model.likelihood="bernoulli"'), "needs a flat latent"),
    ((), None),
])
def test_what_the_fit_needs_is_checked_before_training(tiny, capsys, tmp_path, monkeypatch, settings, needle):
    import cvae.expost

    if needle is None:  # more distinct conditions than a mixture per value allows
        monkeypatch.setattr(cvae.expost, "MAX_KEYS", 2)
        needle = "the conditions take 3 distinct values"
    out = tmp_path / "run"
    code, _, stderr = run_cli(capsys, "train", "--out", out, *_train_settings("fit_prior.after_training=true", *settings))
    assert code == 2 and needle in stderr, stderr
    assert not (out / "checkpoints").exists()  # refused before the first step
