"""Condition encoders: class labels (embedded or one-hot) and continuous observation vectors."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

import cvae
import cvae.nets

__all__ = ["LabelEncoder", "VectorEncoder"]

ENCODINGS = ("embedding", "onehot")


class LabelEncoder(nn.Module):
    """Class indices `(batch,)` -> features `(batch, out_features)`: a learned embedding of `dim`
    numbers per class (`encoding="embedding"`) or a one-hot vector (`encoding="onehot"`)."""

    def __init__(self, info: cvae.ConditionInfo, encoding: str = "embedding", dim: int = 16) -> None:
        super().__init__()
        if not info.num_classes or info.num_classes < 1:
            raise cvae.CVAEError(f"condition encoder 'label' needs a categorical condition (ConditionInfo with "
                                 f"num_classes), got num_classes={info.num_classes!r}")
        if tuple(info.shape) != ():
            raise cvae.CVAEError(f"condition encoder 'label' takes one class index per example (shape ()), "
                                 f"but the condition has shape {tuple(info.shape)}")
        if encoding not in ENCODINGS:
            raise cvae.CVAEError(f"condition encoder 'label': unknown encoding {encoding!r}; "
                                 f"allowed: {', '.join(ENCODINGS)}")
        if info.class_names and len(info.class_names) != info.num_classes:
            raise cvae.CVAEError(f"condition encoder 'label': {len(info.class_names)} class names for "
                                 f"{info.num_classes} classes")
        self.num_classes = int(info.num_classes)
        self.class_names = tuple(info.class_names)
        self.encoding = encoding
        if encoding == "embedding":
            if int(dim) < 1:
                raise cvae.CVAEError(f"condition encoder 'label': dim must be >= 1, got {dim!r}")
            self.embedding = nn.Embedding(self.num_classes, int(dim))
            self.out_features = int(dim)
        else:
            self.out_features = self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if torch.is_floating_point(labels) or labels.dtype == torch.bool:
            raise cvae.CVAEError(f"condition encoder 'label' needs integer class indices, got {labels.dtype}")
        # the range check reads a flag back from the device: skipped in CUDA training steps, whose labels come
        # from datasets that TensorData checked once when it was built; user inputs (eval mode) are checked
        if labels.numel() and not (self.training and labels.is_cuda):
            low, high = torch.aminmax(labels)  # one pass, where a mask of the bad ones would take four ops
            if int(low) < 0 or int(high) >= self.num_classes:
                bad = labels[(labels < 0) | (labels >= self.num_classes)][:5].tolist()
                raise cvae.CVAEError(f"class labels {bad} are out of range; allowed are 0..{self.num_classes - 1}")
        labels = labels.long()
        if self.encoding == "embedding":
            return self.embedding(labels)
        # scattered straight into the default dtype: F.one_hot would check the range again and build int64 first
        one_hot = torch.zeros(len(labels), self.num_classes, dtype=torch.get_default_dtype(), device=labels.device)
        return one_hot.scatter_(1, labels.unsqueeze(1), 1.0)

    def parse(self, text: str) -> torch.Tensor:
        """One label from the command line: a class name (taking precedence) or a class index."""
        value = str(text).strip()
        if value in self.class_names:
            return torch.tensor(self.class_names.index(value), dtype=torch.int64)
        try:
            index = int(value)
        except ValueError:
            index = None
        if index is not None and 0 <= index < self.num_classes:
            return torch.tensor(index, dtype=torch.int64)
        allowed = f"a class index 0..{self.num_classes - 1}"
        if self.class_names:
            names = ", ".join(self.class_names[:20]) + (", ..." if len(self.class_names) > 20 else "")
            allowed += f" or a class name ({names})"
        raise cvae.CVAEError(f"label {text!r} is not a class of this model; allowed: {allowed}")

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, encoding={self.encoding!r}, out_features={self.out_features}"


class VectorEncoder(nn.Module):
    """Continuous observations `(batch, *shape)` -> `(batch, out_features)`: flattened as they are
    (the default), or passed through an MLP with `hidden` widths and `dim` outputs when either is given."""

    def __init__(self, info: cvae.ConditionInfo, hidden: Sequence[int] = (), dim: int | None = None) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in info.shape)
        self.in_features = math.prod(self.shape)
        hidden = [int(h) for h in hidden]
        if any(h < 1 for h in hidden) or (dim is not None and int(dim) < 1):
            raise cvae.CVAEError(f"condition encoder 'vector': hidden widths and dim must be >= 1, "
                                 f"got hidden={hidden}, dim={dim!r}")
        if hidden or dim is not None:
            self.out_features = int(dim) if dim is not None else hidden[-1]
            self.net: nn.Module = cvae.nets.mlp(self.in_features, hidden, self.out_features)
        else:
            self.out_features = self.in_features
            self.net = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(len(x), self.in_features).to(torch.get_default_dtype()))

    def parse(self, text: str) -> torch.Tensor:
        """One observation from the command line: comma-separated numbers, `prod(shape)` of them."""
        parts = [p.strip() for p in str(text).split(",")]
        try:
            values = [float(p) for p in parts]
        except ValueError:
            values = None
        if values is None or len(values) != self.in_features or not all(math.isfinite(v) for v in values):
            raise cvae.CVAEError(f"vector {text!r}: expected {self.in_features} finite comma-separated numbers "
                                 f"(shape {self.shape}), got {len(parts)} item(s)")
        return torch.tensor(values, dtype=torch.get_default_dtype()).reshape(self.shape)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, out_features={self.out_features}"
