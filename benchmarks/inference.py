"""Sampling throughput and policy action latency: the hand-written sampler (z ~ N(0, I), decode,
likelihood mean) against the toolkit's `CVAE.sample` and compiled or bf16 versions, interleaved, each
checked against the hand-written output drawn with the same seed."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import cvae
from cvae import config as config_mod

from .models import MODELS, HandWrittenVAE, hand_written_sample, synthetic
from .timing import clock, compile_counters, interleave, summarise, synchronizer

__all__ = ["sample_benchmark", "latency_benchmark", "SAMPLE_TOL", "SAMPLE_BF16_TOL"]

SAMPLE_TOL = 1e-4  # largest absolute difference from the hand-written sample allowed in fp32
SAMPLE_BF16_TOL = 5e-2  # ... and under bf16 autocast


class _Sampler(nn.Module):
    """The hand-written sampler as a module, for torch.compile."""

    def __init__(self, model: HandWrittenVAE, latent_dim: int) -> None:
        super().__init__()
        self.model, self.latent_dim = model, latent_dim

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        return hand_written_sample(self.model, c, self.latent_dim)


def _setup(model: str, device: torch.device, batch: int, compile: bool, seed: int, to_host: bool):
    spec = MODELS[model]
    config = config_mod.load_config(None, [*spec.overrides, f'device="{device}"', f"seed={seed}"])
    torch.manual_seed(seed)
    data = cvae.load_data(config)
    toolkit = cvae.build_model(config, data.target, data.conditions).to(device).eval()
    hand = HandWrittenVAE(copy.deepcopy(toolkit.encoder), copy.deepcopy(toolkit.decoder), spec).to(device).eval()
    conds, _ = synthetic(model, batch, seed)
    (name, c), = ((k, v.to(device)) for k, v in conds.items())
    z = toolkit.latent_dim
    sampler = _Sampler(hand, z)

    def bf16(fn: Callable[[], torch.Tensor]) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            with torch.autocast(device.type, dtype=torch.bfloat16):
                return fn()
        return run

    fns: dict[str, Callable[[], torch.Tensor]] = {
        "naive": lambda: sampler(c),
        "toolkit": lambda: toolkit.sample({name: c}),
        "bf16": bf16(lambda: sampler(c)),
    }
    if compile and device.type == "cuda":
        compiled = torch.compile(sampler, mode="reduce-overhead")

        def graphed() -> torch.Tensor:
            torch.compiler.cudagraph_mark_step_begin()  # each call is a new step: earlier outputs may be overwritten
            return compiled(c)

        fns["compile_ro"] = graphed
    elif compile:
        compiled = torch.compile(sampler)
        fns["compile"] = lambda: compiled(c)
    if to_host:  # an action is only taken once it is back on the host: latency includes that copy
        fns = {n: (lambda fn=fn: fn().cpu()) for n, fn in fns.items()}
    return fns


def _measure(kind: str, model: str, device: torch.device, batch: int, rounds: int, round_seconds: float,
             compile: bool, seed: int) -> list[dict[str, Any]]:
    torch._dynamo.reset()
    sync = synchronizer(device)
    with torch.no_grad():
        fns = _setup(model, device, batch, compile, seed, to_host=kind == "latency")
        checks: dict[str, dict[str, Any]] = {}
        ref = None
        for name, fn in fns.items():
            before = compile_counters()["graphs"]
            torch.manual_seed(seed)
            sync()
            start = time.perf_counter()
            out = fn().float().clone()
            sync()
            first = time.perf_counter() - start
            if ref is None:
                ref = out.clone()
            diff = float((out - ref).abs().max())
            tol = SAMPLE_BF16_TOL if name == "bf16" else SAMPLE_TOL
            checks[name] = {"max_abs_diff": diff, "tol": tol, "ok": bool(diff <= tol), "first_call_s": first,
                            "graphs": compile_counters()["graphs"] - before}
        for fn in fns.values():  # warm-up
            for _ in range(3):
                fn()
        sync()
        start = time.perf_counter()
        for _ in range(5):
            fns["naive"]()
        sync()
        per_call = (time.perf_counter() - start) / 5
        calls = int(min(max(round_seconds / max(per_call, 1e-7), 5), 10_000))

        def repeat(fn: Callable[[], torch.Tensor]) -> Callable[[int], None]:
            def run(_: int) -> None:
                for _ in range(calls):
                    fn()
            return run

        clock_name, timer = clock(device)
        times = interleave({n: repeat(fn) for n, fn in fns.items()}, rounds, sync, timer=timer)
    summary = summarise(times, "naive")
    rows = []
    for name, s in summary.items():
        per = s["seconds"] / calls
        row = {"benchmark": f"{kind}.{model}", "kind": kind, "model": model, "device": str(device), "batch": batch,
               "variant": name, "levers": [] if name in ("naive", "toolkit") else [name],
               "path": "cvae_sample" if name == "toolkit" else "hand_written",
               "safe": name != "bf16", "ratio": s["ratio"], "ratio_min": s["ratio_min"], "ratio_max": s["ratio_max"],
               "clock": clock_name, "rounds": rounds, "calls_per_round": calls, "check": checks[name]}
        if kind == "latency":
            row.update(metric="latency_us", unit="us", higher_is_better=False, value=1e6 * per)
        else:
            row.update(metric="sample_items_per_s", unit="items/s", higher_is_better=True, value=batch / per)
        if name.startswith("compile"):
            row["compile_s"] = checks[name]["first_call_s"] - per
            row["graphs"] = checks[name]["graphs"]
            saved = summary["naive"]["seconds"] / calls - per
            row["break_even_calls"] = row["compile_s"] / saved if saved > 0 else None
        rows.append(row)
    return rows


def sample_benchmark(model: str, device: torch.device, batch: int, *, rounds: int, round_seconds: float,
                     compile: bool = False, seed: int = 0) -> list[dict[str, Any]]:
    """Samples per second for `model` at `batch`, one row per variant."""
    return _measure("sample", model, device, batch, rounds, round_seconds, compile, seed)


def latency_benchmark(model: str, device: torch.device, *, rounds: int, round_seconds: float, compile: bool = False,
                      seed: int = 0) -> list[dict[str, Any]]:
    """Microseconds per action (batch 1) for `model`, one row per variant."""
    return _measure("latency", model, device, 1, rounds, round_seconds, compile, seed)
