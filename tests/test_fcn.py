"""Fully-convolutional latents and the spatial prior: shapes, condition maps, sampling at another image
size, clear errors for sizes that do not fit, the masked convolution's causality, the prior's density
and KL, the neighbour correlation, and a tiny `cvae compare` of the three variants."""

from __future__ import annotations

import math

import pytest
import torch

import cvae
from cvae import CVAEError, TargetInfo
from cvae import config as config_mod
from cvae.cli import main
from cvae.fcn import build_fcn
from cvae.latent_maps import neighbour_correlation
from cvae.priors import StandardNormalPrior, gaussian_log_prob
from cvae.spatial_prior import MaskedConv2d, PixelCNNPrior

FCN = ["model.architecture=fcn", "model.architecture_options={channels=[8]}", "model.latent_dim=2",
       "model.likelihood=bernoulli", "model.likelihood_options={}", "train.progress=false"]


def _model(prior: str = "standard", extra: tuple[str, ...] = ()) -> cvae.CVAE:
    cfg = config_mod.load_config(None, [*FCN, f"model.prior={prior}", "model.prior_options={hidden=8, layers=2}"
                                        if prior == "pixelcnn" else "model.prior_options={}", *extra])
    data = cvae.load_data(cfg)
    return cvae.build_model(cfg, data.target, data.conditions), data


