"""Sample-quality metrics for labelled images: the classifier, sample accuracy, diversity and the
class-wise Frechet distance in classifier features, checked with fake generators whose answers
are known (real test images, noisy ones, wrong classes, a collapsed generator) and an untrained CVAE."""

from __future__ import annotations

import functools
import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision.transforms.functional as TF

import cvae
import cvae_labels.metrics as metrics
from cvae.evaluate import EvalContext
from cvae_digits import load_digits_bundle
from cvae_labels.metrics import class_sample_metrics, frechet_distance

KEYS = {"classifier_test_accuracy", "classifier_blurred_accuracy", "classifier_blur_sigma",
        "sample_accuracy", "sample_diversity", "real_diversity", "diversity_ratio",
        "frechet_classifier", "frechet_classifier_real_test", "frechet_ratio", "nearest_train_distance",
        "nearest_train_distance_real_test", "novelty_ratio", "sample_accuracy_by_class", "sample_confusion", "class_names"}
OWN_MODEL = {"reconstruction_accuracy", "reconstruction_accuracy_by_class", "reconstruction_confusion",
             "label_swap_accuracy"}


def untrained_cvae(data: cvae.DataBundle, onehot: bool = False) -> cvae.CVAE:
    registry = cvae.get_registry()
    options = {"encoding": "onehot"} if onehot else {}
    label = registry.get("condition", "label").build(data.conditions["label"], options=options)
    likelihood = registry.get("likelihood", "categorical").build(data.target)
    encoder, decoder = registry.get("architecture", "mlp").build(
        target=data.target, cond_features=label.out_features, latent_dim=4,
        params_per_element=likelihood.params_per_element, options={"hidden": [32]})
    prior = registry.get("prior", "learned").build(cond_features=label.out_features, latent_dim=4)
    return cvae.CVAE(conditions={"label": label}, encoder=encoder, decoder=decoder, prior=prior,
                     likelihood=likelihood, latent_dim=4, target=data.target, condition_info=data.conditions)


@pytest.fixture(scope="module")
def digits() -> cvae.DataBundle:
    return load_digits_bundle()


# The default judge (three nets of 1500 steps, width 64) is for real evaluations; these tests need a quicker one.
fast_metrics = functools.partial(class_sample_metrics, steps=300, width=32, members=1)


@pytest.fixture(scope="module")
def context(digits, tmp_path_factory) -> EvalContext:
    """An untrained digits CVAE in a run folder whose classifier is trained once, by the first test."""
    torch.manual_seed(0)
    return EvalContext(untrained_cvae(digits), digits, torch.device("cpu"), run_dir=tmp_path_factory.mktemp("run"))


def real_test_images(data: cvae.DataBundle, shift: int = 0, noise: float = 0.0):
    """A fake generator: the real test images of class c + shift, optionally with pixel noise."""
    labels = data.test.conditions["label"]

    def sample(c: int, n: int) -> torch.Tensor:
        x = data.test.y[labels == (c + shift) % 10]
        x = x[torch.arange(n) % len(x)]  # with samples_per_class=0, n is the test count of class c
        if noise:
            x = (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(c))).clamp(0, 1)
        return x

    return sample


def test_classifier_is_accurate_and_cached(context):
    first = fast_metrics(context)
    assert set(first) == KEYS | OWN_MODEL  # the run's own model: its reconstructions too
    assert first["classifier_test_accuracy"] >= 0.9
    weights = context.run_dir / "classifier.pt"
    assert weights.is_file() and (context.run_dir / "classifier.json").is_file()
    assert set(torch.load(weights, weights_only=True)) >= {"members.0.mean", "members.0.std", "members.0.head.weight"}
    stamp = weights.stat().st_mtime_ns
    with pytest.MonkeyPatch.context() as mp:  # a second evaluation must not train again
        mp.setattr(metrics, "_train_classifier", lambda *a, **k: pytest.fail("the cached classifier was not reused"))
        second = fast_metrics(context)
    assert second == first and weights.stat().st_mtime_ns == stamp


