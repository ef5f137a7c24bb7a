"""The bundled digits dataset: scikit-learn's 1797 handwritten 8x8 digits (no download), with a
class-label condition and a fixed-seed stratified train/test split."""

from __future__ import annotations

import numpy as np
import torch

import cvae

__all__ = ["load_digits_bundle", "cvae_datasets"]

CLASS_NAMES = tuple(str(d) for d in range(10))
TARGET = cvae.TargetInfo(shape=(1, 8, 8), low=0.0, high=1.0, levels=17)
LABEL = cvae.ConditionInfo(encoder="label", shape=(), num_classes=10, class_names=CLASS_NAMES)


def load_digits_bundle(*, test_fraction: float = 0.2, split_seed: int = 0) -> cvae.DataBundle:
    """Digits as `(1, 8, 8)` images in [0, 1] (pixel value / 16, so 17 levels) with condition
    "label" (0..9); the test split holds `test_fraction` of every class, chosen by `split_seed`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < float(test_fraction) < 1.0:
        raise cvae.CVAEError(f"dataset 'digits': test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    raw = load_digits()
    images = (raw.images.astype(np.float32) / 16.0).reshape(-1, *TARGET.shape)
    labels = raw.target.astype(np.int64)
    try:
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=float(test_fraction),
                                               random_state=int(split_seed), stratify=labels)
    except ValueError as exc:  # too few examples per class on one side
        raise cvae.CVAEError(f"dataset 'digits': cannot split with test_fraction={test_fraction!r}: {exc}") from exc
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)

    def split(index: np.ndarray, name: str) -> cvae.TensorData:
        return cvae.TensorData(torch.from_numpy(images[index]), {"label": torch.from_numpy(labels[index])},
                               TARGET, {"label": LABEL}, name=f"digits/{name}")

    return cvae.DataBundle(name="digits", target=TARGET, conditions={"label": LABEL},
                           train=split(train_idx, "train"), test=split(test_idx, "test"))


@cvae.hookimpl
def cvae_datasets() -> list[cvae.DatasetSpec]:
    return [cvae.DatasetSpec("digits", load_digits_bundle,
                             "scikit-learn's 1797 handwritten digits, 1x8x8 in [0, 1] (17 levels), condition 'label'")]
