"""What a result was measured on: code version, library versions, device, threads and settings."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

__all__ = ["device_info", "device_slug", "git_info", "environment"]

ROOT = Path(__file__).resolve().parent.parent


def _cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of /proc/cpuinfo (None where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == field:
                return value.strip()
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    return _cpuinfo("model name") or platform.processor() or platform.machine()


_ISA = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the instruction sets that change which variant is fastest


def _cpu_isa() -> list[str]:
    present = set((_cpuinfo("flags") or "").split())
    return [f for f in _ISA if f in present]


def _cpu_model() -> str | None:
    """Family, model and stepping: CPUs that share a name ("Intel(R) Xeon(R) Processor") differ in them."""
    parts = [(name, _cpuinfo(field)) for name, field in (("family", "cpu family"), ("model", "model"),
                                                          ("stepping", "stepping"))]
    return " ".join(f"{name} {value}" for name, value in parts if value is not None) or None


def device_info(device: torch.device) -> dict[str, Any]:
    """The device's type and name, and on CUDA its compute capability and memory, on a CPU its model and
    instruction sets."""
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return {"type": "cuda", "name": props.name, "capability": f"{props.major}.{props.minor}",
                "memory_gib": round(props.total_memory / 2**30, 1), "slug": device_slug(device)}
    return {"type": device.type, "name": _cpu_name(), "model": _cpu_model(), "isa": _cpu_isa(),
            "logical_cpus": os.cpu_count(), "slug": device_slug(device)}


def device_slug(device: torch.device) -> str:
    """The results folder of a device: `cpu`, or `cuda-<gpu name>` (for example cuda-nvidia-h100-80gb-hbm3)."""
    if device.type != "cuda":
        return device.type
    return "cuda-" + re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def git_info() -> dict[str, Any]:
    """The commit the code was at, and whether the working tree had changes."""
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"sha": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and thread counts for a result file."""
    env: dict[str, Any] = {
        "git": git_info(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "device": device_info(device),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
    }
    if device.type == "cuda":
        env["cudnn"] = torch.backends.cudnn.version()
    if hasattr(os, "getloadavg"):
        env["load_average_at_start"] = [round(x, 2) for x in os.getloadavg()]
    env["argv"] = sys.argv[1:]
    return env
