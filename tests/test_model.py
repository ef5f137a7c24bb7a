"""The CVAE core: KL against Monte Carlo, IWAE vs ELBO, gradients, free bits, plain VAE, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cvae import CVAE, ConditionInfo, CVAEError, TargetInfo, TensorData
from cvae.likelihoods import Bernoulli
from cvae.nets import build_mlp
from cvae.priors import LearnedGaussianPrior, StandardNormalPrior, gaussian_log_prob

LATENT = 2
TARGET = TargetInfo((8,), low=0.0, high=1.0, levels=2)
COND_INFO = {"label": ConditionInfo("test_label", shape=(), num_classes=2)}


class LabelEmbedding(nn.Module):
    """A tiny condition encoder: class index -> learned vector, with the `out_features` the model needs."""

    def __init__(self, num_classes: int = 2, out_features: int = 3) -> None:
        super().__init__()
        self.out_features = out_features
        self.table = nn.Embedding(num_classes, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.table(x)


def toy_data(n: int = 512, seed: int = 1) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Binary vectors from four prototypes with 5% bit flips; the label says which pair of prototypes,
    so given the label there are still two modes for the latent to pick between."""
    g = torch.Generator().manual_seed(seed)
    protos = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1, 1],
                           [1, 0, 1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1, 0, 1]], dtype=torch.float32)
    which = torch.randint(0, 4, (n,), generator=g)
    flips = (torch.rand(n, 8, generator=g) < 0.05).float()
    y = (protos[which] + flips) % 2
    return {"label": which // 2}, y


def make_model(*, conditioned: bool = True, learned_prior: bool = True, hidden=(32,)) -> CVAE:
    conditions = {"label": LabelEmbedding()} if conditioned else {}
    cond_features = sum(m.out_features for m in conditions.values())
    encoder, decoder = build_mlp(target=TARGET, cond_features=cond_features, latent_dim=LATENT,
                                 params_per_element=1, hidden=hidden)
    prior_cls = LearnedGaussianPrior if learned_prior else StandardNormalPrior
    prior_kwargs = {"hidden": (16,)} if learned_prior else {}
    prior = prior_cls(cond_features=cond_features, latent_dim=LATENT, **prior_kwargs)
    return CVAE(conditions=conditions, encoder=encoder, decoder=decoder, prior=prior, likelihood=Bernoulli(TARGET),
                latent_dim=LATENT, target=TARGET, condition_info=COND_INFO if conditioned else {})


def train(model: CVAE, conds: dict, y: torch.Tensor, steps: int = 300, lr: float = 1e-2) -> list[float]:
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(2)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, len(y), (128,), generator=g)
        out = model({k: v[idx] for k, v in conds.items()}, y[idx])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    return losses


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    conds, y = toy_data()
    model = make_model()
    losses = train(model, conds, y)
    model.eval()
    return model, conds, y, losses


# -- KL in closed form against Monte Carlo ---------------------------------------------------------------


def _mc_kl_check(prior, h: torch.Tensor, n: int = 200_000) -> None:
    q_mu = torch.randn(h.shape[0], prior.latent_dim, dtype=torch.float64)
    q_logvar = 0.8 * torch.randn(h.shape[0], prior.latent_dim, dtype=torch.float64)
    z = q_mu + torch.exp(0.5 * q_logvar) * torch.randn(n, *q_mu.shape, dtype=torch.float64)
    p_mu, p_logvar = prior.params(h)

    def log_normal(x, mu, logvar):  # per latent dimension, brute force
        return -0.5 * (math.log(2 * math.pi) + logvar + (x - mu) ** 2 / logvar.exp())

    samples = log_normal(z, q_mu, q_logvar) - log_normal(z, p_mu, p_logvar)  # (n, batch, latent)
    mc, se = samples.mean(0), samples.std(0) / math.sqrt(n)
    closed = prior.kl(q_mu, q_logvar, z[0], h)
    assert closed.shape == q_mu.shape
    assert ((closed - mc).abs() <= 5 * se + 1e-3).all(), (closed, mc, se)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(q_mu, (0.5 * q_logvar).exp()),
                                            torch.distributions.Normal(p_mu, (0.5 * p_logvar).exp()))
    torch.testing.assert_close(closed, ref)


def test_standard_normal_kl_matches_monte_carlo():
    prior = StandardNormalPrior(cond_features=0, latent_dim=3).double()
    _mc_kl_check(prior, torch.zeros(4, 0, dtype=torch.float64))


