"""Image completion as conditioning (structured output prediction, Sohn et al. 2015): the condition is
the visible part of an image, the target is the rest.

The `completion` dataset wraps any registered image dataset. Its condition "visible" is the image with
the hidden pixels zeroed, stacked with the visibility mask as one more channel: (C + 1, H, W). Its
target is either the hidden pixels only (`target = "hidden"`, a vector of C * hidden pixels, the
default: the log-likelihood then counts exactly the pixels to predict, as in the paper) or the whole
image (`target = "image"`, for convolutional decoders). Both are computed per batch from the wrapped
split, so nothing is stored twice.

Masks (True = visible), with the quadrants in the order of Sohn et al.'s MNIST experiment as
reproduced by Pyro's tutorial: "quadrant1" shows the bottom-left quadrant, "quadrant2" adds the
top-right one, "quadrant3" adds the bottom-right one (only the top-left is hidden); "left", "right",
"top", "bottom" show that half; "center" hides the central square of half the size.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

import cvae
import cvae.nets

__all__ = ["MASKS", "make_mask", "load_completion", "CompletionSplit", "ImageConditionEncoder", "compose",
           "completion_info"]

MASKS = ("quadrant1", "quadrant2", "quadrant3", "left", "right", "top", "bottom", "center")
TARGETS = ("hidden", "image")


def make_mask(name: str, height: int, width: int) -> torch.Tensor:
    """The visibility mask (height, width), True where the condition shows the pixel."""
    if name not in MASKS:
        raise cvae.CVAEError(f"dataset 'completion': unknown mask {name!r}; known: {', '.join(MASKS)}")
    h2, w2 = height // 2, width // 2
    m = torch.zeros(height, width, dtype=torch.bool)
    if name.startswith("quadrant"):
        m[h2:, :w2] = True  # bottom-left
        if name in ("quadrant2", "quadrant3"):
            m[:h2, w2:] = True  # top-right
        if name == "quadrant3":
            m[h2:, w2:] = True  # bottom-right
    elif name == "left":
        m[:, :w2] = True
    elif name == "right":
        m[:, w2:] = True
    elif name == "top":
        m[:h2, :] = True
    elif name == "bottom":
        m[h2:, :] = True
    else:  # center: everything but the central square of half the size
        m[:] = True
        m[height // 4:height // 4 + h2, width // 4:width // 4 + w2] = False
    if m.all() or not m.any():
        raise cvae.CVAEError(f"dataset 'completion': mask {name!r} on a {height}x{width} image hides "
                             f"{'nothing' if m.all() else 'everything'}; the images are too small for it")
    return m


def _visible(y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(batch, C, H, W) images -> (batch, C + 1, H, W): hidden pixels zeroed, plus the mask channel."""
    m = mask.to(y.dtype).expand(len(y), 1, *mask.shape)
    return torch.cat([y * m, m], dim=1)


def _target(y: torch.Tensor, mask: torch.Tensor, target: str) -> torch.Tensor:
    return y[:, :, ~mask].flatten(1) if target == "hidden" else y


def compose(visible: torch.Tensor, y: torch.Tensor, mask: torch.Tensor, target: str) -> torch.Tensor:
    """Whole images from a condition "visible" (batch, C + 1, H, W) and a target: the visible pixels
    as given, the hidden ones from `y` (hidden pixels, or whole images whose visible part is ignored)."""
    image = visible[:, :-1].clone()
    hidden = ~mask.to(image.device)
    c = image.shape[1]
    if target == "hidden":
        image[:, :, hidden] = y.view(len(y), c, -1).to(image.dtype)
    else:
        image[:, :, hidden] = y[:, :, hidden].to(image.dtype)
    return image


class CompletionSplit(cvae.TensorData):
    """A wrapped in-memory split whose batches are (`{"visible": ..., other kept conditions}`, target)."""

    def __init__(self, base: cvae.TensorData, mask: torch.Tensor, target: str, keep: Sequence[str]) -> None:
        self.base, self.mask, self.target, self.keep = base, mask, target, tuple(keep)
        self.y = base.y  # row count and device for iterate_batches; targets are made per batch
        self.conditions = {}

    def _wrap(self, conds: dict[str, torch.Tensor], y: torch.Tensor) -> cvae.data.Batch:
        mask = self.mask.to(y.device)
        single = y.ndim == 3
        if single:
            y = y.unsqueeze(0)
        out = {k: conds[k] for k in self.keep}
        out["visible"] = _visible(y, mask)
        t = _target(y, mask, self.target)
        if single:
            out["visible"], t = out["visible"][0], t[0]
        return out, t

    def __getitem__(self, i: int) -> cvae.data.Batch:
        return self._wrap(*self.base[i])

    def batch(self, index: torch.Tensor) -> cvae.data.Batch:
        return self._wrap(*self.base.batch(index))

    def to(self, device: torch.device | str) -> CompletionSplit:
        return CompletionSplit(self.base.to(device), self.mask.to(device), self.target, self.keep)


