"""The data contract: a batch is `(conditions, y)`, described by `TargetInfo` and `ConditionInfo`."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from .errors import CVAEError

__all__ = ["TargetInfo", "ConditionInfo", "DataBundle", "TensorData", "Rows", "hold_out", "held_out_count",
           "iterate_batches", "load_array", "Batch"]

Batch = tuple[dict[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class TargetInfo:
    """What is generated: per-example `shape`, value range, and `levels` evenly spaced values in
    [low, high] for discrete data (None for continuous data). Images are (channels, height, width)."""

    shape: tuple[int, ...]
    low: float = 0.0
    high: float = 1.0
    levels: int | None = None

    @property
    def is_image(self) -> bool:
        return len(self.shape) == 3

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TargetInfo:
        return cls(**{**d, "shape": tuple(d["shape"])})


@dataclass(frozen=True)
class ConditionInfo:
    """A condition a dataset provides: `encoder` names the default condition encoder, `shape` is the
    per-example shape of the raw tensor, `num_classes`/`class_names` describe categorical ones."""

    encoder: str
    shape: tuple[int, ...] = ()
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "class_names": list(self.class_names)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ConditionInfo:
        return cls(**{**d, "shape": tuple(d["shape"]), "class_names": tuple(d["class_names"])})


@dataclass
class DataBundle:
    """A dataset's train and test splits and what they hold; `validation`, when the config asks for one
    (`data.validation`), is held out of the training split by `load_data`, never by the dataset."""

    name: str
    target: TargetInfo
    conditions: dict[str, ConditionInfo]
    train: Dataset
    test: Dataset
    extras: dict[str, Any] = field(default_factory=dict)
    validation: Dataset | None = None


class TensorData(Dataset):
    """An in-memory split, validated once: batches are sliced directly, without a DataLoader."""

    def __init__(self, y: torch.Tensor, conditions: Mapping[str, torch.Tensor] | None = None,
                 target: TargetInfo | None = None, condition_info: Mapping[str, ConditionInfo] | None = None,
                 name: str = "data") -> None:
        conditions = dict(conditions or {})
        if y.ndim == 0 or len(y) == 0:
            raise CVAEError(f"{name}: the dataset is empty; it needs at least one example")
        if not torch.is_floating_point(y):
            raise CVAEError(f"{name}: targets must be a floating-point tensor, got {y.dtype}")
        if not torch.isfinite(y).all():
            bad = (~torch.isfinite(y)).reshape(len(y), -1).any(1).nonzero().flatten()[:5].tolist()
            raise CVAEError(f"{name}: targets contain NaN or infinite values (examples {bad}...)")
        if target is not None:
            if tuple(y.shape[1:]) != tuple(target.shape):
                raise CVAEError(f"{name}: targets have shape {tuple(y.shape[1:])} per example; "
                                f"the dataset declares {tuple(target.shape)}")
            lo, hi = y.min().item(), y.max().item()
            if lo < target.low - 1e-6 or hi > target.high + 1e-6:
                raise CVAEError(f"{name}: targets range over [{lo:g}, {hi:g}], outside the declared "
                                f"[{target.low:g}, {target.high:g}]")
        for cname, value in conditions.items():
            rows = len(value) if value.ndim > 0 else 0
            if rows != len(y):
                raise CVAEError(f"{name}: condition {cname!r} has {rows} rows but there are {len(y)} targets")
            if torch.is_floating_point(value) and not torch.isfinite(value).all():
                raise CVAEError(f"{name}: condition {cname!r} contains NaN or infinite values")
            info = (condition_info or {}).get(cname)
            if info is not None and tuple(value.shape[1:]) != tuple(info.shape):
                raise CVAEError(f"{name}: condition {cname!r} has shape {tuple(value.shape[1:])} per example; "
                                f"the dataset declares {tuple(info.shape)}")
            if info is not None and info.num_classes is not None:
                if torch.is_floating_point(value):
                    raise CVAEError(f"{name}: condition {cname!r} holds class indices and must be an integer "
                                    f"tensor, got {value.dtype}")
                if value.min() < 0 or value.max() >= info.num_classes:
                    raise CVAEError(f"{name}: condition {cname!r} has labels in [{value.min().item()}, "
                                    f"{value.max().item()}]; allowed are 0..{info.num_classes - 1}")
        self.y = y
        self.conditions = conditions

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Batch:
        return {k: v[i] for k, v in self.conditions.items()}, self.y[i]

    def batch(self, index: torch.Tensor) -> Batch:
        return {k: v[index] for k, v in self.conditions.items()}, self.y[index]

    def to(self, device: torch.device | str) -> TensorData:
        out = TensorData.__new__(TensorData)
        out.y = self.y.to(device)
        out.conditions = {k: v.to(device) for k, v in self.conditions.items()}
        return out


class Rows(TensorData):
    """Rows `index` of an in-memory split: `y` and `conditions` hold those rows, as in any TensorData, and
    items and batches come from the split's own `__getitem__` and `batch` (so a split that builds its
    batches from another, like a completion split, keeps doing so)."""

    def __init__(self, base: TensorData, index: torch.Tensor) -> None:
        self.base, self.index = base, index.to(base.y.device)
        self.y = base.y[self.index]
        self.conditions = {k: v[self.index] for k, v in base.conditions.items()}

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int | slice | torch.Tensor) -> Batch:
        return self.base[self.index[i]]

    def batch(self, index: torch.Tensor) -> Batch:
        return self.base.batch(self.index[index])

    def to(self, device: torch.device | str) -> Rows:
        return Rows(self.base.to(device), self.index)


def held_out_count(n: int, validation: float, where: str = "data.validation") -> int:
    """How many of `n` training examples `validation` holds out: a fraction in (0, 1) of them (rounded,
    at least one) or a whole count; 0 holds out none. At least one example must stay for training."""
    if isinstance(validation, bool) or not isinstance(validation, (int, float)) or not math.isfinite(validation) \
            or validation < 0:
        raise CVAEError(f"{where} must be a fraction of the training split in (0, 1), a whole number of examples, "
                        f"or 0 (none), got {validation!r}")
    if validation == 0:
        return 0
    if validation < 1:
        count = max(1, round(n * validation))
    elif float(validation).is_integer():
        count = int(validation)
    else:
        raise CVAEError(f"{where} = {validation!r}: give a fraction below 1 (for example 0.1) or a whole number of "
                        f"examples (for example 500)")
    if count >= n:
        raise CVAEError(f"{where} = {validation!r} holds out {count} of the {n} training examples and leaves none to "
                        f"train on; hold out fewer than {n}")
    return count


def hold_out(data: Dataset, count: int, seed: int) -> tuple[Dataset, Dataset]:
    """`data` split at random (fixed by `seed`) into the examples that stay and `count` held-out ones,
    each in the split's own order."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))
    stay, held = order[count:].sort().values, order[:count].sort().values
    if isinstance(data, TensorData):
        return Rows(data, stay), Rows(data, held)
    return Subset(data, stay.tolist()), Subset(data, held.tolist())