def test_learned_prior_kl_matches_monte_carlo():
    prior = LearnedGaussianPrior(cond_features=5, latent_dim=3, hidden=(16,)).double()
    with torch.no_grad():
        prior.bias.normal_()  # a prior that is clearly not N(0, I)
    h = torch.randn(4, 5, dtype=torch.float64)
    p_mu, p_logvar = prior.params(h)
    assert p_mu.abs().max() > 0.1 and (p_logvar.abs().max() > 0.1)
    _mc_kl_check(prior, h)


def test_prior_log_prob_and_sample_agree():
    prior = LearnedGaussianPrior(cond_features=2, latent_dim=3, hidden=(8,))
    h = torch.randn(1, 2).expand(20000, 2)
    z = prior.sample(h)
    mu, logvar = prior.params(h[:1])
    torch.testing.assert_close(z.mean(0), mu[0], rtol=0, atol=0.05)
    torch.testing.assert_close(z.var(0), logvar[0].exp(), rtol=0.05, atol=0.01)
    ref = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z[:5]).sum(1)
    torch.testing.assert_close(prior.log_prob(z[:5], h[:5]), ref)


# -- IWAE vs ELBO ------------------------------------------------------------------------------------------


def test_iwae_bounds_the_elbo_and_tightens_with_k(trained):
    model, conds, y, _ = trained
    torch.manual_seed(3)
    c, yy = {k: v[:256] for k, v in conds.items()}, y[:256]
    elbo = torch.stack([model.elbo(c, yy)["elbo"] for _ in range(20)]).mean()
    iw = {k: torch.stack([model.iwae(c, yy, k=k) for _ in range(reps)]).mean()
          for k, reps in ((1, 20), (10, 5), (100, 2))}
    assert (model.elbo(c, yy)["kl"].mean() > 0.5), "the posterior should carry information after training"
    assert iw[10] >= iw[1] - 0.02
    assert iw[100] >= iw[10] - 0.02
    assert iw[100] > elbo + 0.03, (elbo, iw)  # strictly tighter on a non-trivial posterior
    assert (iw[100] <= 0).all()  # a lower bound on a log-probability of binary data


def test_iwae_with_one_sample_is_the_elbo_in_expectation(trained):
    model, conds, y, _ = trained
    torch.manual_seed(4)
    reps = 40
    c = {k: v[:128].repeat(reps) for k, v in conds.items()}
    yy = y[:128].repeat(reps, 1)
    e, i = model.elbo(c, yy)["elbo"], model.iwae(c, yy, k=1)
    se = math.sqrt(e.var() / len(e) + i.var() / len(i))
    assert abs(e.mean() - i.mean()) < 4 * se + 1e-3, (e.mean(), i.mean(), se)


def test_iwae_chunks_do_not_change_the_estimate(trained):
    model, conds, y, _ = trained
    c, yy = {k: v[:16] for k, v in conds.items()}, y[:16]
    torch.manual_seed(5)
    a = model.iwae(c, yy, k=50, chunk=16 * 7)
    torch.manual_seed(5)
    b = model.iwae(c, yy, k=50, chunk=16 * 50)
    assert a.shape == (16,) and torch.isfinite(a).all()
    assert abs(a.mean() - b.mean()) < 0.1


class MapCondition(nn.Module):
    """A condition encoder that gives a feature map (as spatial models do), not a vector."""

    out_features = 2

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class FlatEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(8 + 2 * 9, 2 * LATENT)

    def forward(self, y, h):
        return self.net(torch.cat([y.flatten(1), h.flatten(1)], 1)).chunk(2, dim=1)


class FlatDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(LATENT + 2 * 9, 8)

    def forward(self, z, h):
        return self.net(torch.cat([z, h.flatten(1)], 1)).view(-1, 1, 8)


def test_iwae_with_feature_map_conditions():
    info = {"image": ConditionInfo("test_map", shape=(1, 3, 3))}
    model = CVAE(conditions={"image": MapCondition()}, encoder=FlatEncoder(), decoder=FlatDecoder(),
                 prior=StandardNormalPrior(cond_features=2, latent_dim=LATENT), likelihood=Bernoulli(TARGET),
                 latent_dim=LATENT, target=TARGET, condition_info=info)
    c, y = {"image": torch.randn(5, 1, 3, 3)}, toy_data(5)[1]
    assert torch.isfinite(model(c, y).loss)
    iw = model.iwae(c, y, k=6, chunk=10)
    assert iw.shape == (5,) and torch.isfinite(iw).all()


# -- gradients and training ----------------------------------------------------------------------------------


