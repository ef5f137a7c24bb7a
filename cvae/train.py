"""The trainer: seeded, resumable to the exact batch, with lifecycle hooks for loggers and callbacks."""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import config as config_mod
from .build import build_model, load_data, resolve_device
from .checkpoint import atomic_write, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from .data import TensorData, iterate_batches
from .errors import ConfigError, CVAEError
from .evaluate import active_units, evaluate, held_out_stats
from .pictures import save_reconstructions, save_sample_grid
from .plugins import call_hook, get_registry

__all__ = ["Trainer", "NonFiniteLossError", "train"]

# Keys a resumed run may change: everything else must match the checkpoint's config.
RESUMABLE_KEYS = ("train.epochs", "train.progress", "train.checkpoint_every", "train.keep_checkpoints",
                  "eval.at_end", "eval.iwae_samples", "eval.batch_size", "eval.sample_mode", "device")


class NonFiniteLossError(CVAEError):
    """The loss became NaN or infinite; the message names the step and the term."""


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends only on the seed and the epoch, so a resumed run (or
    another process) can rebuild it without saved generator state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Trains a CVAE from a validated config into `run_dir`.

    Writes `metrics.jsonl` (one row per epoch), `checkpoints/step-*.pt`, `config.toml`-equivalent
    `config.json`, and at the end `samples.png`, `reconstructions.png` and `eval.json`."""

    def __init__(self, config: Mapping[str, Any], run_dir: str | Path, resume: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        state = None
        if resume:
            state = load_checkpoint(latest_checkpoint(self.ckpt_dir))
            config = _merge_resumed(state["config"], config)
        elif self.ckpt_dir.is_dir() and any(self.ckpt_dir.iterdir()):
            raise CVAEError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        self.config = copy.deepcopy(dict(config))
        config_mod.validate(self.config)
        self.device = resolve_device(self.config["device"])
        fast = self.config["train"]["fast"]
        if self.device.type == "cpu":
            torch.set_flush_denormal(fast)  # denormal Adam state slows CPU steps several-fold
        torch.manual_seed(self.config["seed"])

        self.data = load_data(self.config)
        self.train_split = self.data.train.to(self.device) if isinstance(self.data.train, TensorData) else self.data.train
        self.model = build_model(self.config, self.data.target, self.data.conditions).to(self.device)
        tc = self.config["train"]
        self.optimizer = _adam(self.model.parameters(), tc["lr"], tc["weight_decay"], fused=fast)
        self.schedule = get_registry().get("schedule", tc["schedule"]).build(
            options=tc["schedule_options"], where="train.schedule_options", beta=tc["beta"])
        self.epoch = self.batch = self.step = 0
        # running sums of loss, rec and kl over the unfinished epoch, its example count and last beta: saved
        # with a mid-epoch checkpoint so that a resumed epoch's metrics row covers the whole epoch
        self.epoch_sums, self.epoch_count, self.epoch_beta = torch.zeros(3, dtype=torch.float64), 0, 0.0
        if state is not None:
            self._restore(state)
        else:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        atomic_write(self.run_dir / "config.json", lambda f: f.write(json.dumps(self.config, indent=2).encode()))

    # -- state -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return {
            "config": self.config,
            "target": self.data.target.to_dict(),
            "conditions": {k: v.to_dict() for k, v in self.data.conditions.items()},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rng,
            "epoch": self.epoch,
            "batch": self.batch,
            "step": self.step,
            "epoch_sums": self.epoch_sums.clone(),
            "epoch_count": self.epoch_count,
            "epoch_beta": self.epoch_beta,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        torch.set_rng_state(state["rng"]["torch"])
        if "cuda" in state["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        if "epoch_sums" in state:
            self.epoch_sums = state["epoch_sums"].double().cpu()
            self.epoch_count, self.epoch_beta = state["epoch_count"], state["epoch_beta"]
        # rows of epochs after the checkpoint were never confirmed by one: drop them, they are redone
        rows = _read_metrics(self.run_dir / "metrics.jsonl")
        kept = "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= self.epoch)
        atomic_write(self.run_dir / "metrics.jsonl", lambda f: f.write(kept.encode()))

    def save(self) -> Path:
        return save_checkpoint(self.ckpt_dir, self.state_dict(), keep=self.config["train"]["keep_checkpoints"])

    def _save_last_good(self) -> str:
        """After a non-finite loss, keep the last good state and say where it is: the current state if it
        is finite (the failing step was never applied), else the newest checkpoint, written before it."""
        tensors = [*self.model.state_dict().values(),
                   *(v for s in self.optimizer.state.values() for v in s.values() if torch.is_tensor(v))]
        if all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
            return f"the last good state is saved in {self.save()}"
        saved = list_checkpoints(self.ckpt_dir)
        if saved:
            return f"the parameters are no longer finite; the last good state is {saved[-1]}"
        return "the parameters are no longer finite, and no checkpoint was written before they broke"

    # -- training ----------------------------------------------------------------------------------

    def fit(self) -> dict[str, Any]:
        """Train to `train.epochs`; returns the last epoch's metrics (with the evaluation, if run)."""
        tc = self.config["train"]
        metrics: dict[str, Any] = {}
        call_hook("cvae_fit_start", trainer=self)
        try:
            while self.epoch < tc["epochs"]:
                metrics = self._run_epoch()
                self.epoch += 1
                self.batch = 0
                with (self.run_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(metrics) + "\n")
                call_hook("cvae_epoch_end", trainer=self, epoch=metrics["epoch"], metrics=metrics)
                if self.epoch % tc["checkpoint_every"] == 0 or self.epoch == tc["epochs"]:
                    self.save()
        except KeyboardInterrupt as exc:
            self.save()  # between two steps: the position is exact
            call_hook("cvae_fit_error", trainer=self, error=exc)
            raise
        except Exception as exc:
            call_hook("cvae_fit_error", trainer=self, error=exc)
            raise
        metrics.update(self.finish())
        call_hook("cvae_fit_end", trainer=self, metrics=metrics)
        return metrics

    def _run_epoch(self) -> dict[str, Any]:
        tc = self.config["train"]
        bs = self.config["data"]["batch_size"]
        n_batches = math.ceil(len(self.train_split) / bs)
        batches = iterate_batches(self.train_split, bs, shuffle=True, generator=_epoch_generator(self.config["seed"], self.epoch),
                                  start=self.batch, device=self.device)
        bar = tqdm(batches, total=n_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{tc['epochs']}",
                   disable=None if tc["progress"] else True, leave=False, dynamic_ncols=True)
        if self.batch == 0:
            self.epoch_sums, self.epoch_count, self.epoch_beta = torch.zeros(3, dtype=torch.float64), 0, 0.0
        seen, start = 0, time.perf_counter()
        self.model.train()
        for conds, y in bar:
            beta = self.schedule.beta(self.step)
            terms = self.model(conds, y, beta=beta, free_bits=tc["free_bits"])
            # one device-to-host copy per step, then plain floats: each tensor op here costs as much as a small
            # layer's (python -m benchmarks measures this loop against a hand-written one)
            with torch.no_grad():
                values = torch.stack((terms.loss, terms.rec, terms.kl)).tolist()
            if not all(map(math.isfinite, values)):
                bad = [n for n, v in zip(("reconstruction", "KL"), values[1:]) if not math.isfinite(v)] or ["loss"]
                raise NonFiniteLossError(
                    f"step {self.step} (epoch {self.epoch + 1}, batch {self.batch}): the {' and '.join(bad)} term is "
                    f"not finite ({', '.join(f'{n}={v:g}' for n, v in zip(('loss', 'rec', 'kl'), values))}); "
                    f"{self._save_last_good()}. Try a lower train.lr, a smaller train.grad_clip or a likelihood "
                    f"with bounded scale")
            self.optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            if tc["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
            self.optimizer.step()
            self.schedule.observe(values[2])
            self.epoch_sums += torch.tensor(values, dtype=torch.float64) * len(y)
            self.epoch_count += len(y)
            self.epoch_beta = beta
            seen += len(y)
            self.step += 1
            self.batch += 1
            call_hook("cvae_step_end", trainer=self, step=self.step, losses={"loss": terms.loss.detach(),
                                                                               "rec": terms.rec.detach(), "kl": terms.kl.detach()})
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{values[0]:.2f}", rec=f"{values[1]:.2f}", kl=f"{values[2]:.2f}", beta=f"{beta:.3g}")
        bar.close()
        seconds = time.perf_counter() - start
        test = held_out_stats(self.model, self.data.test, self.device, self.config["eval"]["batch_size"])
        mean = (self.epoch_sums / max(self.epoch_count, 1)).tolist()
        return {"epoch": self.epoch + 1, "step": self.step, "loss": mean[0], "rec": mean[1], "kl": mean[2], "beta": self.epoch_beta,
                "test_elbo": test["test_elbo"], "test_rec": test["test_rec"], "test_kl": test["test_kl"],
                "active_units": test["active_units"], "seconds": seconds,
                "examples_per_s": seen / seconds if seconds > 0 else None}

    def finish(self) -> dict[str, Any]:
        """Pictures and, if configured, the evaluation summary (eval.json)."""
        ec = self.config["eval"]
        self.model.eval()
        save_sample_grid(self.model, self.data, self.run_dir / "samples.png", mode=ec["sample_mode"], seed=self.config["seed"])
        save_reconstructions(self.model, self.data, self.run_dir / "reconstructions.png", mode=ec["sample_mode"])
        if not ec["at_end"]:
            return {}
        results = evaluate(self.model, self.data, self.device, run_dir=self.run_dir, seed=self.config["seed"],
                           iwae_samples=ec["iwae_samples"], batch_size=ec["batch_size"], sample_mode=ec["sample_mode"])
        atomic_write(self.run_dir / "eval.json", lambda f: f.write(json.dumps(results, indent=2).encode()))
        return {"eval": results}


def _adam(params: Any, lr: float, weight_decay: float, fused: bool = True) -> torch.optim.Optimizer:
    """Adam, fused where this torch supports it on the device (several times faster on small models);
    `fused=False` gives torch's default implementation."""
    params = list(params)
    if not fused:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)