def test_cache_is_retrained_for_another_config_or_a_corrupt_file(context, tmp_path, monkeypatch):
    calls = []
    train = metrics._train_classifier
    monkeypatch.setattr(metrics, "_train_classifier", lambda *a: calls.append(a[2]["steps"]) or train(*a))
    other = EvalContext(context.model, context.data, context.device, run_dir=tmp_path)
    (tmp_path / "classifier.pt").write_bytes((context.run_dir / "classifier.pt").read_bytes())
    (tmp_path / "classifier.json").write_text((context.run_dir / "classifier.json").read_text())
    fast_metrics(other, steps=20, samples_per_class=0)
    assert calls == [20]
    (tmp_path / "classifier.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="cannot be read"):
        fast_metrics(other, steps=20, samples_per_class=0)
    assert calls == [20, 20]
    fast_metrics(other, steps=20, samples_per_class=0)  # the rewritten cache is good again
    assert calls == [20, 20]


def test_a_derived_run_reuses_the_judge_of_the_run_it_came_from(context, tmp_path, monkeypatch):
    fast_metrics(context)  # the source run's judge, cached in its folder
    source = {p: (context.run_dir / p).read_bytes() for p in ("classifier.pt", "classifier.json")}
    monkeypatch.setattr(metrics, "_train_classifier", lambda *a, **k: pytest.fail("the source's judge was not reused"))
    derived = EvalContext(context.model, context.data, context.device, run_dir=tmp_path / "derived",
                          source_dir=context.run_dir)
    assert fast_metrics(derived) == fast_metrics(context)
    assert json.loads((tmp_path / "derived" / "classifier.json").read_text()) == json.loads(source["classifier.json"])
    assert {p: (context.run_dir / p).read_bytes() for p in source} == source  # the source is only read
    # a source judge trained otherwise is not reused
    monkeypatch.undo()
    other = EvalContext(context.model, context.data, context.device, run_dir=tmp_path / "other",
                        source_dir=context.run_dir)
    calls = []
    train = metrics._train_classifier
    monkeypatch.setattr(metrics, "_train_classifier", lambda *a: calls.append(a[2]["steps"]) or train(*a))
    fast_metrics(other, steps=20, samples_per_class=0)
    assert calls == [20]


def test_an_ensemble_judge_averages_its_members_probabilities(context, tmp_path, monkeypatch):
    seeds = []
    train = metrics._train_classifier
    monkeypatch.setattr(metrics, "_train_classifier", lambda *a: seeds.append(a[2]["seed"]) or train(*a))
    other = EvalContext(context.model, context.data, context.device, run_dir=tmp_path)
    out = fast_metrics(other, steps=100, members=2, classifier_seed=5, sampler=real_test_images(context.data),
                       samples_per_class=0)
    assert seeds == [5, 6]
    judge = metrics._new_judge(json.loads((tmp_path / "classifier.json").read_text()))
    judge.load_state_dict(torch.load(tmp_path / "classifier.pt", weights_only=True))
    x, labels = context.data.test.y, context.data.test.conditions["label"]
    with torch.no_grad():
        probs = sum(net(x).softmax(1) for net in judge.members)
        single = judge.members[0](x).argmax(1)
    assert not torch.equal(probs.argmax(1), single)  # the second member changes some decisions
    accuracy = float((probs.argmax(1) == labels).double().mean())
    assert out["classifier_test_accuracy"] == pytest.approx(accuracy)
    assert out["sample_accuracy"] == pytest.approx(accuracy)  # the sampler returns the test images


def test_blurred_accuracy_is_the_judge_on_blurred_test_images(context, monkeypatch):
    """How far to trust the judge on blurry images: its accuracy on the real test split blurred by
    BLUR_FRACTION of the larger side, checked against torchvision's blur applied here."""
    sharp = fast_metrics(context, samples_per_class=0)
    assert sharp["classifier_blur_sigma"] == pytest.approx(8 / 48)  # a sixth of a pixel on the 8x8 digits
    monkeypatch.setattr(metrics, "BLUR_FRACTION", 0.2)  # 1.6 pixels
    out = fast_metrics(context, samples_per_class=0)
    judge = metrics._new_judge(json.loads((context.run_dir / "classifier.json").read_text()))
    judge.load_state_dict(torch.load(context.run_dir / "classifier.pt", weights_only=True))
    # kernel 2 * ceil(3 * 1.6) + 1 = 11 pixels, which reflect padding fits on 8 pixels
    x, labels = TF.gaussian_blur(context.data.test.y, 11, 1.6), context.data.test.conditions["label"]
    with torch.no_grad():
        called = judge.predict(x, judge.features(x))
    assert out["classifier_blur_sigma"] == pytest.approx(1.6)
    assert out["classifier_blurred_accuracy"] == pytest.approx(float((called == labels).double().mean()))
    assert out["classifier_blurred_accuracy"] < sharp["classifier_test_accuracy"] - 0.05  # this blur misleads it
    assert out["classifier_test_accuracy"] == sharp["classifier_test_accuracy"]


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 2, 64), (2, 1, 64, 3), (1, 3, 5, 7)])
def test_blur_takes_its_sigma_from_the_larger_side_and_fits_any_image(shape):
    x = torch.rand(shape)
    sigma = metrics._blur_sigma(x)
    assert sigma == pytest.approx(max(shape[-2:]) / 48)
    out = metrics._blur(x, 1.5)
    assert out.shape == x.shape and torch.isfinite(out).all()
    for axis in (-2, -1):  # an axis of one pixel stays as it is; a longer one is smoothed along itself
        if x.shape[axis] == 1:
            continue
        assert out.diff(dim=axis).abs().mean() < x.diff(dim=axis).abs().mean()
    if shape == (1, 1, 1, 1):
        assert torch.equal(out, x)


