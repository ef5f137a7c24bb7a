"""The trainer on a tiny in-process dataset: run artifacts, determinism, exact resume (at an epoch boundary and
mid-epoch), non-finite losses, lifecycle hooks, and the IWAE bound reported by the evaluation."""

from __future__ import annotations

import json
import math
import os
import signal
import types

import numpy as np
import pytest
import torch
from PIL import Image

import cvae
from cvae import ConfigError, CVAEError
from cvae.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from cvae.data import iterate_batches
from cvae.runs import load_run
from cvae.train import NonFiniteLossError, Trainer

TIMING = ("seconds", "examples_per_s")  # wall-clock figures: the only metrics allowed to differ between runs
ROW_KEYS = {"epoch", "step", "loss", "rec", "kl", "beta", "lr", "test_elbo", "test_rec", "test_kl", "active_units", *TIMING}


def fit(cfg: dict, out, resume: bool = False) -> tuple[Trainer, dict]:
    trainer = Trainer(cfg, out, resume=resume)
    return trainer, trainer.fit()


def rows(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def untimed(rows_: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows_]


def png(path) -> torch.Tensor:
    """A PNG file's pixels (height, width, channels), after checking that it is a complete, valid PNG."""
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        return torch.from_numpy(np.array(image.convert("RGB")))


def assert_same_parameters(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"parameter {name} differs"


# -- what a run writes --------------------------------------------------------------------------------------------


def test_a_run_writes_metrics_checkpoints_config_eval_and_pictures(tiny_config, tmp_path):
    cfg = tiny_config("train.epochs=3", "train.keep_checkpoints=2")
    out = tmp_path / "run"
    trainer, metrics = fit(cfg, out)

    table = rows(out)
    assert [r["epoch"] for r in table] == [1, 2, 3] and [r["step"] for r in table] == [6, 12, 18]  # 192 / 32 batches
    for r in table:
        assert ROW_KEYS <= set(r)
        assert all(math.isfinite(r[k]) for k in ("loss", "rec", "kl", "test_elbo"))
        assert r["loss"] == pytest.approx(r["kl"] - r["rec"], rel=1e-5)  # beta = 1, no free bits
        assert 0 <= r["active_units"] <= 4
    assert metrics["epoch"] == 3 and metrics["eval"]["test_elbo"] == json.loads((out / "eval.json").read_text())["test_elbo"]

    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000012.pt", "step-000000018.pt"]
    state = load_checkpoint(latest_checkpoint(out / "checkpoints"))
    assert (state["epoch"], state["batch"], state["step"]) == (3, 0, 18)
    assert json.loads((out / "config.json").read_text()) == cfg == state["config"]

    results = json.loads((out / "eval.json").read_text())
    assert {"test_elbo", "nll_nats", "nll_bits_per_dim", "active_units", "kl_per_dim", "iwae_samples"} <= set(results)
    assert results["iwae_samples"] == 4 and len(results["kl_per_dim"]) == 4

    samples, recs = png(out / "samples.png"), png(out / "reconstructions.png")
    assert samples.shape == (3 * 40 + 8, 10 * 40 + 8, 3)  # a row of 10 per class, 4x4 images enlarged to 32 px
    assert recs.shape == (2 * 40 + 8, 10 * 40 + 8, 3)  # originals above reconstructions
    assert samples.float().std() > 0


def test_the_loss_decreases(tiny_config, tmp_path):
    _, _ = fit(tiny_config("train.epochs=4", "train.lr=0.01"), tmp_path / "run")
    losses = [r["loss"] for r in rows(tmp_path / "run")]
    assert losses[-1] < losses[0] - 1.0, losses
    assert rows(tmp_path / "run")[-1]["test_elbo"] > rows(tmp_path / "run")[0]["test_elbo"]


def test_bfloat16_layers_train_with_float32_densities(tiny_config, tmp_path):
    cfg = tiny_config("train.epochs=4", "train.lr=0.01", 'train.precision="bfloat16"')
    trainer, _ = fit(cfg, tmp_path / "run")
    losses = [r["loss"] for r in rows(tmp_path / "run")]
    assert losses[-1] < losses[0] - 1.0, losses
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the weights stay float32
    conds, y = next(iter(iterate_batches(trainer.data.test, 16)))
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = trainer.model(conds, y)
    torch.manual_seed(0)  # the same draws of z
    plain = trainer.model(conds, y)
    assert terms.rec.dtype == terms.kl.dtype == torch.float32  # not summed in bfloat16
    assert abs(terms.rec.item() - plain.rec.item()) < 0.05 * abs(plain.rec.item()) + 1.0


def test_a_cosine_learning_rate_falls_from_train_lr_to_zero_at_the_last_step(tiny_config, tmp_path):
    trainer, _ = fit(tiny_config("train.epochs=3", "train.lr=0.01", 'train.lr_schedule="cosine"'), tmp_path / "cosine")
    total = 18  # 3 epochs of 6 batches
    assert trainer._lr(0) == pytest.approx(0.01) and trainer._lr(total - 1) == pytest.approx(0.0, abs=1e-12)
    expected = [0.01 * 0.5 * (1 + math.cos(math.pi * (6 * e - 1) / (total - 1))) for e in (1, 2, 3)]
    assert [r["lr"] for r in rows(tmp_path / "cosine")] == pytest.approx(expected, abs=1e-12)  # each epoch's last step
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    fit(tiny_config("train.epochs=3", "train.lr=0.01"), tmp_path / "constant")
    constant = rows(tmp_path / "constant")
    assert [r["lr"] for r in constant] == [0.01] * 3
    assert [r["loss"] for r in constant][1:] != [r["loss"] for r in rows(tmp_path / "cosine")][1:]


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_a_learning_rate_warmup_rises_linearly_then_follows_the_schedule(tiny_config, lifecycle_plugin, tmp_path,
                                                                        schedule):
    used: list[float] = []  # the learning rate each step was taken with
    lifecycle_plugin("lr_recorder", cvae_step_end=lambda trainer, step, losses: used.append(
        trainer.optimizer.param_groups[0]["lr"]))
    trainer, _ = fit(tiny_config("train.epochs=3", "train.lr=0.01", "train.lr_warmup=4", f"train.lr_schedule={schedule!r}"),
                     tmp_path / "warm")
    total = 18  # 3 epochs of 6 batches
    after = [0.01 if schedule == "constant" else 0.01 * 0.5 * (1 + math.cos(math.pi * s / (total - 1))) for s in range(total)]
    assert [trainer._lr(s) for s in range(total)] == pytest.approx(
        [after[s] * min(1.0, (s + 1) / 4) for s in range(total)], abs=1e-12)
    assert trainer._lr(0) == pytest.approx(after[0] / 4)
    assert used == pytest.approx([trainer._lr(s) for s in range(total)], abs=1e-12)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(after[-1], abs=1e-12)  # the last step's
    with pytest.raises(ConfigError, match="train.lr_warmup"):
        Trainer(tiny_config("train.lr_warmup=-1"), tmp_path / "bad")


def test_an_unknown_learning_rate_schedule_names_the_allowed_ones(tiny_config, tmp_path):
    with pytest.raises(ConfigError, match="train.lr_schedule = 'linear': allowed are 'constant', 'cosine'"):
        Trainer(tiny_config('train.lr_schedule="linear"'), tmp_path / "run")


def test_non_image_targets_get_no_pictures_and_no_bits_per_dim_for_a_density(tiny_config, tmp_path):
    cfg = tiny_config('data.name="tiny_vectors"', 'model.likelihood="gaussian"', "model.likelihood_options.sigma=0.5")
    _, metrics = fit(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "samples.png").exists() and not (tmp_path / "run" / "reconstructions.png").exists()
    assert metrics["eval"]["nll_bits_per_dim"] is None and math.isfinite(metrics["eval"]["nll_nats"])


def test_eval_at_end_off_writes_no_eval_json(tiny_config, tmp_path):
    _, metrics = fit(tiny_config("train.epochs=1", "eval.at_end=false"), tmp_path / "run")
    assert "eval" not in metrics and not (tmp_path / "run" / "eval.json").exists()
    assert (tmp_path / "run" / "samples.png").exists()


def test_a_fresh_run_refuses_a_directory_that_holds_a_run(tiny_config, tmp_path):
    fit(tiny_config("train.epochs=1"), tmp_path / "run")
    with pytest.raises(CVAEError, match="already holds a run; pass --resume"):
        Trainer(tiny_config("train.epochs=1"), tmp_path / "run")


# -- determinism ---------------------------------------------------------------------------------------------------


def test_same_seed_same_metrics_and_different_seed_different(tiny_config, tmp_path):
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        fit(tiny_config(f"seed={seed}"), tmp_path / name)
    a, b, c = (untimed(rows(tmp_path / n)) for n in "abc")
    assert a == b
    assert [r["loss"] for r in a] != [r["loss"] for r in c]
    ea, eb = (json.loads((tmp_path / n / "eval.json").read_text()) for n in "ab")
    assert ea == eb


# -- exact resume --------------------------------------------------------------------------------------------------


def test_resume_at_an_epoch_boundary_is_exact(tiny_config, tmp_path):
    whole, _ = fit(tiny_config("train.epochs=4"), tmp_path / "whole")
    fit(tiny_config("train.epochs=2"), tmp_path / "split")
    assert len(rows(tmp_path / "split")) == 2
    resumed, _ = fit(tiny_config("train.epochs=4"), tmp_path / "split", resume=True)
    assert resumed.step == whole.step == 24
    assert_same_parameters(whole.model.state_dict(), resumed.model.state_dict())
    assert untimed(rows(tmp_path / "whole")) == untimed(rows(tmp_path / "split"))
    a, b = (load_checkpoint(latest_checkpoint(tmp_path / n / "checkpoints")) for n in ("whole", "split"))
    assert_same_parameters(a["model"], b["model"])
    assert a["optimizer"]["state"].keys() == b["optimizer"]["state"].keys()
    for k in a["optimizer"]["state"]:
        assert_same_parameters(a["optimizer"]["state"][k], b["optimizer"]["state"][k])


@pytest.mark.parametrize("stop_at, lr_schedule", [(9, "constant"), (12, "constant"), (9, "cosine")])
def test_interrupt_mid_epoch_saves_the_position_and_resume_is_exact(tiny_config, lifecycle_plugin, tmp_path, stop_at,
                                                                     lr_schedule):
    # stop_at 9: mid-epoch 2 (batch 3 of 6); 12: at its last batch. The cosine learning rate resumes on its curve
    options = ("train.epochs=3", f"train.lr_schedule={lr_schedule!r}")
    whole, _ = fit(tiny_config(*options), tmp_path / "whole")

    errors: list[BaseException] = []
    armed = [True]

    def cvae_step_end(trainer, step, losses):
        if armed[0] and step == stop_at:
            armed[0] = False
            raise KeyboardInterrupt

    lifecycle_plugin("interrupter", cvae_step_end=cvae_step_end, cvae_fit_error=lambda trainer, error: errors.append(error))
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(*options), tmp_path / "cut")
    assert len(errors) == 1 and isinstance(errors[0], KeyboardInterrupt)
    state = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"))
    assert (state["epoch"], state["batch"], state["step"]) == (1, stop_at - 6, stop_at)
    assert len(rows(tmp_path / "cut")) == 1  # epoch 2 was not finished

    resumed, _ = fit(tiny_config(*options), tmp_path / "cut", resume=True)
    assert resumed.step == whole.step == 18
    assert_same_parameters(whole.model.state_dict(), resumed.model.state_dict())
    assert untimed(rows(tmp_path / "whole")) == untimed(rows(tmp_path / "cut"))


@pytest.fixture
def terminal_sigint():
    """SIGINT handled as in a terminal's foreground job, whatever this process inherited (a background job
    of a script starts with it ignored, and the trainer then rightly leaves it so)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_inside_a_step_stops_after_it_and_resume_is_exact(tiny_config, lifecycle_plugin, tmp_path, presses,
                                                                 terminal_sigint):
    """A real SIGINT delivered in the middle of step 8's forward pass: one press finishes that step, saves and
    stops (a resume then matches an uninterrupted run); a second press stops at once and keeps the last checkpoint."""
    whole, _ = fit(tiny_config("train.epochs=3", "train.checkpoint_steps=3"), tmp_path / "whole")
    calls = [0]

    def cvae_fit_start(trainer):
        forward = trainer.model.decoder.forward

        def interrupting(*args, **kwargs):
            if trainer.model.training:
                calls[0] += 1
                if calls[0] == 8:
                    for _ in range(presses):
                        os.kill(os.getpid(), signal.SIGINT)
            return forward(*args, **kwargs)

        if calls[0] == 0:  # the first run only
            trainer.model.decoder.forward = interrupting

    lifecycle_plugin("interrupter", cvae_fit_start=cvae_fit_start)
    cut = Trainer(tiny_config("train.epochs=3", "train.checkpoint_steps=3"), tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        cut.fit()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the trainer's handler is gone again
    state = load_checkpoint(latest_checkpoint(tmp_path / "cut" / "checkpoints"))
    if presses == 1:
        assert (cut.stopped_at_once, cut.step, state["step"], state["batch"]) == (False, 8, 8, 2)
    else:
        assert cut.stopped_at_once and state["step"] == 6  # the checkpoint of checkpoint_steps=3 before it
    resumed, _ = fit(tiny_config("train.epochs=3", "train.checkpoint_steps=3"), tmp_path / "cut", resume=True)
    assert resumed.step == whole.step == 18
    assert_same_parameters(whole.model.state_dict(), resumed.model.state_dict())
    assert untimed(rows(tmp_path / "whole")) == untimed(rows(tmp_path / "cut"))


def test_resume_rejects_a_changed_model_key(tiny_config, tmp_path):
    fit(tiny_config("train.epochs=1"), tmp_path / "run")
    with pytest.raises(ConfigError, match=r"model.latent_dim differs from the run being resumed \(4 there, 5 now\)"):
        Trainer(tiny_config("train.epochs=2", "model.latent_dim=5"), tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match=r"train.lr differs"):
        Trainer(tiny_config("train.epochs=2", "train.lr=0.1"), tmp_path / "run", resume=True)
    trainer = Trainer(tiny_config("train.epochs=2", "eval.iwae_samples=2"), tmp_path / "run", resume=True)
    assert trainer.config["train"]["epochs"] == 2 and trainer.config["eval"]["iwae_samples"] == 2


def test_resume_without_a_checkpoint_is_a_clear_error(tiny_config, tmp_path):
    with pytest.raises(CVAEError, match="no checkpoint in"):
        Trainer(tiny_config(), tmp_path / "empty", resume=True)


# -- non-finite losses ---------------------------------------------------------------------------------------------


def _poison_decoder(trainer) -> None:
    with torch.no_grad():
        trainer.model.decoder.net[-1].weight[0, 0] = float("nan")


def _push_prior_mean(trainer) -> None:
    with torch.no_grad():
        trainer.model.prior.bias[0] = 1e30  # finite, but (mu_q - mu_p)^2 overflows: the KL becomes infinite


@pytest.mark.parametrize("poison, term, saved_step", [
    (_poison_decoder, "reconstruction", 6),  # the parameters are broken: the last good state is the epoch-1 checkpoint
    (_push_prior_mean, "KL", 8),  # the parameters are finite: the state before the failing step is saved
])
def test_non_finite_loss_names_step_and_term_and_keeps_a_good_checkpoint(tiny_config, lifecycle_plugin, tmp_path,
                                                                          poison, term, saved_step):
    errors: list[BaseException] = []

    def cvae_step_end(trainer, step, losses):
        if step == 8:
            poison(trainer)

    lifecycle_plugin("poisoner", cvae_step_end=cvae_step_end, cvae_fit_error=lambda trainer, error: errors.append(error))
    with pytest.raises(NonFiniteLossError) as info:
        fit(tiny_config("train.epochs=3"), tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"step 8 (epoch 2, batch 2): the {term} term is not finite")
    assert errors == [info.value]

    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    assert path.name == f"step-{saved_step:09d}.pt" and str(path) in message
    state = load_checkpoint(path)
    assert state["step"] == saved_step
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert not (tmp_path / "run" / "eval.json").exists()  # training did not finish


# -- lifecycle hooks -----------------------------------------------------------------------------------------------


def test_lifecycle_hooks_see_every_step_and_epoch(tiny_config, lifecycle_plugin, tmp_path):
    seen: dict[str, list] = {"start": [], "step": [], "epoch": [], "end": [], "error": []}
    lifecycle_plugin(
        "recorder",
        cvae_fit_start=lambda trainer: seen["start"].append(trainer.step),
        cvae_step_end=lambda trainer, step, losses: seen["step"].append((step, sorted(losses))),
        cvae_epoch_end=lambda trainer, epoch, metrics: seen["epoch"].append((epoch, metrics["loss"])),
        cvae_fit_end=lambda trainer, metrics: seen["end"].append(metrics["epoch"]),
        cvae_fit_error=lambda trainer, error: seen["error"].append(error),
    )
    fit(tiny_config(), tmp_path / "run")
    assert seen["start"] == [0] and seen["end"] == [2] and seen["error"] == []
    assert seen["step"] == [(s, ["kl", "loss", "rec"]) for s in range(1, 13)]
    assert [(e, loss) for e, loss in seen["epoch"]] == [(r["epoch"], r["loss"]) for r in rows(tmp_path / "run")]


# -- the IWAE bound -----------------------------------------------------------------------------------------------


def test_iwae_nll_is_below_the_negative_elbo_and_bits_per_dim_follow(tiny_config, tmp_path):
    _, metrics = fit(tiny_config("train.epochs=3", "eval.iwae_samples=64"), tmp_path / "run")
    ev = metrics["eval"]
    assert ev["nll_nats"] <= -ev["test_elbo"] + 0.05, ev
    assert ev["nll_nats"] > 0  # a discrete likelihood: probabilities, so a positive NLL
    assert ev["nll_bits_per_dim"] == pytest.approx(ev["nll_nats"] / (16 * math.log(2)))


def test_a_run_saved_before_a_key_existed_loads_and_resumes_with_its_default(tiny_config, tmp_path):
    """Checkpoints of an earlier version lack the keys added since: they take those keys' defaults."""
    fit(tiny_config("train.epochs=1"), tmp_path / "run")
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = load_checkpoint(path)
    del state["config"]["train"]["free_bits_group"]
    torch.save(state, path)
    assert load_run(tmp_path / "run", device="cpu").config["train"]["free_bits_group"] == 1
    resumed, _ = fit(tiny_config("train.epochs=2"), tmp_path / "run", resume=True)
    assert resumed.step == 12 and resumed.config["train"]["free_bits_group"] == 1


def test_cli_resumes_a_run_saved_before_a_key_existed(tiny_config, tmp_path, capsys):
    from cvae.cli import main

    fit(tiny_config("train.epochs=1"), tmp_path / "run")
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = load_checkpoint(path)
    del state["config"]["train"]["free_bits_group"]
    torch.save(state, path)
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--set", "train.epochs=2"]) == 0, capsys.readouterr().err
    assert len(rows(tmp_path / "run")) == 2


def test_the_low_level_pieces_take_a_partial_config(tiny, tmp_path):
    """load_data, build_model and Trainer complete a partial config with the defaults, as cvae.train does."""
    data = cvae.load_data({"data": {"name": "tiny"}})
    assert (len(data.train), len(data.test)) == (192, 64)
    model = cvae.build_model({"model": {"latent_dim": 3, "architecture_options": {"hidden": [8]}}}, data.target,
                             data.conditions)
    assert model.latent_dim == 3
    trainer = Trainer({"data": {"name": "tiny", "batch_size": 96}, "device": "cpu",
                       "train": {"epochs": 1, "progress": False}, "eval": {"at_end": False}}, tmp_path / "run")
    assert trainer.fit()["epoch"] == 1 and trainer.step == 2
    assert trainer.config["model"]["latent_dim"] == 16  # the default, written to config.json
    resumed = Trainer({"train": {"epochs": 2}}, tmp_path / "run", resume=True)  # the rest: the run's own values
    assert resumed.fit()["epoch"] == 2 and resumed.config["data"]["batch_size"] == 96 and resumed.step == 4
    with pytest.raises(ConfigError, match=r"unknown config key 'data.nme': did you mean 'data.name'"):
        cvae.load_data({"data": {"nme": "tiny"}})
    with pytest.raises(ConfigError, match=r"model.latent_dim = 0: must be > 0"):
        cvae.build_model({"model": {"latent_dim": 0}}, data.target, data.conditions)


def test_a_split_read_item_by_item_resumes_exactly_mid_epoch(tiny, lifecycle_plugin, tmp_path):
    """A dataset that is not held in memory goes through a DataLoader, whose iterator must not draw from the
    global random state: else a run resumed mid-epoch draws other noise from then on."""
    from conftest import TINY_SETTINGS, load_tiny

    class Items(torch.utils.data.Dataset):
        def __init__(self, split):
            self.split = split

        def __len__(self):
            return len(self.split)

        def __getitem__(self, i):
            return self.split[i]

    def load_lazy():
        bundle = load_tiny()
        bundle.train, bundle.test = Items(bundle.train), Items(bundle.test)
        return bundle

    plugin = types.ModuleType("lazy_plugin")
    plugin.cvae_datasets = cvae.hookimpl(lambda: [cvae.DatasetSpec("tiny_lazy", load_lazy, "tiny, item by item")])
    cvae.register_plugin(plugin)
    from cvae import config as config_mod

    cfg = config_mod.load_config(None, [*TINY_SETTINGS, 'data.name="tiny_lazy"', "train.epochs=2",
                                        "data.validation=32"])
    whole, _ = fit(cfg, tmp_path / "whole")
    armed = [True]

    def cvae_step_end(trainer, step, losses):
        if armed[0] and step == 3:
            armed[0] = False
            raise KeyboardInterrupt

    lifecycle_plugin("interrupter", cvae_step_end=cvae_step_end)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path / "cut")
    resumed, _ = fit(cfg, tmp_path / "cut", resume=True)
    assert resumed.step == whole.step == 10  # ceil(160 / 32) batches per epoch
    assert_same_parameters(whole.model.state_dict(), resumed.model.state_dict())
    assert untimed(rows(tmp_path / "whole")) == untimed(rows(tmp_path / "cut"))


def test_an_ignored_sigint_stays_ignored(tiny_config, lifecycle_plugin, tmp_path):
    """A background job of a script starts with SIGINT ignored: the trainer must not make it stoppable."""
    lifecycle_plugin("interrupter", cvae_step_end=lambda trainer, step, losses:
                     os.kill(os.getpid(), signal.SIGINT) if step == 2 else None)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        trainer, metrics = fit(tiny_config("eval.at_end=false"), tmp_path / "run")
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert trainer.step == 12 and metrics["epoch"] == 2 and not trainer.stop_requested