def _read_metrics(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a line cut by a kill: everything after it is redone
    return rows


def _merge_resumed(saved: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's config, with the few keys a resume may change taken from `given`."""
    merged = copy.deepcopy(dict(saved))
    if given is None:
        return merged
    for name in _changed(saved, given):
        if name not in RESUMABLE_KEYS:
            raise ConfigError(f"{name} differs from the run being resumed ({config_mod.get(saved, name)!r} there, "
                              f"{config_mod.get(given, name)!r} now); a resume may change only {', '.join(RESUMABLE_KEYS)}")
        section, _, key = name.rpartition(".")
        (merged[section] if section else merged)[key] = config_mod.get(given, name)
    return merged


def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return [k.name for k in config_mod.SCHEMA if config_mod.get(a, k.name) != config_mod.get(b, k.name)]


def train(config: Mapping[str, Any] | None = None, out: str | Path = "runs/default", resume: bool = False,
          overrides: list[str] | None = None) -> dict[str, Any]:
    """Train from a (partial) config dict plus `key=value` overrides; the Python twin of `cvae train`."""
    cfg = config_mod.default_config()
    if config:
        config_mod.merge(cfg, config)
    config_mod.apply_overrides(cfg, overrides or [])
    config_mod.validate(cfg)
    return Trainer(cfg, out, resume=resume).fit()
