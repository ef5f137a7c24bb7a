"""Run every registered benchmark on each device and write one versioned JSON file per device."""

from __future__ import annotations

import datetime as dt
import fnmatch
import inspect
import json
import os
import tempfile
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

import cvae

from . import SCHEMA_VERSION
from .env import device_slug, environment
from .inference import SAMPLE_BF16_TOL, SAMPLE_TOL
from .report import headline, result_table, summary
from .tiers import TIERS
from .timing import process_peak_rss_mib
from .training import BF16_TOL, SAFE_TOL

__all__ = ["RESULTS", "devices", "run_suite", "run_device"]

RESULTS = Path(__file__).resolve().parent / "results"
PLUGIN_NAME = "benchmarks"


def _register() -> None:
    """Register the suite's own plugin (datasets and built-in benchmarks) once in this process."""
    from . import plugin

    if cvae.get_plugin_manager().get_plugin(PLUGIN_NAME) is None:
        cvae.register_plugin(plugin, name=PLUGIN_NAME)


def devices(name: str) -> list[torch.device]:
    """'auto': the CPU and, when present, CUDA; or just 'cpu' or 'cuda'."""
    if name == "auto":
        return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: CUDA is not available here")
    return [torch.device(name)]


def _build(spec: cvae.BenchmarkSpec, tier: str) -> Any:
    """The spec's `run(device)`; a factory that takes a `tier` option gets it."""
    try:
        params = inspect.signature(spec.factory).parameters
    except (TypeError, ValueError):
        params = {}
    accepts = "tier" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    return spec.build(options={"tier": tier} if accepts else {})


def _settings(device: torch.device, threads: int) -> dict[str, Any]:
    """Apply and record the process-wide settings every variant shares."""
    import torch._inductor.config as inductor

    # compiled code draws its random numbers like eager code, so the loss checks compare like with like
    inductor.fallback_random = True
    flags: dict[str, Any] = {"inductor_fallback_random": True}
    if device.type == "cpu":
        torch.set_num_threads(threads)
        torch.set_flush_denormal(True)
        flags["flush_denormal"] = True
    else:
        flags.update(matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                     cudnn_allow_tf32=torch.backends.cudnn.allow_tf32, cudnn_benchmark=torch.backends.cudnn.benchmark)
    return flags


def run_device(device: torch.device, tier: str, threads: int, only: Sequence[str] = (),
               compile_cache: str = "fresh") -> dict[str, Any]:
    """Every registered benchmark (or those matching `only`) on one device: the result document."""
    _register()
    flags = {"tier": tier, "compile_cache": compile_cache, **_settings(device, threads)}
    env = environment(device)
    order = {"train": 0, "sample": 1, "latency": 2}
    specs = sorted((s for s in cvae.get_registry().specs("benchmark")
                    if not only or any(fnmatch.fnmatch(s.name, pat) for pat in only)),
                   key=lambda s: (order.get(s.name.split(".")[0], 3), s.name))
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, str]] = []
    errors: list[dict[str, str]] = []
    started = dt.datetime.now(dt.timezone.utc)
    for spec in specs:
        print(f"[{device}] {spec.name} ...", flush=True)
        try:
            out = _build(spec, tier)(device)
        except Exception as exc:  # one broken benchmark must not lose the others' results
            errors.append({"benchmark": spec.name, "plugin": spec.plugin, "error": f"{type(exc).__name__}: {exc}",
                           "traceback": traceback.format_exc(limit=8)})
            print(f"  error: {type(exc).__name__}: {exc}", flush=True)
            continue
        for row in out or []:
            if not isinstance(row, dict):
                errors.append({"benchmark": spec.name, "plugin": spec.plugin, "error": f"a result row is {type(row).__name__}, not a dict"})
                continue
            if "skipped" in row:
                skipped.append({"benchmark": spec.name, "reason": str(row["skipped"])})
                print(f"  skipped: {row['skipped']}", flush=True)
                continue
            if not isinstance(row.get("metric"), str) or not isinstance(row.get("value"), (int, float)):
                errors.append({"benchmark": spec.name, "plugin": spec.plugin, "error": f"row without metric and value: {row!r}"})
                continue
            row.setdefault("benchmark", spec.name)
            row.setdefault("device", str(device))
            row["plugin"] = spec.plugin
            rows.append(row)
        if device.type == "cpu":
            for row in rows:
                if row["benchmark"] == spec.name:
                    row.setdefault("process_peak_rss_mib", process_peak_rss_mib())
    plugins = sorted(p.name for p in cvae.plugins.plugin_records())
    return {
        "schema_version": SCHEMA_VERSION,
        "created": started.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - started).total_seconds(), 1),
        **env,
        "flags": {**flags, "plugins": plugins},
        "tolerances": {"train_loss_rel_fp32": SAFE_TOL, "train_loss_rel_bf16": BF16_TOL,
                       "sample_abs_fp32": SAMPLE_TOL, "sample_abs_bf16": SAMPLE_BF16_TOL},
        "memory": {"cpu": "process peak RSS so far (resource.getrusage ru_maxrss), per benchmark",
                   "cuda": "torch.cuda.max_memory_allocated during one epoch, above what was allocated before it"},
        "results": rows,
        "skipped": skipped,
        "errors": errors,
        "summary": summary(rows),
    }


def passed(result: dict[str, Any]) -> bool:
    """No benchmark raised, and every correctness check held."""
    return not result["errors"] and all(r.get("check", {}).get("ok", True) for r in result["results"])


def run_suite(tier: str, device: str = "auto", threads: int = 1, only: Sequence[str] = (), out: Path | None = RESULTS,
              compile_cache: str = "fresh") -> tuple[list[dict[str, Any]], list[Path]]:
    """Run on every requested device; write `out/<device>/<timestamp>.json` unless `out` is None."""
    if tier not in TIERS:
        raise SystemExit(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    results, paths = [], []
    with tempfile.TemporaryDirectory(prefix="cvae-inductor-") as cache:
        if compile_cache == "fresh":  # compile times are cold-start times, not those of a warm on-disk cache
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        for dev in devices(device):
            result = run_device(dev, tier, threads, only, compile_cache)
            results.append(result)
            print()
            print(result_table(result["results"]))
            print()
            print(headline(result))
            for e in result["errors"]:
                print(f"ERROR in {e['benchmark']}: {e['error']}")
            if out is not None:
                folder = Path(out) / device_slug(dev)
                folder.mkdir(parents=True, exist_ok=True)
                stamp = result["created"].replace(":", "-").replace("+00-00", "Z")
                path = folder / f"{stamp}.json"
                path.write_text(json.dumps(result, indent=1) + "\n")
                paths.append(path)
                print(f"wrote {path}")
    return results, paths