def test_untrained_model_is_near_chance(context):
    before = torch.random.get_rng_state()
    out = fast_metrics(context)
    assert torch.equal(torch.random.get_rng_state(), before)  # evaluation leaves the caller's RNG alone
    assert out["sample_accuracy"] < 0.5
    assert out["frechet_ratio"] > 3 and out["frechet_classifier"] > out["frechet_classifier_real_test"]
    assert out == fast_metrics(context)  # seeded: the same figures every time


def test_reconstruction_accuracy_judges_the_models_reconstructions(context, monkeypatch):
    """A model that reconstructs perfectly scores the judge's own test accuracy; one whose
    reconstructions show the next class scores near zero."""
    data = context.data
    monkeypatch.setattr(context.model, "reconstruct", lambda conditions, y: y)
    perfect = fast_metrics(context, samples_per_class=0)
    assert perfect["reconstruction_accuracy"] == pytest.approx(perfect["classifier_test_accuracy"])
    labels = data.test.conditions["label"]
    by_class = {c: data.test.y[labels == c] for c in range(10)}

    def next_class(conditions, y):  # row i shows the i-th test image of the next class
        shown = [by_class[(int(c) + 1) % 10] for c in conditions["label"]]
        return torch.stack([x[i % len(x)] for i, x in enumerate(shown)])

    monkeypatch.setattr(context.model, "reconstruct", next_class)
    wrong = fast_metrics(context, samples_per_class=0)
    assert wrong["reconstruction_accuracy"] < 0.1
    counts = torch.bincount(labels, minlength=10).tolist()  # the overall figure is the classes' weighted mean
    assert sum(a * n for a, n in zip(wrong["reconstruction_accuracy_by_class"], counts)) / sum(counts) == pytest.approx(
        wrong["reconstruction_accuracy"])
    confusion = wrong["reconstruction_confusion"]  # each class's images are taken for the next class
    assert [row[c] for c, row in enumerate(confusion)] == pytest.approx(wrong["reconstruction_accuracy_by_class"])
    assert min(row[(c + 1) % 10] for c, row in enumerate(confusion)) > 0.85
    assert all(sum(row) == pytest.approx(1.0) for row in confusion)


