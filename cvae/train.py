"""The trainer: seeded, resumable to the exact batch, with lifecycle hooks for loggers and callbacks."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import config as config_mod
from . import distributed
from .build import build_model, load_data, resolve_device
from .checkpoint import (atomic_write, best_path, checkpoint_path, latest_checkpoint, list_checkpoints, load_checkpoint,
                         remove_temporaries, save_best, save_checkpoint)
from .data import TensorData, iterate_batches
from .errors import ConfigError, CVAEError
from .evaluate import active_units, evaluate, held_out_stats
from .pictures import save_reconstructions, save_sample_grid
from .plugins import call_hook, get_registry

__all__ = ["Trainer", "NonFiniteLossError", "train", "resumed_config"]

# Keys a resumed run may change: everything else must match the checkpoint's config.
RESUMABLE_KEYS = ("train.epochs", "train.patience", "train.progress", "train.checkpoint_every", "train.checkpoint_steps",
                  "train.keep_checkpoints", "eval.at_end", "eval.iwae_samples", "eval.batch_size", "eval.sample_mode",
                  "eval.temperature", "device", "fit_prior.after_training", "fit_prior.components", "fit_prior.rank",
                  "fit_prior.draws")


class NonFiniteLossError(CVAEError):
    """The loss became NaN or infinite; the message names the step and the term."""


def _epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The data order of an epoch depends only on the seed and the epoch, so a resumed run (or
    another process) can rebuild it without saved generator state."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


class Trainer:
    """Trains a CVAE from a config into `run_dir`; the keys a config leaves out are at their defaults, or, on
    a resume, at the run's own values.

    Writes `metrics.jsonl` (one row per epoch), `checkpoints/step-*.pt` (and `best.pt` with train.keep_best),
    `config.toml`-equivalent `config.json`, and at the end `samples.png`, `reconstructions.png` and `eval.json`.
    Under torchrun each process trains on its shard of every batch and rank 0 alone writes (see `cvae.distributed`).
    `cache_from` names another run whose evaluation caches (a judge classifier of the same data) the final
    evaluation may reuse, read only: `cvae compare` passes an earlier variant."""

    def __init__(self, config: Mapping[str, Any], run_dir: str | Path, resume: bool = False,
                 cache_from: str | Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cache_from = Path(cache_from) if cache_from is not None else None
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.dist = distributed.context()
        state = None
        if resume:  # the keys a partial config leaves out keep the run's own values
            saved, state = _resumable(self.run_dir)
            given = None
            if config is not None:
                given = config_mod.with_defaults(saved)
                config_mod.merge(given, config)
            config = _merge_resumed(saved, given)
        elif self.ckpt_dir.is_dir() and any(self.ckpt_dir.iterdir()):
            raise CVAEError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose another --out")
        else:  # the keys a partial config leaves out are at their defaults
            config = config_mod.with_defaults(config or {})
        self.config = copy.deepcopy(dict(config))
        config_mod.validate(self.config)
        if self.config["model"]["prior"] == "fitted_mixture":
            raise CVAEError("model.prior 'fitted_mixture' is fitted after training by `cvae fit-prior RUN --out NEW`; "
                            "train with 'learned', 'mixture' or 'standard'")
        self.device = self.dist.device(resolve_device(self.config["device"]))
        self._own_group = self.dist.distributed and not torch.distributed.is_initialized()
        self.dist.start(self.device)
        fast = self.config["train"]["fast"]
        if self.device.type == "cpu":
            torch.set_flush_denormal(fast)  # denormal Adam state slows CPU steps several-fold
        torch.manual_seed(self.config["seed"])

        self.data = load_data(self.config)
        self.train_split = self.data.train.to(self.device) if isinstance(self.data.train, TensorData) else self.data.train
        self.model = build_model(self.config, self.data.target, self.data.conditions).to(self.device)
        if self.dist.rank > 0:  # same initial weights on every rank, but each draws its own noise
            torch.manual_seed(distributed.noise_seed(self.config["seed"], self.dist.rank))
        tc = self.config["train"]
        self.optimizer = _adam(self.model.parameters(), tc["lr"], tc["weight_decay"], fused=fast)
        device_type = self.device.type
        self._precision = ((lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if tc["precision"] == "bfloat16"
                           else contextlib.nullcontext)
        self.schedule = get_registry().get("schedule", tc["schedule"]).build(
            options=tc["schedule_options"], where="train.schedule_options", beta=tc["beta"])
        self.epoch = self.batch = self.step = 0
        self.stop_requested = self.stopped_at_once = False  # Ctrl-C while training (see _stop_between_steps)
        # the epoch of the highest val_elbo so far (0: none yet), for train.keep_best and train.patience
        self.best_epoch, self.best_val_elbo = 0, -math.inf
        self.last_metrics: dict[str, Any] = {}
        # running sums of loss, rec and kl over the unfinished epoch, its example count and last beta: saved
        # with a mid-epoch checkpoint so that a resumed epoch's metrics row covers the whole epoch
        self.epoch_sums, self.epoch_count, self.epoch_beta = torch.zeros(3, dtype=torch.float64), 0, 0.0
        if self.dist.is_main and resume:  # what a kill inside atomic_write left behind
            remove_temporaries(self.run_dir)
            remove_temporaries(self.ckpt_dir)
        if state is not None:
            self._restore(state)
        elif self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.dist.is_main:
            atomic_write(self.run_dir / "config.json", lambda f: f.write(json.dumps(self.config, indent=2).encode()))
        # the wrapper that averages gradients over processes; `self.model` stays the plain module
        self.net = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
                    if self.dist.distributed else self.model)

    # -- state -------------------------------------------------------------------------------------

    def _rng_state(self) -> dict[str, torch.Tensor]:
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return rng

    def state_dict(self, gather: bool = True) -> dict[str, Any]:
        """Everything a resume needs. In a multi-process run `gather` collects every rank's noise generator
        state (a collective: every rank must call it)."""
        rng = self._rng_state()
        extra: dict[str, Any] = {}
        if self.dist.distributed:
            extra["world_size"] = self.dist.world_size
            if gather:
                extra["rng_ranks"] = self.dist.gather(rng)
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
            "best_epoch": self.best_epoch,
            "best_val_elbo": self.best_val_elbo,
            **extra,
        }

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        ranks = state.get("rng_ranks")
        if ranks is not None and len(ranks) == self.dist.world_size:
            rng = ranks[self.dist.rank]
        elif self.dist.rank == 0:
            rng = state["rng"]
        else:  # saved by another number of processes, or by rank 0 alone: a fresh stream, still a function of the seed
            rng = {}
            torch.manual_seed(distributed.noise_seed(self.config["seed"], self.dist.rank) + state["step"])
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"], self.device)
        self.epoch, self.batch, self.step = state["epoch"], state["batch"], state["step"]
        if "epoch_sums" in state:
            self.epoch_sums = state["epoch_sums"].double().cpu()
            self.epoch_count, self.epoch_beta = state["epoch_count"], state["epoch_beta"]
        self.best_epoch, self.best_val_elbo = state.get("best_epoch", 0), state.get("best_val_elbo", -math.inf)
        # rows of epochs after the checkpoint were never confirmed by one: drop them, they are redone
        if self.dist.is_main:
            rows = _read_metrics(self.run_dir / "metrics.jsonl")
            kept = "".join(json.dumps(r) + "\n" for r in rows if r["epoch"] <= self.epoch)
            atomic_write(self.run_dir / "metrics.jsonl", lambda f: f.write(kept.encode()))

    def save(self, gather: bool = True) -> Path:
        """Write a checkpoint of the current state (rank 0 writes; every rank gets its path)."""
        state = self.state_dict(gather)
        if not self.dist.is_main:
            return checkpoint_path(self.ckpt_dir, self.step)
        return save_checkpoint(self.ckpt_dir, state, keep=self.config["train"]["keep_checkpoints"])

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
        # a resumed run that had finished training (killed while writing pictures or the evaluation) only finishes
        done = _read_metrics(self.run_dir / "metrics.jsonl") if self.epoch >= tc["epochs"] or self.stopped_early else []
        metrics: dict[str, Any] = dict(done[-1]) if done else {}
        call_hook("cvae_fit_start", trainer=self)
        self.stop_requested = self.stopped_at_once = False
        try:
            with self._stop_between_steps():
                self._train_epochs()
        except KeyboardInterrupt as exc:
            # a Ctrl-C stops between two steps: the position is exact (a second one stops at once, and the last
            # checkpoint stands). Other processes may be anywhere: rank 0 saves its own view
            if not self.stopped_at_once:
                try:
                    self.save(gather=not self.dist.distributed)
                except KeyboardInterrupt:  # pressed again while saving: the write is atomic, the last checkpoint stands
                    self.stopped_at_once = True
            call_hook("cvae_fit_error", trainer=self, error=exc)
            raise
        except Exception as exc:
            call_hook("cvae_fit_error", trainer=self, error=exc)
            raise
        finally:
            if self._own_group:  # no collective follows: rank 0 finishes alone
                torch.distributed.destroy_process_group()
                self._own_group = False
        metrics = self.last_metrics or metrics
        metrics.update(self.finish())
        call_hook("cvae_fit_end", trainer=self, metrics=metrics)
        return metrics

    @contextlib.contextmanager
    def _stop_between_steps(self) -> Any:
        """While training, Ctrl-C (SIGINT) asks to stop after the step under way, so that the saved state is
        one a resume continues exactly; a second Ctrl-C stops at once. Only a single process's main thread
        can take signals (under torchrun a Ctrl-C stops every rank at once, as before), and a SIGINT that the
        process ignores (a background job of a script) or that Python does not handle stays as it is."""
        if self.dist.distributed or threading.current_thread() is not threading.main_thread() \
                or signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
            yield
            return

        def on_interrupt(signum: int, frame: Any) -> None:
            if self.stop_requested:
                self.stopped_at_once = True
                raise KeyboardInterrupt
            self.stop_requested = True

        previous = signal.signal(signal.SIGINT, on_interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _stop_if_asked(self) -> None:
        if self.stop_requested:
            raise KeyboardInterrupt

    @property
    def stopped_early(self) -> bool:
        """train.patience is spent: val_elbo has not risen for that many epochs."""
        patience = self.config["train"]["patience"]
        return bool(patience) and self.best_epoch > 0 and self.epoch - self.best_epoch >= patience

    def _track_best(self, metrics: Mapping[str, Any]) -> None:
        """Note an epoch whose val_elbo beats every earlier one and, with train.keep_best, keep its weights."""
        if "val_elbo" not in metrics or not metrics["val_elbo"] > self.best_val_elbo:
            return
        self.best_epoch, self.best_val_elbo = self.epoch, metrics["val_elbo"]
        if self.config["train"]["keep_best"] and self.dist.is_main:
            save_best(self.ckpt_dir, self.state_dict(gather=False))

    def _train_epochs(self) -> None:
        """Epochs up to train.epochs (or until train.patience is spent), each with its metrics row, hook and
        checkpoint; `last_metrics` is the last epoch's row."""
        tc = self.config["train"]
        while self.epoch < tc["epochs"] and not self.stopped_early:
            metrics = self._run_epoch()
            self.epoch += 1
            self.batch = 0
            if self.dist.is_main:  # one write of one line: a kill leaves at most a cut last line, dropped on resume
                with (self.run_dir / "metrics.jsonl").open("a") as f:
                    f.write(json.dumps(metrics) + "\n")
            self.last_metrics = metrics
            self._track_best(metrics)
            call_hook("cvae_epoch_end", trainer=self, epoch=metrics["epoch"], metrics=metrics)
            if self.epoch % tc["checkpoint_every"] == 0 or self.epoch == tc["epochs"] or self.stopped_early:
                self.save()
        self._stop_if_asked()  # asked during the last epoch's end: stop before the evaluation too

    def _lr(self, step: int) -> float:
        """The learning rate of `step` under train.lr_schedule and train.lr_warmup: a function of the step
        alone, so a resumed run continues the same curve (a resume with more epochs stretches what is left
        of it)."""
        tc = self.config["train"]
        warmup = min(1.0, (step + 1) / tc["lr_warmup"]) if tc["lr_warmup"] else 1.0
        if tc["lr_schedule"] == "constant":
            return tc["lr"] * warmup
        total = tc["epochs"] * math.ceil(len(self.train_split) / self.config["data"]["batch_size"])
        return tc["lr"] * warmup * 0.5 * (1 + math.cos(math.pi * min(step / max(total - 1, 1), 1.0)))

    def _run_epoch(self) -> dict[str, Any]:
        tc = self.config["train"]
        bs = self.config["data"]["batch_size"]
        n = len(self.train_split)
        n_batches = math.ceil(n / bs)
        rank, world = self.dist.rank, self.dist.world_size
        batches = iterate_batches(self.train_split, bs, shuffle=True, generator=_epoch_generator(self.config["seed"], self.epoch),
                                  start=self.batch, device=self.device, shard=(rank, world))
        bar = tqdm(batches, total=n_batches, initial=self.batch, desc=f"epoch {self.epoch + 1}/{tc['epochs']}",
                   disable=None if tc["progress"] and self.dist.is_main else True, leave=False, dynamic_ncols=True)
        if self.batch == 0:
            self.epoch_sums, self.epoch_count, self.epoch_beta = torch.zeros(3, dtype=torch.float64), 0, 0.0
        seen, start = 0, time.perf_counter()
        self.model.train()
        for conds, y in bar:
            self._stop_if_asked()  # the step before is complete: a resume continues exactly from here
            beta = self.schedule.beta(self.step)
            if tc["lr_schedule"] != "constant" or self.step < tc["lr_warmup"]:
                for group in self.optimizer.param_groups:
                    group["lr"] = self._lr(self.step)
            with self._precision():
                terms = self.net(conds, y, beta=beta, free_bits=tc["free_bits"], free_bits_group=tc["free_bits_group"])
            size = min(bs, n - self.batch * bs)  # examples in the global batch
            loss = terms.loss
            if world > 1:  # this shard's weight in the global batch mean (DDP averages the gradients)
                share = distributed.shard_size(size, rank, world)
                loss = loss * distributed.loss_weight(size, rank, world)
            # one device-to-host copy per step, then plain floats: each tensor op here costs as much as a small
            # layer's (python -m benchmarks measures this loop against a hand-written one)
            with torch.no_grad():
                stats = torch.stack((terms.loss, terms.rec, terms.kl))
                if world > 1:  # sums over the global batch, so every rank sees (and checks) the same figures
                    sums = self.dist.sum_(torch.cat((stats.double() * share, stats.new_tensor([share], dtype=torch.float64))))
                    stats = sums[:3] / sums[3]
                values = stats.tolist()
            if not all(map(math.isfinite, values)):
                bad = [n for n, v in zip(("reconstruction", "KL"), values[1:]) if not math.isfinite(v)] or ["loss"]
                raise NonFiniteLossError(
                    f"step {self.step} (epoch {self.epoch + 1}, batch {self.batch}): the {' and '.join(bad)} term is "
                    f"not finite ({', '.join(f'{n}={v:g}' for n, v in zip(('loss', 'rec', 'kl'), values))}); "
                    f"{self._save_last_good()}. Try a lower train.lr, a smaller train.grad_clip or a likelihood "
                    f"with bounded scale")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if tc["grad_clip"] > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc["grad_clip"])
            self.optimizer.step()
            self.schedule.observe(values[2])
            self.epoch_sums += torch.tensor(values, dtype=torch.float64) * size
            self.epoch_count += size
            self.epoch_beta = beta
            seen += size
            self.step += 1
            self.batch += 1
            # the global figures (all-reduced under torchrun), as tensors: no extra host sync
            call_hook("cvae_step_end", trainer=self, step=self.step,
                      losses={"loss": stats[0], "rec": stats[1], "kl": stats[2]})
            if tc["checkpoint_steps"] and self.step % tc["checkpoint_steps"] == 0:
                self.save()  # mid-epoch: a kill loses at most checkpoint_steps steps
            if self.step % 10 == 0:
                bar.set_postfix(loss=f"{values[0]:.2f}", rec=f"{values[1]:.2f}", kl=f"{values[2]:.2f}", beta=f"{beta:.3g}")
        bar.close()
        seconds = time.perf_counter() - start
        # with a validation split the test split is left to the evaluation: nothing chosen per epoch sees it
        split, prefix = ((self.data.validation, "val") if self.data.validation is not None else (self.data.test, "test"))
        held = self.dist.broadcast(held_out_stats(self.model, split, self.device, self.config["eval"]["batch_size"])
                                   if self.dist.is_main else None)
        mean = (self.epoch_sums / max(self.epoch_count, 1)).tolist()
        return {"epoch": self.epoch + 1, "step": self.step, "loss": mean[0], "rec": mean[1], "kl": mean[2], "beta": self.epoch_beta,
                "lr": self.optimizer.param_groups[0]["lr"],
                **{f"{prefix}_{k}": held[f"test_{k}"] for k in ("elbo", "rec", "kl")},
                "active_units": held["active_units"], "seconds": seconds,
                "examples_per_s": seen / seconds if seconds > 0 else None}

    def finish(self) -> dict[str, Any]:
        """Pictures and, if configured, the evaluation summary (eval.json); rank 0 alone makes them."""
        ec = self.config["eval"]
        if not self.dist.is_main:
            return {}
        best = self._load_best()
        self.model.eval()
        save_sample_grid(self.model, self.data, self.run_dir / "samples.png", mode=ec["sample_mode"], seed=self.config["seed"],
                         temperature=ec["temperature"])
        save_reconstructions(self.model, self.data, self.run_dir / "reconstructions.png", mode=ec["sample_mode"])
        if not ec["at_end"]:
            return best
        results = evaluate(self.model, self.data, self.device, run_dir=self.run_dir, seed=self.config["seed"],
                           iwae_samples=ec["iwae_samples"], batch_size=ec["batch_size"], sample_mode=ec["sample_mode"],
                           temperature=ec["temperature"], source_dir=self.cache_from)
        if best:  # as `cvae eval` records which checkpoint it evaluated
            results = {"checkpoint": str(best_path(self.ckpt_dir)), "epoch": best["best_epoch"], "step": best["best_step"],
                       **results}
        atomic_write(self.run_dir / "eval.json", lambda f: f.write(json.dumps(results, indent=2).encode()))
        return {**best, "eval": results}

    def _load_best(self) -> dict[str, Any]:
        """With train.keep_best, put the kept epoch's weights in the model (the pictures and the evaluation
        are of it) and say which epoch that is; else leave the last epoch's."""
        path = best_path(self.ckpt_dir)
        if not self.config["train"]["keep_best"] or not path.is_file():
            return {}
        state = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(state["model"])
        return {"best_epoch": state["epoch"], "best_step": state["step"], "best_val_elbo": state["best_val_elbo"]}


