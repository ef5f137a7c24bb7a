"""KL watch: warns while training runs when the KL collapses toward zero or no latent unit is active.

A built-in plugin that uses only the training lifecycle hooks, as a third-party one would. It warns
(a `KLWarning`, through Python's `warnings` module, so it reaches stderr and can be filtered or turned
into an error with `-W error::UserWarning:cvae_klwatch`) on two events:

- **KL collapsed**: the KL per example is below `CVAE_KLWATCH_MIN_KL` nats (default 0.5, the threshold
  `cvae doctor` uses) and not recovering (not up by half since the previous check). Checked on each
  epoch's mean KL and, within epochs, every `CVAE_KLWATCH_EVERY` steps (default 100) on a moving
  average of the batch KL.
- **no active units**: the epoch's held-out active-unit count (posterior means varying across the
  data) is 0.

Early in training the KL often dips below half a nat and recovers once the decoder has learned the easy
part (the bundled digits do this for their first four epochs), so nothing is said during the first
`CVAE_KLWATCH_GRACE` of the planned epochs (default 0.1, at least one epoch), nor while the KL is rising.
Each event is reported once, and again only after it has cleared. The per-step cost is one integer
test; every `CVAE_KLWATCH_EVERY` steps one KL value is copied to the host. `CVAE_DISABLE_PLUGINS=klwatch`
turns it off, for models meant to ignore z. After training, `cvae doctor RUN_DIR` says why and what to change.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import cvae
from cvae.diagnose import RULES

__all__ = ["KLWarning", "Watch", "cvae_fit_start", "cvae_step_end", "cvae_epoch_end", "cvae_fit_end", "cvae_fit_error"]

EMA_WEIGHT = 0.3  # weight of the newest sampled batch KL in the moving average
RISING = 1.5      # a KL up by this factor since the previous check is recovering: wait


class KLWarning(UserWarning):
    """The KL collapsed toward zero, or no latent unit is active."""


def _warn(message: str) -> None:
    """Issue a KLWarning attributed to this plugin rather than to pluggy's caller (every filter still
    applies; repeats are this module's own business, so no once-per-location registry)."""
    warnings.warn_explicit(message, KLWarning, filename="cvae_klwatch", lineno=0, module="cvae_klwatch")


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        _warn(f"{name}={os.environ[name]!r} is not a finite number >= 0; using {default}")
        return default
    return value


@dataclass
class Watch:
    """What the watcher knows about one training run."""

    min_kl: float
    every: int
    grace_epochs: int
    kl_ema: float | None = None
    last_ema: float | None = None
    last_epoch_kl: float | None = None
    samples: int = 0
    collapsed: bool = False
    inactive: bool = False


_watches: dict[int, Watch] = {}  # by id(trainer), from fit start to fit end or error


def _watch(trainer: Any) -> Watch:
    watch = _watches.get(id(trainer))
    if watch is None:
        try:
            epochs = int(trainer.config["train"]["epochs"])
        except (AttributeError, KeyError, TypeError, ValueError):
            epochs = 1
        grace = max(1, math.ceil(_env_float("CVAE_KLWATCH_GRACE", 0.1) * epochs))
        watch = _watches[id(trainer)] = Watch(min_kl=_env_float("CVAE_KLWATCH_MIN_KL", RULES["collapse_kl_nats"]),
                                              every=max(1, int(_env_float("CVAE_KLWATCH_EVERY", 100))),
                                              grace_epochs=grace)
    return watch


def _where(trainer: Any) -> str:
    run_dir = getattr(trainer, "run_dir", None)
    return f" [after training, `cvae doctor {run_dir}` says what to change]" if run_dir is not None else ""


def _beta(trainer: Any) -> str:
    try:
        return f"{trainer.schedule.beta(trainer.step):.3g}"
    except Exception:  # a third-party trainer without a schedule: the warning still matters
        return "?"


def _collapse(watch: Watch, kl: float, previous: float | None, due: bool, message: str, trainer: Any) -> None:
    """Warn when the KL is below the threshold, past the grace period and not rising; clear once it is back
    above twice the threshold."""
    if kl >= 2 * watch.min_kl:
        watch.collapsed = False  # cleared: a later collapse is news again
    rising = previous is not None and kl > RISING * previous
    if due and kl < watch.min_kl and not rising and not watch.collapsed:
        watch.collapsed = True
        _warn(f"{message}, below {watch.min_kl:g}: z is being ignored. Lower train.beta, warm it up "
              f"(train.schedule=linear), set train.free_bits, or use train.schedule=kl_target{_where(trainer)}")


@cvae.hookimpl
def cvae_fit_start(trainer: Any) -> None:
    _watches.pop(id(trainer), None)
    _watch(trainer)


@cvae.hookimpl
def cvae_fit_end(trainer: Any, metrics: dict) -> None:
    _watches.pop(id(trainer), None)


@cvae.hookimpl
def cvae_fit_error(trainer: Any, error: BaseException) -> None:
    _watches.pop(id(trainer), None)


@cvae.hookimpl
def cvae_step_end(trainer: Any, step: int, losses: dict) -> None:
    if getattr(getattr(trainer, "dist", None), "rank", 0):  # under torchrun, rank 0 alone warns
        return
    watch = _watch(trainer)
    if step % watch.every:
        return
    kl = float(losses["kl"])
    watch.last_ema = watch.kl_ema
    watch.kl_ema = kl if watch.kl_ema is None else (1 - EMA_WEIGHT) * watch.kl_ema + EMA_WEIGHT * kl
    watch.samples += 1
    # a moving average over at least three samples, in an epoch past the grace period
    due = watch.samples >= 3 and getattr(trainer, "epoch", 0) >= watch.grace_epochs
    _collapse(watch, watch.kl_ema, watch.last_ema, due, f"KL collapsing toward zero: {watch.kl_ema:.3g} nats per "
              f"example at step {step} (moving average; beta {_beta(trainer)})", trainer)


@cvae.hookimpl
def cvae_epoch_end(trainer: Any, epoch: int, metrics: dict) -> None:
    if getattr(getattr(trainer, "dist", None), "rank", 0):
        return
    watch = _watch(trainer)
    kl, units = metrics.get("kl"), metrics.get("active_units")
    due = epoch >= watch.grace_epochs
    if isinstance(kl, (int, float)):
        _collapse(watch, kl, watch.last_epoch_kl, due, f"KL collapsed toward zero: {kl:.3g} nats per example over "
                  f"epoch {epoch} (beta {metrics.get('beta', float('nan')):.3g}, held-out KL "
                  f"{metrics.get('val_kl', metrics.get('test_kl', float('nan'))):.3g})", trainer)
        watch.last_epoch_kl = kl
    if isinstance(units, int):
        if units == 0 and due and not watch.inactive:
            watch.inactive = True
            _warn(f"no active latent units at epoch {epoch}: no posterior mean varies across the held-out data "
                  f"(training KL {kl if isinstance(kl, (int, float)) else float('nan'):.3g} nats){_where(trainer)}")
        elif units > 0:
            watch.inactive = False
