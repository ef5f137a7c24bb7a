"""PNG pictures of a model: sample grids (one row per class) and reconstructions beside originals."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from .data import DataBundle, iterate_batches
from .model import CVAE

__all__ = ["class_condition", "grid_conditions", "save_grid", "save_sample_grid", "save_reconstructions"]

MIN_TILE = 32  # pixels: smaller images are enlarged (nearest neighbour) so a grid is readable


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Save images in [0, 1], shape (N, C, H, W), as one PNG grid; tiny images are enlarged."""
    scale = max(1, MIN_TILE // max(images.shape[-2:]))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    save_image(images, path, nrow=nrow, padding=scale, pad_value=0.5)
    return path


def class_condition(model: CVAE) -> str | None:
    """The first categorical condition, whose classes become the rows of a sample grid."""
    return next((n for n, i in sorted(model.condition_info.items()) if i.num_classes), None)


def grid_conditions(model: CVAE, data: DataBundle, per_row: int, device: torch.device) -> tuple[dict[str, torch.Tensor], int]:
    """Conditions for a grid: for each class, `per_row` test examples of that class (their other
    conditions kept); without a class condition, the first test examples. Returns (conditions, rows)."""
    conds, _ = next(iterate_batches(data.test, len(data.test), device=device))
    label = class_condition(model)
    if label is None:
        n = per_row * per_row
        return {k: v[:n] for k, v in conds.items()}, per_row
    rows = []
    for c in range(model.condition_info[label].num_classes):
        idx = (conds[label] == c).nonzero().flatten()
        if len(idx) == 0:  # a class absent from the test split still gets its row
            idx = torch.zeros(1, dtype=torch.long, device=device)
        rows.append(idx[torch.arange(per_row, device=device) % len(idx)])
    index = torch.cat(rows)
    out = {k: v[index] for k, v in conds.items()}
    out[label] = torch.arange(len(rows), device=device).repeat_interleave(per_row)
    return out, len(rows)


def _to_unit(model: CVAE, y: torch.Tensor) -> torch.Tensor:
    t = model.target
    return ((y - t.low) / (t.high - t.low)).clamp(0, 1)


@torch.no_grad()
def save_sample_grid(model: CVAE, data: DataBundle, path: Path, per_row: int = 10, mode: str = "mean",
                     seed: int = 0) -> Path | None:
    """Prior samples, one row per class; None when the targets are not images."""
    if not model.target.is_image:
        return None
    device = next(model.parameters()).device
    conds, _ = grid_conditions(model, data, per_row, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        images = model.sample(conds, n=per_row * per_row, mode=mode)
    return save_grid(_to_unit(model, images), path, nrow=per_row)


@torch.no_grad()
def save_reconstructions(model: CVAE, data: DataBundle, path: Path, n: int = 10, mode: str = "mean") -> Path | None:
    """Test images (top row of each pair) above their reconstructions; None when not images."""
    if not model.target.is_image:
        return None
    device = next(model.parameters()).device
    conds, y = next(iterate_batches(data.test, n, device=device))
    rec = model.reconstruct(conds, y, mode=mode)
    return save_grid(_to_unit(model, torch.cat([y, rec])), path, nrow=len(y))
