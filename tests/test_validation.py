"""A validation split held out of the training split (`data.validation`): its size and randomness, that
training reads it instead of the test split, that the doctor follows it, and its bad values."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

import cvae
from cvae import ConfigError, CVAEError
from cvae.build import load_data
from cvae.data import Rows, held_out_count, hold_out, iterate_batches
from cvae.diagnose import history_figures
from cvae.train import Trainer

from conftest import TINY_SETTINGS

train_mod = importlib.import_module("cvae.train")  # the modules: `cvae.train` and `cvae.evaluate` are also functions
evaluate_mod = importlib.import_module("cvae.evaluate")


def _rows_of(split) -> torch.Tensor:
    """Every target of a split, in order, flattened to one row each."""
    return torch.cat([y.flatten(1) for _, y in iterate_batches(split, 50)])


@pytest.mark.parametrize("validation, count", [(0, 0), (0.1, 19), (0.001, 1), (25, 25), (25.0, 25)])
def test_a_fraction_or_a_count_of_the_training_split(validation, count):
    assert held_out_count(192, validation) == count


@pytest.mark.parametrize("validation, match", [(192, "leaves none to train on"), (-0.5, "must be a fraction"),
                                               (2.5, "give a fraction below 1"), (float("nan"), "must be a fraction"),
                                               (True, "must be a fraction")])
def test_impossible_counts_are_refused(validation, match):
    with pytest.raises(CVAEError, match=match):
        held_out_count(192, validation)


def test_held_out_rows_are_disjoint_cover_the_split_and_follow_the_seed(tiny):
    data = cvae.get_registry().get("dataset", "tiny").build(options={}, where="test").train
    stay, held = hold_out(data, 40, seed=3)
    assert isinstance(stay, Rows) and (len(stay), len(held)) == (152, 40)
    index = torch.cat([stay.index, held.index])
    assert sorted(index.tolist()) == list(range(192))  # disjoint, and together the whole split
    assert torch.equal(_rows_of(held), _rows_of(data)[held.index])
    again, other = hold_out(data, 40, seed=3)[1], hold_out(data, 40, seed=4)[1]
    assert torch.equal(again.index, held.index) and not torch.equal(other.index, held.index)
    conds, y = held[0]  # item access and moving to a device go through the wrapped split
    assert torch.equal(y, data[int(held.index[0])][1]) and conds["label"] == data[int(held.index[0])][0]["label"]
    assert torch.equal(_rows_of(held.to("cpu")), _rows_of(held))
    # a TensorData like any other: its own rows in y and conditions, slices and index tensors as items
    assert len(stay.y) == len(stay) == 152 and torch.equal(stay.y, data.y[stay.index])
    assert torch.equal(stay.conditions["label"], data.conditions["label"][stay.index])
    conds, y = stay[:8]
    assert torch.equal(y, data.y[stay.index[:8]]) and torch.equal(conds["label"], data.conditions["label"][stay.index[:8]])


def test_a_split_read_item_by_item_is_held_out_too():
    class Items(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 10

        def __getitem__(self, i: int):
            return {"label": torch.tensor(i)}, torch.full((2,), float(i))

    stay, held = hold_out(Items(), 3, seed=0)
    seen = sorted(int(c["label"]) for split in (stay, held) for c, _ in (split[i] for i in range(len(split))))
    assert (len(stay), len(held)) == (7, 3) and seen == list(range(10))
    assert sorted(_rows_of(held)[:, 0].tolist()) == sorted(float(i) for i in held.indices)


def test_load_data_holds_the_split_out_of_training_only(tiny_config):
    plain = load_data(tiny_config())
    data = load_data(tiny_config("data.validation=0.25"))
    assert plain.validation is None
    assert (len(data.train), len(data.validation), len(data.test)) == (144, 48, 64)
    assert torch.equal(_rows_of(data.test), _rows_of(plain.test))
    assert torch.equal(_rows_of(data.validation), _rows_of(plain.train)[data.validation.index])


def test_training_reads_the_validation_split_and_leaves_the_test_split_to_the_evaluation(tiny_config, tmp_path,
                                                                                          monkeypatch):
    read = []
    real = train_mod.held_out_stats

    def spy(model, split, *args, **kwargs):
        read.append(len(split))
        return real(model, split, *args, **kwargs)

    monkeypatch.setattr(train_mod, "held_out_stats", spy)
    cfg = tiny_config("data.validation=48", "eval.at_end=false")
    trainer = Trainer(cfg, tmp_path / "run")
    trainer.fit()
    assert read == [48, 48]  # one validation pass per epoch, never the 64 test examples
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all({"val_elbo", "val_rec", "val_kl"} <= set(r) and not any(k.startswith("test_") for k in r) for r in rows)
    assert rows[-1]["val_elbo"] == pytest.approx(rows[-1]["val_rec"] - rows[-1]["val_kl"])
    # the trained model really was trained on the 144 examples that stayed
    assert len(trainer.data.train) == 144 and trainer.step == 2 * 5  # ceil(144 / 32) batches per epoch


def test_the_evaluation_still_reports_the_test_split(tiny_config, tmp_path, monkeypatch):
    read = []
    real = evaluate_mod.held_out_stats
    monkeypatch.setattr(evaluate_mod, "held_out_stats", lambda model, split, *a, **k: (read.append(len(split)),
                                                                                        real(model, split, *a, **k))[1])
    Trainer(tiny_config("data.validation=48"), tmp_path / "run").fit()
    assert read == [64]
    assert "test_elbo" in json.loads((tmp_path / "run" / "eval.json").read_text())


def test_the_doctor_follows_the_validation_split(tiny_config, tmp_path):
    from cvae.diagnose import measure
    from cvae.runs import load_run

    Trainer(tiny_config("data.validation=48", "train.epochs=3", "eval.at_end=false"), tmp_path / "run").fit()
    run = load_run(tmp_path / "run")
    figures = measure(run.model, load_data(run.config))
    assert figures["held_out_split"] == "validation" and figures["test_examples"] == 48
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    history = history_figures(rows)
    assert history["history_split"] == "validation"
    assert history["best_elbo"] == max(r["val_elbo"] for r in rows)


def test_history_without_a_validation_split_reads_the_test_figures():
    rows = [{"epoch": e, "beta": 1.0, "test_elbo": -10.0 + e, "test_rec": -9.0 + e, "test_kl": 1.0} for e in (1, 2, 3)]
    history = history_figures(rows)
    assert history["history_split"] == "test" and history["best_elbo_epoch"] == 3 and history["total_gain"] == 2.0


def test_a_resume_may_not_change_the_validation_split(tiny_config, tmp_path):
    Trainer(tiny_config("data.validation=48", "train.epochs=1"), tmp_path / "run").fit()
    with pytest.raises(ConfigError, match=r"data.validation differs from the run being resumed \(48 there, 0 now\)"):
        Trainer(tiny_config("train.epochs=2"), tmp_path / "run", resume=True)


@pytest.mark.parametrize("value", ["1.5", "-1", "true", '"10%"'])
def test_bad_values_are_config_errors_before_any_data_is_read(tiny_config, value):
    with pytest.raises(ConfigError, match=r"data.validation = "):
        tiny_config(f"data.validation={value}")


def test_a_count_as_large_as_the_training_split_names_both(tiny_config, tmp_path):
    with pytest.raises(CVAEError, match=r"holds out 192 of the 192 training examples"):
        Trainer(tiny_config("data.validation=192"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_the_command_line_names_the_split_it_reports(capsys, tiny, tmp_path):
    from cvae.cli import main

    sets = [arg for item in TINY_SETTINGS for arg in ("--set", item)]
    code = main(["train", "--out", str(tmp_path / "run"), *sets, "--set", "data.validation=0.25",
                 "--set", "eval.at_end=false"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "trained 2 epochs (10 steps): validation ELBO" in out and "test ELBO" not in out
    code = main(["train", "--out", str(tmp_path / "bad"), *sets, "--set", "data.validation=2.5"])
    err = capsys.readouterr().err
    assert code == 2 and "data.validation = 2.5: must be 0, a fraction below 1" in err and "Traceback" not in err
