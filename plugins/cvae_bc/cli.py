"""`cvae bc`: envs, collect, train, eval and benchmark, as one plugin command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import cvae

__all__ = ["BehaviourCloningCommand"]


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not values:
        raise argparse.ArgumentTypeError("give at least one integer")
    return values


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _observation_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--obs", choices=("vector", "image"), default="vector",
                        help="observations: the state vector (default) or an RGB picture of the scene")
    parser.add_argument("--image-width", type=int, default=48, help="width of image observations in pixels (default 48)")


def _env_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of the environment: none for the default vector observations."""
    return {"obs": "image", "image_width": args.image_width} if args.obs == "image" else {}


class BehaviourCloningCommand:
    """The `cvae bc` subcommand group."""

    help = "behaviour cloning: environments, expert demonstrations, policies, evaluation, benchmark"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.description = ("Multimodal behaviour cloning: collect expert demonstrations, train MSE, mixture-density "
                              "and CVAE policies side by side, and evaluate them by success and by modes.")
        sub = parser.add_subparsers(dest="bc_command", required=True, metavar="ACTION")

        p = sub.add_parser("envs", help="list the environments and their experts")
        p.add_argument("--json", action="store_true", help="print JSON")

        p = sub.add_parser("collect", help="roll out a scripted expert and write its demonstrations (.npz)")
        p.add_argument("env", help="environment name (see `cvae bc envs`) or gymnasium id")
        p.add_argument("--episodes", type=int, default=300, help="successful episodes to keep (default 300)")
        p.add_argument("--out", type=Path, required=True, help="output file, .npz")
        p.add_argument("--seed", type=int, default=0, help="seed for the environment and the expert")
        p.add_argument("--probs", type=_floats, default=None,
                       help="expert mode probabilities, one per mode, e.g. 0.7,0.3, scaled to sum to 1 "
                            "(default: the environment's)")
        p.add_argument("--noise", type=float, default=None, help="std of the expert's action noise (default 0.1)")
        _observation_arguments(p)

        p = sub.add_parser("train", help="train every policy on one demonstrations file")
        p.add_argument("demos", type=Path, help="demonstrations (.npz) from `cvae bc collect` or of the same format")
        p.add_argument("--out", type=Path, required=True, help="run directory")
        p.add_argument("--policies", type=_names, default=None,
                       help="comma-separated subset of mse, mdn, cvae_fixed, cvae_learned, cvae_mixture (default: all)")
        p.add_argument("--chunk", type=int, default=4, help="actions per predicted chunk (default 4)")
        p.add_argument("--epochs", type=int, default=150, help="training epochs of every policy (default 150)")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--resume", action="store_true",
                       help="continue the run in --out: finished policies are kept, interrupted CVAEs resume")
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of the CVAE policies' config, e.g. --set train.beta=2 (repeatable)")

        p = sub.add_parser("eval", help="evaluate every policy of a run in its environment")
        p.add_argument("run_dir", type=Path)
        p.add_argument("--policies", type=_names, default=None,
                       help="comma-separated NAME or NAME/Z (Z: step, chunk, episode, zero); default: every "
                            "policy with its usual rules")
        p.add_argument("--episodes", type=int, default=300, help="episodes per policy (default 300)")
        p.add_argument("--seeds", type=_ints, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
        p.add_argument("--env", default=None, help="environment (default: the demonstrations')")
        p.add_argument("--png", type=Path, default=None, help="rollout picture (default RUN_DIR/rollouts.png)")
        p.add_argument("--json", action="store_true", help="print JSON")

        p = sub.add_parser("benchmark", help="all policies on all built-in environments: a comparison table")
        p.add_argument("--out", type=Path, default=Path("runs/bc-benchmark"),
                       help="directory for demonstrations, runs, pictures, benchmark.md and benchmark.json "
                            "(default runs/bc-benchmark; the runs of a benchmark already there are replaced)")
        p.add_argument("--envs", type=_names, default=None, help="comma-separated environments (default: all)")
        p.add_argument("--demos", type=int, default=None, help="expert episodes per environment (default: per env)")
        p.add_argument("--epochs", type=int, default=150)
        p.add_argument("--chunk", type=int, default=4)
        p.add_argument("--episodes", type=int, default=300, help="evaluation episodes per policy (default 300)")
        p.add_argument("--seeds", type=_ints, default=[0, 1, 2])
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a key of the CVAE policies' config (repeatable)")
        _observation_arguments(p)
        p.add_argument("--json", action="store_true", help="print JSON instead of Markdown")

    def run(self, args: argparse.Namespace) -> int:
        import torch

        torch.set_num_threads(1)  # small models: one thread is fastest, and fair to a shared machine
        return getattr(self, "_" + args.bc_command)(args)

    # -- actions -----------------------------------------------------------------------------------

    def _envs(self, args: argparse.Namespace) -> int:
        from .evaluate import make_env

        rows = []
        for spec in cvae.get_registry().specs("environment"):
            env = make_env(spec.env_id) if spec.env_id else None
            modes = list(env.unwrapped.mode_names()) if env is not None and hasattr(env.unwrapped, "mode_names") else []
            expert = spec.build()
            probs = [round(float(p), 4) for p in getattr(expert, "mode_probs", [])]
            rows.append({"name": spec.name, "env_id": spec.env_id, "plugin": spec.plugin, "description": spec.description,
                         "modes": modes, "expert_mode_probs": probs})
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            for r in rows:
                print(f"{r['name']:<18} {r['env_id']:<28} {r['description']}")
        return 0

    def _collect(self, args: argparse.Namespace) -> int:
        from .demos import collect, save_demos

        options: dict[str, Any] = {}
        if args.probs is not None:
            options["probs"] = args.probs
        if args.noise is not None:
            options["noise"] = args.noise
        if args.out.suffix != ".npz":
            raise cvae.CVAEError(f"--out {args.out}: demonstrations are written as .npz")
        demos, summary = collect(args.env, args.episodes, seed=args.seed, expert_options=options,
                                 env_kwargs=_env_kwargs(args))
        save_demos(demos, args.out)
        counts = ", ".join(f"{k} {v}" for k, v in summary["mode_counts"].items())
        print(f"wrote {summary['episodes']} episodes ({summary['steps']} steps) of {summary['env']} "
              f"({summary['env_id']}) to {args.out}; modes: {counts}"
              + (f"; {summary['dropped_failures']} failed expert episodes dropped" if summary["dropped_failures"] else ""))
        return 0

    def _train(self, args: argparse.Namespace) -> int:
        from .policies import train_policies

        results = train_policies(args.demos, args.out, policies=args.policies, chunk=args.chunk, epochs=args.epochs,
                                 seed=args.seed, resume=args.resume, cvae_overrides=args.overrides,
                                 progress=sys.stderr.isatty(), log=_log)
        for name, metrics in results.items():
            shown = ", ".join(f"{k} {v:.3g}" for k, v in metrics.items() if isinstance(v, (int, float)))
            print(f"{name}: {shown}")
        print(f"run directory: {args.out} (bc.json and one directory per policy); evaluate with: "
              f"cvae bc eval {args.out}")
        return 0

    def _eval(self, args: argparse.Namespace) -> int:
        from .bench import evaluate_run, markdown_table

        result = evaluate_run(args.run_dir, args.policies, episodes=args.episodes, seeds=args.seeds, env=args.env,
                              png=args.png, log=None if args.json else _log)
        if args.json:
            print(json.dumps(result, indent=2))
        else:
            print(markdown_table(result))
            print(f"\nrollouts: {result['png']}; details: {Path(args.run_dir) / 'eval.json'}")
        return 0

    def _benchmark(self, args: argparse.Namespace) -> int:
        from .bench import benchmark

        report = benchmark(args.out, envs=args.envs, demos=args.demos, epochs=args.epochs, chunk=args.chunk,
                           episodes=args.episodes, seeds=args.seeds, cvae_overrides=args.overrides,
                           env_kwargs=_env_kwargs(args), log=_log)
        if args.json:
            print(json.dumps(report, indent=2))
        else:
            print(report["markdown"])
            print(f"written: {args.out / 'benchmark.md'}, {args.out / 'benchmark.json'}")
        return 0
