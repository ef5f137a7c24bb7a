"""`python -m benchmarks [--quick|--tiny] ...`, `python -m benchmarks compare NEW [BASE]`,
`python -m benchmarks list`, `python -m benchmarks table FILE [--markdown]`."""

from __future__ import annotations

import argparse
import sys

from .compare import DEFAULT_FACTOR
from .tiers import TIERS


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks",
                                description="Run every registered cvae benchmark and write benchmarks/results/<device>/<time>.json. "
                                            "Other commands: compare NEW [BASE], list, table FILE.")
    tier = p.add_mutually_exclusive_group()
    for name, t in TIERS.items():
        tier.add_argument(f"--{name}", dest="tier", action="store_const", const=name, help=t.description)
    p.set_defaults(tier="full")
    p.add_argument("--device", default="auto", help="auto (CPU, and CUDA when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the one-thread figures)")
    p.add_argument("--only", nargs="+", default=[], metavar="PATTERN", help="benchmark names to run (glob, e.g. 'train.*')")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results)")
    p.add_argument("--no-save", action="store_true", help="print, do not write a result file")
    p.add_argument("--warm-compile-cache", action="store_true",
                   help="use torch's on-disk compile cache (default: a fresh one, so compile times are cold-start times)")
    return p


def _error(message: str) -> int:
    print(f"python -m benchmarks: error: {message}", file=sys.stderr)
    return 2


def _check_run_args(args: argparse.Namespace) -> str | None:
    """What is wrong with a run's arguments, before any benchmark runs (None: nothing)."""
    import fnmatch
    from pathlib import Path

    import cvae
    from .suite import _register

    if args.threads < 1:
        return f"--threads must be >= 1, got {args.threads}"
    if args.device not in ("auto", "cpu", "cuda"):
        return f"--device must be auto, cpu or cuda, got {args.device!r}"
    out = Path(args.out) if args.out else None
    if out is not None and not args.no_save and out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder (the result goes to FOLDER/<device>/<time>.json)"
    _register()
    names = [spec.name for spec in cvae.get_registry().specs("benchmark")]
    unmatched = [pat for pat in args.only if not any(fnmatch.fnmatch(n, pat) for n in names)]
    if unmatched:
        return f"--only {' '.join(unmatched)} matches no benchmark; known: {', '.join(names)}"
    return None


def main(argv: list[str] | None = None) -> int:
    from cvae.cli import reader_left

    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # inside the try: a reader that left shows here, not as a traceback at exit
        return code
    except BrokenPipeError:
        return reader_left()


def _main(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks compare",
                                    description="Compare a result with a baseline (default: the newest older comparable result in the same folder). "
                                                "Exit 0: no regression; 1: a regression or a failed correctness check; "
                                                "2: not comparable (another device, torch version, thread count or tier), no baseline or "
                                                "no rows in common, nothing judged.")
        p.add_argument("new")
        p.add_argument("base", nargs="?")
        p.add_argument("--factor", type=float, default=DEFAULT_FACTOR,
                       help=f"a regression is worse than the baseline by more than this factor (default {DEFAULT_FACTOR})")
        p.add_argument("--absolute", action="store_true",
                       help="also judge absolute throughput and latency, not only speed-ups over the hand-written loop")
        args = p.parse_args(argv[1:])
        if not args.factor >= 1:
            return _error(f"--factor must be >= 1 (a regression is worse than the baseline by more than it), got {args.factor}")
        from .compare import main as compare_main

        return compare_main(args.new, args.base, args.factor, args.absolute)
    if argv[:1] == ["list"]:
        from .suite import _register
        import cvae

        _register()
        for spec in cvae.get_registry().specs("benchmark"):
            print(f"{spec.name:<18} {spec.plugin:<12} {spec.description}")
        return 0
    if argv[:1] == ["table"]:
        p = argparse.ArgumentParser(prog="python -m benchmarks table")
        p.add_argument("file")
        p.add_argument("--markdown", action="store_true")
        args = p.parse_args(argv[1:])
        from .compare import load
        from .report import headline, result_table

        try:
            result = load(args.file)
        except (OSError, ValueError) as exc:
            return _error(str(exc))
        print(result_table(result["results"], markdown=args.markdown))
        print()
        print(headline(result))
        return 0
    args = _run_parser().parse_args(argv)
    problem = _check_run_args(args)
    if problem:
        return _error(problem)
    from .suite import RESULTS, passed, run_suite

    results, _ = run_suite(args.tier, args.device, args.threads, args.only,
                           None if args.no_save else (args.out or RESULTS),
                           "warm" if args.warm_compile_cache else "fresh")
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
