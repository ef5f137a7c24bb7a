"""KL-weight schedules: how beta moves over training. Each takes the target `beta` from the config."""

from __future__ import annotations

from typing import Any

from .errors import CVAEError

__all__ = ["Schedule", "Constant", "LinearWarmup", "Cyclical"]


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
