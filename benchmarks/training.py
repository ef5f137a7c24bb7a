"""The training-step benchmark: variants of one training loop, checked and timed against a
hand-written eager fp32 loop on the same model, the same data and the same seed.

Variants (`Variant`): the hand-written loop with levers switched on one at a time or together, and
the toolkit's own trainer (`cvae.Trainer`, its real per-step code: `Trainer._run_epoch`) with
`train.fast` off (plain Adam, the same optimiser as the baseline: what the toolkit itself costs), on
(its defaults), and with `train.precision = "bfloat16"` (`toolkit_bf16`). Levers:

- `resident`: the data lives on the device (the baseline copies each batch from host memory); CUDA only
- `fused`: `torch.optim.Adam(fused=True)` (the baseline uses torch's default Adam)
- `bf16`: bfloat16 autocast around the forward pass (not numerically safe: never a default)
- `compile`: `torch.compile(model)`; `compile_ro`: `mode="reduce-overhead"` (CUDA graphs), CUDA only
- `channels_last`: the model and the images in channels-last layout, for 4-D (image) targets
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import math
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import cvae
from cvae import config as config_mod

from .models import MODELS, BenchModel, HandWrittenVAE, synthetic
from .timing import clock, compile_counters, interleave, summarise, synchronizer

__all__ = ["Variant", "variants_for", "train_benchmark", "SAFE_TOL", "BF16_TOL", "PEAK_FLOPS"]

trainer_module = importlib.import_module("cvae.train")  # `cvae.train` the attribute is the train() function

SAFE_TOL = 1e-4  # relative difference of the loss after k steps allowed for fp32 variants (rounding: about 1e-7)
BF16_TOL = 5e-2  # ... and for bf16 autocast (a different precision, so a looser, stated bound)
COMPILE_LEVERS = frozenset({"compile", "compile_ro"})

# Dense bf16 tensor-core peaks in FLOP/s (vendor data sheets), for model-FLOPs utilisation on CUDA.
PEAK_FLOPS = {"H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12,
              "L40S": 362e12, "L4": 121e12, "A10G": 70e12}


@dataclass(frozen=True)
class Variant:
    """One way of running the training loop; `toolkit` variants run `cvae.Trainer` with `train.fast = fast`."""

    name: str
    levers: frozenset[str] = frozenset()
    toolkit: bool = False
    fast: bool = True
    cvae_forward: bool = False  # the hand-written loop around the toolkit's model (`CVAE.forward`) instead of its own loss

    @property
    def safe(self) -> bool:
        """Numerically the same computation as the baseline (up to fp32 rounding)."""
        return "bf16" not in self.levers

    @property
    def tol(self) -> float:
        return SAFE_TOL if self.safe else BF16_TOL


def variants_for(device: torch.device, spec: BenchModel, compile: bool = True) -> list[Variant]:
    """The variants worth running for `spec` on `device`: levers that do nothing there are left out
    (data is always resident on the CPU; CUDA graphs need CUDA; channels_last needs images)."""
    cuda = device.type == "cuda"
    image = len(spec.target_shape) == 3
    fast = {"fused"} | ({"resident"} if cuda else set()) | ({"channels_last"} if image and spec.architecture != "mlp" else set())
    comp = {"compile_ro"} if cuda else {"compile"}
    candidates = [
        Variant("naive"),
        Variant("model_plain", cvae_forward=True),
        Variant("toolkit_plain", toolkit=True, fast=False),
        Variant("toolkit", toolkit=True, fast=True),
        Variant("toolkit_bf16", frozenset({"bf16"}), toolkit=True, fast=True),
        Variant("resident", frozenset({"resident"})),
        Variant("fused", frozenset({"fused"})),
        Variant("bf16", frozenset({"bf16"})),
        Variant("compile", frozenset({"compile"})),
        Variant("compile_ro", frozenset({"compile_ro"})),
        Variant("channels_last", frozenset({"channels_last"})),
        Variant("fast", frozenset(fast)),
        Variant("fast_compile", frozenset(fast | comp)),
        Variant("fast_bf16", frozenset(fast | {"bf16"} | (comp if cuda else set()))),
    ]
    out, seen = [], set()
    for v in candidates:
        if ("resident" in v.levers or "compile_ro" in v.levers) and not cuda:
            continue
        if "channels_last" in v.levers and not (image and spec.architecture != "mlp"):
            continue
        if v.levers & COMPILE_LEVERS and not compile:
            continue
        key = (v.toolkit, v.fast, v.cvae_forward, v.levers)
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


# -- the loops --------------------------------------------------------------------------------------------


class HandLoop:
    """The hand-written training loop: index a shuffled epoch order, copy the batch to the device,
    zero_grad / forward / backward / step, `loss.item()` every step."""

    def __init__(self, variant: Variant, spec: BenchModel, reference: cvae.CVAE, device: torch.device,
                 lr: float, seed: int) -> None:
        self.levers, self.device, self.seed = variant.levers, device, seed
        if variant.cvae_forward:
            model = copy.deepcopy(reference).to(device)
            (name,) = model.conditions
            self.model = model
            self.opt = torch.optim.Adam(model.parameters(), lr=lr)
            self.forward = lambda y, c: model({name: c}, y).loss
            self.bf16 = False
            return
        model = HandWrittenVAE(copy.deepcopy(reference.encoder), copy.deepcopy(reference.decoder), spec).to(device)
        if "channels_last" in self.levers:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True if "fused" in self.levers else None)
        if "compile_ro" in self.levers:
            self.forward = torch.compile(model, mode="reduce-overhead")
        elif "compile" in self.levers:
            self.forward = torch.compile(model)
        else:
            self.forward = model
        self.bf16 = "bf16" in self.levers

    def set_data(self, conds: dict[str, torch.Tensor], y: torch.Tensor, batch_size: int) -> None:
        where = self.device if "resident" in self.levers else torch.device("cpu")
        (self.c,) = (v.to(where) for v in conds.values())
        self.y, self.batch_size = y.to(where), batch_size

    def epoch(self, index: int, record: bool = False) -> tuple[list[float], list[float]]:
        sync = synchronizer(self.device)
        order = torch.randperm(len(self.y), generator=trainer_module._epoch_generator(self.seed, index))
        losses, times = [], []
        for b in range(len(self.y) // self.batch_size):
            start = time.perf_counter()
            idx = order[b * self.batch_size:(b + 1) * self.batch_size].to(self.y.device)
            y, c = self.y[idx].to(self.device), self.c[idx].to(self.device)
            if "channels_last" in self.levers:
                y = y.contiguous(memory_format=torch.channels_last)
            if "compile_ro" in self.levers:
                torch.compiler.cudagraph_mark_step_begin()
            self.opt.zero_grad()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                loss = self.forward(y, c)
            loss.backward()
            self.opt.step()
            losses.append(loss.item())
            if record:
                sync()
                times.append(time.perf_counter() - start)
        return losses, times


class _StepRecorder:
    """A lifecycle plugin that records the trainer's loss and time at every step (check phase only)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self.stamps: list[float] = []

    @cvae.hookimpl
    def cvae_step_end(self, trainer: Any, step: int, losses: dict[str, torch.Tensor]) -> None:
        self.losses.append(float(losses["loss"]))
        self.stamps.append(time.perf_counter())


