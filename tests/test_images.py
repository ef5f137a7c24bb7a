"""The images plugin: shapes, file-based datasets (tiny fake files), 8-bit splits, completion
conditioning and its deterministic baseline, `cvae compare`, and the pictures."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import cvae
from cvae.cli import main
from cvae.pictures import complete, save_completions, save_interpolations
from cvae_images import (SHAPE_NAMES, ByteImages, ImageConditionEncoder, compose, load_celeba, load_cifar10,
                         load_completion, load_fashion_mnist, load_image_folder, load_mnist, load_shapes, make_mask)
from cvae_images.baseline import train_deterministic
from cvae_images.shapes import render_shapes

# -- shapes ---------------------------------------------------------------------------------------


def test_shapes_are_deterministic_balanced_8_bit_images():
    a = load_shapes(n_train=24, n_test=12, size=16, seed=3)
    b = load_shapes(n_train=24, n_test=12, size=16, seed=3)
    assert a.target == cvae.TargetInfo((3, 16, 16), 0.0, 1.0, levels=256)
    assert a.conditions["label"].class_names == SHAPE_NAMES and a.conditions["label"].num_classes == 6
    assert torch.equal(a.train.y, b.train.y) and torch.equal(a.test.conditions["label"], b.test.conditions["label"])
    assert a.train.y.dtype == torch.uint8
    assert torch.bincount(a.train.conditions["label"], minlength=6).tolist() == [4] * 6
    _, y = a.train.batch(torch.arange(24))
    assert y.dtype == torch.float32 and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y * 255, (y * 255).round())
    other = load_shapes(n_train=24, n_test=12, size=16, seed=4)
    assert not torch.equal(other.train.y, a.train.y)
    # the test split does not depend on the size of the training split
    assert torch.equal(load_shapes(n_train=30, n_test=12, size=16, seed=3).test.y, a.test.y)


def test_every_shape_class_renders_differently():
    """Same size, place, rotation and colours: each class covers a different set of pixels."""
    params = torch.tensor([[0.8, 0.5, 0.5, 0.05, 0.3, 1.0, 1.0, 0.0, 0.5]]).repeat(6, 1)
    images = render_shapes(torch.arange(6), params, 32).float()
    centre = images[:, :, 16, 16]
    background = images[:, :, 0, 0]
    assert torch.equal(centre[SHAPE_NAMES.index("ring")], background[SHAPE_NAMES.index("ring")])  # a hole
    assert not torch.equal(centre[SHAPE_NAMES.index("circle")], background[SHAPE_NAMES.index("circle")])
    for i in range(6):
        for j in range(i):
            assert (images[i] - images[j]).abs().sum() > 255 * 10, (SHAPE_NAMES[i], SHAPE_NAMES[j])


def _box_fill(image: torch.Tensor) -> float:
    """The fraction of the shape's bounding box that the shape covers (background: the corner pixel)."""
    away = (image.float() - image[:, :1, :1].float()).abs().sum(0)
    rows, cols = (away > away.max() / 2).nonzero(as_tuple=True)
    box = (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    return float(len(rows) / box)


def test_shapes_without_rotation_stand_upright():
    upright = load_shapes(n_train=60, n_test=6, size=48, rotate=False).train
    turned = load_shapes(n_train=60, n_test=6, size=48).train
    labels = upright.conditions["label"]
    for name in ("circle", "ring"):  # rotation leaves these alone: the same images
        rows = labels == SHAPE_NAMES.index(name)
        assert (upright.y[rows].float() - turned.y[rows].float()).abs().mean() < 0.5
    squares = (labels == SHAPE_NAMES.index("square")).nonzero().flatten().tolist()
    assert min(_box_fill(upright.y[i]) for i in squares) > 0.9  # axis-aligned: they fill their boxes
    assert sum(_box_fill(turned.y[i]) for i in squares) / len(squares) < 0.85


def test_shapes_bad_options():
    with pytest.raises(cvae.CVAEError, match="n_train"):
        load_shapes(n_train=0)
    with pytest.raises(cvae.CVAEError, match="size"):
        load_shapes(size=2)
    with pytest.raises(cvae.CVAEError, match="rotate must be true or false"):
        load_shapes(rotate="no")


def test_byte_images_stay_uint8_and_check_conditions():
    pixels = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    info = {"label": cvae.ConditionInfo("label", (), 2)}
    split = ByteImages(pixels, {"label": torch.tensor([0, 1, 0, 1, 1])}, info)
    moved = split.to("cpu")
    assert moved.y.dtype == torch.uint8 and isinstance(moved, ByteImages)
    conds, y = next(cvae.iterate_batches(moved, 5))
    assert torch.equal(y, pixels.float() / 255) and conds["label"].tolist() == [0, 1, 0, 1, 1]
    with pytest.raises(cvae.CVAEError, match="uint8"):
        ByteImages(pixels.float(), {}, {})
    with pytest.raises(cvae.CVAEError, match="rows"):
        ByteImages(pixels, {"label": torch.tensor([0, 1])}, info)


# -- datasets from files ------------------------------------------------------------------------------------


def _png_folder(tmp_path, sizes=((12, 10),) * 5):
    rng = np.random.default_rng(0)
    written = {}
    for cls in ("cats", "dogs"):
        (tmp_path / cls).mkdir(parents=True)
        for i, (h, w) in enumerate(sizes):
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / cls / f"{i}.png")
            written[(cls, i)] = torch.from_numpy(image).permute(2, 0, 1)
    return written


