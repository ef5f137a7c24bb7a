"""Open a finished (or interrupted) run: its config, its data description and its trained model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .build import build_model, resolve_device
from .checkpoint import best_path, latest_checkpoint, load_checkpoint
from .config import with_defaults
from .data import ConditionInfo, TargetInfo
from .errors import CheckpointError, CVAEError
from .model import CVAE

__all__ = ["Run", "load_run"]


@dataclass
class Run:
    path: Path
    checkpoint: Path
    config: dict[str, Any]
    model: CVAE
    device: torch.device
    epoch: int
    step: int
    derived_from: Path | None = None  # the trained run whose encoder and decoder this one reuses (`cvae fit-prior`)


def load_run(run_dir: str | Path, device: str = "auto", last: bool = False) -> Run:
    """The model of a run directory, in eval mode: at the epoch `train.keep_best` kept (checkpoints/best.pt)
    if it kept one, else (or with `last`) at its newest checkpoint."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        owner = next((d for d in run_dir.resolve().parents[:2] if (d / "checkpoints").is_dir()), None)
        hint = (f"; pass the run it belongs to, {owner}" if owner is not None
                else " (a run directory is the --out of `cvae train`, holding checkpoints/ and config.json)")
        raise CVAEError(f"{run_dir} is a file, not a run directory{hint}")
    if not run_dir.is_dir():
        raise CVAEError(f"run directory {run_dir} does not exist (it is the --out of `cvae train`)")
    best = best_path(run_dir / "checkpoints")
    path = best if best.is_file() and not last else latest_checkpoint(run_dir / "checkpoints")
    dev = resolve_device(device)
    state = load_checkpoint(path, map_location=dev)
    target = TargetInfo.from_dict(state["target"])
    conditions = {k: ConditionInfo.from_dict(v) for k, v in state["conditions"].items()}
    config = with_defaults(state["config"])
    model = build_model(config, target, conditions).to(dev)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit the model its config describes: {str(exc).splitlines()[0]}") from None
    model.eval()
    source = state.get("fitted_prior", {}).get("from")  # a checkpoint file: <run>/checkpoints/<file>
    return Run(run_dir, path, config, model, dev, state["epoch"], state["step"],
               Path(source).parent.parent if source else None)
