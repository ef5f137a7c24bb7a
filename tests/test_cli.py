"""The `cvae` command line, called in-process (plus one real `python -m cvae` subprocess): exit codes, one-line
errors without tracebacks, and what `train`, `sample`, `eval` and `plugins` write and print."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
import torch
from PIL import Image

import cvae
from cvae.checkpoint import list_checkpoints
from cvae.cli import main
from conftest import TINY_SETTINGS

SETS = [arg for item in TINY_SETTINGS for arg in ("--set", item)]


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str, after_start: bool = False) -> None:
    """`err` is one error line (after the "starting epoch" line of a run that began), naming every needle."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if after_start:
        assert lines[0].startswith("cvae train: starting epoch 1/"), err
        lines = lines[1:]
    assert len(lines) == 1, err
    assert lines[0].startswith("cvae ") and ": error: " in lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def run_copy(tiny, tiny_run, tmp_path):
    """A private copy of the shared trained run (eval writes eval.json into it)."""
    return shutil.copytree(tiny_run, tmp_path / "run")


# -- train --------------------------------------------------------------------------------------------------------


def test_train_writes_a_run_and_resume_continues_it(tiny, capsys, tmp_path):
    out = tmp_path / "run"
    code, stdout, stderr = run_cli(capsys, "train", "--out", out, *SETS)
    assert code == 0, stderr
    assert "starting epoch 1/2 of tiny on cpu" in stderr
    assert "trained 2 epochs (12 steps): test ELBO" in stdout and "nll_nats" in stdout
    for name in ("metrics.jsonl", "config.json", "eval.json", "samples.png", "reconstructions.png"):
        assert (out / name).is_file(), name
    listed = stdout.rpartition(f"run directory: {out} (")[2].partition(")")[0].split(", ")
    assert sorted(listed) == sorted(f"{p.name}/" if p.is_dir() else p.name for p in out.iterdir())  # what is there

    code, _, stderr = run_cli(capsys, "train", "--out", out, *SETS)
    assert code == 2
    assert_one_line_error(stderr, "already holds a run; pass --resume")

    code, stdout, stderr = run_cli(capsys, "train", "--out", out, "--resume", "--set", "train.epochs=3")
    assert code == 0, stderr
    assert "resuming at epoch 3/3" in stderr and "trained 3 epochs (18 steps)" in stdout
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3

    code, _, stderr = run_cli(capsys, "train", "--out", out, "--resume", "--set", "train.epochs=4",
                              "--set", "model.latent_dim=5")
    assert code == 2
    assert_one_line_error(stderr, "model.latent_dim differs from the run being resumed")


def test_train_from_a_toml_file(tiny, capsys, tmp_path):
    config = tmp_path / "tiny.toml"
    config.write_text(textwrap.dedent("""
        [data]
        name = "tiny"
        batch_size = 64
        [train]
        epochs = 1
    """))
    kept = [item for item in TINY_SETTINGS if not item.startswith(("data.batch_size", "train.epochs"))]
    settings = [arg for item in kept for arg in ("--set", item)]
    code, stdout, stderr = run_cli(capsys, "train", config, "--out", tmp_path / "run", *settings)
    assert code == 0, stderr
    assert "trained 1 epochs (3 steps)" in stdout  # 192 examples in batches of 64
    code, stdout, stderr = run_cli(capsys, "train", config, "--out", tmp_path / "quiet", *settings, "--set", "eval.at_end=false")
    assert code == 0 and "eval.json" not in stdout and "config.json" in stdout, stderr
    assert json.loads((tmp_path / "run" / "config.json").read_text())["data"]["batch_size"] == 64