def test_image_folder_reads_classes_pixels_and_splits(tmp_path):
    written = _png_folder(tmp_path)
    bundle = load_image_folder(root=str(tmp_path), test_fraction=0.4)
    assert bundle.target.shape == (3, 12, 10) and bundle.target.levels == 256
    assert bundle.conditions["label"].class_names == ("cats", "dogs")
    assert (len(bundle.train), len(bundle.test)) == (6, 4)
    assert torch.bincount(bundle.test.conditions["label"]).tolist() == [2, 2]
    pixels = sorted(torch.cat([bundle.train.y, bundle.test.y]).flatten(1).tolist())
    assert pixels == sorted(im.flatten().tolist() for im in written.values())  # exact 8-bit values
    grey = load_image_folder(root=str(tmp_path), grayscale=True, size=8)
    assert grey.target.shape == (1, 8, 8)


def test_image_folder_resizes_to_the_first_image_and_errors(tmp_path):
    _png_folder(tmp_path / "mixed", sizes=((12, 10), (6, 6), (12, 10)))
    assert load_image_folder(root=str(tmp_path / "mixed"), test_fraction=0.5).target.shape == (3, 12, 10)
    with pytest.raises(cvae.CVAEError, match="not a directory"):
        load_image_folder(root=str(tmp_path / "nowhere"))
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(cvae.CVAEError, match="no images"):
        load_image_folder(root=str(tmp_path / "empty"))
    (tmp_path / "mixed" / "birds").mkdir()
    with pytest.raises(cvae.CVAEError, match=r"class folder\(s\) birds under .* hold no images"):
        load_image_folder(root=str(tmp_path / "mixed"))
    with pytest.raises(cvae.CVAEError, match="grayscale must be true or false, got 'false'"):
        load_image_folder(root=str(tmp_path / "mixed"), grayscale="false")


def test_image_folder_stretches_or_crops_images_of_another_size(tmp_path):
    # a grey 8x8 image sets the size; a wide 16x64 image (white ends, black middle, a white stripe at
    # columns 26-27) and the same transposed (tall) are brought to it. Stretching keeps the white ends;
    # cropping scales by half (to 8x32, 32x8) and keeps the middle, where the stripe lands on column 1
    (tmp_path / "a").mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(tmp_path / "a" / "0.png")
    wide = np.zeros((16, 64, 3), dtype=np.uint8)
    wide[:, :16] = wide[:, 48:] = wide[:, 26:28] = 255
    Image.fromarray(wide).save(tmp_path / "a" / "wide.png")
    Image.fromarray(wide.transpose(1, 0, 2).copy()).save(tmp_path / "a" / "tall.png")
    for fit in ("stretch", "crop"):
        bundle = load_image_folder(root=str(tmp_path), fit=fit, test_fraction=0.34)
        resized = [p for p in torch.cat([bundle.train.y, bundle.test.y]).float() if (p != 200).any()]
        assert len(resized) == 2 and all(p.shape == (3, 8, 8) for p in resized)
        edge_columns = max(float(p[:, :, [0, -1]].mean()) for p in resized)  # the wide image's ends
        edge_rows = max(float(p[:, [0, -1], :].mean()) for p in resized)     # the tall image's ends
        stripe = max(float(p[:, :, 1].mean()) for p in resized)
        if fit == "stretch":
            assert edge_columns > 245 and edge_rows > 245, (edge_columns, edge_rows)
        else:  # antialiasing spreads the stripe a little
            assert edge_columns < 60 and edge_rows < 60 and stripe > 150, (edge_columns, edge_rows, stripe)
    with pytest.raises(cvae.CVAEError, match='fit must be "stretch"'):
        load_image_folder(root=str(tmp_path), fit="squash")