class ToolkitLoop:
    """The toolkit's trainer, stepped through its own epoch loop (`Trainer._run_epoch`), so every
    per-step line it runs (checks, hooks, schedule, bookkeeping) is timed."""

    def __init__(self, variant: Variant, config: dict[str, Any], run_dir: Path) -> None:
        cfg = copy.deepcopy(config)
        cfg["train"]["fast"] = variant.fast
        cfg["train"]["precision"] = "bfloat16" if "bf16" in variant.levers else "float32"
        self.trainer = cvae.Trainer(cfg, run_dir)
        self.device = self.trainer.device

    def set_data(self, conds: dict[str, torch.Tensor], y: torch.Tensor, batch_size: int) -> None:
        assert batch_size == self.trainer.config["data"]["batch_size"]
        self.trainer.train_split = cvae.TensorData(y, conds).to(self.device)

    def epoch(self, index: int, record: bool = False) -> tuple[list[float], list[float]]:
        t = self.trainer
        t.epoch, t.batch = index, 0
        if not record:
            t._run_epoch()
            return [], []
        recorder = _StepRecorder()
        cvae.register_plugin(recorder, name="benchmark-step-recorder")
        try:
            start = time.perf_counter()
            t._run_epoch()
        finally:
            cvae.unregister_plugin("benchmark-step-recorder")
        stamps = [start, *recorder.stamps]
        return recorder.losses, [b - a for a, b in zip(stamps, stamps[1:])]


@contextlib.contextmanager
def _no_epoch_evaluation() -> Iterator[None]:
    """The trainer evaluates the held-out split after every epoch; a benchmark round is one epoch, so
    that evaluation is stubbed out here (it is not part of the training step)."""
    original = trainer_module.held_out_stats
    trainer_module.held_out_stats = lambda *a, **k: {"test_elbo": 0.0, "test_rec": 0.0, "test_kl": 0.0, "active_units": 0}
    try:
        yield
    finally:
        trainer_module.held_out_stats = original


