"""`train.keep_best` and `train.patience`: the epoch of the highest validation ELBO is kept as best.pt and
used by the run's evaluation and commands; training stops once that ELBO has not risen for `patience`
epochs, and a resume continues the same count."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from cvae import CheckpointError, ConfigError
from cvae.cli import main
from cvae.runs import load_run
from cvae.train import Trainer

from conftest import TINY_SETTINGS

train_mod = importlib.import_module("cvae.train")


@pytest.fixture
def scripted_val_elbo(monkeypatch):
    """Make the per-epoch validation ELBO follow `values` (one per epoch, across resumes), the rest real."""

    def script(values):
        left = list(values)
        real = train_mod.held_out_stats

        def stats(*args, **kwargs):
            out = real(*args, **kwargs)
            out["test_elbo"] = left.pop(0)
            return out

        monkeypatch.setattr(train_mod, "held_out_stats", stats)

    return script


def _rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_patience_stops_training_and_the_best_epoch_is_kept_and_evaluated(tiny_config, tmp_path, scripted_val_elbo,
                                                                           lifecycle_plugin):
    scripted_val_elbo([-50.0, -30.0, -40.0, -45.0, -20.0, -10.0])
    at_end = {}
    lifecycle_plugin("end_watcher", cvae_fit_end=lambda trainer, metrics: at_end.update(
        metrics=metrics, weights={k: v.clone() for k, v in trainer.model.state_dict().items()}))
    run_dir = tmp_path / "run"
    trainer = Trainer(tiny_config("data.validation=48", "train.epochs=6", "train.keep_best=true", "train.patience=2",
                                  "train.keep_checkpoints=10"), run_dir)
    trainer.fit()
    assert [r["epoch"] for r in _rows(run_dir)] == [1, 2, 3, 4]  # epochs 3 and 4 did not beat epoch 2: stop
    assert trainer.stopped_early and (trainer.best_epoch, trainer.best_val_elbo) == (2, -30.0)
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)
    epoch_two = torch.load(run_dir / "checkpoints" / "step-000000010.pt", weights_only=True)  # 5 batches an epoch
    assert best["epoch"] == 2 and "optimizer" not in best
    assert all(torch.equal(best["model"][k], epoch_two["model"][k]) for k in epoch_two["model"])
    # the final pictures and evaluation are of the kept epoch, not the last one
    assert all(torch.equal(v, best["model"][k]) for k, v in trainer.model.state_dict().items())
    summary = json.loads((run_dir / "eval.json").read_text())
    assert (summary["checkpoint"].endswith("best.pt"), summary["epoch"], summary["step"]) == (True, 2, 10)
    # and so are what cvae_fit_end sees: the kept weights, which epoch they are, and eval.json's figures
    assert all(torch.equal(v, best["model"][k]) for k, v in at_end["weights"].items())
    ended = at_end["metrics"]
    assert (ended["epoch"], ended["best_epoch"], ended["best_step"], ended["best_val_elbo"]) == (4, 2, 10, -30.0)
    assert ended["eval"] == summary
    # every command that opens the run sees the kept epoch; `last` the newest checkpoint
    assert load_run(run_dir).epoch == 2 and load_run(run_dir, last=True).epoch == 4


def test_without_keep_best_patience_stops_but_keeps_the_last_epoch(tiny_config, tmp_path, scripted_val_elbo):
    scripted_val_elbo([-50.0, -60.0, -70.0, -10.0])
    trainer = Trainer(tiny_config("data.validation=48", "train.epochs=4", "train.patience=2"), tmp_path / "run")
    trainer.fit()
    assert trainer.epoch == 3 and trainer.best_epoch == 1
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    assert load_run(tmp_path / "run").epoch == 3


def test_a_resume_continues_the_patience_count(tiny_config, tmp_path, scripted_val_elbo):
    """Interrupted after epoch 3 (best at 2), the resumed run stops where an uninterrupted one would."""
    scripted_val_elbo([-50.0, -30.0, -40.0, -45.0, -20.0])
    settings = ("data.validation=48", "train.keep_best=true", "train.patience=2", "eval.at_end=false")
    Trainer(tiny_config(*settings, "train.epochs=3"), tmp_path / "run").fit()
    resumed = Trainer(tiny_config(*settings, "train.epochs=5"), tmp_path / "run", resume=True)
    assert resumed.best_epoch == 2
    resumed.fit()
    assert resumed.epoch == 4 and load_run(tmp_path / "run").epoch == 2


def test_a_run_stopped_early_resumes_only_with_more_patience(tiny_config, tmp_path, scripted_val_elbo):
    scripted_val_elbo([-50.0, -60.0, -70.0, -10.0, -20.0, -30.0])
    settings = ("data.validation=48", "train.keep_best=true", "train.epochs=6", "eval.at_end=false")
    Trainer(tiny_config(*settings, "train.patience=2"), tmp_path / "run").fit()
    again = Trainer(tiny_config(*settings, "train.patience=2"), tmp_path / "run", resume=True)
    again.fit()
    assert again.epoch == 3  # nothing left to train at that patience
    more = Trainer(tiny_config(*settings, "train.patience=3"), tmp_path / "run", resume=True)
    more.fit()
    assert [r["epoch"] for r in _rows(tmp_path / "run")] == [1, 2, 3, 4, 5, 6]
    assert load_run(tmp_path / "run").epoch == 4  # epoch 4's -10 beat epoch 1


@pytest.mark.parametrize("setting", ["train.keep_best=true", "train.patience=3"])
def test_keep_best_and_patience_need_a_validation_split(tiny_config, setting):
    with pytest.raises(ConfigError, match=rf"{setting.split('=')[0]} picks epochs by the validation ELBO.*"
                                          r"add --set data.validation=0.1"):
        tiny_config(setting)


def test_patience_must_not_be_negative(tiny_config):
    with pytest.raises(ConfigError, match=r"train.patience = -1: must be >= 0"):
        tiny_config("data.validation=48", "train.patience=-1")


def test_keep_best_may_not_change_on_resume(tiny_config, tmp_path):
    Trainer(tiny_config("data.validation=48", "train.epochs=1", "eval.at_end=false"), tmp_path / "run").fit()
    with pytest.raises(ConfigError, match=r"train.keep_best differs from the run being resumed"):
        Trainer(tiny_config("data.validation=48", "train.keep_best=true"), tmp_path / "run", resume=True)


def test_a_corrupt_best_checkpoint_says_how_to_go_on(tiny_config, tmp_path):
    Trainer(tiny_config("data.validation=48", "train.keep_best=true", "eval.at_end=false"), tmp_path / "run").fit()
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"best.pt is corrupt.*move it away and the run's commands open its "
                                              r"newest checkpoint"):
        load_run(tmp_path / "run")
    assert load_run(tmp_path / "run", last=True).epoch == 2


def test_the_command_line_says_what_was_kept_and_eval_last_reads_the_newest(tiny, tmp_path, scripted_val_elbo, capsys):
    scripted_val_elbo([-50.0, -30.0, -40.0, -45.0])
    args = [arg for s in (*TINY_SETTINGS, "data.validation=48", "train.epochs=6", "train.keep_best=true",
                          "train.patience=2", "eval.at_end=false") for arg in ("--set", s)]
    assert main(["train", *args, "--out", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "trained 4 epochs (20 steps): validation ELBO -45.00 nats, stopped early: val_elbo had not risen for 2" in out
    assert "kept epoch 2 (validation ELBO -30.00 nats, the highest)" in out
    kept = (tmp_path / "run" / "eval.json").read_text() if (tmp_path / "run" / "eval.json").exists() else None
    assert main(["eval", str(tmp_path / "run"), "--json", "--last"]) == 0
    assert json.loads(capsys.readouterr().out)["epoch"] == 4
    assert json.loads((tmp_path / "run" / "eval-last.json").read_text())["epoch"] == 4
    assert ((tmp_path / "run" / "eval.json").read_text() if (tmp_path / "run" / "eval.json").exists() else None) == kept
    assert main(["train", "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert "resuming at the end of epoch 4/6, where train.patience stopped it" in capsys.readouterr().err
