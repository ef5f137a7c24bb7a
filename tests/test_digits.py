"""The bundled digits dataset: shapes, value range, split sizes, stratification, determinism."""

from __future__ import annotations

import pytest
import torch

import cvae
from cvae_digits import load_digits_bundle


@pytest.fixture(scope="module")
def bundle() -> cvae.DataBundle:
    return load_digits_bundle()


def test_registered_by_the_digits_plugin(fresh_plugins):
    spec = fresh_plugins.get_registry().get("dataset", "digits")
    assert isinstance(spec, cvae.DatasetSpec) and spec.plugin == "digits"
    small = spec.build(options={"test_fraction": 0.5, "split_seed": 1})
    assert len(small.test) in (898, 899)


def test_shapes_dtypes_and_metadata(bundle):
    assert bundle.name == "digits"
    assert bundle.target == cvae.TargetInfo(shape=(1, 8, 8), low=0.0, high=1.0, levels=17)
    info = bundle.conditions["label"]
    assert (info.encoder, info.shape, info.num_classes) == ("label", (), 10)
    assert info.class_names == tuple("0123456789")
    for split in (bundle.train, bundle.test):
        assert isinstance(split, cvae.TensorData)
        assert split.y.dtype == torch.float32 and split.y.shape[1:] == (1, 8, 8)
        label = split.conditions["label"]
        assert label.dtype == torch.int64 and label.shape == (len(split),)
        conds, y = split[0]
        assert y.shape == (1, 8, 8) and conds["label"].ndim == 0


def test_values_are_the_17_levels_of_0_to_1(bundle):
    y = torch.cat([bundle.train.y, bundle.test.y])
    assert y.min() == 0.0 and y.max() == 1.0
    assert torch.equal(y * 16, (y * 16).round())  # value / 16 exactly
    assert len(torch.unique(y)) == 17


def test_split_sizes_and_stratification(bundle):
    assert (len(bundle.train), len(bundle.test)) == (1437, 360)
    train = torch.bincount(bundle.train.conditions["label"], minlength=10)
    test = torch.bincount(bundle.test.conditions["label"], minlength=10)
    total = train + test
    assert total.sum() == 1797 and (total >= 174).all()
    # every class keeps its share of the test split, within one example
    assert ((test - 0.2 * total).abs() <= 1).all(), test.tolist()


def test_split_is_deterministic_and_follows_the_seed(bundle):
    again = load_digits_bundle()
    assert torch.equal(again.test.y, bundle.test.y)
    assert torch.equal(again.test.conditions["label"], bundle.test.conditions["label"])
    other = load_digits_bundle(split_seed=1)
    assert not torch.equal(other.test.y, bundle.test.y)
    # the two splits partition the data: their pixel sums add up to those of every image
    whole = bundle.train.y.double().sum() + bundle.test.y.double().sum()
    assert other.train.y.double().sum() + other.test.y.double().sum() == pytest.approx(float(whole))


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 0.001])
def test_bad_test_fraction_is_a_clear_error(fraction):
    with pytest.raises(cvae.CVAEError, match="digits"):
        load_digits_bundle(test_fraction=fraction)
