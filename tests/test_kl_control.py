"""KL control: the `kl_target` PI controller (by name, its limits and anti-windup, exact resume, a simulated plant,
a real toy problem) and the `cvae_klwatch` plugin's warnings while training runs."""

from __future__ import annotations

import importlib.metadata
import json
import math
import random
import types
import warnings

import pytest
import torch

import cvae
import cvae_klwatch
from cvae import CVAEError
from cvae.schedules import Constant, KLTarget
from cvae.train import Trainer

import kltoys

# -- the controller on its own ------------------------------------------------------------------------------------


def test_kl_target_by_name_and_its_errors(core_registry):
    spec = core_registry.get("schedule", "kl_target")
    s = spec.build(beta=0.5, options={"target_kl": 3.0, "ki": 0.1}, where="train.schedule_options")
    assert isinstance(s, KLTarget) and s.beta(0) == pytest.approx(0.5)  # starts at the config's beta
    with pytest.raises(CVAEError, match="needs the option target_kl"):
        spec.build(beta=1.0)
    for bad, needle in [({"target_kl": 0}, "target_kl must be a number > 0"), ({"target_kl": "abc"}, "target_kl must be a number > 0"), ({"target_kl": 1, "smoothing": 0}, "smoothing"),
                        ({"target_kl": 1, "kp": -1}, "kp >= 0"), ({"target_kl": 1, "beta_min": 2, "beta_max": 1},
                                                                   "beta_min < beta_max")]:
        with pytest.raises(CVAEError, match=needle):
            spec.build(beta=1.0, options=bad)


def test_beta_moves_against_the_error_within_its_limits():
    up = KLTarget(beta=1.0, target_kl=2.0, beta_max=50.0)
    betas = []
    for _ in range(300):
        up.observe(6.0)  # KL above the target: beta must rise
        betas.append(up.beta(0))
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:])) and betas[-1] == pytest.approx(50.0)
    down = KLTarget(beta=1.0, target_kl=2.0, beta_min=0.01)
    for _ in range(300):
        down.observe(0.0)
    assert down.beta(0) == pytest.approx(0.01)
    assert KLTarget(beta=0.0, target_kl=1.0, beta_min=1e-3).beta(0) == pytest.approx(1e-3)  # beta 0 starts at the floor


def test_no_integral_windup_at_a_limit():
    """Held at beta_max for thousands of steps, the controller must still react within a few dozen steps once the
    KL drops below its target; a wound-up integral would keep beta pinned for thousands more."""
    s = KLTarget(beta=1.0, target_kl=2.0, beta_max=10.0)
    for _ in range(5000):
        s.observe(20.0)
    assert s.beta(0) == pytest.approx(10.0)
    for step in range(60):
        s.observe(0.5)
        if s.beta(0) < 5.0:
            break
    assert s.beta(0) < 5.0, f"beta still {s.beta(0)} after {step + 1} steps below target"


def test_state_dict_resumes_exactly():
    rng = random.Random(0)
    kls = [rng.uniform(0, 8) for _ in range(400)]
    whole = KLTarget(beta=1.0, target_kl=3.0)
    expected = []
    for kl in kls:
        whole.observe(kl)
        expected.append(whole.beta(0))
    first = KLTarget(beta=1.0, target_kl=3.0)
    for kl in kls[:173]:
        first.observe(kl)
    state = json.loads(json.dumps(first.state_dict()))  # plain numbers: safe in a weights_only checkpoint
    second = KLTarget(beta=1.0, target_kl=3.0)
    assert second.beta(0) != first.beta(0)
    second.load_state_dict(state)
    got = [first.beta(0)]
    for kl in kls[173:]:
        second.observe(kl)
        got.append(second.beta(0))
    assert got == expected[172:]


def test_holds_a_simulated_plant_within_ten_percent():
    """A lagging, noisy plant whose KL settles at 20 / (1 + 2 beta): the target 4 nats needs beta = 2."""
    rng = random.Random(1)
    s, kl, history, betas = KLTarget(beta=1.0, target_kl=4.0), 12.0, [], []
    for _ in range(3000):
        kl += 0.02 * (20 / (1 + 2 * s.beta(0)) - kl)
        s.observe(kl * (1 + 0.2 * rng.gauss(0, 1)))  # batch-to-batch noise of 20%
        history.append(kl)
        betas.append(s.beta(0))
    assert max(abs(k - 4.0) / 4.0 for k in history[1500:]) < 0.1
    assert math.exp(sum(map(math.log, betas[1500:])) / 1500) == pytest.approx(2.0, rel=0.1)


