"""Evaluation: held-out ELBO, IWAE log-likelihood, KL and active units, plus every registered metric."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .data import DataBundle
from .model import CVAE

__all__ = ["EvalContext"]


@dataclass
class EvalContext:
    """What a metric plugin sees. `run_dir` (None outside a run) is where a metric may cache work,
    such as a classifier trained on the real training split; `seed` makes its randomness repeatable;
    `sample_mode` is how samples are decoded ("mean" or "sample")."""

    model: CVAE
    data: DataBundle
    device: torch.device
    run_dir: Path | None = None
    seed: int = 0
    sample_mode: str = "mean"