@pytest.mark.parametrize("toml, sets, needles", [
    ("[train\nepochs = 3\n", [], ["malformed TOML"]),
    ("[train]\nepoch = 3\n", [], ["unknown config key 'train.epoch': did you mean 'train.epochs'"]),
    ("", ["--set", "model.likelihood=bernouli"], ["model.likelihood: unknown likelihood 'bernouli'",
                                                   "did you mean 'bernoulli'"]),
    ("", ["--set", "data.name=tinny"], ["data.name: unknown dataset 'tinny': did you mean 'tiny'"]),
    ("", ["--set", 'train.epochs="ten"'], ["train.epochs = 'ten': expected an integer"]),
    ("", ["--set", "train.lr=-1"], ["train.lr = -1: must be finite and > 0"]),
    ("", ["--set", 'device="cpux"'], ["device = 'cpux'"]),
    ("", ["--set", "data.options.n_trian=5"], ["data.options (dataset 'tiny'): unknown option 'n_trian'",
                                                "did you mean 'n_train'"]),
    ("", ["--set", "model.architecture_options.hiden=[4]"], ["unknown option 'hiden'", "did you mean 'hidden'"]),
])
def test_train_config_errors_exit_2_with_one_line(tiny, capsys, tmp_path, toml, sets, needles):
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    code, stdout, stderr = run_cli(capsys, "train", config, "--out", tmp_path / "run", *SETS, *sets)
    assert code == 2
    assert_one_line_error(stderr, *needles)
    assert stdout == ""
    assert not list_checkpoints(tmp_path / "run" / "checkpoints")


def test_train_missing_config_file_and_resume_without_a_run(tiny, capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "train", tmp_path / "nope.toml", "--out", tmp_path / "run")
    assert code == 2
    assert_one_line_error(stderr, "cannot read config file")
    code, _, stderr = run_cli(capsys, "train", "--out", tmp_path / "empty", "--resume")
    assert code == 2
    assert_one_line_error(stderr, "no checkpoint in")
    code, _, stderr = run_cli(capsys, "train", "--resume")
    assert code == 2
    assert_one_line_error(stderr, "--resume needs --out RUN_DIR")


def test_train_interrupted_exits_130_and_says_how_to_continue(tiny, lifecycle_plugin, capsys, tmp_path):
    def cvae_step_end(trainer, step, losses):
        if step == 4:
            raise KeyboardInterrupt

    lifecycle_plugin("interrupter", cvae_step_end=cvae_step_end)
    out = tmp_path / "run"
    code, _, stderr = run_cli(capsys, "train", "--out", out, *SETS)
    assert code == 130
    assert "Traceback" not in stderr
    assert f"interrupted at step 4; state saved. Continue with: cvae train --out {out} --resume" in stderr
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000004.pt"]


def test_train_non_finite_loss_exits_1(tiny, lifecycle_plugin, capsys, tmp_path):
    def cvae_step_end(trainer, step, losses):
        with torch.no_grad():
            trainer.model.decoder.net[-1].bias.fill_(float("nan"))

    lifecycle_plugin("poisoner", cvae_step_end=cvae_step_end)
    code, _, stderr = run_cli(capsys, "train", "--out", tmp_path / "run", *SETS)
    assert code == 1
    assert_one_line_error(stderr, "step 1 (epoch 1, batch 1): the reconstruction term is not finite",
                          "no checkpoint was written before they broke", after_start=True)


