"""Throughput benchmarks for cvae, run as `python -m benchmarks` from the repository root.

Every registered `cvae.BenchmarkSpec` is run: the built-in ones come from `benchmarks.plugin`
(registered in-process by the suite, so the engine never imports this package), third-party ones
through the `cvae_benchmarks` hook of any installed plugin.

What is measured, and how (see README "Benchmarks"):

- training-step throughput (items/s), sampling throughput, policy action latency at batch 1 and
  memory, for an MLP CVAE policy (vector condition), a digits-sized MLP image CVAE and, when an
  architecture named "conv" is registered, the lecture's conv CVAE (64x64x3);
- variants of one training loop as ratios to a hand-written eager fp32 loop (plain Adam, `.item()`
  every step), all in one process, interleaved round by round so that machine drift cancels, with
  medians over rounds; every variant's loss after k steps is checked against the hand-written loop's;
- results as versioned JSON under `benchmarks/results/<device>/<timestamp>.json`, and
  `python -m benchmarks compare NEW [BASE]` to catch regressions.
"""

from __future__ import annotations

SCHEMA_VERSION = 1

__all__ = ["SCHEMA_VERSION"]