def test_label_swap_accuracy_tells_whether_the_decoder_draws_its_label(context, monkeypatch):
    """A decoder that draws the class it is given scores about the judge's accuracy; one that draws the
    class z carries (here z is the one-hot of the image's own class) scores near zero."""
    data, model = context.data, context.model
    labels = data.test.conditions["label"]
    by_class = {c: data.test.y[labels == c] for c in range(10)}
    table = model.conditions["label"].embedding.weight.detach()

    def image_of(classes: torch.Tensor) -> torch.Tensor:
        return torch.stack([by_class[int(c)][i % len(by_class[int(c)])] for i, c in enumerate(classes)])

    def draws_its_label(z, h, mode="mean"):
        return image_of(torch.cdist(h, table).argmin(1))

    def draws_z(z, h, mode="mean"):
        return image_of(z.argmax(1) % 10)

    monkeypatch.setattr(model, "encode", lambda conditions, y: torch.nn.functional.one_hot(conditions["label"], 10).float())
    monkeypatch.setattr(model, "decode", draws_its_label)
    faithful = fast_metrics(context, samples_per_class=0)
    assert faithful["label_swap_accuracy"] > 0.9 and faithful["label_swap_accuracy"] > faithful["classifier_test_accuracy"] - 0.05
    monkeypatch.setattr(model, "decode", draws_z)
    assert fast_metrics(context, samples_per_class=0)["label_swap_accuracy"] < 0.1


