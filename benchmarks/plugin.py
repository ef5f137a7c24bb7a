"""The suite's own cvae plugin: synthetic datasets for the benchmarked models and the built-in
benchmarks, registered through the same hooks a third-party plugin uses (`cvae_datasets`,
`cvae_benchmarks`). The suite registers it in-process; the engine never imports it."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

import cvae

from .inference import latency_benchmark, sample_benchmark
from .models import MODELS, bundle
from .tiers import TIERS
from .training import train_benchmark

__all__ = ["cvae_datasets", "cvae_benchmarks", "missing_architecture"]

Run = Callable[[torch.device], list[dict[str, Any]]]


def missing_architecture(model: str) -> str | None:
    """Why `model` cannot be benchmarked here (its architecture is not registered), or None."""
    arch = MODELS[model].architecture
    if arch in cvae.get_registry().names("architecture"):
        return None
    return f"no architecture named {arch!r} is registered"


def _skip(model: str) -> list[dict[str, Any]] | None:
    reason = missing_architecture(model)
    return [{"skipped": reason}] if reason else None


def make_train(model: str, tier: str = "quick") -> Run:
    """Training-step throughput of every loop variant, at the tier's batch sizes."""
    t = TIERS[tier]

    def run(device: torch.device) -> list[dict[str, Any]]:
        rows = _skip(model)
        if rows:
            return rows
        rows = []
        for batch in MODELS[model].batch_sizes(tier, device.type):
            rows += train_benchmark(model, device, batch, rounds=t.rounds, round_seconds=t.round_seconds,
                                    check_steps=t.check_steps, compile=t.compile)
        return rows

    return run


def make_sample(model: str, tier: str = "quick") -> Run:
    """Sampling throughput (z from the prior, decoded to the likelihood's mean)."""
    t = TIERS[tier]

    def run(device: torch.device) -> list[dict[str, Any]]:
        rows = _skip(model)
        if rows:
            return rows
        rows = []
        for batch in MODELS[model].batch_sizes(tier, device.type):
            rows += sample_benchmark(model, device, batch, rounds=t.rounds, round_seconds=t.round_seconds / 2,
                                     compile=t.compile_inference)
        return rows

    return run


def make_latency(tier: str = "quick") -> Run:
    """Action latency of the policy at batch 1: one observation in, one action chunk out."""
    t = TIERS[tier]

    def run(device: torch.device) -> list[dict[str, Any]]:
        return latency_benchmark("policy", device, rounds=t.rounds, round_seconds=t.round_seconds / 2,
                                 compile=t.compile_latency)

    return run


@cvae.hookimpl
def cvae_datasets() -> list[cvae.DatasetSpec]:
    return [cvae.DatasetSpec(f"bench_{name}", partial(_bundle, name), f"synthetic data for the benchmark model {name!r}")
            for name in MODELS]


def _bundle(name: str, *, n: int = 64, seed: int = 0) -> cvae.DataBundle:
    return bundle(name, n, seed)


@cvae.hookimpl
def cvae_benchmarks() -> list[cvae.BenchmarkSpec]:
    specs = []
    for name, spec in MODELS.items():
        specs.append(cvae.BenchmarkSpec(f"train.{name}", partial(make_train, name), f"training step: {spec.description}"))
        specs.append(cvae.BenchmarkSpec(f"sample.{name}", partial(make_sample, name), f"sampling: {spec.description}"))
    specs.append(cvae.BenchmarkSpec("latency.policy", make_latency, "policy action latency at batch 1"))
    return specs