# -- the benchmark ------------------------------------------------------------------------------------------


def _flops_per_step(spec: BenchModel, reference: cvae.CVAE, conds: dict[str, torch.Tensor], y: torch.Tensor,
                    device: torch.device) -> float:
    """FLOPs of one training step's forward and backward pass (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    model = HandWrittenVAE(copy.deepcopy(reference.encoder), copy.deepcopy(reference.decoder), spec).to(device)
    (c,) = conds.values()
    with FlopCounterMode(display=False) as counter:
        model(y.to(device), c.to(device)).backward()
    return float(counter.get_total_flops())


def _peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(PEAK_FLOPS, key=len, reverse=True):
        if key in name:
            return PEAK_FLOPS[key]
    return None


def train_benchmark(model: str, device: torch.device, batch_size: int, *, rounds: int, round_seconds: float,
                    check_steps: int, compile: bool = True, seed: int = 0,
                    variants: list[Variant] | None = None) -> list[dict[str, Any]]:
    """Check and time every variant of the training loop for `model` at `batch_size`; one row per variant."""
    spec = MODELS[model]
    variants = variants or variants_for(device, spec, compile)
    sync = synchronizer(device)
    torch._dynamo.reset()  # every batch size compiles afresh, with static shapes
    overrides = [*spec.overrides, f'device="{device}"', f"data.batch_size={batch_size}", f"seed={seed}",
                 f"data.options={{n = {check_steps * batch_size}, seed = {seed}}}"]
    config = config_mod.load_config(None, overrides)
    lr = config["train"]["lr"]
    with tempfile.TemporaryDirectory(prefix="cvae-bench-") as tmp, _no_epoch_evaluation():
        if variants[0].name != "naive":
            raise ValueError("the first variant must be the baseline, 'naive'")
        loops: dict[str, HandLoop | ToolkitLoop] = {}
        reference = None
        for i, v in enumerate(variants):
            if v.toolkit:
                loops[v.name] = ToolkitLoop(v, config, Path(tmp) / f"run{i}")
                if reference is None:
                    reference = loops[v.name].trainer.model
        if reference is None:  # no toolkit variant asked for: build the model the same way
            reference = ToolkitLoop(Variant("toolkit"), config, Path(tmp) / "reference").trainer.model
        init = copy.deepcopy(reference.state_dict())
        for v in variants:
            if not v.toolkit:
                loops[v.name] = HandLoop(v, spec, reference, device, lr, seed)
        if device.type == "cpu":
            torch.set_flush_denormal(True)  # the same float handling for every variant (train.fast=false unsets it)
        for name, loop in loops.items():  # every variant starts from the same weights (same parameter names)
            params = loop.trainer.model.state_dict() if isinstance(loop, ToolkitLoop) else loop.model.state_dict()
            for key, value in params.items():
                if key in init and not torch.equal(init[key], value.to(init[key].device)):
                    raise RuntimeError(f"variant {name}: {key} does not start from the reference weights")

        # 1. correctness: k steps from the same weights, seed and batches; the first step includes compilation
        check_data = synthetic(model, check_steps * batch_size, seed)
        checks: dict[str, dict[str, Any]] = {}
        graphs: dict[str, int] = {}
        for name, loop in loops.items():
            loop.set_data(*check_data, batch_size)
            before = compile_counters()["graphs"]
            torch.manual_seed(seed)
            losses, times = loop.epoch(0, record=True)
            graphs[name] = compile_counters()["graphs"] - before
            checks[name] = {"losses": losses, "first_step_s": times[0], "step_s": statistics.median(times[1:] or times)}
        ref_losses = checks[variants[0].name]["losses"]

        # 2. throughput: rounds of one epoch each, sized from the baseline's step time
        base_step = checks[variants[0].name]["step_s"]
        numel = batch_size * math.prod(spec.target_shape)
        steps = int(min(max(round_seconds / max(base_step, 1e-6), 3), 200, max(3, 2**27 // numel)))
        conds, y = synthetic(model, steps * batch_size, seed + 1)
        for loop in loops.values():
            loop.set_data(conds, y, batch_size)
        recompiles = {n: 0 for n in loops}  # graphs compiled after the check epoch: 0 for a well-set-up variant
        runs = {}
        for name, loop in loops.items():
            def run(r: int, loop=loop, name=name) -> None:
                c0 = compile_counters()["graphs"]
                loop.epoch(r)
                recompiles[name] += compile_counters()["graphs"] - c0
            runs[name] = run
        for run in runs.values():  # one untimed warm-up epoch each (allocator, caches, CUDA graph recording)
            run(1)
        clock_name, timer = clock(device)
        times = interleave(runs, rounds, sync, first_round=2, timer=timer)
        summary = summarise(times, variants[0].name)

        # 3. memory and FLOPs
        peaks = _cuda_step_peaks(loops, sync) if device.type == "cuda" else {}
        flops = _flops_per_step(spec, reference, *synthetic(model, batch_size, seed), device)
        peak = _peak_flops(device)

    rows = []
    by_levers = {(v.toolkit or v.cvae_forward, v.levers): v.name for v in variants}
    for v in variants:
        s, chk = summary[v.name], checks[v.name]
        step_s = s["seconds"] / steps
        final, ref = chk["losses"][-1], ref_losses[-1]
        rel = abs(final - ref) / max(abs(ref), 1e-12)
        row: dict[str, Any] = {
            "benchmark": f"train.{model}", "kind": "train", "model": model, "device": str(device),
            "batch": batch_size, "variant": v.name, "levers": sorted(v.levers), "safe": v.safe,
            "path": "trainer" if v.toolkit else "cvae_forward" if v.cvae_forward else "hand_written",
            "metric": "train_items_per_s", "unit": "items/s", "higher_is_better": True,
            "value": batch_size / step_s, "ratio": s["ratio"], "ratio_min": s["ratio_min"], "ratio_max": s["ratio_max"],
            "step_ms": 1e3 * step_s, "clock": clock_name, "rounds": rounds, "steps_per_round": steps,
            "check": {"steps": check_steps, "loss": final, "reference": ref, "rel_diff": rel, "tol": v.tol,
                      "ok": bool(rel <= v.tol) and all(map(_finite, chk["losses"]))},
            "gflop_per_step": flops / 1e9, "tflop_per_s": flops / step_s / 1e12,
        }
        if v.toolkit:
            row["config"] = {"train.fast": v.fast, "train.grad_clip": 0.0,
                             "train.precision": "bfloat16" if "bf16" in v.levers else "float32"}
        if peak is not None:
            row["mfu"] = flops / step_s / peak
            row["peak_tflop_per_s"] = peak / 1e12
        if v.name in peaks:
            row["step_peak_mib"] = peaks[v.name]
        if v.levers & COMPILE_LEVERS:
            row.update(_compile_figures(v, variants, checks, graphs, recompiles, summary, steps, by_levers))
        rows.append(row)
    return rows


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")


def _compile_figures(v: Variant, variants: list[Variant], checks: dict, graphs: dict, recompiles: dict,
                     summary: dict, steps: int, by_levers: dict) -> dict[str, Any]:
    """Compile time (the first step's time less a steady step's), graphs compiled, recompiles after
    warm-up, and the break-even step count against the same variant without compilation."""
    chk = checks[v.name]
    out: dict[str, Any] = {"graphs": graphs[v.name], "recompiles": recompiles[v.name]}
    compile_s = chk["first_step_s"] - summary[v.name]["seconds"] / steps
    if graphs[v.name] == 0:  # the graph was compiled by an earlier variant (the optimiser is outside the graph)
        same = [w for w in variants if w.levers & COMPILE_LEVERS and w.name != v.name and graphs[w.name] > 0
                and (w.levers - {"fused", "resident"}) == (v.levers - {"fused", "resident"})]
        if same:
            out["compile_shared_with"] = same[0].name
            compile_s = checks[same[0].name]["first_step_s"] - summary[same[0].name]["seconds"] / steps
    out["compile_s"] = compile_s
    plain = by_levers.get((False, v.levers - COMPILE_LEVERS))
    if plain is not None:
        saved = (summary[plain]["seconds"] - summary[v.name]["seconds"]) / steps
        out["break_even_vs"] = plain
        out["break_even_steps"] = compile_s / saved if saved > 0 else None
    return out


def _cuda_step_peaks(loops: dict, sync: Any) -> dict[str, float]:
    """Per variant, the most CUDA memory one epoch allocated on top of what was already resident
    (torch.cuda.max_memory_allocated), in MiB."""
    peaks = {}
    for name, loop in loops.items():
        sync()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        loop.epoch(10_000)
        sync()
        peaks[name] = (torch.cuda.max_memory_allocated() - base) / 2**20
    return peaks
