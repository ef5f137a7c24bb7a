"""Interleaved timing: every variant runs once per round, the order alternating between rounds, and
figures are medians over rounds. Ratios are taken round by round against the baseline of the same
round, so slow drift of a shared machine cancels instead of favouring whoever ran in a quiet moment."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

__all__ = ["synchronizer", "clock", "interleave", "summarise", "process_peak_rss_mib", "compile_counters"]


def synchronizer(device: torch.device) -> Callable[[], None]:
    """A function that waits for the device's queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """The clock to time with: on a CPU with one torch thread, the thread's own CPU time
    (`time.thread_time`), which leaves out the moments a busy machine gives the core to another
    process; otherwise wall time (`time.perf_counter`: CUDA work is asynchronous, and several CPU
    threads' time is not the caller's)."""
    if device.type == "cpu" and torch.get_num_threads() == 1:
        return "thread_time", time.thread_time
    return "perf_counter", time.perf_counter


def interleave(runs: Mapping[str, Callable[[int], Any]], rounds: int, sync: Callable[[], None],
               first_round: int = 1, timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each `runs[name](round_index)` by `timer`, for `rounds` rounds; odd rounds
    go in reverse order so that no variant always follows the same neighbour."""
    names = list(runs)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync()
            start = timer()
            runs[name](first_round + r)
            sync()
            times[name].append(timer() - start)
    return times


def summarise(times: Mapping[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Per variant: the median seconds per call, and the median over rounds of baseline time / its
    time (a speed-up: above 1 is faster than the baseline) with the smallest and largest round's."""
    out = {}
    for name, ts in times.items():
        ratios = [b / t for b, t in zip(times[baseline], ts)]
        out[name] = {"seconds": statistics.median(ts), "ratio": statistics.median(ratios),
                     "ratio_min": min(ratios), "ratio_max": max(ratios)}
    return out


def process_peak_rss_mib() -> float:
    """The process's peak resident set size so far (getrusage ru_maxrss; KiB on Linux), in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compile_counters() -> dict[str, int]:
    """torch._dynamo's running totals: graphs compiled and frames it processed."""
    from torch._dynamo.utils import counters

    return {"graphs": int(counters["stats"]["unique_graphs"]), "frames": int(counters["frames"]["total"])}
