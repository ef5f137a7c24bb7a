"""`cvae compare`: the same data and settings trained with each prior, or as each named variant (a set of
overrides: architecture, prior...), and optionally the deterministic baseline, evaluated alike, printed
as one table, with the variants' sample grids side by side. `cvae pictures`: interpolations and
completions of a run."""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

import cvae
from cvae import config as config_mod

from .baseline import train_deterministic
from .completion import completion_info
from .pictures import save_image_pictures

__all__ = ["CompareCommand", "PicturesCommand", "format_table"]

COLUMNS = (  # (heading, eval.json key, format)
    ("test ELBO", "test_elbo", "{:.2f}"),
    ("IWAE NLL", "nll_nats", "{:.2f}"),
    ("bits/dim", "nll_bits_per_dim", "{:.3f}"),
    ("KL", "test_kl", "{:.2f}"),
    ("active", "active_units", "{:d}"),
    ("sample acc", "sample_accuracy", "{:.1%}"),
    ("recon acc", "reconstruction_accuracy", "{:.1%}"),
    ("label swap", "label_swap_accuracy", "{:.1%}"),
    ("diversity", "diversity_ratio", "{:.2f}"),
    ("Frechet ratio", "frechet_ratio", "{:.2f}"),
    ("novelty", "novelty_ratio", "{:.2f}"),
    ("corr mu", "neighbour_corr", "{:.2f}"),
    ("corr z~q", "neighbour_corr_q", "{:.2f}"),
    ("corr z~p", "neighbour_corr_prior", "{:.2f}"),
    ("train s", "train_seconds", "{:.0f}"),
)


def format_table(rows: list[tuple[str, dict[str, Any]]], markdown: bool = False) -> str:
    """One row per variant; columns that no variant has are left out, missing cells are '-'."""
    cols = [c for c in COLUMNS if any(r.get(c[1]) is not None for _, r in rows)]
    head = ["variant", *(c[0] for c in cols)]
    body = []
    for name, r in rows:
        cells = [name]
        for _, key, fmt in cols:
            v = r.get(key)
            cells.append("-" if v is None else fmt.format(int(v) if fmt == "{:d}" else v))
        body.append(cells)
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in body])
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    fmt_row = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([fmt_row(head), *(fmt_row(b) for b in body)])


