"""The README's main job, end to end, as a newcomer runs it (slow: about a minute on two cores)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from torchvision.io import read_image


@pytest.mark.slow
def test_default_training_writes_the_run_and_meets_the_digits_targets(tmp_path):
    out = tmp_path / "digits"
    run = subprocess.run([sys.executable, "-m", "cvae", "train", "--out", str(out), "--set", "train.progress=false"],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr
    for name in ("samples.png", "reconstructions.png", "metrics.jsonl", "eval.json", "config.json", "classifier.pt"):
        assert (out / name).is_file(), name
    grid = read_image(str(out / "samples.png"))
    assert grid.shape[0] in (1, 3) and grid.shape[1] == grid.shape[2]  # ten rows of ten digits
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    assert [r["epoch"] for r in rows] == list(range(1, config["train"]["epochs"] + 1))
    ev = json.loads((out / "eval.json").read_text())
    # The README reports the exact figures; these bounds catch a broken model, not a tuned one.
    assert ev["classifier_test_accuracy"] >= 0.95
    assert ev["sample_accuracy"] >= 0.97
    assert ev["diversity_ratio"] >= 0.7
    assert ev["frechet_ratio"] <= 2.0
    assert ev["nll_nats"] <= -ev["test_elbo"] + 1.0
