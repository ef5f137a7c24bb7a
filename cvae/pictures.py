"""PNG pictures of a model: sample grids (one row per class), reconstructions beside originals, latent
interpolations, and completions of masked inputs."""

from __future__ import annotations

from pathlib import Path

import torch
from torchvision.utils import save_image

from .checkpoint import atomic_write
from .data import DataBundle, iterate_batches
from .model import CVAE

__all__ = ["class_condition", "grid_conditions", "save_grid", "save_sample_grid", "save_reconstructions",
           "interpolate", "save_interpolations", "complete", "save_completions"]

MIN_TILE = 32  # pixels: smaller images are enlarged (nearest neighbour) so a grid is readable


def save_grid(images: torch.Tensor, path: Path, nrow: int) -> Path:
    """Save images in [0, 1], shape (N, C, H, W), as one PNG grid; tiny images are enlarged."""
    scale = max(1, MIN_TILE // max(images.shape[-2:]))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1)
    # atomically: a run killed while drawing keeps its previous picture, never half of one
    atomic_write(Path(path), lambda f: save_image(images, f, format="png", nrow=nrow, padding=scale, pad_value=0.5))
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
                     seed: int = 0, temperature: float = 1.0) -> Path | None:
    """Prior samples (at `temperature`), one row per class; None when the targets are not images."""
    if not model.target.is_image:
        return None
    device = next(model.parameters()).device
    conds, _ = grid_conditions(model, data, per_row, device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        images = model.sample(conds, n=per_row * per_row, mode=mode, temperature=temperature)
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


@torch.no_grad()
def interpolate(model: CVAE, conds_a: dict[str, torch.Tensor], y_a: torch.Tensor, conds_b: dict[str, torch.Tensor],
                y_b: torch.Tensor, steps: int = 8, mode: str = "mean") -> torch.Tensor:
    """Decodes along straight lines from each example of a to its partner in b: the posterior means
    of z and the condition features are both mixed in `steps` equal steps (ends included), so a pair of
    different classes morphs across the class boundary. Returns (batch, steps, *target.shape)."""
    h_a, h_b = model.features(conds_a, len(y_a)), model.features(conds_b, len(y_b))
    z_a, z_b = model.posterior(y_a, h_a)[0], model.posterior(y_b, h_b)[0]
    t = torch.linspace(0, 1, steps, device=z_a.device).view(1, steps)
    mix = lambda a, b: (a[:, None] * (1 - t.view(*t.shape, *[1] * (a.ndim - 1)))  # noqa: E731 (vectors or maps)
                        + b[:, None] * t.view(*t.shape, *[1] * (b.ndim - 1))).flatten(0, 1)
    z, h = mix(z_a, z_b), mix(h_a, h_b)
    return model.decode(z, h, mode).view(len(y_a), steps, *model.target.shape)


@torch.no_grad()
def save_interpolations(model: CVAE, data: DataBundle, path: Path, rows: int = 8, steps: int = 8,
                        mode: str = "mean") -> Path | None:
    """Rows of latent interpolations between test images i and i + rows: the first image, `steps`
    decodes, the second image; None when the targets are not images."""
    if not model.target.is_image:
        return None
    device = next(model.parameters()).device
    conds, y = next(iterate_batches(data.test, 2 * rows, device=device))
    rows = len(y) // 2
    if rows == 0:
        return None
    a = ({k: v[:rows] for k, v in conds.items()}, y[:rows])
    b = ({k: v[rows:2 * rows] for k, v in conds.items()}, y[rows:2 * rows])
    path_images = interpolate(model, *a, *b, steps=steps, mode=mode)
    grid = torch.cat([a[1][:, None], path_images, b[1][:, None]], dim=1).flatten(0, 1)
    return save_grid(_to_unit(model, grid), path, nrow=steps + 2)


@torch.no_grad()
def complete(model: CVAE, conditions: dict[str, torch.Tensor], y: torch.Tensor, mask: torch.Tensor,
             iterations: int = 20, mode: str = "mean") -> torch.Tensor:
    """Fill in the hidden pixels of images with any image model, by pseudo-Gibbs sampling (Rezende et
    al. 2014): start from the mid-range value, then repeatedly draw z ~ q(z | x, y), decode, and put
    the known pixels back. `mask` (broadcastable to y) is True where a pixel is known."""
    t = model.target
    mask = mask.to(y.device).expand_as(y)
    h = model.features(conditions, len(y))
    current = torch.where(mask, y, torch.full_like(y, (t.low + t.high) / 2))
    for _ in range(max(1, iterations)):
        mu, logvar = model.posterior(current, h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        current = torch.where(mask, y, model.decode(z, h, mode))
    return current


@torch.no_grad()
def save_completions(model: CVAE, data: DataBundle, path: Path, mask: torch.Tensor, rows: int = 8, samples: int = 5,
                     iterations: int = 20, mode: str = "mean", seed: int = 0) -> Path | None:
    """For `rows` test images: the masked input (hidden pixels grey), `samples` completions by
    `complete`, and the original. `mask` is (H, W) or (C, H, W), True where a pixel is shown."""
    if not model.target.is_image:
        return None
    device = next(model.parameters()).device
    conds, y = next(iterate_batches(data.test, rows, device=device))
    mask = mask.to(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        reps = {k: v.repeat_interleave(samples, 0) for k, v in conds.items()}
        filled = complete(model, reps, y.repeat_interleave(samples, 0), mask, iterations, mode)
    unit = _to_unit(model, y)
    shown = torch.where(mask.expand_as(unit), unit, torch.full_like(unit, 0.5))
    filled = _to_unit(model, filled).view(len(y), samples, *y.shape[1:])
    grid = torch.cat([shown[:, None], filled, unit[:, None]], dim=1).flatten(0, 1)
    return save_grid(grid, path, nrow=samples + 2)