def _prior_options(prior: str, options: dict[str, Any]) -> dict[str, Any]:
    """The configured prior options that `prior` accepts (N(0, I) takes none)."""
    factory = cvae.get_registry().get("prior", prior).factory
    params = inspect.signature(factory).parameters
    return {k: v for k, v in options.items() if k in params}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """`"NAME KEY=VALUE ..."` -> (NAME, overrides); NAME becomes a directory, so it is kept plain."""
    try:
        parts = shlex.split(text)
    except ValueError as exc:
        raise cvae.CVAEError(f"--variant {text!r}: {exc}") from exc
    if not parts or not re.fullmatch(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*", parts[0]) or "=" in parts[0]:
        raise cvae.CVAEError(f"--variant {text!r}: expected a name (letters, digits, _.+-, not starting with '.') "
                             f"followed by KEY=VALUE "
                             f"overrides, e.g. --variant 'fcn-pixelcnn model.architecture=fcn model.prior=pixelcnn'")
    return parts[0], parts[1:]


def side_by_side(images: list[tuple[str, Path]], path: Path) -> Path | None:
    """The PNGs `images` (caption, file) in one row, each under its caption; None when none exists."""
    from PIL import Image, ImageDraw

    tiles = [(name, Image.open(f).convert("RGB")) for name, f in images if f.is_file()]
    if not tiles:
        return None
    caption, gap = 16, 8
    width = sum(t.width for _, t in tiles) + gap * (len(tiles) - 1)
    out = Image.new("RGB", (width, caption + max(t.height for _, t in tiles)), "white")
    draw, x = ImageDraw.Draw(out), 0
    for name, tile in tiles:
        draw.text((x + 2, 2), name, fill="black")
        out.paste(tile, (x, caption))
        x += tile.width + gap
    out.save(path)
    return path


def _train_seconds(run_dir: Path) -> float:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return float(sum(r.get("seconds", 0.0) for r in rows))


class CompareCommand:
    help = "train one config with each prior (and the deterministic baseline) and print a table"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = ("Train the same configuration once per prior (model.prior = each of --priors), or "
                              "once per --variant, evaluate every run on the same test split, and print one table. "
                              "Runs land in OUT/<prior> or OUT/<variant name>; a finished run with the same config "
                              "is reused, so the table can be printed again without training.")
        parser.add_argument("config", nargs="?", type=Path, help="TOML configuration file")
        parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                            help="override one key (repeatable; values are TOML)")
        parser.add_argument("--out", type=Path, required=True, help="directory for the runs and compare.json")
        parser.add_argument("--priors", default=None, help="comma-separated priors (default: standard,learned)")
        parser.add_argument("--variant", dest="variants", action="append", default=[], metavar="'NAME KEY=VALUE ...'",
                            help="a named variant: the config plus these overrides (repeatable; replaces --priors), "
                                 "e.g. --variant 'fcn-pixelcnn model.architecture=fcn model.prior=pixelcnn'; "
                                 "their sample grids are also written side by side to OUT/samples.png")
        parser.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                            help="also train the deterministic baseline (z = 0); default: on for completion datasets")
        parser.add_argument("--markdown", action="store_true", help="print the table as markdown")

    def run(self, args: argparse.Namespace) -> int:
        base = config_mod.load_config(args.config, args.overrides)
        if args.variants and args.priors is not None:
            raise cvae.CVAEError("give either --priors or --variant, not both (a variant can set model.prior)")
        variants = [parse_variant(v) for v in args.variants]
        if not variants:
            priors = [p.strip() for p in (args.priors or "standard,learned").split(",") if p.strip()]
            if not priors:
                raise cvae.CVAEError("--priors: name at least one prior")
            variants = [(prior, [f"model.prior={prior!r}"]) for prior in priors]
        names = [name for name, _ in variants]
        if len(set(names)) != len(names):
            raise cvae.CVAEError(f"--variant: names must differ, got {names}")
        configs = []
        for name, overrides in variants:
            cfg = config_mod.apply_overrides(copy.deepcopy(base), overrides)
            prior = cfg["model"]["prior"]
            cvae.get_registry().get("prior", prior)
            if not any(o.split("=", 1)[0].strip().startswith("model.prior_options") for o in overrides):
                cfg["model"]["prior_options"] = _prior_options(prior, cfg["model"]["prior_options"])
            config_mod.validate(cfg)
            configs.append(cfg)  # every variant is checked before any trains
        rows: list[tuple[str, dict[str, Any]]] = []
        for i, ((name, _), cfg) in enumerate(zip(variants, configs)):
            label = name if args.variants else f"prior={name}"
            # the first variant's evaluation caches (its judge) serve the others where their data is the same
            rows.append((label, self._run_one(cfg, args.out / name, label, args.out / variants[0][0] if i else None)))
        data = cvae.load_data(base)
        deterministic = args.deterministic if args.deterministic is not None else completion_info(data) is not None
        if deterministic:
            rows.append(("deterministic (no z)", self._deterministic(base, data, args.out / "deterministic")))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "compare.json").write_text(json.dumps({name: r for name, r in rows}, indent=2) + "\n")
        print(f"{data.name}: {len(data.train)} training and {len(data.test)} test examples; every figure on the "
              f"test split, nats per example")
        print(format_table(rows, markdown=args.markdown))
        if args.variants:
            picture = side_by_side([(name, args.out / name / "samples.png") for name in names], args.out / "samples.png")
            if picture is not None:
                print(f"sample grids side by side: {picture}")
        return 0

    @staticmethod
    def _run_one(cfg: dict[str, Any], out: Path, label: str, cache_from: Path | None) -> dict[str, Any]:
        from cvae.checkpoint import list_checkpoints
        from cvae.train import Trainer

        cfg = copy.deepcopy(cfg)
        cfg["eval"]["at_end"] = True
        saved = out / "config.json"
        same = saved.is_file() and json.loads(saved.read_text()) == cfg
        if same and (out / "eval.json").is_file():
            print(f"cvae compare: reusing {out}", file=sys.stderr)
            return {**json.loads((out / "eval.json").read_text()), "train_seconds": _train_seconds(out)}
        # an earlier compare stopped inside this run (training or its evaluation): go on from its checkpoint
        resume = same and bool(list_checkpoints(out / "checkpoints"))
        if not resume and list_checkpoints(out / "checkpoints"):
            raise cvae.CVAEError(f"{out} holds a run of another configuration than this {label} variant; remove it "
                                 f"or give cvae compare another --out")
        print(f"cvae compare: {'resuming' if resume else 'training'} {label} -> {out}", file=sys.stderr)
        metrics = Trainer(cfg, out, resume=resume, cache_from=cache_from).fit()
        return {**metrics["eval"], "train_seconds": _train_seconds(out)}

    @staticmethod
    def _deterministic(cfg: dict[str, Any], data: cvae.DataBundle, out: Path) -> dict[str, Any]:
        from cvae.build import resolve_device

        done = out / "eval.json"
        if done.is_file() and (out / "config.json").is_file() and json.loads((out / "config.json").read_text()) == cfg:
            print(f"cvae compare: reusing {out}", file=sys.stderr)
            return json.loads(done.read_text())
        print(f"cvae compare: training the deterministic baseline -> {out}", file=sys.stderr)
        start = time.perf_counter()
        results = train_deterministic(cfg, data, out, resolve_device(cfg["device"]), progress=cfg["train"]["progress"])
        results.setdefault("train_seconds", time.perf_counter() - start)
        return results


class PicturesCommand:
    help = "write interpolations.png and completions.png of a trained image run"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("run_dir", type=Path)
        parser.add_argument("--out", type=Path, default=None, help="directory for the PNGs (default: the run directory)")
        parser.add_argument("--mode", choices=("mean", "sample"), default=None, help="decode to the mean or draw")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", default="auto")

    def run(self, args: argparse.Namespace) -> int:
        run = cvae.load_run(args.run_dir, args.device)
        if not run.model.target.is_image and run.config["data"]["name"] != "completion":
            raise cvae.CVAEError(f"{args.run_dir}: its targets have shape {tuple(run.model.target.shape)}, not images")
        data = cvae.load_data(run.config)
        mode = args.mode or run.config["eval"]["sample_mode"]
        for path in save_image_pictures(run.model, data, args.out or run.path, mode=mode, seed=args.seed):
            print(f"wrote {path}")
        return 0