def emulated_bfloat16(device: torch.device) -> bool:
    """Whether bfloat16 arithmetic on `device` is emulated, not native: a CPU that oneDNN runs no bfloat16
    kernels on (one without AVX512) or a GPU before Ampere. There train.precision="bfloat16" runs many times
    slower than float32."""
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] < 8
    if device.type != "cpu":
        return False
    try:  # no public test for the CPU; an unknown answer is not a reason to warn
        return not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    except (AttributeError, RuntimeError):
        return False


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


def _resumable(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The config and newest checkpoint of the run in `run_dir`. A run killed before its first checkpoint
    has only its config.json: it is started again from step 0 (None), exactly as it began."""
    ckpt_dir = run_dir / "checkpoints"
    if not list_checkpoints(ckpt_dir) and (run_dir / "config.json").is_file():
        try:
            return json.loads((run_dir / "config.json").read_text()), None
        except (OSError, json.JSONDecodeError) as exc:
            raise CVAEError(f"{run_dir / 'config.json'} is unreadable ({exc}) and there is no checkpoint in {ckpt_dir}: "
                            f"start the run again without --resume") from None
    state = load_checkpoint(latest_checkpoint(ckpt_dir))
    if "fitted_prior" in state:
        raise CVAEError(f"{run_dir} holds a prior fitted after training (`cvae fit-prior`, from "
                        f"{state['fitted_prior']['from']}); it cannot be trained further: resume that run instead")
    return state["config"], state


def resumed_config(run_dir: str | Path) -> dict[str, Any]:
    """The config of the run in `run_dir`, as `--resume` would continue it."""
    return config_mod.with_defaults(_resumable(Path(run_dir))[0])


def _merge_resumed(saved: Mapping[str, Any], given: Mapping[str, Any] | None) -> dict[str, Any]:
    """The checkpoint's config, with the few keys a resume may change taken from `given`."""
    saved = config_mod.with_defaults(saved)
    merged = copy.deepcopy(saved)
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
    return Trainer(config_mod.from_dict(config, overrides or []), out, resume=resume).fit()
