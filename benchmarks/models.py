"""The benchmarked models, their synthetic data, and the hand-written VAE they are compared with.

Each model is built by the toolkit from a config (through the registry, like `cvae train`); the
hand-written baseline reuses the same encoder and decoder networks (deep copies, so the weights start
equal) but writes conditioning, reparameterisation, loss and loop by hand, the way the usual PyTorch
VAE example does. Every toolkit setting that shapes the update is pinned to the hand-written loop's
(Adam at lr 1e-3, no weight decay, no gradient clipping, beta 1, no free bits) so that both compute the
same update, and the label condition is one-hot on both sides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import cvae

__all__ = ["BenchModel", "MODELS", "synthetic", "bundle", "HandWrittenVAE", "hand_written_sample"]

POLICY_OBS, POLICY_ACTIONS = 32, 16  # an observation vector -> a chunk of 8 two-dimensional actions
POLICY_SIGMA = 0.1
CLASSES = 10


@dataclass(frozen=True)
class BenchModel:
    """A benchmarked model: its dataset, its config overrides and its batch sizes per tier and device type."""

    name: str
    description: str
    likelihood: str  # "gaussian" (fixed sigma) or "bernoulli": the hand-written loss mirrors it
    condition: str  # "vector" (an observation) or "label" (a class index)
    target_shape: tuple[int, ...]
    overrides: tuple[str, ...]
    batches: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    architecture: str = "mlp"

    def batch_sizes(self, tier: str, device_type: str) -> tuple[int, ...]:
        return self.batches.get(tier, {}).get(device_type, ())


# every setting that shapes the update is pinned to the hand-written loop's: Adam at lr 1e-3, no weight decay,
# no clipping, beta 1 throughout, no free bits
_COMMON = ('model.prior="standard"', "train.lr=0.001", "train.weight_decay=0", "train.grad_clip=0", "train.beta=1",
           'train.schedule="constant"', "train.schedule_options={}", "train.free_bits=0", "train.progress=false",
           "eval.at_end=false", "train.epochs=1")

MODELS: dict[str, BenchModel] = {
    "policy": BenchModel(
        "policy", f"MLP CVAE policy: observation ({POLICY_OBS},) -> action chunk ({POLICY_ACTIONS},), Gaussian "
        f"sigma={POLICY_SIGMA}, hidden [256, 256], z 16",
        "gaussian", "vector", (POLICY_ACTIONS,),
        ('data.name="bench_policy"', "model.architecture_options.hidden=[256, 256]", "model.latent_dim=16",
         'model.likelihood="gaussian"', f"model.likelihood_options={{sigma = {POLICY_SIGMA}}}", *_COMMON),
        {"tiny": {"cpu": (16,), "cuda": (64,)}, "quick": {"cpu": (256,), "cuda": (1024,)},
         "full": {"cpu": (64, 256, 1024), "cuda": (256, 1024, 4096)}}),
    "image": BenchModel(
        "image", "digits-sized MLP image CVAE: label -> 1x8x8, Bernoulli, hidden [512, 256], z 16",
        "bernoulli", "label", (1, 8, 8),
        ('data.name="bench_image"', "model.architecture_options.hidden=[512, 256]", "model.latent_dim=16",
         'model.likelihood="bernoulli"', "model.likelihood_options={}",
         'conditions.label.options.encoding="onehot"', *_COMMON),
        {"tiny": {"cpu": (16,), "cuda": (64,)}, "quick": {"cpu": (64,), "cuda": (256,)},
         "full": {"cpu": (64, 256), "cuda": (256, 1024)}}),
    "conv": BenchModel(
        "conv", "the lecture's conv CVAE: label -> 3x64x64, Bernoulli, architecture 'conv' with its defaults, z 256",
        "bernoulli", "label", (3, 64, 64),
        ('data.name="bench_conv"', 'model.architecture="conv"', "model.architecture_options={}",
         "model.latent_dim=256", 'model.likelihood="bernoulli"', "model.likelihood_options={}",
         'conditions.label.options.encoding="onehot"', *_COMMON),
        {"tiny": {"cpu": (2,), "cuda": (16,)}, "quick": {"cpu": (16,), "cuda": (256,)},
         "full": {"cpu": (16, 64), "cuda": (64, 256)}},
        architecture="conv"),
}


def synthetic(model: str, n: int, seed: int = 0) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """`n` examples `(conditions, y)` for `model`, a pure function of `(model, n, seed)`."""
    g = torch.Generator().manual_seed(seed)
    if model == "policy":
        obs = torch.randn(n, POLICY_OBS, generator=g)
        mix = torch.randn(POLICY_OBS, POLICY_ACTIONS, generator=torch.Generator().manual_seed(1234)) / math.sqrt(POLICY_OBS)
        y = torch.tanh(obs @ mix + 0.3 * torch.randn(n, POLICY_ACTIONS, generator=g))
        return {"obs": obs}, y
    shape = MODELS[model].target_shape
    labels = torch.randint(0, CLASSES, (n,), generator=g)
    y = (torch.rand(n, *shape, generator=g) * 16).round() / 16  # grey values on 17 levels, like digits
    return {"label": labels}, y


def bundle(model: str, n: int = 64, seed: int = 0) -> cvae.DataBundle:
    """The synthetic data of `model` as a dataset (`n` training examples, a few test examples)."""
    spec = MODELS[model]
    if spec.condition == "vector":
        target = cvae.TargetInfo(spec.target_shape, -1.0, 1.0)
        info = {"obs": cvae.ConditionInfo("vector", (POLICY_OBS,))}
    else:
        target = cvae.TargetInfo(spec.target_shape, 0.0, 1.0, levels=17)
        info = {"label": cvae.ConditionInfo("label", (), CLASSES, tuple(str(i) for i in range(CLASSES)))}
    train = cvae.TensorData(*reversed(synthetic(model, n, seed)), target, info, name=f"bench_{model}/train")
    test = cvae.TensorData(*reversed(synthetic(model, 8, seed + 10_000)), target, info, name=f"bench_{model}/test")
    return cvae.DataBundle(f"bench_{model}", target, info, train, test)


class HandWrittenVAE(nn.Module):
    """The usual hand-written conditional VAE loss around given encoder and decoder networks:
    one-hot or raw conditioning, `mu + std * randn`, a summed reconstruction loss and the closed-form
    KL to N(0, I), both divided by the batch size."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, spec: BenchModel) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.likelihood, self.condition = spec.likelihood, spec.condition

    def features(self, c: torch.Tensor) -> torch.Tensor:
        return F.one_hot(c, CLASSES).float() if self.condition == "label" else c

    def forward(self, y: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = self.features(c)
        mu, logvar = self.encoder(y, h)
        std = torch.exp(0.5 * logvar)
        z = mu + std * torch.randn_like(std)
        out = self.decoder(z, h)[:, 0]
        if self.likelihood == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(out, y, reduction="sum")
        else:
            rec = (F.mse_loss(out, y, reduction="sum") / (2 * POLICY_SIGMA**2)
                   + y.numel() * (math.log(POLICY_SIGMA) + 0.5 * math.log(2 * math.pi)))
        kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        return (rec + kl) / len(y)


def hand_written_sample(model: HandWrittenVAE, c: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """Draw z ~ N(0, I) and decode to the likelihood's mean, by hand."""
    h = model.features(c)
    z = torch.randn(len(c), latent_dim, device=h.device)
    out = model.decoder(z, h)[:, 0]
    return torch.sigmoid(out) if model.likelihood == "bernoulli" else out