# -- the controller in training ---------------------------------------------------------------------------------


def _epoch_kls(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_holds_the_kl_on_a_toy_problem(tmp_path):
    """On the manifold toy a constant beta = 1 settles far from 3 nats; the controller holds every epoch of the
    second half of training within 10% of 3 nats (training KL) and the held-out KL within 15%."""
    with kltoys.toy_plugins():
        torch.manual_seed(0)
        kltoys.train(tmp_path / "constant", "train.epochs=40")
        torch.manual_seed(0)
        kltoys.train(tmp_path / "controlled", "train.epochs=40", 'train.schedule="kl_target"',
                     "train.schedule_options={target_kl=3.0}")
    constant = _epoch_kls(tmp_path / "constant")[20:]
    assert min(abs(r["kl"] - 3.0) / 3.0 for r in constant) > 0.5  # without control it is nowhere near
    rows = _epoch_kls(tmp_path / "controlled")
    second_half = rows[len(rows) // 2:]
    assert max(abs(r["kl"] - 3.0) / 3.0 for r in second_half) < 0.10, [r["kl"] for r in second_half]
    assert max(abs(r["test_kl"] - 3.0) / 3.0 for r in second_half) < 0.15, [r["test_kl"] for r in second_half]
    assert len({round(r["beta"], 6) for r in rows}) > 10  # beta really moved


def test_kl_target_resumes_exactly_through_the_trainer(tiny_config, tmp_path):
    cfg = tiny_config("train.epochs=4", 'train.schedule="kl_target"', "train.schedule_options={target_kl=1.5}")
    Trainer(cfg, tmp_path / "whole").fit()
    cfg2 = tiny_config("train.epochs=2", 'train.schedule="kl_target"', "train.schedule_options={target_kl=1.5}")
    Trainer(cfg2, tmp_path / "split").fit()
    resumed = Trainer(cfg, tmp_path / "split", resume=True)
    assert resumed.schedule.state_dict()["kl_ema"] is not None  # the controller's state came back
    resumed.fit()
    timing = ("seconds", "examples_per_s")
    strip = [{k: v for k, v in r.items() if k not in timing} for r in _epoch_kls(tmp_path / "whole")]
    assert strip == [{k: v for k, v in r.items() if k not in timing} for r in _epoch_kls(tmp_path / "split")]
    assert len({r["beta"] for r in strip}) == 4  # a different beta at every epoch end: the state mattered


# -- warnings while training runs --------------------------------------------------------------------------------


def test_klwatch_is_a_built_in_entry_point():
    points = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="cvae")}
    assert points.get("klwatch") == "cvae_klwatch"


def test_klwatch_warns_during_a_collapsing_run(tmp_path):
    with kltoys.toy_plugins(cvae_klwatch), pytest.warns(cvae_klwatch.KLWarning) as caught:
        torch.manual_seed(0)
        kltoys.train(tmp_path / "run", "train.epochs=3", "train.beta=1000")
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("KL collapsed toward zero") and "over epoch 1" in m for m in messages), messages
    assert any(m.startswith("no active latent units at epoch 1") for m in messages), messages
    assert sum("KL collapsed" in m for m in messages) == 1  # once, not every epoch


def test_klwatch_is_quiet_on_a_healthy_run(tmp_path):
    with kltoys.toy_plugins(cvae_klwatch), warnings.catch_warnings():
        warnings.simplefilter("error", cvae_klwatch.KLWarning)
        torch.manual_seed(0)
        kltoys.train(tmp_path / "run", "train.epochs=3")


def _emitted(call) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [str(w.message) for w in caught if issubclass(w.category, cvae_klwatch.KLWarning)]


def _fake_trainer(epochs: int, epoch: int = 0) -> types.SimpleNamespace:
    return types.SimpleNamespace(run_dir="runs/x", step=0, epoch=epoch, schedule=Constant(beta=3.0),
                                 config={"train": {"epochs": epochs}})