class _LazyCompletion(Dataset):
    """The same for a split read item by item (CelebA)."""

    def __init__(self, base: Dataset, mask: torch.Tensor, target: str, keep: Sequence[str]) -> None:
        self.base, self.mask, self.target, self.keep = base, mask, target, tuple(keep)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> cvae.data.Batch:
        conds, y = self.base[i]
        out = {k: conds[k] for k in self.keep}
        out["visible"] = _visible(y.unsqueeze(0), self.mask)[0]
        return out, _target(y.unsqueeze(0), self.mask, self.target)[0]


def completion_info(bundle: cvae.DataBundle) -> dict[str, Any] | None:
    """What a completion dataset hides and predicts (`mask`, `target`), or None for other datasets."""
    return bundle.extras.get("completion")


def load_completion(*, dataset: str = "digits", dataset_options: dict[str, Any] | None = None, mask: str = "quadrant1",
                    target: str = "hidden", keep_conditions: list[str] | None = None) -> cvae.DataBundle:
    """Wrap the image dataset `dataset` (built with `dataset_options`) for completion: condition
    "visible" shows the pixels of `mask`, the target is the rest (`target="hidden"`) or the whole
    image (`"image"`). The wrapped dataset's own conditions are dropped unless listed in `keep_conditions`."""
    if target not in TARGETS:
        raise cvae.CVAEError(f"dataset 'completion': target must be one of {', '.join(TARGETS)}, got {target!r}")
    if dataset == "completion":
        raise cvae.CVAEError("dataset 'completion' cannot wrap itself")
    if keep_conditions is not None and not isinstance(keep_conditions, list):
        raise cvae.CVAEError(f"dataset 'completion': keep_conditions must be a list of condition names, for example "
                             f"[\"label\"], got {keep_conditions!r}")
    spec = cvae.get_registry().get("dataset", dataset)
    try:
        base = spec.build(options=dataset_options or {}, where=f"data.options.dataset_options (dataset {dataset!r})")
    except cvae.CVAEError as exc:  # the wrapped dataset names its own options; here they sit one table down
        moved = re.sub(r"\bdata\.options\.(?!dataset_options)", "data.options.dataset_options.", str(exc))
        raise type(exc)(moved) from None
    t = base.target
    if not t.is_image:
        raise cvae.CVAEError(f"dataset 'completion': {dataset!r} has targets of shape {tuple(t.shape)}, not images "
                             f"(channels, height, width)")
    keep = list(keep_conditions or [])
    missing = [k for k in keep if k not in base.conditions]
    if missing or "visible" in keep:
        raise cvae.CVAEError(f"dataset 'completion': keep_conditions {missing or ['visible']} are not conditions of "
                             f"{dataset!r} to keep; it provides {sorted(base.conditions) or 'none'}")
    c, h, w = t.shape
    m = make_mask(mask, h, w)
    hidden = int((~m).sum())
    target_info = (cvae.TargetInfo((c * hidden,), t.low, t.high, t.levels) if target == "hidden" else t)
    lo, hi = min(t.low, 0.0), max(t.high, 1.0)  # zeroed pixels and the mask channel sit in [0, 1]
    conditions = {k: base.conditions[k] for k in keep}
    conditions["visible"] = cvae.ConditionInfo("image", (c + 1, h, w))
    wrap = lambda split: (CompletionSplit(split, m, target, keep) if isinstance(split, cvae.TensorData)  # noqa: E731
                          else _LazyCompletion(split, m, target, keep))
    extras = {"completion": {"mask": m, "mask_name": mask, "target": target, "dataset": dataset,
                             "image": t, "value_range": (lo, hi)}}
    return cvae.DataBundle(f"completion({dataset},{mask})", target_info, conditions, wrap(base.train),
                           wrap(base.test), extras)


class ImageConditionEncoder(nn.Module):
    """An image condition (C, H, W) -> a feature vector: strided 3x3 convolutions (`channels`), then a
    linear layer to `dim` features."""

    def __init__(self, info: cvae.ConditionInfo, channels: Sequence[int] = (32, 64), dim: int = 128,
                 activation: str = "relu") -> None:
        super().__init__()
        if len(info.shape) != 3:
            raise cvae.CVAEError(f"condition encoder 'image' needs an image condition (channels, height, width), "
                                 f"got shape {tuple(info.shape)}")
        channels = [int(c) for c in channels]
        if not channels or min(channels) < 1 or int(dim) < 1:
            raise cvae.CVAEError(f"condition encoder 'image': channels and dim must be >= 1, got {channels}, {dim}")
        act = cvae.nets.activation(activation, "condition encoder 'image'")
        self.shape = tuple(int(s) for s in info.shape)
        layers: list[nn.Module] = []
        width, (h, w) = self.shape[0], self.shape[1:]
        for c in channels:
            layers += [nn.Conv2d(width, c, 3, stride=2, padding=1), act()]
            width, h, w = c, (h - 1) // 2 + 1, (w - 1) // 2 + 1
        self.net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * h * w, int(dim)))
        self.out_features = int(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.to(torch.get_default_dtype()))

    def parse(self, text: str) -> torch.Tensor:
        """An image condition from the command line: the path of a .npy file holding one array of the
        condition's shape (for completion: the image with hidden pixels zeroed, then the mask channel)."""
        return cvae.data.load_array(text, self.shape, "image condition")

    def extra_repr(self) -> str:
        return f"shape={self.shape}, out_features={self.out_features}"