def test_gradients_reach_every_part():
    model = make_model()
    conds, y = toy_data(64)
    model(conds, y).loss.backward()
    for part in ("encoder", "decoder", "prior", "conditions"):
        params = list(getattr(model, part).parameters())
        assert params, part
        for p in params:
            assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient in {part}"


def test_training_decreases_the_loss(trained):
    _, _, _, losses = trained
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < first - 1.0, (first, last)


def test_trained_model_uses_its_condition(trained):
    model, _, _, _ = trained
    torch.manual_seed(6)
    s0 = model.sample({"label": torch.zeros(500, dtype=torch.long)}, mode="sample")
    s1 = model.sample({"label": torch.ones(500, dtype=torch.long)}, mode="sample")
    assert s0.shape == (500, 8)
    # label 0 makes prototypes 1111 0000 / 0000 1111 (halves agree), label 1 the alternating ones
    agree0 = (s0[:, 0] == s0[:, 1]).float().mean()
    agree1 = (s1[:, 0] == s1[:, 1]).float().mean()
    assert agree0 > 0.7 and agree1 < 0.3, (agree0, agree1)


# -- free bits -------------------------------------------------------------------------------------------------


def test_free_bits_clamps_each_dimension():
    model = make_model(learned_prior=False)
    conds, y = toy_data(64)
    beta, lam = 0.7, 0.5
    with torch.no_grad():  # make one latent dimension carry much more KL than the other
        model.encoder.net[-1].bias[0] += 2.0
    torch.manual_seed(11)
    out = model(conds, y, beta=beta, free_bits=lam)
    mu, logvar = model.posterior(y, model.features(conds, len(y)))
    kl_d = (0.5 * (logvar.exp() + mu**2 - 1 - logvar)).mean(0)
    assert (kl_d < lam).any() and (kl_d > lam).any(), kl_d  # both sides of the clamp are exercised
    torch.testing.assert_close(out.kl_per_dim, kl_d)
    torch.testing.assert_close(out.kl, kl_d.sum())
    manual = torch.maximum(kl_d, torch.tensor(lam)).sum()
    torch.testing.assert_close(out.loss, beta * manual - out.rec)
    torch.manual_seed(11)
    plain = model(conds, y, beta=beta)  # same seed, no free bits: the same draw, the plain KL
    torch.testing.assert_close(plain.rec, out.rec)
    torch.testing.assert_close(plain.loss, beta * kl_d.sum() - out.rec)


def test_free_bits_pool_over_groups():
    """One group of both dimensions: the allowance is 2 * lam for their summed KL, so the dimension above
    lam pays for its partner below it (per dimension, the one below would be lifted to lam). A group size
    beyond the latent size leaves one group of the dimensions there are."""
    model = make_model(learned_prior=False)
    conds, y = toy_data(64)
    with torch.no_grad():
        model.encoder.net[-1].bias[0] += 2.0
    torch.manual_seed(11)
    kl_d = model(conds, y).kl_per_dim.detach()
    assert kl_d[0] > kl_d[1] + 0.1, kl_d
    lam = float(kl_d[1] + 0.25 * (kl_d[0] - kl_d[1]))  # between the two, below their mean
    for group in (2, 5):
        torch.manual_seed(11)
        out = model(conds, y, free_bits=lam, free_bits_group=group)
        torch.testing.assert_close(out.loss, torch.maximum(kl_d.sum(), torch.tensor(2 * lam)) - out.rec)
    torch.manual_seed(11)
    per_dim = model(conds, y, free_bits=lam)
    torch.testing.assert_close(per_dim.loss, kl_d[0] + lam - per_dim.rec)
    assert float(per_dim.loss) > float(out.loss) + 1e-3
    torch.manual_seed(11)
    lifted = model(conds, y, free_bits=float(kl_d.sum()), free_bits_group=2)  # the whole group is free
    torch.testing.assert_close(lifted.loss, 2 * kl_d.sum() - lifted.rec)


# -- plain VAE -------------------------------------------------------------------------------------------------


