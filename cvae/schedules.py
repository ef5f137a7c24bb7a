"""KL-weight schedules: how beta moves over training. Each takes the target `beta` from the config."""

from __future__ import annotations

import math
from typing import Any

from .errors import CVAEError

__all__ = ["Schedule", "Constant", "LinearWarmup", "Cyclical", "KLTarget"]


class Schedule:
    """beta as a function of the optimiser step; `observe` sees each step's KL (for controllers)."""

    def __init__(self, *, beta: float) -> None:
        if not beta >= 0:  # also rejects NaN
            raise CVAEError(f"beta must be >= 0, got {beta}")
        self.target_beta = float(beta)

    def beta(self, step: int) -> float:
        raise NotImplementedError

    def observe(self, kl: float) -> None:
        """Called with the batch KL in nats; schedules that do not adapt ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class Constant(Schedule):
    """beta throughout."""

    def beta(self, step: int) -> float:
        return self.target_beta


class LinearWarmup(Schedule):
    """beta rises linearly from `start` to its target over `warmup_steps`, then stays there: the usual
    remedy for posterior collapse early in training (Bowman et al. 2016)."""

    def __init__(self, *, beta: float, warmup_steps: int = 1000, start: float = 0.0) -> None:
        super().__init__(beta=beta)
        if warmup_steps < 1:
            raise CVAEError(f"schedule 'linear': warmup_steps must be >= 1, got {warmup_steps}")
        if not start >= 0:
            raise CVAEError(f"schedule 'linear': start must be >= 0, got {start}")
        self.warmup_steps, self.start = int(warmup_steps), float(start)

    def beta(self, step: int) -> float:
        frac = min(1.0, step / self.warmup_steps)
        return self.start + frac * (self.target_beta - self.start)


class Cyclical(Schedule):
    """Repeated warm-ups (Fu et al. 2019): each cycle of `cycle_steps` ramps beta from 0 to its target
    over the first `ramp` fraction, then holds it."""

    def __init__(self, *, beta: float, cycle_steps: int = 2000, ramp: float = 0.5) -> None:
        super().__init__(beta=beta)
        if cycle_steps < 1 or not 0 < ramp <= 1:
            raise CVAEError("schedule 'cyclical': needs cycle_steps >= 1 and 0 < ramp <= 1")
        self.cycle_steps, self.ramp = int(cycle_steps), float(ramp)

    def beta(self, step: int) -> float:
        phase = (step % self.cycle_steps) / self.cycle_steps
        return self.target_beta * min(1.0, phase / self.ramp)


class KLTarget(Schedule):
    """A PI controller that moves beta during training to hold the KL at `target_kl` nats per example
    (in the manner of ControlVAE, Shao et al. 2020, and GECO, Rezende & Viola 2018).

    The config's `beta` is the starting value. After every step the controller smooths the batch KL
    with an exponential moving average (weight `smoothing` on the newest batch), forms the relative
    error e = (KL - target) / target, clipped to [-1, 1] so that one bad batch cannot move beta far,
    and sets log beta = log beta_start + kp * e + ki * sum(e): a KL above the target raises beta, one
    below lowers it. Working on log beta makes the gains independent of beta's scale; the integral
    is held where the output meets `beta_min` or `beta_max`, so it cannot wind up at a limit. The state (the
    smoothed KL, the integral and the current beta) travels in `state_dict`, so a resumed run
    continues exactly."""

    def __init__(self, *, beta: float, target_kl: float | None = None, kp: float = 1.0, ki: float = 0.05,
                 smoothing: float = 0.05, beta_min: float = 1e-4, beta_max: float = 1e3) -> None:
        super().__init__(beta=beta)
        if target_kl is None:
            raise CVAEError("schedule 'kl_target' needs the option target_kl (nats per example), for example "
                            "--set train.schedule_options.target_kl=10")
        number = isinstance(target_kl, (int, float)) and not isinstance(target_kl, bool)
        if not (number and math.isfinite(target_kl) and target_kl > 0):
            raise CVAEError(f"schedule 'kl_target': target_kl must be a number > 0 (nats), got {target_kl!r}")
        if not (kp >= 0 and ki >= 0 and 0 < smoothing <= 1):
            raise CVAEError(f"schedule 'kl_target': needs kp >= 0, ki >= 0 and 0 < smoothing <= 1; "
                            f"got kp={kp}, ki={ki}, smoothing={smoothing}")
        if not 0 < beta_min < beta_max:
            raise CVAEError(f"schedule 'kl_target': needs 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.target_kl, self.kp, self.ki, self.smoothing = float(target_kl), float(kp), float(ki), float(smoothing)
        self.log_min, self.log_max = math.log(beta_min), math.log(beta_max)
        self.log_start = min(max(math.log(max(self.target_beta, beta_min)), self.log_min), self.log_max)
        self.kl_ema: float | None = None
        self.integral = 0.0
        self.current = math.exp(self.log_start)

    def beta(self, step: int) -> float:
        return self.current

    def observe(self, kl: float) -> None:
        if not math.isfinite(kl):
            return  # the trainer stops on a non-finite loss; do not let it poison the state first
        a = self.smoothing
        self.kl_ema = kl if self.kl_ema is None else (1 - a) * self.kl_ema + a * kl
        error = min(1.0, max(-1.0, (self.kl_ema - self.target_kl) / self.target_kl))
        proportional = self.log_start + self.kp * error
        # anti-windup by back-calculation: the integral stops where the output meets a limit
        self.integral = min(max(self.integral + self.ki * error, self.log_min - proportional), self.log_max - proportional)
        self.current = math.exp(min(max(proportional + self.integral, self.log_min), self.log_max))

    def state_dict(self) -> dict[str, Any]:
        return {"kl_ema": self.kl_ema, "integral": self.integral, "current": self.current}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kl_ema = state.get("kl_ema")
        self.integral = float(state.get("integral", 0.0))
        self.current = float(state.get("current", math.exp(self.log_start)))