def test_perfect_generator_scores_one(context):
    out = fast_metrics(context, sampler=real_test_images(context.data), samples_per_class=0)
    assert "reconstruction_accuracy" not in out  # a foreign sampler: the model's reconstructions say nothing
    assert "label_swap_accuracy" not in out
    assert out["sample_accuracy"] == pytest.approx(out["classifier_test_accuracy"])
    assert out["diversity_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert out["frechet_ratio"] == pytest.approx(1.0, abs=1e-6)
    assert out["novelty_ratio"] == pytest.approx(1.0, abs=1e-9)  # held-out images: as far from training as the test split


def test_copies_of_training_images_are_flagged(context):
    """A sampler that returns training images scores well on accuracy and diversity, and its novelty
    ratio is zero; training images plus a little noise stay far below held-out images."""
    labels = context.data.train.conditions["label"]

    def copies(c: int, n: int, noise: float = 0.0) -> torch.Tensor:
        x = context.data.train.y[labels == c]
        x = x[torch.arange(n) % len(x)]
        return (x + noise * torch.randn(x.shape, generator=torch.Generator().manual_seed(c))).clamp(0, 1)

    out = fast_metrics(context, sampler=copies)
    assert out["sample_accuracy"] > 0.9 and out["diversity_ratio"] > 0.8
    assert out["nearest_train_distance"] == 0.0 and out["novelty_ratio"] == 0.0
    assert out["nearest_train_distance_real_test"] > 0
    noisy = fast_metrics(context, sampler=functools.partial(copies, noise=0.02))
    assert 0 < noisy["novelty_ratio"] < 0.5


def test_nearly_perfect_generator_scores_near_one(context):
    out = fast_metrics(context, sampler=real_test_images(context.data, noise=0.03), samples_per_class=0)
    assert out["sample_accuracy"] > 0.9
    assert out["diversity_ratio"] == pytest.approx(1.0, abs=0.05)
    assert 0.8 < out["frechet_ratio"] < 1.3
    assert 0.9 < out["novelty_ratio"] < 1.2


def test_wrong_classes_are_caught(context):
    out = fast_metrics(context, sampler=real_test_images(context.data, shift=1), samples_per_class=0)
    assert out["sample_accuracy"] < 0.1
    assert out["frechet_ratio"] > 5
    assert out["diversity_ratio"] == pytest.approx(1.0, rel=0.2)  # diverse, just the wrong digits


def test_accuracy_by_class_finds_the_class_that_fails(context):
    """A generator right for every class but 3 (it draws 4s there) is caught in that class alone."""
    right = real_test_images(context.data)
    wrong = real_test_images(context.data, shift=1)
    out = fast_metrics(context, sampler=lambda c, n: wrong(c, n) if c == 3 else right(c, n))
    by_class = out["sample_accuracy_by_class"]
    assert len(by_class) == 10 and by_class[3] < 0.1
    assert min(a for c, a in enumerate(by_class) if c != 3) > 0.8
    assert out["sample_accuracy"] == pytest.approx(sum(by_class) / 10)  # 100 samples of each class
    confusion = out["sample_confusion"]  # and what its 3s are taken for: 4s
    assert [row[c] for c, row in enumerate(confusion)] == pytest.approx(by_class)
    assert confusion[3][4] > 0.85 and all(sum(row) == pytest.approx(1.0) for row in confusion)


def test_collapsed_generator_has_no_diversity(context):
    labels = context.data.train.conditions["label"]

    def class_mean(c: int, n: int) -> torch.Tensor:
        return context.data.train.y[labels == c].mean(0, keepdim=True).expand(n, -1, -1, -1)

    out = fast_metrics(context, sampler=class_mean)
    assert out["sample_diversity"] == 0.0 and out["diversity_ratio"] == 0.0
    assert out["sample_accuracy"] > 0.9  # recognisable, but every sample of a class the same
    assert out["frechet_ratio"] > 1.5


def test_samples_of_the_wrong_shape_are_an_error(context):
    with pytest.raises(cvae.CVAEError, match="came back with shape"):
        fast_metrics(context, sampler=lambda c, n: torch.zeros(n, 64))


def test_does_not_apply_without_labelled_images(context):
    data = context.data
    flat = cvae.TargetInfo(shape=(64,), low=0.0, high=1.0, levels=17)
    flat_data = cvae.DataBundle("flat", flat, data.conditions,
                                cvae.TensorData(data.train.y.flatten(1), data.train.conditions),
                                cvae.TensorData(data.test.y.flatten(1), data.test.conditions))
    assert fast_metrics(EvalContext(context.model, flat_data, context.device)) is None
    as_vector = {"label": cvae.ConditionInfo(encoder="vector", shape=(), num_classes=10)}
    vector_data = cvae.DataBundle("v", data.target, as_vector, data.train, data.test)
    assert fast_metrics(EvalContext(context.model, vector_data, context.device)) is None


def test_registered_metric_runs_inside_evaluate(digits, tmp_path, fresh_plugins):
    spec = fresh_plugins.get_registry().get("metric", "class_samples")
    assert spec.plugin == "labels"
    model = untrained_cvae(digits, onehot=True)
    results = cvae.evaluate(model, digits, torch.device("cpu"), run_dir=tmp_path, iwae_samples=2)
    lists = {"sample_accuracy_by_class", "sample_confusion", "class_names"}
    assert KEYS <= set(results) and all(isinstance(results[k], float) for k in KEYS - lists)
    assert results["class_names"] == [str(d) for d in range(10)]  # the digits' names, in class order
    assert len(results["sample_accuracy_by_class"]) == 10
    assert len(results["sample_confusion"]) == 10 and all(len(row) == 10 for row in results["sample_confusion"])
    assert (tmp_path / "classifier.pt").is_file()


def test_frechet_distance_matches_the_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5))
    b = rng.normal(size=(300, 5)) @ rng.normal(size=(5, 5)) + 1.0
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    cross = scipy.linalg.sqrtm(s_a @ s_b).real
    expected = np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(s_a + s_b - 2 * cross)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # singular covariances (fewer rows than dimensions) stay real and finite
    few = rng.normal(size=(3, 8))
    assert np.isfinite(frechet_distance(few, few + 0.5))
    assert frechet_distance(few, few + 0.5) == pytest.approx(8 * 0.25, rel=1e-6)