def test_train_help_lists_every_config_key(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for key in cvae.config.SCHEMA:
        assert f"  {key.name} " in out, key.name


# -- sample -------------------------------------------------------------------------------------------------------


def test_sample_png_is_a_class_grid(tiny, tiny_run, capsys, tmp_path):
    path = tmp_path / "out" / "grid.png"
    code, stdout, stderr = run_cli(capsys, "sample", tiny_run, "--out", path, "--n", 4, "--device", "cpu")
    assert code == 0, stderr
    assert f"wrote 12 samples to {path}" in stdout  # 3 classes x 4
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (4 * 40 + 8, 3 * 40 + 8)  # 4x4 tiles enlarged 8x to 32 px, 8 px padding


def test_sample_npz_holds_samples_and_labels(tiny, tiny_run, capsys, tmp_path):
    path = tmp_path / "all.npz"
    code, _, stderr = run_cli(capsys, "sample", tiny_run, "--out", path, "--n", 5, "--mode", "sample", "--seed", 1)
    assert code == 0, stderr
    with np.load(path) as data:
        samples, labels = data["samples"], data["label"]
    assert samples.shape == (15, 1, 4, 4) and samples.dtype == np.float32
    assert samples.min() >= 0 and samples.max() <= 1
    assert set(np.unique(samples * 4)) <= set(range(5))  # sampled from a 5-level likelihood
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5


def test_sample_with_a_fixed_label(tiny, tiny_run, capsys, tmp_path):
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    assert run_cli(capsys, "sample", tiny_run, "--out", one, "--condition", "label=1")[0] == 0
    assert run_cli(capsys, "sample", tiny_run, "--out", two, "--condition", "label=1")[0] == 0
    with np.load(one) as a, np.load(two) as b:
        assert a["samples"].shape == (10, 1, 4, 4) and a["label"].tolist() == [1] * 10
        np.testing.assert_array_equal(a["samples"], b["samples"])  # --seed 0 both times


@pytest.mark.parametrize("args, needles", [
    (["--condition", "colour=1"], ["--condition 'colour': this model's conditions are ['label']"]),
    (["--condition", "label=7"], ["label '7' is not a class index 0..2"]),
    (["--condition", "label"], ["--condition 'label' is not of the form NAME=VALUE"]),
    (["--n", "0"], ["--n must be >= 1"]),
])
def test_sample_errors_exit_2(tiny, tiny_run, capsys, tmp_path, args, needles):
    code, stdout, stderr = run_cli(capsys, "sample", tiny_run, "--out", tmp_path / "s.npz", *args)
    assert code == 2 and stdout == ""
    assert_one_line_error(stderr, *needles)
    assert not (tmp_path / "s.npz").exists()


def test_sample_bad_suffix_and_missing_run_exit_2(tiny, tiny_run, capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "sample", tiny_run, "--out", tmp_path / "s.jpg")
    assert code == 2
    assert_one_line_error(stderr, "must end in .png (a grid) or .npz (arrays)")
    code, _, stderr = run_cli(capsys, "sample", tmp_path / "missing", "--out", tmp_path / "s.png")
    assert code == 2
    assert_one_line_error(stderr, "run directory", "does not exist")


def test_sample_png_of_non_image_targets_exits_2(tiny, capsys, tmp_path):
    out = tmp_path / "vec"
    code, _, stderr = run_cli(capsys, "train", "--out", out, *SETS, "--set", 'data.name="tiny_vectors"',
                              "--set", 'model.likelihood="gaussian"', "--set", "train.epochs=1")
    assert code == 0, stderr
    code, _, stderr = run_cli(capsys, "sample", out, "--out", tmp_path / "v.png")
    assert code == 2
    assert_one_line_error(stderr, "these targets are not images: write them with --out FILE.npz")
    code, _, stderr = run_cli(capsys, "sample", out, "--out", tmp_path / "v.npz", "--condition", "label=2")
    assert code == 0, stderr
    with np.load(tmp_path / "v.npz") as data:
        assert data["samples"].shape == (10, 2) and data["label"].tolist() == [2] * 10


# -- eval ---------------------------------------------------------------------------------------------------------


def test_eval_json(run_copy, capsys):
    code, stdout, stderr = run_cli(capsys, "eval", run_copy, "--json", "--iwae-samples", 16, "--device", "cpu")
    assert code == 0, stderr
    results = json.loads(stdout)
    assert {"test_elbo", "nll_nats", "nll_bits_per_dim", "active_units", "checkpoint", "epoch", "step"} <= set(results)
    assert results["epoch"] == 3 and results["step"] == 18 and results["iwae_samples"] == 16
    assert results["checkpoint"].endswith("step-000000018.pt")
    assert results["nll_nats"] <= -results["test_elbo"] + 0.05
    assert results["nll_bits_per_dim"] == pytest.approx(results["nll_nats"] / (16 * math.log(2)))
    assert json.loads((run_copy / "eval.json").read_text()) == results

    code, stdout, _ = run_cli(capsys, "eval", run_copy)
    assert code == 0
    assert "test_elbo" in stdout and "nll_nats" in stdout and "kl_per_dim" not in stdout  # lists are left out
    assert re.search(r"^  iwae_samples +32$", stdout, re.M)  # the run's own eval.iwae_samples
    rows = [line for line in stdout.splitlines() if line.startswith("  ")]
    value_columns = {len(row) - len(row[2:].split(None, 1)[1]) for row in rows}
    assert len(rows) > 5 and len(value_columns) == 1  # values line up, however long the longest name


def test_eval_errors_exit_2(tiny, tiny_run, capsys, tmp_path):
    code, _, stderr = run_cli(capsys, "eval", tmp_path / "missing")
    assert code == 2
    assert_one_line_error(stderr, "run directory", "missing does not exist")
    (tmp_path / "empty").mkdir()
    code, _, stderr = run_cli(capsys, "eval", tmp_path / "empty")
    assert code == 2
    assert_one_line_error(stderr, "no checkpoint in")
    (tmp_path / "notes.txt").write_text("not a run")
    code, _, stderr = run_cli(capsys, "eval", tmp_path / "notes.txt")
    assert code == 2
    assert_one_line_error(stderr, "notes.txt is a file, not a run directory", "the --out of `cvae train`")
    checkpoint = list_checkpoints(tiny_run / "checkpoints")[-1]  # a checkpoint: name its run
    code, _, stderr = run_cli(capsys, "eval", checkpoint)
    assert code == 2
    assert_one_line_error(stderr, "is a file, not a run directory", f"pass the run it belongs to, {tiny_run.resolve()}")
    code, _, stderr = run_cli(capsys, "eval", tiny_run / "config.json")  # a file of the run itself
    assert code == 2
    assert_one_line_error(stderr, "is a file, not a run directory", f"pass the run it belongs to, {tiny_run.resolve()}")


def test_eval_of_a_truncated_checkpoint_names_the_older_one(run_copy, tiny_config, capsys):
    ckpts = list_checkpoints(run_copy / "checkpoints")
    assert len(ckpts) == 2
    data = ckpts[-1].read_bytes()
    ckpts[-1].write_bytes(data[: len(data) // 2])
    code, _, stderr = run_cli(capsys, "eval", run_copy)
    assert code == 2
    assert_one_line_error(stderr, "is corrupt, truncated or not a cvae checkpoint",
                          f"the previous checkpoint {ckpts[0]} is kept")


# -- plugins ------------------------------------------------------------------------------------------------------


def test_plugins_lists_plugins_hooks_and_components(tiny, capsys):
    code, stdout, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "core  (cvae " in stdout and "tiny_plugin  (registered in-process )" in stdout
    assert "  dataset: tiny, tiny_vectors" in stdout and "  condition: tiny_onehot" in stdout
    assert "  hooks: cvae_conditions, cvae_datasets" in stdout and "FAILED" not in stdout

    code, stdout, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    listing = json.loads(stdout)
    rows = {r["name"]: r for r in listing["plugins"]}
    assert set(rows) == {"core", "tiny_plugin"} and listing["failed"] == [] and listing["error"] is None
    assert rows["tiny_plugin"]["components"] == {"condition": ["tiny_onehot"], "dataset": ["tiny", "tiny_vectors"]}
    assert rows["tiny_plugin"]["hooks"] == ["cvae_conditions", "cvae_datasets"]
    assert "bernoulli" in rows["core"]["components"]["likelihood"] and rows["core"]["distribution"] == "cvae"


@pytest.fixture
def broken_distribution(tmp_path, monkeypatch, fresh_plugins):
    """An installed distribution whose plugin raises at import, as importlib.metadata sees it."""
    info = tmp_path / "brokenplug-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: brokenplug\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cvae]\nbroken = broken_cli_plugin\n")
    (tmp_path / "broken_cli_plugin.py").write_text("raise RuntimeError('boom: a missing dependency')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CVAE_PLUGINS", "core,broken")
    fresh_plugins.reset()
    yield
    sys.modules.pop("broken_cli_plugin", None)


def test_a_reader_that_closes_the_pipe_ends_the_command_quietly(tiny, monkeypatch):
    read, write = os.pipe()
    os.close(read)  # as `cvae plugins | head -1` once head has its line
    with os.fdopen(write, "w", buffering=1) as stdout:  # line-buffered: the first line meets the closed pipe
        monkeypatch.setattr(sys, "stdout", stdout)
        assert main(["plugins"]) == 141
        print("after", file=stdout)  # the exit's own flush must not fail again


def test_plugins_reports_a_plugin_that_failed_to_import_and_still_exits_0(broken_distribution, capsys):
    code, stdout, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "FAILED broken  (brokenplug): RuntimeError: boom: a missing dependency" in stdout
    assert "core  (cvae " in stdout
    code, stdout, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0
    listing = json.loads(stdout)
    assert listing["failed"] == [{"name": "broken", "distribution": "brokenplug",
                                  "reason": "RuntimeError: boom: a missing dependency"}]
    assert [r["name"] for r in listing["plugins"]] == ["core"]


def test_plugins_with_a_name_clash_still_lists_and_exits_2(tiny, capsys):
    clash = types.ModuleType("clash_plugin")
    clash.cvae_datasets = cvae.hookimpl(lambda: [cvae.DatasetSpec("tiny", dict)])
    cvae.register_plugin(clash)
    code, stdout, _ = run_cli(capsys, "plugins")
    assert code == 2
    assert "clash_plugin  (registered in-process )" in stdout
    assert "ERROR: dataset 'tiny' is registered by both plugin 'tiny_plugin' and plugin 'clash_plugin'" in stdout


def test_python_dash_m_cvae_plugins_json():
    env = {**os.environ, "CVAE_PLUGINS": "core"}
    for var in ("CVAE_DISABLE_PLUGINS", "CVAE_STRICT_PLUGINS", "CVAE_LOAD_THIRD_PARTY"):
        env.pop(var, None)
    proc = subprocess.run([sys.executable, "-m", "cvae", "plugins", "--json"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listing = json.loads(proc.stdout)
    (core,) = listing["plugins"]
    assert core["name"] == "core" and core["distribution"] == "cvae"
    assert "cvae_likelihoods" in core["hooks"] and "gaussian" in core["components"]["likelihood"]
    assert listing["failed"] == [] and listing["error"] is None


@pytest.mark.parametrize("emulated", [True, False])
def test_train_warns_when_bfloat16_would_be_emulated(tiny, capsys, tmp_path, monkeypatch, emulated):
    monkeypatch.setattr(sys.modules["cvae.train"], "emulated_bfloat16", lambda device: emulated)  # cvae.train: a function
    code, _, stderr = run_cli(capsys, "train", "--out", tmp_path / "run", *SETS, "--set", 'train.precision="bfloat16"',
                              "--set", "eval.at_end=false")
    assert code == 0, stderr
    warned = "cvae train: warning: cpu has no native bfloat16 arithmetic" in stderr
    assert warned == emulated and ("train.precision=" in stderr) == emulated


def test_a_reader_that_leaves_stops_the_command_quietly():
    env = {**os.environ, "CVAE_PLUGINS": "core"}
    proc = subprocess.Popen([sys.executable, "-m", "cvae", "plugins"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter is up, so every write finds the pipe closed (`... | head -0`)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 141 and stderr == ""


def test_eval_output_shows_figures_by_class_but_not_other_lists():
    from cvae.cli import _format_eval

    text = _format_eval({"sample_accuracy": 0.75, "sample_accuracy_by_class": [0.5, None, 1.0],
                         "kl_per_dim": [0.1, 0.2], "latent_dim": 2})
    assert re.search(r"^  sample_accuracy_by_class 0\.5 - 1$", text, re.M)
    assert re.search(r"^  sample_accuracy +0\.75$", text, re.M)
    assert "kl_per_dim" not in text and "latent_dim" in text
    text = _format_eval({"sample_confusion": [[0.75, 0.25], None], "sample_accuracy": 0.75})
    assert re.search(r"^  sample_confusion \(row: class asked for; column: class called\)\n +0 +0\.75 0\.25\n +1 +-$",
                     text, re.M)
    # with the classes' names, rows and columns carry them (a name wider than a figure widens its column)
    text = _format_eval({"class_names": ["circle", "sq"], "sample_accuracy_by_class": [0.5, 1.0],
                         "sample_confusion": [[0.5, 0.5], [0.0, 1.0]]})
    assert re.search(r"^  sample_accuracy_by_class circle 0\.5  sq 1$", text, re.M)
    assert re.search(r"\(row: class asked for; column: class called\)\n +circle +sq\n"
                     r" +circle +0\.50 0\.50\n +sq +0\.00 1\.00$", text, re.M)
    assert "class_names" not in text  # it labels the figures, it is not one
