"""Condition encoders "label" and "vector": shapes, parsing of command-line values, errors."""

from __future__ import annotations

import pytest
import torch

import cvae
from cvae_labels import LabelEncoder, VectorEncoder

DIGITS = cvae.ConditionInfo(encoder="label", shape=(), num_classes=10, class_names=tuple("0123456789"))
PETS = cvae.ConditionInfo(encoder="label", shape=(), num_classes=3, class_names=("cat", "dog", "owl"))
OBS = cvae.ConditionInfo(encoder="vector", shape=(2, 3))


def test_both_are_registered_by_the_labels_plugin(fresh_plugins):
    registry = fresh_plugins.get_registry()
    assert {"label", "vector"} <= set(registry.names("condition"))
    assert registry.get("condition", "label").plugin == "labels"
    enc = registry.get("condition", "label").build(DIGITS, options={"encoding": "onehot"})
    assert isinstance(enc, LabelEncoder) and enc.out_features == 10
    with pytest.raises(cvae.ConfigError, match="encoding"):
        registry.get("condition", "label").build(DIGITS, options={"encodng": "onehot"})


def test_embedding_shape_and_dim():
    enc = LabelEncoder(DIGITS, dim=5)
    out = enc(torch.tensor([0, 3, 9, 3]))
    assert enc.out_features == 5 and out.shape == (4, 5) and out.dtype == torch.float32
    assert torch.equal(out[1], out[3]) and not torch.equal(out[0], out[1])
    assert LabelEncoder(DIGITS).out_features == 16


def test_onehot_is_the_identity_rows():
    enc = LabelEncoder(PETS, encoding="onehot")
    assert enc.out_features == 3 and not list(enc.parameters())
    assert torch.equal(enc(torch.tensor([2, 0, 1])), torch.eye(3)[[2, 0, 1]])


@pytest.mark.parametrize("text, index", [("3", 3), (" 7 ", 7), ("0", 0)])
def test_parse_by_index(text, index):
    value = LabelEncoder(DIGITS).parse(text)
    assert value.dtype == torch.int64 and value.ndim == 0 and int(value) == index


@pytest.mark.parametrize("text, index", [("cat", 0), ("owl", 2), ("1", 1)])
def test_parse_by_name_or_index(text, index):
    assert int(LabelEncoder(PETS).parse(text)) == index


@pytest.mark.parametrize("text", ["3", "-1", "bird", "1.0", "", "Cat"])
def test_bad_parse_lists_the_allowed_values(text):
    with pytest.raises(cvae.CVAEError, match=r"allowed: a class index 0\.\.2 or a class name \(cat, dog, owl\)"):
        LabelEncoder(PETS).parse(text)


@pytest.mark.parametrize("encoding", ["embedding", "onehot"])
@pytest.mark.parametrize("labels", [[0, 10], [-1, 2], [11]])
def test_out_of_range_labels_are_an_error(encoding, labels):
    with pytest.raises(cvae.CVAEError, match=r"out of range; allowed are 0\.\.9"):
        LabelEncoder(DIGITS, encoding=encoding)(torch.tensor(labels))


def test_float_labels_are_an_error():
    with pytest.raises(cvae.CVAEError, match="integer class indices"):
        LabelEncoder(DIGITS)(torch.tensor([1.0, 2.0]))


def test_unknown_encoding_lists_the_allowed_ones():
    with pytest.raises(cvae.CVAEError, match="unknown encoding 'one_hot'; allowed: embedding, onehot"):
        LabelEncoder(DIGITS, encoding="one_hot")


def test_label_needs_a_categorical_condition():
    with pytest.raises(cvae.CVAEError, match="num_classes"):
        LabelEncoder(cvae.ConditionInfo(encoder="label"))


def test_label_encoder_drives_a_model_through_parse():
    registry = cvae.get_registry()
    target = cvae.TargetInfo(shape=(4,), low=0.0, high=1.0)
    enc = LabelEncoder(PETS, encoding="onehot")
    encoder, decoder = registry.get("architecture", "mlp").build(target=target, cond_features=3, latent_dim=2,
                                                                 params_per_element=1, options={"hidden": [8]})
    prior = registry.get("prior", "learned").build(cond_features=3, latent_dim=2)
    model = cvae.CVAE(conditions={"pet": enc}, encoder=encoder, decoder=decoder, prior=prior,
                      likelihood=registry.get("likelihood", "bernoulli").build(target), latent_dim=2,
                      target=target, condition_info={"pet": PETS})
    label = enc.parse("dog").expand(5)
    assert model.sample({"pet": label}).shape == (5, 4)


def test_vector_identity_flattens():
    enc = VectorEncoder(OBS)
    x = torch.randn(4, 2, 3)
    assert enc.out_features == 6 and not list(enc.parameters())
    assert torch.equal(enc(x), x.reshape(4, 6))
    scalar = VectorEncoder(cvae.ConditionInfo(encoder="vector", shape=()))
    assert scalar.out_features == 1 and scalar(torch.tensor([1.0, 2.0])).shape == (2, 1)


@pytest.mark.parametrize("options, out", [({"hidden": [8, 7]}, 7), ({"dim": 4}, 4), ({"hidden": (8,), "dim": 3}, 3)])
def test_vector_mlp(options, out):
    enc = cvae.get_registry().get("condition", "vector").build(OBS, options=options)
    y = enc(torch.randn(5, 2, 3))
    assert enc.out_features == out and y.shape == (5, out)
    assert list(enc.parameters())


def test_vector_parse():
    value = VectorEncoder(OBS).parse("1, 2, 3, 4.5, -5, 6e-1")
    assert value.shape == (2, 3) and value.dtype == torch.float32
    assert value.flatten().tolist() == pytest.approx([1, 2, 3, 4.5, -5, 0.6])


@pytest.mark.parametrize("text", ["1,2,3", "1,2,3,4,5,6,7", "1,2,x,4,5,6", "1,2,nan,4,5,6", ""])
def test_vector_bad_parse_names_the_expected_count(text):
    with pytest.raises(cvae.CVAEError, match=r"expected 6 finite comma-separated numbers \(shape \(2, 3\)\)"):
        VectorEncoder(OBS).parse(text)


def test_vector_rejects_bad_widths():
    with pytest.raises(cvae.CVAEError, match="hidden widths and dim must be >= 1"):
        VectorEncoder(OBS, hidden=[0])
