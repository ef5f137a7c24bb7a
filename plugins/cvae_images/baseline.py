"""The deterministic baseline of Sohn et al. 2015: the CVAE's own condition encoders, decoder and
likelihood with z held at zero, trained by maximum likelihood on the same split with the same settings.

Its negative log-likelihood -log p(y | x) is exact (no latent to integrate out), so it stands beside the
CVAE's importance-sampled estimate (`CVAE.iwae`) as a like-for-like comparison.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

import cvae

__all__ = ["Deterministic", "train_deterministic", "deterministic_nll"]


class Deterministic(nn.Module):
    """p(y | x) = likelihood(decoder(z = 0, h(x))): a CVAE's parts without the latent."""

    def __init__(self, model: cvae.CVAE) -> None:
        super().__init__()
        self.model = model  # only its condition encoders, decoder and likelihood are used

    def log_prob(self, conditions: Mapping[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        h = self.model.features(conditions, len(y))
        z = torch.zeros(len(y), self.model.latent_dim, device=y.device, dtype=h.dtype)
        return self.model.likelihood.log_prob(self.model.decoder(z, h), y)

    def parameters_used(self) -> list[nn.Parameter]:
        m = self.model
        return [*m.conditions.parameters(), *m.decoder.parameters(), *m.likelihood.parameters()]


@torch.no_grad()
def deterministic_nll(net: Deterministic, split: Any, device: torch.device, batch_size: int = 256) -> float:
    """Mean -log p(y | x) over a split, nats per example."""
    net.eval()
    total, n = 0.0, 0
    for conds, y in cvae.iterate_batches(split, batch_size, device=device):
        total -= net.log_prob(conds, y).sum().item()
        n += len(y)
    return total / n


def train_deterministic(config: Mapping[str, Any], data: cvae.DataBundle, out: Path, device: torch.device,
                        progress: bool = False) -> dict[str, Any]:
    """Train the baseline for `config`'s epochs, batch size, learning rate, weight decay and gradient
    clipping, seeded by `config["seed"]`; writes `out/deterministic.pt` and `out/eval.json` and returns
    the figures (test NLL in nats, and bits per dimension for discrete likelihoods). With `progress`, a
    progress bar per epoch on a terminal, as `cvae train` shows."""
    tc = config["train"]
    torch.manual_seed(config["seed"])
    net = Deterministic(cvae.build_model(config, data.target, data.conditions)).to(device)
    params = net.parameters_used()
    try:
        opt = torch.optim.Adam(params, lr=tc["lr"], weight_decay=tc["weight_decay"], fused=tc["fast"])
    except (RuntimeError, TypeError, ValueError):
        opt = torch.optim.Adam(params, lr=tc["lr"], weight_decay=tc["weight_decay"])
    train = data.train.to(device) if isinstance(data.train, cvae.TensorData) else data.train
    bs = config["data"]["batch_size"]
    start = time.perf_counter()
    for epoch in range(tc["epochs"]):
        net.train()
        gen = torch.Generator().manual_seed(config["seed"] * 1_000_003 + epoch)
        batches = tqdm(cvae.iterate_batches(train, bs, shuffle=True, generator=gen, device=device),
                       total=math.ceil(len(train) / bs), desc=f"deterministic: epoch {epoch + 1}/{tc['epochs']}",
                       disable=None if progress else True, leave=False, dynamic_ncols=True)
        for step, (conds, y) in enumerate(batches):
            loss = -net.log_prob(conds, y).mean()
            value = loss.item()
            if not math.isfinite(value):
                raise cvae.CVAEError(f"deterministic baseline: the loss is not finite at epoch {epoch + 1}, "
                                     f"batch {step}; try a lower train.lr")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(params, tc["grad_clip"])
            opt.step()
            batches.set_postfix(nll=f"{value:.2f}", refresh=False)
    seconds = time.perf_counter() - start
    nll = deterministic_nll(net, data.test, device, config["eval"]["batch_size"])
    dims = data.target.numel
    results = {"nll_nats": nll, "nll_bits_per_dim": nll / (dims * math.log(2)) if net.model.likelihood.discrete else None,
               "train_seconds": seconds, "epochs": tc["epochs"]}
    out.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / "deterministic.pt")
    (out / "eval.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(dict(config), indent=2) + "\n")
    return results