def test_plain_vae_without_conditions():
    model = make_model(conditioned=False)
    _, y = toy_data(64)
    out = model({}, y)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.cond_features == 0
    samples = model.sample(n=5)
    assert samples.shape == (5, 8)
    assert model.sample(n=3, mode="sample", z="mean").shape == (3, 8)
    iw = model.iwae({}, y, k=7)
    assert iw.shape == (64,) and torch.isfinite(iw).all()
    assert model.encode({}, y).shape == (64, LATENT)
    assert model.reconstruct({}, y).shape == (64, 8)
    with pytest.raises(CVAEError, match="number of examples"):
        model.sample()


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("conds, needle", [
    ({"label": torch.zeros(4, dtype=torch.long), "colour": torch.zeros(4)}, r"unknown \['colour'\]"),
    ({}, r"missing \['label'\]"),
    ({"labels": torch.zeros(4, dtype=torch.long)}, r"missing \['label'\], unknown \['labels'\]"),
    ({"label": torch.zeros(4, 3, dtype=torch.long)}, r"condition 'label' has shape \(4, 3\)"),
    ({"label": torch.zeros(5, dtype=torch.long)}, r"4 targets.*'label': 5"),
])
def test_bad_conditions_are_named(conds, needle):
    model = make_model()
    with pytest.raises(CVAEError, match=needle):
        model(conds, torch.zeros(4, 8))
    with pytest.raises(CVAEError, match=needle):
        model.iwae(conds, torch.zeros(4, 8), k=2)


@pytest.mark.parametrize("y", [torch.zeros(4, 9), torch.zeros(4, 2, 4), torch.zeros(8)])
def test_wrong_target_shape_is_named(y):
    model = make_model()
    with pytest.raises(CVAEError, match=r"targets have shape .*expects \('batch', 8\)"):
        model({"label": torch.zeros(len(y), dtype=torch.long)}, y)
    with pytest.raises(CVAEError, match="targets have shape"):
        model.elbo({"label": torch.zeros(len(y), dtype=torch.long)}, y)


def test_bad_model_arguments():
    model = make_model()
    c, y = {"label": torch.zeros(2, dtype=torch.long)}, torch.zeros(2, 8)
    with pytest.raises(CVAEError, match="k >= 1"):
        model.iwae(c, y, k=0)
    with pytest.raises(CVAEError, match="decode mode"):
        model.reconstruct(c, y, mode="median")
    with pytest.raises(CVAEError, match="z rule"):
        model.sample(c, z="posterior")
    with pytest.raises(CVAEError, match="ConditionInfo"):
        CVAE(conditions={"label": LabelEmbedding()}, encoder=model.encoder, decoder=model.decoder,
             prior=model.prior, likelihood=model.likelihood, latent_dim=LATENT, target=TARGET, condition_info={})


# -- TensorData validation ---------------------------------------------------------------------------------------------


def _labels(n: int = 4) -> dict[str, torch.Tensor]:
    return {"label": torch.zeros(n, dtype=torch.long)}


@pytest.mark.parametrize("make, needle", [
    (lambda: TensorData(torch.zeros(0, 8), target=TARGET), "empty"),
    (lambda: TensorData(torch.tensor([[0.0] * 7 + [float("nan")]] * 2), target=TARGET), "NaN"),
    (lambda: TensorData(torch.tensor([0.0, float("inf")])), "NaN or infinite"),
    (lambda: TensorData(torch.zeros(4, 8, dtype=torch.long)), "floating-point"),
    (lambda: TensorData(torch.zeros(4, 9), target=TARGET), r"shape \(9,\).*declares \(8,\)"),
    (lambda: TensorData(torch.full((4, 8), 2.0), target=TARGET), r"outside the declared \[0, 1\]"),
    (lambda: TensorData(torch.zeros(4, 8), _labels(3), TARGET, COND_INFO), "'label' has 3 rows"),
    (lambda: TensorData(torch.zeros(4, 8), {"label": torch.tensor([0, 1, 2, 1])}, TARGET, COND_INFO),
     r"labels in \[0, 2\]; allowed are 0..1"),
    (lambda: TensorData(torch.zeros(4, 8), {"label": torch.tensor([0, -1, 0, 1])}, TARGET, COND_INFO),
     r"labels in \[-1, 1\]"),
    (lambda: TensorData(torch.zeros(4, 8), {"label": torch.zeros(4)}, TARGET, COND_INFO), "integer"),
    (lambda: TensorData(torch.zeros(4, 8), {"label": torch.zeros(4, 2, dtype=torch.long)}, TARGET, COND_INFO),
     r"'label' has shape \(2,\)"),
    (lambda: TensorData(torch.zeros(4, 8), {"obs": torch.full((4, 3), float("nan"))}), "'obs' contains NaN"),
])
def test_tensor_data_rejects_bad_data(make, needle):
    with pytest.raises(CVAEError, match=needle):
        make()


def test_tensor_data_accepts_good_data():
    data = TensorData(torch.ones(4, 8), {"label": torch.tensor([0, 1, 1, 0])}, TARGET, COND_INFO)
    conds, y = data.batch(torch.tensor([1, 2]))
    assert len(data) == 4 and y.shape == (2, 8) and conds["label"].tolist() == [1, 1]
