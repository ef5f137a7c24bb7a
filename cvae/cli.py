"""The `cvae` command line: train, sample, eval, doctor, plugins."""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import config as config_mod
from .errors import CVAEError

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a tool whose reader closed the pipe
FITTED = "fitted"  # where fit_prior.after_training writes, inside the run directory


def _parser() -> tuple[argparse.ArgumentParser, Any]:
    """The parser and its subcommand group (plugins add their commands to the latter)."""
    parser = argparse.ArgumentParser(prog="cvae", description="Conditional VAEs: train, sample, evaluate, inspect plugins.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train a model (with no config: the bundled digits)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a CVAE. Settings come from defaults, then CONFIG (TOML), then --set.",
                       epilog="configuration keys (TOML tables by the part before the last dot):\n" + config_mod.describe_keys())
    p.add_argument("config", nargs="?", type=Path, help="TOML configuration file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one key, e.g. --set train.epochs=20 (repeatable; values are TOML)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/<dataset>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")

    p = sub.add_parser("sample", help="generate from a trained run")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--condition", action="append", default=[], metavar="NAME=VALUE",
                   help="fix a condition, e.g. --condition label=3 (repeatable)")
    p.add_argument("--n", type=int, default=None, help="samples (per class in a class grid); default 10 per class or 64")
    p.add_argument("--out", type=Path, required=True, help=".png (a grid) or .npz (array 'samples' plus conditions)")
    p.add_argument("--mode", choices=("mean", "sample"), default=None, help="decode to the mean or draw (default: the run's)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="image size, e.g. 32x32, for a fully-convolutional ('fcn') model (default: the trained size)")
    p.add_argument("--temperature", type=float, default=None,
                   help="scale of the prior's noise (default: the run's eval.temperature, normally 1; 0.7 gives "
                        "draws nearer the prior's mean, less diverse)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("eval", help="evaluate a trained run on its test split")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--iwae-samples", type=int, default=None, help="importance samples (default: the run's eval.iwae_samples)")
    p.add_argument("--temperature", type=float, default=None,
                   help="scale of the prior's noise for the samples that metrics judge (default: the run's "
                        "eval.temperature, normally 1); the figure is recorded as sample_temperature")
    p.add_argument("--last", action="store_true", help="evaluate the newest checkpoint, not the epoch that "
                   "train.keep_best kept (checkpoints/best.pt), into eval-last.json beside the kept epoch's eval.json")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("doctor", help="diagnose the KL of a trained run: healthy, posterior collapse, KL too high or "
                       "undertrained, with advice")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--device", default="auto")

    p = sub.add_parser("fit-prior", help="fit a Gaussian mixture per condition to a trained run's aggregate "
                       "posterior and write a run that samples from it")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, required=True, help="the new run directory (the trained run is only read)")
    p.add_argument("--components", type=int, default=None, help="Gaussians per distinct condition, >= 1 (default: "
                   "the run's fit_prior.components, whose 0 means one per 20 draws of the rarest condition, at most 50)")
    p.add_argument("--rank", type=int, default=None, help="correlated directions per Gaussian: full covariance in "
                   "the posteriors' R principal directions, diagonal across the rest (default: the run's "
                   "fit_prior.rank, 32 unless set; 0: diagonal)")
    p.add_argument("--draws", type=int, default=None, help="posterior draws per training example to fit (default: "
                   "the run's fit_prior.draws, 1 unless set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")

    p = sub.add_parser("plugins", help="list plugins, their hooks and components, and failures")
    p.add_argument("--json", action="store_true", help="print JSON")
    return parser, sub


BUILT_IN = ("train", "sample", "eval", "doctor", "fit-prior", "plugins")


