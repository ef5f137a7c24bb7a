"""KL-weight schedules: beta at chosen steps, registry access, and bad parameters."""

from __future__ import annotations

import math

import pytest

from cvae import ConfigError, CVAEError
from cvae.schedules import Constant, Cyclical, LinearWarmup


def test_constant():
    s = Constant(beta=0.5)
    assert [s.beta(step) for step in (0, 1, 10_000)] == [0.5, 0.5, 0.5]


def test_linear_warmup():
    s = LinearWarmup(beta=2.0, warmup_steps=100)
    got = [s.beta(step) for step in (0, 25, 50, 100, 101, 5000)]
    assert got == pytest.approx([0.0, 0.5, 1.0, 2.0, 2.0, 2.0])


def test_linear_warmup_from_a_start_value():
    s = LinearWarmup(beta=1.0, warmup_steps=10, start=0.2)
    assert [s.beta(step) for step in (0, 5, 10, 20)] == pytest.approx([0.2, 0.6, 1.0, 1.0])


def test_cyclical():
    s = Cyclical(beta=2.0, cycle_steps=100, ramp=0.5)
    steps = (0, 10, 25, 50, 75, 99, 100, 125, 150, 225)
    assert [s.beta(step) for step in steps] == pytest.approx([0.0, 0.4, 1.0, 2.0, 2.0, 2.0, 0.0, 1.0, 2.0, 1.0])


def test_cyclical_full_ramp():
    s = Cyclical(beta=1.0, cycle_steps=4, ramp=1.0)
    assert [s.beta(step) for step in range(9)] == pytest.approx([0, 0.25, 0.5, 0.75, 0, 0.25, 0.5, 0.75, 0])


def test_schedules_are_stateless_and_ignore_the_kl():
    s = LinearWarmup(beta=1.0, warmup_steps=10)
    s.observe(123.0)
    s.load_state_dict(s.state_dict())
    assert s.beta(5) == pytest.approx(0.5)


def test_schedules_by_name(core_registry):
    assert {"constant", "linear", "cyclical"} <= set(core_registry.names("schedule"))
    s = core_registry.get("schedule", "linear").build(beta=1.0, options={"warmup_steps": 4})
    assert s.beta(2) == pytest.approx(0.5)
    with pytest.raises(ConfigError, match=r"unknown option 'warmup'.*did you mean 'warmup_steps'"):
        core_registry.get("schedule", "linear").build(beta=1.0, options={"warmup": 4}, where="train.schedule_options")
    with pytest.raises(ConfigError, match="beta"):  # fixed arguments cannot be overridden by options
        core_registry.get("schedule", "constant").build(beta=1.0, options={"beta": 2.0})


@pytest.mark.parametrize("make, needle", [
    (lambda: Constant(beta=-0.1), "beta must be >= 0"),
    (lambda: Constant(beta=math.nan), "beta must be >= 0"),
    (lambda: LinearWarmup(beta=1.0, warmup_steps=0), "warmup_steps must be >= 1"),
    (lambda: LinearWarmup(beta=1.0, start=-0.5), "start must be >= 0"),
    (lambda: LinearWarmup(beta=-1.0), "beta must be >= 0"),
    (lambda: Cyclical(beta=1.0, cycle_steps=0), "cycle_steps >= 1"),
    (lambda: Cyclical(beta=1.0, ramp=0.0), "0 < ramp <= 1"),
    (lambda: Cyclical(beta=1.0, ramp=1.5), "0 < ramp <= 1"),
])
def test_bad_parameters_raise(make, needle):
    with pytest.raises(CVAEError, match=needle):
        make()
