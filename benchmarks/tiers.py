"""How long and how wide each tier measures."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Tier", "TIERS"]


@dataclass(frozen=True)
class Tier:
    """Rounds per measurement, seconds per variant per round (the baseline's; others scale with their
    speed), loss-check steps, and whether compiled variants are run for training, sampling and latency."""

    name: str
    rounds: int
    round_seconds: float
    check_steps: int
    compile: bool
    compile_inference: bool
    compile_latency: bool
    description: str


TIERS = {
    "tiny": Tier("tiny", 2, 0.02, 3, False, False, False,
                 "a minute or two: smallest batch sizes, no compilation; for tests of the JSON and the checks, not of speed"),
    "quick": Tier("quick", 15, 0.08, 5, True, False, True,
                  "3 to 10 minutes on a 2-core CPU: one batch size per model"),
    "full": Tier("full", 25, 0.15, 5, True, True, True, "every batch size, compiled sampling too"),
}