def test_a_failed_download_is_one_line_naming_the_root(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(root, download, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a.example/, got:\n"
                           "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(cvae.CVAEError) as err:
        load_mnist(root=str(tmp_path / "data"), download=True)
    message = str(err.value)
    assert "\n" not in message and "Name or service not known" in message
    assert f"download into {tmp_path / 'data'} failed" in message and "download=false" in message


@pytest.mark.parametrize("loader, where", [(load_mnist, "MNIST"), (load_fashion_mnist, "FashionMNIST"),
                                           (load_cifar10, "cifar-10-batches-py"), (load_celeba, "celeba")])
def test_missing_files_say_where_and_how(loader, where, tmp_path):
    with pytest.raises(cvae.CVAEError) as err:
        loader(root=str(tmp_path / "data"))
    message = str(err.value)
    assert str(tmp_path / "data") in message and where in message and "download=true" in message


def _idx(path, array):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + b"".join(struct.pack(">I", s) for s in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_mnist_reads_idx_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for part, n in (("train", 6), ("t10k", 3)):
        _idx(raw / f"{part}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _idx(raw / f"{part}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    bundle = load_mnist(root=str(tmp_path))
    assert (len(bundle.train), len(bundle.test)) == (6, 3) and bundle.target.shape == (1, 28, 28)
    assert bundle.test.conditions["label"].tolist() == [0, 1, 2]


def test_cifar10_reads_python_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": np.full((2, 3072), 7, dtype=np.uint8), "labels": [3, 9]}, f)
    bundle = load_cifar10(root=str(tmp_path))
    assert (len(bundle.train), len(bundle.test)) == (10, 2) and bundle.target.shape == (3, 32, 32)
    assert bundle.conditions["label"].class_names[3] == "cat"


def test_celeba_attributes_are_a_vector_condition(tmp_path):
    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    files = [f"{i:06d}.jpg" for i in range(1, 5)]
    for f in files:
        Image.new("RGB", (30, 40), (100, 100, 100)).save(base / "img_align_celeba" / f)
    (base / "list_attr_celeba.txt").write_text(
        "4\nSmiling Young Male\n" + "".join(f"{f} {1 if i % 2 else -1} 1 -1\n" for i, f in enumerate(files)))
    (base / "list_eval_partition.txt").write_text("".join(f"{f} {[0, 0, 1, 2][i]}\n" for i, f in enumerate(files)))
    bundle = load_celeba(root=str(tmp_path), size=16, crop=30, attributes=["Smiling", "Male"])
    assert bundle.conditions["attributes"].shape == (2,) and bundle.target.shape == (3, 16, 16)
    assert (len(bundle.train), len(bundle.test)) == (2, 1)
    conds, y = bundle.train[1]
    assert conds["attributes"].tolist() == [1.0, 0.0] and y.shape == (3, 16, 16)
    assert abs(float(y.mean()) - 100 / 255) < 0.05
    with pytest.raises(cvae.CVAEError, match="unknown attributes"):
        load_celeba(root=str(tmp_path), attributes=["Bald"])


# -- completion --------------------------------------------------------------------------------------------------


def test_masks_follow_the_quadrant_order():
    m1, m2, m3 = (make_mask(f"quadrant{i}", 8, 8) for i in (1, 2, 3))
    assert m1.sum() == 16 and m1[4:, :4].all()  # bottom-left shown
    assert m2.sum() == 32 and m2[:4, 4:].all()
    assert m3.sum() == 48 and not m3[:4, :4].any()  # only the top-left is hidden
    assert make_mask("center", 8, 8).sum() == 48
    with pytest.raises(cvae.CVAEError, match="unknown mask"):
        make_mask("diagonal", 8, 8)


@pytest.mark.parametrize("target", ["hidden", "image"])
def test_completion_wraps_digits(fresh_plugins, target):
    bundle = load_completion(dataset="digits", mask="quadrant1", target=target)
    assert bundle.conditions == {"visible": cvae.ConditionInfo("image", (2, 8, 8))}
    assert bundle.target.shape == ((48,) if target == "hidden" else (1, 8, 8)) and bundle.target.levels == 17
    conds, y = next(cvae.iterate_batches(bundle.test, 16))
    visible, mask = conds["visible"][:, :1], conds["visible"][:, 1:]
    assert torch.equal(mask[0, 0], make_mask("quadrant1", 8, 8).float())
    assert (visible[:, :, :4].abs().sum() == 0) and (visible[:, :, :, 4:].abs().sum() == 0)  # hidden zeroed
    digits = cvae.get_registry().get("dataset", "digits").build()
    original = digits.test.y[:16]
    assert torch.equal(compose(conds["visible"], y, make_mask("quadrant1", 8, 8), target), original)
    single_conds, single_y = bundle.test[0]
    assert single_conds["visible"].shape == (2, 8, 8) and torch.equal(single_y, y[0])


def test_completion_errors(fresh_plugins):
    with pytest.raises(cvae.CVAEError, match="target"):
        load_completion(target="rest")
    with pytest.raises(cvae.CVAEError, match="keep_conditions"):
        load_completion(keep_conditions=["colour"])
    with pytest.raises(cvae.UnknownComponentError):
        load_completion(dataset="digitz")
    with pytest.raises(cvae.CVAEError, match="keep_conditions must be a list of condition names"):
        load_completion(keep_conditions="label")


def test_the_wrapped_datasets_errors_name_its_options_where_they_are(fresh_plugins, tmp_path):
    """The wrapped dataset's options sit under data.options.dataset_options: its advice must say so."""
    with pytest.raises(cvae.CVAEError) as err:
        load_completion(dataset="mnist", dataset_options={"root": str(tmp_path)})
    message = str(err.value)
    assert "data.options.dataset_options.download=true" in message
    assert "point data.options.dataset_options.root at" in message and "data.options.root" not in message


def test_image_condition_encoder(tmp_path):
    enc = ImageConditionEncoder(cvae.ConditionInfo("image", (2, 9, 7)), channels=[4, 8], dim=5)
    assert enc(torch.rand(3, 2, 9, 7)).shape == (3, 5) and enc.out_features == 5
    np.save(tmp_path / "x.npy", np.zeros((2, 9, 7), dtype=np.float32))
    assert enc.parse(str(tmp_path / "x.npy")).shape == (2, 9, 7)
    with pytest.raises(cvae.CVAEError, match="npy"):
        enc.parse(str(tmp_path / "missing.npy"))
    with pytest.raises(cvae.CVAEError, match="image condition"):
        ImageConditionEncoder(cvae.ConditionInfo("image", (4,)))


COMPLETION_SETTINGS = [
    'data.name="completion"', 'data.options={dataset = "digits", mask = "quadrant2"}', "data.batch_size=128",
    'device="cpu"', "model.architecture_options.hidden=[64]", "model.latent_dim=4", "model.prior_options={hidden = [32]}",
    "conditions.visible.options={channels = [8], dim = 16}", "train.epochs=2", "train.lr=0.003", "train.progress=false",
    "eval.iwae_samples=8",
]


def test_deterministic_baseline_trains_and_reports_an_exact_nll(fresh_plugins, tmp_path):
    from cvae import config as config_mod

    cfg = config_mod.load_config(None, COMPLETION_SETTINGS)
    data = cvae.load_data(cfg)
    first = train_deterministic(cfg, data, tmp_path / "a", torch.device("cpu"))
    again = train_deterministic(cfg, data, tmp_path / "b", torch.device("cpu"))
    assert first["nll_nats"] == again["nll_nats"]  # seeded
    assert 0 < first["nll_nats"] < 32 * np.log(17)  # better than uniform over the 32 hidden pixels
    assert (tmp_path / "a" / "deterministic.pt").is_file()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_deterministic_baseline_shows_progress_on_a_terminal_when_asked(fresh_plugins, tmp_path, monkeypatch):
    from cvae import config as config_mod

    cfg = config_mod.load_config(None, COMPLETION_SETTINGS)
    data = cvae.load_data(cfg)
    for progress in (False, True):
        terminal = _Terminal()
        monkeypatch.setattr(sys, "stderr", terminal)
        train_deterministic(cfg, data, tmp_path / str(progress), torch.device("cpu"), progress=progress)
        shown = terminal.getvalue()
        assert ("deterministic: epoch 2/2" in shown and "/12 " in shown) == progress, shown  # 12 batches an epoch


def test_compare_prints_priors_and_the_baseline(fresh_plugins, capsys, tmp_path):
    args = ["compare", "--out", str(tmp_path / "cmp"), *(x for s in COMPLETION_SETTINGS for x in ("--set", s))]
    assert main(args) == 0
    table = capsys.readouterr().out
    for row in ("prior=standard", "prior=learned", "deterministic (no z)", "IWAE NLL"):
        assert row in table
    assert (tmp_path / "cmp" / "learned" / "completions.png").is_file()  # the plugin's pictures after training
    assert main(args) == 0  # the second time reuses the runs
    assert "reusing" in capsys.readouterr().err
    assert main(["compare", "--out", str(tmp_path / "x"), "--priors", "fixed"]) == 2
    # stopped during a variant's evaluation: the rerun goes on from that run's checkpoint
    (tmp_path / "cmp" / "learned" / "eval.json").unlink()
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "resuming prior=learned" in err and (tmp_path / "cmp" / "learned" / "eval.json").is_file()
    # a run of other settings in a variant's folder is named, not retrained over
    assert main([*args, "--set", "train.epochs=3"]) == 2
    assert "holds a run of another configuration" in capsys.readouterr().err


# -- conv on shapes, and pictures --------------------------------------------------------------------------


def test_conv_on_tiny_shapes_and_the_pictures(fresh_plugins, tmp_path):
    from cvae import config as config_mod
    from cvae.train import Trainer

    cfg = config_mod.load_config(None, [
        'data.name="shapes"', "data.options={n_train = 48, n_test = 12, size = 16}", 'device="cpu"',
        'model.architecture="conv"', "model.architecture_options={channels = [4, 8, 8], fc = 32}", "model.latent_dim=4",
        'model.likelihood="discretized_logistic"', "model.likelihood_options={}", "train.epochs=1",
        "train.progress=false", "eval.at_end=false"])
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    model, data = trainer.model, trainer.data
    for name in ("samples.png", "interpolations.png", "completions.png"):
        assert (tmp_path / "run" / name).is_file()
    with Image.open(save_interpolations(model, data, tmp_path / "i.png", rows=3, steps=4)) as interp:
        assert interp.size == (6 * 32 + 7 * 2, 3 * 32 + 4 * 2)  # 16-pixel tiles enlarged to 32, 2-pixel padding
    mask = torch.zeros(16, 16, dtype=torch.bool)
    mask[:, :8] = True
    conds, y = next(cvae.iterate_batches(data.test, 4))
    filled = complete(model, conds, y, mask, iterations=3)
    assert torch.equal(filled[..., :8], y[..., :8]) and not torch.equal(filled, y)
    assert save_completions(model, data, tmp_path / "c.png", mask, rows=2, samples=3).is_file()
    assert main(["pictures", str(tmp_path / "run"), "--out", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "interpolations.png").is_file()


# -- masks split the image; bad input exits 2 with a clear message -----------------------------------------------


@pytest.mark.parametrize("mask", ["quadrant1", "quadrant2", "quadrant3", "left", "right", "top", "bottom", "center"])
@pytest.mark.parametrize("size", [8, 13])
def test_condition_and_target_split_every_pixel_once(fresh_plugins, mask, size):
    """The condition shows exactly the mask's pixels, the target holds exactly the others: no pixel in
    both, none in neither, and the two together give back the image."""
    bundle = load_completion(dataset="shapes", dataset_options={"n_train": 6, "n_test": 6, "size": size}, mask=mask)
    m = bundle.extras["completion"]["mask"]
    conds, y = next(cvae.iterate_batches(bundle.test, 6))
    visible, channel = conds["visible"][:, :3], conds["visible"][:, 3]
    assert torch.equal(channel, m.float().expand(6, size, size))
    images = load_shapes(n_train=6, n_test=6, size=size).test.batch(torch.arange(6))[1]
    assert torch.equal(visible, images * m)  # the visible pixels, the hidden ones zeroed
    hidden = int((~m).sum())
    assert 0 < hidden < size * size and y.shape == (6, 3 * hidden) == (6, bundle.target.numel)
    assert torch.equal(y, images[:, :, ~m].flatten(1))  # the target is the hidden pixels and nothing else
    assert torch.equal(compose(conds["visible"], y, m, "hidden"), images)


def _cli_error(capsys, args):
    code = main(args)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    return err


def test_unknown_mask_exits_2_naming_the_masks(fresh_plugins, capsys, tmp_path):
    err = _cli_error(capsys, ["train", "--out", str(tmp_path / "r"), "--set", 'data.name="completion"',
                              "--set", 'data.options={dataset = "digits", mask = "diagonal"}'])
    assert "unknown mask 'diagonal'" in err and "quadrant1" in err and "center" in err


@pytest.mark.parametrize("sets, needle", [
    # the hidden pixels are a vector: a convolutional decoder cannot produce them
    (['data.name="completion"', 'data.options={dataset = "digits"}', 'model.architecture="conv"',
      "model.architecture_options={}"],
     "needs image targets"),
    # even kernels need more pixels than three stride-2 layers leave of a 4x4 image
    (['data.name="shapes"', "data.options={n_train = 6, n_test = 6, size = 4}", 'model.architecture="conv"',
      "model.architecture_options={kernels = [4, 4, 4]}"], "needs at least"),
    # no downsampling on 128x128: a 2M-feature map before the fully connected layer
    (['data.name="shapes"', "data.options={n_train = 1, n_test = 1, size = 128}", 'model.architecture="conv"',
      "model.architecture_options={strides = [1, 1, 1]}"], "add stride-2 layers"),
])
def test_image_size_the_architecture_cannot_take_exits_2(fresh_plugins, capsys, tmp_path, sets, needle):
    err = _cli_error(capsys, ["train", "--out", str(tmp_path / "r"), *(x for s in sets for x in ("--set", s))])
    assert needle in err


def test_missing_torchvision_dataset_from_the_cli(fresh_plugins, capsys, tmp_path):
    err = _cli_error(capsys, ["train", "--out", str(tmp_path / "r"), "--set", 'data.name="fashion_mnist"',
                              "--set", f'data.options={{root = "{tmp_path / "nothing"}"}}'])
    assert "data.options.root" in err and "data.options.download=true" in err and str(tmp_path / "nothing") in err


def test_pictures_of_a_completion_run_and_of_a_non_image_run(fresh_plugins, capsys, tmp_path):
    from cvae import config as config_mod
    from cvae.train import Trainer

    cfg = config_mod.load_config(None, [*COMPLETION_SETTINGS, "train.epochs=1", "eval.at_end=false"])
    Trainer(cfg, tmp_path / "run").fit()
    assert main(["pictures", str(tmp_path / "run"), "--out", str(tmp_path / "pics")]) == 0
    assert "completions.png" in capsys.readouterr().out
    with Image.open(tmp_path / "pics" / "completions.png") as png:  # 8 rows: visible part, 5 draws, original
        assert png.size == (7 * 32 + 8 * 4, 8 * 32 + 9 * 4)
    assert not (tmp_path / "pics" / "interpolations.png").exists()  # hidden pixels are no image to interpolate
    assert _cli_error(capsys, ["pictures", str(tmp_path / "nowhere")])