# -- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,channels", [((1, 8, 8), [8]), ((3, 16, 24), [4, 8]), ((2, 4, 4), [4, 4])])
@pytest.mark.parametrize("ppe", [1, 3])
def test_latent_maps_and_output_shapes(shape, channels, ppe):
    encoder, decoder = build_fcn(target=TargetInfo(shape), cond_features=5, latent_dim=3, params_per_element=ppe,
                                 channels=channels)
    f = 2 ** len(channels)
    y, h = torch.rand(2, *shape), torch.randn(2, 5)
    mu, logvar = encoder(y, h)
    assert mu.shape == logvar.shape == (2, 3, shape[1] // f, shape[2] // f)
    assert decoder.latent_shape == (3, shape[1] // f, shape[2] // f)
    assert decoder(mu, h).shape == (2, ppe, *shape)
    # condition feature maps at the image size are pooled to every stage's size
    assert decoder(mu, torch.randn(2, 5, *shape[1:])).shape == (2, ppe, *shape)


def test_conditions_reach_both_networks():
    encoder, decoder = build_fcn(target=TargetInfo((1, 8, 8)), cond_features=4, latent_dim=2, params_per_element=1)
    y, z = torch.rand(2, 1, 8, 8), torch.randn(2, 2, 2, 2)
    h1, h2 = torch.randn(2, 4), torch.randn(2, 4)
    assert not torch.allclose(encoder(y, h1)[0], encoder(y, h2)[0])
    assert not torch.allclose(decoder(z, h1), decoder(z, h2))


class _Maps(torch.nn.Module):
    """A stand-in map condition encoder: (2, 8, 8) images -> 3 feature maps of the same size."""

    out_features = 3

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_spatial_condition_maps_beside_a_label(fresh_plugins):
    """A condition image enters as feature maps; the CVAE tiles the label's vector features to their size."""
    from cvae.likelihoods import Bernoulli
    from cvae_labels import LabelEncoder

    target = TargetInfo((1, 8, 8), 0.0, 1.0)
    info = {"label": cvae.ConditionInfo("label", (), 10), "visible": cvae.ConditionInfo("image", (2, 8, 8))}
    conditions = {"label": LabelEncoder(info["label"], dim=4), "visible": _Maps()}
    encoder, decoder = build_fcn(target=target, cond_features=7, latent_dim=2, params_per_element=1, channels=[8])
    prior = PixelCNNPrior(cond_features=7, latent_dim=2, hidden=8, layers=2)
    model = cvae.CVAE(conditions=conditions, encoder=encoder, decoder=decoder, prior=prior, likelihood=Bernoulli(target),
                      latent_dim=2, target=target, condition_info=info)
    conds = {"label": torch.tensor([1, 2, 3]), "visible": torch.rand(3, 2, 8, 8)}
    assert model.features(conds).shape == (3, 7, 8, 8)
    terms = model(conds, torch.rand(3, 1, 8, 8))
    assert torch.isfinite(terms.loss) and terms.kl_per_dim.shape == (1,)
    terms.loss.backward()
    assert conditions["visible"].conv.weight.grad.abs().sum() > 0
    assert model.sample(conds).shape == (3, 1, 8, 8)


# -- sampling at another size, and sizes that do not fit -------------------------------------------


@pytest.mark.parametrize("prior", ["standard", "pixelcnn"])
def test_trained_at_8x8_samples_at_other_sizes(fresh_plugins, prior):
    model, data = _model(prior)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for conds, y in cvae.iterate_batches(data.train, 64, shuffle=True, generator=torch.Generator().manual_seed(0)):
        opt.zero_grad()
        model(conds, y).loss.backward()
        opt.step()
    labels = {"label": torch.arange(10)}
    assert model.sample(labels).shape == (10, 1, 8, 8)
    for size in [(16, 16), (12, 20), (2, 2)]:
        out = model.sample(labels, size=size)
        assert out.shape == (10, 1, *size) and torch.isfinite(out).all() and 0 <= out.min() and out.max() <= 1
    assert model.prior.latent_shape == (2, 4, 4)  # the trained size is restored afterwards
    assert model.sample(labels, size=(16, 16), z="mean").shape == (10, 1, 16, 16)


def test_cvae_sample_size_option(fresh_plugins, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *sum((["--set", s] for s in [*FCN, "model.prior=standard", "model.prior_options={}", "train.epochs=1", "eval.at_end=false"]), [])]) == 0
    assert main(["sample", str(run), "--size", "16x24", "--n", "2", "--out", str(tmp_path / "s.npz")]) == 0
    import numpy as np
    assert np.load(tmp_path / "s.npz")["samples"].shape == (20, 1, 16, 24)  # two per class
    capsys.readouterr()
    assert main(["sample", str(run), "--size", "16by16", "--out", str(tmp_path / "t.png")]) == 2
    assert "--size '16by16': give the image size as HxW" in capsys.readouterr().err
    assert main(["sample", str(run), "--size", "9x8", "--out", str(tmp_path / "t.png")]) == 2
    assert "positive multiples of 2" in capsys.readouterr().err


def test_sizes_that_do_not_fit_are_clear_errors(fresh_plugins):
    model, _ = _model()
    labels = {"label": torch.arange(3)}
    for size in [(9, 8), (1, 1), (0, 4), (8,)]:
        with pytest.raises(CVAEError, match="positive multiples of 2"):
            model.sample(labels, size=size)
    h = model.features(labels)
    with pytest.raises(CVAEError, match=r"latent maps \(batch, 2, h, w\)"):
        model.decoder(torch.randn(3, 5, 4, 4), h)  # wrong channel count
    with pytest.raises(CVAEError, match=r"latent maps \(batch, 2, h, w\)"):
        model.decoder(torch.randn(3, 32), h)  # a latent vector
    with pytest.raises(CVAEError, match="do not fit"):
        model.decoder(torch.randn(3, 2, 4, 4), torch.randn(3, 4, 6, 6))  # condition maps of another size
    with pytest.raises(CVAEError, match="multiples of 4"):
        build_fcn(target=TargetInfo((1, 10, 10)), cond_features=0, latent_dim=2, params_per_element=1, channels=[4, 4])
    with pytest.raises(CVAEError, match="does not fit an encoder"):
        model.encoder(torch.rand(1, 1, 7, 8), h[:1])
    with pytest.raises(CVAEError, match="image targets"):
        build_fcn(target=TargetInfo((12,)), cond_features=0, latent_dim=2, params_per_element=1)


def test_vector_models_and_vector_priors_refuse_maps(fresh_plugins):
    with pytest.raises(CVAEError, match="models latent vectors.*'pixelcnn'"):
        _model("learned")
    cfg = config_mod.load_config(None, ["model.architecture_options={hidden=[16]}"])
    data = cvae.load_data(cfg)
    vector = cvae.build_model(cfg, data.target, data.conditions)
    with pytest.raises(CVAEError, match="only a fully-convolutional"):
        vector.sample({"label": torch.arange(2)}, size=(16, 16))


# -- the masked convolution and the spatial prior --------------------------------------------------


@pytest.mark.parametrize("kernel", [3, 5, 7])
def test_masked_convolution_is_causal(kernel):
    torch.manual_seed(0)
    conv = MaskedConv2d(2, 3, kernel, "A")
    x = torch.randn(1, 2, 5, 6, requires_grad=True)
    out = conv(x)
    for i in range(30):
        r, c = divmod(i, 6)
        (grad,) = torch.autograd.grad(out[0, :, r, c].sum(), x, retain_graph=True)
        seen = grad[0].abs().sum(0).flatten() > 0
        assert not seen[i:].any(), f"position {i} sees positions >= {i}"


def test_pixelcnn_prior_output_at_i_depends_only_on_earlier_positions():
    torch.manual_seed(0)
    prior = PixelCNNPrior(cond_features=3, latent_dim=2, hidden=8, layers=3, kernel=5, components=2)
    torch.nn.init.normal_(prior.head.weight, std=0.3)  # the head starts at zero; make every path count
    z = torch.randn(1, 2, 4, 5, requires_grad=True)
    log_w, mu, logvar = prior.components(z, torch.randn(1, 3))
    for i in range(20):
        r, c = divmod(i, 5)
        total = log_w[0, :, r, c].sum() + mu[0, :, :, r, c].sum() + logvar[0, :, :, r, c].sum()
        (grad,) = torch.autograd.grad(total, z, retain_graph=True)
        seen = grad[0].abs().sum(0).flatten() > 0
        assert not seen[i:].any(), f"position {i} sees positions >= {i}"
        if c > 0:
            assert seen[i - 1], f"position {i} does not see its left neighbour"
        if r > 0:
            assert seen[i - 5], f"position {i} does not see its upper neighbour"


def _perturbed_prior(components: int, cond: int = 0) -> PixelCNNPrior:
    torch.manual_seed(1)
    prior = PixelCNNPrior(cond_features=cond, latent_dim=1, hidden=8, layers=2, kernel=3, components=components)
    torch.nn.init.normal_(prior.head.weight, std=0.5)
    prior.latent_shape = (1, 1, 2)
    return prior


@pytest.mark.parametrize("components", [1, 3])
def test_pixelcnn_density_integrates_to_one(components):
    """A 1x2 latent map with one channel: the density over the plane, summed on a fine grid, is 1."""
    prior = _perturbed_prior(components)
    grid = torch.linspace(-12, 12, 601, dtype=torch.float64)
    step = float(grid[1] - grid[0])
    a, b = torch.meshgrid(grid, grid, indexing="ij")
    z = torch.stack([a.flatten(), b.flatten()], 1).view(-1, 1, 1, 2).float()
    with torch.no_grad():
        density = prior.log_prob(z, torch.zeros(len(z), 0)).double().exp()
    assert float(density.sum()) * step * step == pytest.approx(1.0, abs=2e-3)


def test_pixelcnn_starts_at_standard_normal_and_kl_estimates_agree():
    prior = PixelCNNPrior(cond_features=3, latent_dim=2, hidden=8, layers=2)
    prior.latent_shape = (2, 3, 3)
    h = torch.randn(4000, 3)
    with torch.no_grad():
        z = prior.sample(h)
    assert abs(float(z.mean())) < 0.03 and float(z.var()) == pytest.approx(1.0, abs=0.03)
    standard = StandardNormalPrior(cond_features=3, latent_dim=2)
    standard.latent_shape = (2, 3, 3)
    assert torch.allclose(prior.log_prob(z, h), standard.log_prob(z, h), atol=1e-4)
    # the single-sample KL estimate averages to the closed form; shape (batch, 1) like 'mixture'
    q_mu, q_logvar = 0.5 * torch.randn(4000, 2, 3, 3), 0.3 * torch.randn(4000, 2, 3, 3) - 0.5
    draw = q_mu + torch.exp(0.5 * q_logvar) * torch.randn_like(q_mu)
    mc = prior.kl(q_mu, q_logvar, draw, h)
    assert mc.shape == (4000, 1)
    exact = standard.kl(q_mu, q_logvar, draw, h).flatten(1).sum(1)
    assert float(mc.mean()) == pytest.approx(float(exact.mean()), rel=0.05)


def test_pixelcnn_samples_follow_its_own_density():
    """Sequential sampling draws from the density that log_prob scores: the mean log-density of its
    samples equals minus the entropy, which for a learned correlated prior beats N(0, I)'s score of them."""
    prior = _perturbed_prior(1, cond=0)
    h = torch.zeros(20000, 0)
    with torch.no_grad():
        z = prior.sample(h)
        own = prior.log_prob(z, h)
        # conditional on the first latent, the second is Gaussian: its entropy is known per sample
        log_w, mu, logvar = prior.components(z, h)
        expected = -0.5 * (logvar[:, 0] + 1 + math.log(2 * math.pi)).flatten(1).sum(1)
    assert float(own.mean()) == pytest.approx(float(expected.mean()), abs=0.03)
    assert float(own.mean()) > float(gaussian_log_prob(z, torch.zeros_like(z), torch.zeros_like(z)).mean())


# -- the measurement -----------------------------------------------------------------------------


def test_neighbour_correlation():
    torch.manual_seed(0)
    noise = torch.randn(500, 3, 6, 6)
    assert abs(neighbour_correlation(noise)) < 0.05
    smooth = noise + noise.roll(1, -1) + noise.roll(1, -2) + noise.roll((1, 1), (-2, -1))
    assert neighbour_correlation(smooth) > 0.4
    assert neighbour_correlation(smooth, torch.tensor([True, False, False])) > 0.4
    assert math.isnan(neighbour_correlation(torch.randn(10, 4)))  # vectors have no neighbours


# -- one command ---------------------------------------------------------------------------------


VARIANTS = ["--variant", "conv model.architecture=conv model.architecture_options={channels=[4,8],fc=16} model.prior=standard",
            "--variant", "fcn-standard model.architecture=fcn model.architecture_options={channels=[8]} model.prior=standard",
            "--variant", "fcn-pixelcnn model.architecture=fcn model.architecture_options={channels=[8]} "
                         "model.prior=pixelcnn model.prior_options={hidden=8,layers=2}"]
TINY = ["train.epochs=1", "data.batch_size=256", "train.progress=false", "eval.iwae_samples=2", "model.likelihood=bernoulli",
        "model.likelihood_options={}", "model.latent_dim=2"]


def test_compare_variants_side_by_side(fresh_plugins, capsys, tmp_path):
    """Three variants in one command (completion of digits: no class metric, so no judge to train)."""
    sets = [*TINY, "data.name=completion", "data.options={dataset='digits', mask='left', target='image'}"]
    args = ["compare", "--out", str(tmp_path / "cmp"), *(x for s in sets for x in ("--set", s)), *VARIANTS]
    assert main(args) == 0
    out = capsys.readouterr().out
    for text in ("conv", "fcn-standard", "fcn-pixelcnn", "corr mu", "corr z~p", "IWAE NLL", "side by side"):
        assert text in out
    assert (tmp_path / "cmp" / "samples.png").is_file()
    assert main(["compare", "--out", str(tmp_path / "x"), "--variant", "a=b"]) == 2
    assert main(["compare", "--out", str(tmp_path / "x"), "--variant", "a", "--priors", "standard"]) == 2


def test_compare_variants_on_labelled_digits(fresh_plugins, capsys, tmp_path, monkeypatch):
    """The same on labelled digits: the judge classifier's figures for every variant (a briefly
    trained judge and few samples: this checks the plumbing, not the figures). The judge is trained
    once, by the first variant, and reused by the others, whose data is the same."""
    from cvae_labels import metrics
    from cvae_labels.metrics import make_class_metric

    monkeypatch.setattr(make_class_metric, "__kwdefaults__",
                        {**make_class_metric.__kwdefaults__, "steps": 50, "samples_per_class": 10})
    trained = []
    real_train_judge = metrics._train_judge
    monkeypatch.setattr(metrics, "_train_judge", lambda *a, **k: trained.append(1) or real_train_judge(*a, **k))
    sets = [*TINY, "data.options={test_fraction=0.1}"]
    assert main(["compare", "--out", str(tmp_path / "cmp"), *(x for s in sets for x in ("--set", s)), *VARIANTS]) == 0
    out = capsys.readouterr().out
    for text in ("sample acc", "recon acc", "Frechet ratio", "fcn-pixelcnn"):
        assert text in out
    assert len(trained) == 1
    assert all((tmp_path / "cmp" / name / "classifier.pt").is_file() for name in ("conv", "fcn-standard", "fcn-pixelcnn"))
    # a variant of other data trains its own judge
    assert main(["compare", "--out", str(tmp_path / "cmp2"), *(x for s in sets for x in ("--set", s)),
                 "--variant", "a model.prior=standard", "--variant", "b model.prior=standard data.options.test_fraction=0.2"]) == 0
    assert len(trained) == 3


def test_completion_with_visible_part_as_feature_maps(fresh_plugins, tmp_path):
    """The visible part of a digit enters the fcn as feature maps ('image_map'); a short run trains,
    evaluates (the latent-map metric included) and draws completions of the right shape."""
    from cvae.train import Trainer

    cfg = config_mod.load_config(None, [
        *FCN, "data.name=completion", "data.options={dataset='digits', mask='left', target='image'}",
        "conditions.visible.encoder=image_map", "conditions.visible.options={channels=[8], dim=4}",
        "model.prior=pixelcnn", "model.prior_options={hidden=8, layers=2}", "train.epochs=1",
        "eval.iwae_samples=2"])
    metrics = Trainer(cfg, tmp_path / "run").fit()
    assert {"neighbour_corr", "neighbour_corr_q", "neighbour_corr_prior"} <= set(metrics["eval"])
    run = cvae.load_run(tmp_path / "run", "cpu")
    data = cvae.load_data(cfg)
    conds, _ = next(cvae.iterate_batches(data.test, 5))
    assert run.model.features(conds).shape == (5, 4, 8, 8)
    assert run.model.sample(conds).shape == (5, 1, 8, 8)


def test_doctor_says_it_measures_vector_latents_only(fresh_plugins):
    from cvae.diagnose import measure

    model, data = _model()
    with pytest.raises(CVAEError, match="vector latents.*cvae eval"):
        measure(model, data)


@pytest.mark.parametrize("name", ["..", ".", ".hidden", "a/b", "x=1"])
def test_variant_names_stay_inside_the_output_folder(name):
    from cvae_images.commands import parse_variant

    with pytest.raises(CVAEError, match="--variant"):
        parse_variant(f"{name} model.prior=standard")
    assert parse_variant("fcn-pixelcnn.v2 model.prior=pixelcnn") == ("fcn-pixelcnn.v2", ["model.prior=pixelcnn"])


def test_pixelcnn_refuses_a_variance_floor_at_or_above_one():
    for floor in (0.0, 1.0):
        with pytest.raises(CVAEError, match="min_logvar must be < 0"):
            PixelCNNPrior(cond_features=0, latent_dim=2, min_logvar=floor)