def _plugin_commands(argv: Sequence[str]) -> dict[str, object]:
    """Subcommands that plugins register (`cvae_commands`), built once per invocation."""
    from .plugins import get_registry

    try:
        return {spec.name: spec.factory() for spec in get_registry().specs("command")}
    except CVAEError as exc:  # a broken plugin must not take `cvae plugins` down with it
        if next((a for a in argv if not a.startswith("-")), None) not in BUILT_IN:  # else that command says it
            print(f"cvae: warning: plugin commands unavailable: {exc}", file=sys.stderr)
        return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser, sub = _parser()
    commands = _plugin_commands(sys.argv[1:] if argv is None else argv)
    handlers = {"train": _train, "sample": _sample, "eval": _eval, "doctor": _doctor, "fit-prior": _fit_prior,
                "plugins": _plugins}
    for name, command in commands.items():
        if name in handlers:
            print(f"cvae: warning: a plugin command {name!r} clashes with a built-in one and is ignored", file=sys.stderr)
            continue
        command.add_arguments(sub.add_parser(name, help=command.help))
        handlers[name] = command.run
    args = parser.parse_args(argv)
    try:
        code = handlers[args.command](args)
        sys.stdout.flush()  # inside the try: a reader that left shows here, not as a traceback at exit
        return code
    except CVAEError as exc:
        print(f"cvae {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"cvae {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return reader_left()


def reader_left() -> int:
    """The exit code for a BrokenPipeError on stdout: the reader left (`cvae doctor RUN | head`), so the
    command stops quietly, as a shell tool does."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit's flush cannot fail again
    return EXIT_BROKEN_PIPE


def _train(args: argparse.Namespace) -> int:
    from .expost import check_fittable
    from .train import NonFiniteLossError, Trainer, emulated_bfloat16, resumed_config

    if args.resume:
        if args.out is None:
            raise CVAEError("--resume needs --out RUN_DIR: the run to continue")
        saved = resumed_config(args.out)
        cfg = (config_mod.load_config(args.config, args.overrides) if args.config
               else config_mod.apply_overrides(copy.deepcopy(saved), args.overrides))
    else:
        cfg = config_mod.load_config(args.config, args.overrides)
    out = args.out or Path("runs") / cfg["data"]["name"]
    trainer = Trainer(cfg, out, resume=args.resume)
    if trainer.config["fit_prior"]["after_training"]:  # what the fit will need is checked before any training
        _fitted_slot(out)
        check_fittable(trainer.model, trainer.data, trainer.device)
    where = "resuming at" if args.resume else "starting"
    epochs = trainer.config["train"]["epochs"]
    position = (f"the end of epoch {trainer.epoch}/{epochs}, where train.patience stopped it" if trainer.stopped_early
                else f"epoch {trainer.epoch + 1}/{epochs}" if trainer.epoch < epochs else f"the end of epoch {epochs}/{epochs}")
    ranks = f" (rank {trainer.dist.rank} of {trainer.dist.world_size})" if trainer.dist.distributed else ""
    print(f"cvae train: {where} {position} of {trainer.config['data']['name']} on {trainer.device}{ranks} -> {out}",
          file=sys.stderr)
    if trainer.config["train"]["precision"] == "bfloat16" and emulated_bfloat16(trainer.device):
        print(f'cvae train: warning: {trainer.device} has no native bfloat16 arithmetic, so train.precision="bfloat16" '
              f'runs many times slower than float32 here (23x for the shapes encoder on an AVX2-only CPU); '
              f'--set train.precision=\'"float32"\' is faster', file=sys.stderr)
    try:
        metrics = trainer.fit()
    except KeyboardInterrupt:
        saved = ("stopped at once; the last checkpoint stands" if trainer.stopped_at_once
                 else "state saved")
        print(f"cvae train: interrupted at step {trainer.step}; {saved}. Continue with: "
              f"cvae train --out {out} --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except NonFiniteLossError as exc:
        print(f"cvae train: error: {exc}", file=sys.stderr)
        return 1
    if not trainer.dist.is_main:  # rank 0 reports
        return 0
    elbo = next((f": {name} ELBO {metrics[key]:.2f} nats" for key, name in (("val_elbo", "validation"), ("test_elbo", "test"))
                 if key in metrics), "")
    early = (f", stopped early: val_elbo had not risen for {trainer.config['train']['patience']} epochs"
             if trainer.stopped_early else "")
    print(f"trained {trainer.epoch} epochs ({trainer.step} steps){elbo}{early}")
    if "best_epoch" in metrics:
        print(f"kept epoch {metrics['best_epoch']} (validation ELBO {metrics['best_val_elbo']:.2f} nats, the highest) in "
              f"{out / 'checkpoints' / 'best.pt'}: the pictures, the evaluation and the run's commands use it")
    if "eval" in metrics:
        print(_format_eval(metrics["eval"]))
    written = sorted(f"{p.name}/" if p.is_dir() else p.name for p in out.iterdir() if not p.name.startswith("."))
    print(f"run directory: {out} ({', '.join(written)})")
    if trainer.config["fit_prior"]["after_training"]:
        _fit_after_training(out, trainer.config)
    return 0


def _fitted_slot(run_dir: Path) -> Path:
    """Where fit_prior.after_training writes: RUN/fitted, the run's own product. A fit of this run found
    there may be replaced (the model may have trained on since); any other folder there is an error."""
    from .runs import load_run

    fitted = run_dir / FITTED
    if fitted.exists():
        try:
            derived_from = load_run(fitted, "cpu").derived_from
        except (CVAEError, OSError):
            derived_from = None
        if derived_from is None or derived_from.resolve() != run_dir.resolve():
            raise CVAEError(f"{fitted} exists and is not this run's fitted prior: move it, or set "
                            f"fit_prior.after_training=false and run cvae fit-prior {run_dir} --out NEW_DIR")
    return fitted


def _fit_after_training(run_dir: Path, config: dict[str, Any]) -> None:
    import shutil

    fitted = _fitted_slot(run_dir)
    if fitted.exists():
        shutil.rmtree(fitted)
    fc = config["fit_prior"]  # EM seeded as `cvae fit-prior` seeds it by default
    _fit_and_report(run_dir, fitted, components=fc["components"] or None, rank=fc["rank"], draws=fc["draws"],
                    seed=0, device=config["device"])


def _sample(args: argparse.Namespace) -> int:
    import numpy as np
    import torch
    from .pictures import save_grid
    from .runs import load_run

    suffix = args.out.suffix.lower()
    if suffix not in (".png", ".npz"):
        raise CVAEError(f"--out {args.out}: the file must end in .png (a grid) or .npz (arrays)")
    if args.n is not None and args.n < 1:
        raise CVAEError(f"--n must be >= 1, got {args.n}")
    size = _image_size(args.size) if args.size is not None else None
    run = load_run(args.run_dir, args.device)
    model = run.model
    given: dict[str, torch.Tensor] = {}
    for item in args.condition:
        name, sep, text = item.partition("=")
        if not sep:
            raise CVAEError(f"--condition {item!r} is not of the form NAME=VALUE (for example label=3)")
        if name not in model.conditions:
            raise CVAEError(f"--condition {name!r}: this model's conditions are {sorted(model.conditions) or 'none'}")
        given[name] = model.conditions[name].parse(text).to(run.device)
    conditions, n, nrow = _sample_conditions(model, given, args.n, run.device)
    mode = args.mode or run.config["eval"]["sample_mode"]
    temperature = run.config["eval"]["temperature"] if args.temperature is None else args.temperature
    torch.manual_seed(args.seed)
    samples = model.sample(conditions, n=n, mode=mode, size=size, temperature=temperature).cpu()
    if model.target.is_image:
        t = model.target
        samples = ((samples - t.low) / (t.high - t.low)).clamp(0, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".png":
        if not model.target.is_image:
            raise CVAEError("these targets are not images: write them with --out FILE.npz")
        save_grid(samples, args.out, nrow=nrow)
    else:
        np.savez(args.out, samples=samples.numpy(), **{k: v.cpu().numpy() for k, v in conditions.items()})
    print(f"wrote {len(samples)} samples to {args.out}")
    return 0


def _image_size(text: str) -> tuple[int, int]:
    """--size: "HxW" or "N" (square)."""
    parts = text.lower().split("x")
    if len(parts) in (1, 2) and all(p.strip().isdigit() for p in parts):
        h, w = int(parts[0]), int(parts[-1])
        if h > 0 and w > 0:
            return h, w
    raise CVAEError(f"--size {text!r}: give the image size as HxW or N, for example 32x32")


def _sample_conditions(model: Any, given: dict, n: int | None, device: Any) -> tuple[dict, int, int]:
    """Conditions for `cvae sample`: given ones repeated n times; a class condition left open
    becomes a grid with one row per class; any other open condition is an error."""
    import torch

    from .pictures import class_condition

    open_ = sorted(set(model.conditions) - set(given))
    label = class_condition(model)
    grid = label in open_
    if grid:
        open_.remove(label)
    if open_:
        raise CVAEError(f"give a value for condition(s) {open_} with --condition NAME=VALUE")
    if grid:
        per = n or 10
        classes = model.condition_info[label].num_classes
        conds = {k: v.expand(classes * per, *v.shape) for k, v in given.items()}
        conds[label] = torch.arange(classes, device=device).repeat_interleave(per)
        return conds, classes * per, per
    total = n or (10 if given else 64)
    return {k: v.expand(total, *v.shape) for k, v in given.items()}, total, min(total, 10 if given else 8)


def _eval(args: argparse.Namespace) -> int:
    from .build import load_data
    from .runs import load_run

    run = load_run(args.run_dir, args.device, last=args.last)
    # eval.json stays the kept epoch's: the newest checkpoint's figures go beside it
    kept = args.last and (run.path / "checkpoints" / "best.pt").is_file()
    results = _evaluate_run(run, load_data(run.config), args.iwae_samples, args.temperature,
                            "eval-last.json" if kept else "eval.json")
    print(json.dumps(results, indent=2) if args.json else _format_eval(results))
    return 0


def _evaluate_run(run: Any, data: Any, iwae_samples: int | None = None, temperature: float | None = None,
                  name: str = "eval.json") -> dict[str, Any]:
    """Evaluate a run (`cvae.Run`) with its own eval settings unless given, and write RUN/`name`."""
    from .checkpoint import atomic_write
    from .evaluate import evaluate

    ec = run.config["eval"]
    results = evaluate(run.model, data, run.device, run_dir=run.path, seed=run.config["seed"],
                       iwae_samples=iwae_samples or ec["iwae_samples"], batch_size=ec["batch_size"],
                       sample_mode=ec["sample_mode"], temperature=ec["temperature"] if temperature is None else temperature,
                       source_dir=run.derived_from)
    results = {"checkpoint": str(run.checkpoint), "epoch": run.epoch, "step": run.step, **results}
    atomic_write(run.path / name, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return results


def _fit_prior(args: argparse.Namespace) -> int:
    from .runs import load_run

    fc = load_run(args.run_dir, "cpu").config["fit_prior"]  # the trained run's settings fill in what is not given
    components = (fc["components"] or None) if args.components is None else args.components  # 0 is refused
    _fit_and_report(args.run_dir, args.out, components=components,
                    rank=fc["rank"] if args.rank is None else args.rank,
                    draws=fc["draws"] if args.draws is None else args.draws, seed=args.seed, device=args.device)
    return 0


def _fit_and_report(run_dir: Path, out: Path, *, components: int | None, rank: int, draws: int, seed: int,
                    device: str) -> None:
    """Fit the prior of `run_dir` into `out`, say what was fitted, draw its sample grid and evaluate it."""
    from .expost import fit_prior
    from .pictures import save_sample_grid

    run, data = fit_prior(run_dir, out, components=components, rank=rank, draws=draws, seed=seed, device=device)
    config = run.config
    keys, rank = len(run.model.prior.keys), run.model.prior.rank
    shape = ("diagonal" if rank == 0 else "full covariance" if rank == run.model.latent_dim
             else f"rank {rank} plus diagonal")
    print(f"fitted {run.model.prior.k} Gaussians ({shape}) for each of {keys} condition value{'s' * (keys > 1)} to "
          f"{draws * len(data.train)} posterior draws of the training split -> {out}")
    ec = config["eval"]
    save_sample_grid(run.model, data, out / "samples.png", mode=ec["sample_mode"], seed=config["seed"],
                     temperature=ec["temperature"])
    if ec["at_end"]:
        print(_format_eval(_evaluate_run(run, data)))


def _format_eval(results: dict[str, Any]) -> str:
    lines = []
    # figures per class and confusion matrices are shown, labelled by `class_names` when the metric gave
    # them; other lists (the KL of every latent dimension) stay in eval.json
    names = results.get("class_names")
    shown = {k: v for k, v in results.items()
             if not isinstance(v, list) or k.endswith("_by_class") or k.endswith("_confusion")}
    width = max(map(len, shown), default=0)
    for key, value in shown.items():
        labels = names if isinstance(names, list) and isinstance(value, list) and len(names) == len(value) else None
        if key.endswith("_confusion") and isinstance(value, list):  # one line per row: the class asked for
            lines.append(f"  {key} (row: class asked for; column: class called)")
            rows = labels or [str(i) for i in range(len(value))]
            cols = [max(4, len(r)) for r in rows] if labels else [4] * len(value)
            if labels:
                lines.append(f"    {'':<{width - 2}} " + " ".join(f"{r:>{w}}" for r, w in zip(rows, cols)))
            lines += [f"    {name:<{width - 2}} " + ("-" if row is None else " ".join(f"{v:>{w}.2f}" for v, w in zip(row, cols)))
                      for name, row in zip(rows, value)]
            continue
        if isinstance(value, list):
            figures = ["-" if v is None else f"{v:.3g}" for v in value]
            value = "  ".join(f"{n} {f}" for n, f in zip(labels, figures)) if labels else " ".join(figures)
        elif isinstance(value, float):
            value = f"{value:.4g}"
        lines.append(f"  {key:<{width}} {value}")
    return "\n".join(lines)


def _doctor(args: argparse.Namespace) -> int:
    from .diagnose import diagnose_run, format_report

    diagnosis = diagnose_run(args.run_dir, args.device)
    print(json.dumps(diagnosis.to_dict(), indent=2) if args.json else format_report(diagnosis))
    return 0


def _plugins(args: argparse.Namespace) -> int:
    from .plugins import get_registry, plugin_failures, plugin_records

    error = None
    try:
        registry = get_registry()
    except CVAEError as exc:  # a clash between plugins: still show what loaded
        registry, error = None, str(exc)
    rows = []
    for rec in plugin_records():
        rows.append({"name": rec.name, "distribution": rec.distribution, "version": rec.version,
                     "hooks": list(rec.hooks), "components": registry.contributed_by(rec.name) if registry else {}})
    failed = [{"name": f.name, "distribution": f.distribution, "reason": f.reason} for f in plugin_failures()]
    if args.json:
        print(json.dumps({"plugins": rows, "failed": failed, "error": error}, indent=2))
    else:
        for r in rows:
            print(f"{r['name']}  ({r['distribution']} {r['version']})")
            print(f"  hooks: {', '.join(r['hooks']) or 'none'}")
            for kind, names in r["components"].items():
                print(f"  {kind}: {', '.join(names)}")
        for f in failed:
            print(f"FAILED {f['name']}  ({f['distribution']}): {f['reason']}")
        if error:
            print(f"ERROR: {error}")
    return EXIT_USAGE if error else 0


if __name__ == "__main__":
    sys.exit(main())