def iterate_batches(data: Dataset, batch_size: int, *, shuffle: bool = False, generator: torch.Generator | None = None,
                    start: int = 0, device: torch.device | str = "cpu", shard: tuple[int, int] = (0, 1)) -> Iterator[Batch]:
    """Batches of a split in a reproducible order, starting at batch `start` (for exact resume).

    With `shard=(rank, world_size)` each batch holds every `world_size`-th example of the global batch, from
    `rank` on; a rank whose share is empty gets the global batch's first example instead (the trainer gives it
    weight zero: every process must join each gradient all-reduce)."""
    n = len(data)
    rank, world = shard
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    batches = (order[b * batch_size:(b + 1) * batch_size] for b in range(start, math.ceil(n / batch_size)))
    if world > 1:
        batches = (idx[rank::world] if rank < len(idx) else idx[:1] for idx in batches)
    if isinstance(data, TensorData):
        for idx in batches:
            conds, y = data.batch(idx.to(data.y.device))
            yield {k: v.to(device, non_blocking=True) for k, v in conds.items()}, y.to(device, non_blocking=True)
        return
    # a generator of its own: a DataLoader's iterator otherwise draws its base seed from the global random
    # state, and a run resumed mid-epoch would draw different noise from then on
    loader = DataLoader(data, batch_sampler=[idx.tolist() for idx in batches], num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    for conds, y in loader:
        yield {k: v.to(device) for k, v in conds.items()}, y.to(device)


def load_array(text: str, shape: tuple[int, ...], what: str) -> torch.Tensor:
    """A condition given on the command line as the path of a .npy file holding one array of `shape`
    (no pickles), as float32; `what` names it in errors."""
    import numpy as np

    try:
        array = np.load(str(text).strip(), allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise CVAEError(f"{what} {text!r}: give the path of a .npy file holding one array of shape {shape} "
                        f"({exc})") from None
    if tuple(array.shape) != tuple(shape):
        raise CVAEError(f"{what} {text!r}: the array has shape {tuple(array.shape)}, expected {tuple(shape)}")
    return torch.from_numpy(np.asarray(array, dtype=np.float32))
