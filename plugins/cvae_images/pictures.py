"""Pictures of image runs: latent interpolations and completions, as PNG.

For a model trained on the `completion` dataset the completions are its own conditional samples
(visible part given, hidden part drawn from p(y | x)); for any other image model they are
pseudo-Gibbs completions of the hidden right half (`cvae.pictures.complete`).
"""

from __future__ import annotations

from pathlib import Path

import torch

import cvae
from cvae.pictures import save_completions, save_grid, save_interpolations

from .completion import compose, completion_info, make_mask

__all__ = ["save_conditional_completions", "save_image_pictures"]


@torch.no_grad()
def save_conditional_completions(model: cvae.CVAE, data: cvae.DataBundle, path: Path, rows: int = 8, samples: int = 5,
                                 mode: str = "mean", seed: int = 0) -> Path:
    """For `rows` test images of a completion dataset: the visible part (hidden pixels grey), `samples`
    completions drawn from the model, and the original image."""
    info = completion_info(data)
    mask, target = info["mask"], info["target"]
    device = next(model.parameters()).device
    conds, y = next(cvae.iterate_batches(data.test, rows, device=device))
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        reps = {k: v.repeat_interleave(samples, 0) for k, v in conds.items()}
        drawn = model.sample(reps, mode=mode)
    visible = conds["visible"]
    image = info["image"]
    unit = lambda x: ((x - image.low) / (image.high - image.low)).clamp(0, 1)  # noqa: E731
    truth = unit(compose(visible, y, mask, target))
    filled = unit(compose(visible.repeat_interleave(samples, 0), drawn, mask, target))
    shown = torch.where(mask.to(device).expand_as(truth), truth, torch.full_like(truth, 0.5))
    grid = torch.cat([shown[:, None], filled.view(len(y), samples, *truth.shape[1:]), truth[:, None]], 1)
    return save_grid(grid.flatten(0, 1), path, nrow=samples + 2)


def save_image_pictures(model: cvae.CVAE, data: cvae.DataBundle, out: Path, mode: str = "mean",
                        seed: int = 0) -> list[Path]:
    """interpolations.png and completions.png in `out`, where they apply; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    written = []
    if completion_info(data) is not None:
        written.append(save_conditional_completions(model, data, out / "completions.png", mode=mode, seed=seed))
    elif model.target.is_image:
        _, h, w = model.target.shape
        mask = torch.ones(h, w, dtype=torch.bool)
        mask[:, w // 2:] = False
        written.append(save_completions(model, data, out / "completions.png", mask, mode=mode, seed=seed))
    path = save_interpolations(model, data, out / "interpolations.png", mode=mode)
    if path is not None:
        written.append(path)
    return written