def _epochs(trainer, kls, units=3) -> list[str]:
    """Feed one epoch-end per KL value; the warnings they raise."""
    return _emitted(lambda: [cvae_klwatch.cvae_epoch_end(trainer=trainer, epoch=i + 1, metrics={
        "kl": kl, "test_kl": kl, "beta": 1.0, "active_units": units}) for i, kl in enumerate(kls)])


def test_klwatch_checks_steps_and_rearms_after_recovery(monkeypatch):
    monkeypatch.setenv("CVAE_KLWATCH_EVERY", "2")
    trainer = _fake_trainer(epochs=10, epoch=1)
    cvae_klwatch.cvae_fit_start(trainer=trainer)
    loss = {"kl": torch.tensor(0.01)}
    assert _emitted(lambda: [cvae_klwatch.cvae_step_end(trainer=trainer, step=s, losses=loss) for s in (1, 2, 3, 4)]) == []
    got = _emitted(lambda: cvae_klwatch.cvae_step_end(trainer=trainer, step=6, losses=loss))  # third sample
    assert len(got) == 1 and "at step 6" in got[0] and "beta 3" in got[0] and "cvae doctor runs/x" in got[0]
    healthy = {"kl": 4.0, "test_kl": 4.0, "beta": 1.0, "active_units": 3}
    end = cvae_klwatch.cvae_epoch_end
    assert _emitted(lambda: end(trainer=trainer, epoch=1, metrics={**healthy, "kl": 0.2})) == []  # already said
    assert _emitted(lambda: end(trainer=trainer, epoch=2, metrics=healthy)) == []  # clears
    again = _emitted(lambda: end(trainer=trainer, epoch=3, metrics={**healthy, "kl": 0.2}))
    assert len(again) == 1 and "over epoch 3" in again[0]
    dead = _emitted(lambda: end(trainer=trainer, epoch=4, metrics={**healthy, "active_units": 0}))
    assert len(dead) == 1 and "no active latent units at epoch 4" in dead[0]
    assert math.isfinite(cvae_klwatch._watch(trainer).kl_ema)
    cvae_klwatch.cvae_fit_end(trainer=trainer, metrics={})
    assert id(trainer) not in cvae_klwatch._watches


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "inf"])
def test_klwatch_settings_that_are_not_finite_numbers_are_named_and_replaced_by_the_default(monkeypatch, value):
    monkeypatch.setenv("CVAE_KLWATCH_MIN_KL", value)
    trainer = _fake_trainer(epochs=10)
    said = _emitted(lambda: cvae_klwatch.cvae_fit_start(trainer=trainer))
    assert said == [f"CVAE_KLWATCH_MIN_KL={value!r} is not a finite number >= 0; using 0.5"]
    assert cvae_klwatch._watch(trainer).min_kl == 0.5
    cvae_klwatch.cvae_fit_end(trainer=trainer, metrics={})


def test_klwatch_waits_out_an_early_dip_but_not_a_collapse():
    # the bundled digits' default run (100 epochs): its KL dips for four epochs, then z comes into use
    digits = [0.486, 0.124, 0.128, 0.245, 0.626, 1.04, 1.42, 1.99, 2.5, 3.4, 3.6, 4.0]
    trainer = _fake_trainer(epochs=100)
    cvae_klwatch.cvae_fit_start(trainer=trainer)
    assert _epochs(trainer, digits) == []
    # after the grace period (2 of 20 epochs), a low KL that is still rising fast is given time...
    trainer = _fake_trainer(epochs=20)
    cvae_klwatch.cvae_fit_start(trainer=trainer)
    assert _epochs(trainer, [0.05, 0.1, 0.3]) == []
    # ... and one that stalls is reported
    trainer = _fake_trainer(epochs=20)
    cvae_klwatch.cvae_fit_start(trainer=trainer)
    got = _epochs(trainer, [0.05, 0.1, 0.3, 0.35])
    assert len(got) == 1 and "over epoch 4" in got[0]
    trainer = _fake_trainer(epochs=20)
    cvae_klwatch.cvae_fit_start(trainer=trainer)
    assert [m.split(":")[0] for m in _epochs(trainer, [0.001, 0.001], units=0)] == [
        "KL collapsed toward zero", "no active latent units at epoch 2"]  # not at epoch 1: grace
