"""Fault drills for the trainer, used by test_faults.py and test_distributed.py, and a script that prints the
figures the README quotes:

    python tests/faults.py kills [--kills 20] [--seed 0] [--tiny] [-- TRAIN OPTIONS]
    python tests/faults.py processes [--nproc 2] [--tiny] [-- TRAIN OPTIONS]
    python tests/faults.py cli [--tiny] ARGS...      # `cvae ARGS`, with the tiny test dataset under --tiny

`kills` trains a run without interruption, then trains it again while SIGKILLing it at random moments and
resuming it with `cvae train --resume` after each kill; it compares the two final states. Every attempt is a
forked child of this process (a real process, really killed), so no interpreter start-up is paid per kill.
`processes` trains a run in one process and the same run under `torchrun --nproc-per-node N` (gloo on the
CPU), and prints the largest difference between their loss curves.

TRAIN OPTIONS default to a small MLP on the digits; `--tiny` uses the 1x4x4 test dataset of conftest.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
TIMING = ("seconds", "examples_per_s")  # wall-clock figures: the only metrics allowed to differ between runs
DIGITS_OPTIONS = ("--set", "device='cpu'", "--set", "model.architecture_options.hidden=[64]", "--set", "model.latent_dim=4",
                  "--set", "train.epochs=4", "--set", "train.progress=false", "--set", "eval.iwae_samples=8")


def tiny_options() -> list[str]:
    sys.path.insert(0, str(HERE))
    from conftest import TINY_SETTINGS

    return [arg for item in TINY_SETTINGS for arg in ("--set", item)]


def use_tiny() -> None:
    """This process loads the engine's own plugin plus the tiny test dataset (children inherit it)."""
    import cvae

    sys.path.insert(0, str(HERE))
    from conftest import make_tiny_plugin

    os.environ["CVAE_PLUGINS"] = "core"
    cvae.plugins.reset()
    cvae.register_plugin(make_tiny_plugin())


# -- one attempt: a forked child running `cvae train` -----------------------------------------------------------------


def spawn(argv: Sequence[str], log: Path, fault: Callable[[], None] | None = None) -> tuple[int, int]:
    """Fork a child that runs `cvae ARGV` with its output in `log`; returns its pid and a pipe that becomes
    readable once training has started (the fit-start hook) or the child has exited. `fault` runs in the child
    first (a test's way to kill it at an exact point)."""
    import cvae
    from cvae.cli import main

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into the caller
        code = 70
        try:
            os.close(read)
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            notifier = types.ModuleType(f"drill_notifier_{os.getpid()}")
            notifier.cvae_fit_start = cvae.hookimpl(lambda trainer: os.write(write, b"s"))
            cvae.register_plugin(notifier)
            if fault is not None:
                fault()
            code = main(list(argv))
        except BaseException as exc:  # noqa: BLE001 - report, then leave with a code
            print(f"drill child: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(write)
    return pid, read


def attempt(argv: Sequence[str], log: Path, delay: float | None, after_start: bool = True,
            fault: Callable[[], None] | None = None, timeout: float = 300.0) -> tuple[bool, int | None]:
    """Run `cvae ARGV` once and SIGKILL it `delay` seconds after training started (or after the fork, when not
    `after_start`); None runs it to its end. Returns (killed, exit code or None when killed)."""
    pid, pipe = spawn(argv, log, fault)
    try:
        if delay is not None:
            if after_start:
                select.select([pipe], [], [], timeout)
            time.sleep(delay)
            os.kill(pid, signal.SIGKILL)  # a child that already exited is a zombie until reaped: no harm
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(pipe)
    if os.WIFSIGNALED(status):
        return os.WTERMSIG(status) == signal.SIGKILL, None
    return False, os.WEXITSTATUS(status)


# -- what a finished run is -------------------------------------------------------------------------------------------


def final_state(run_dir: Path) -> dict:
    """What must be equal between an interrupted and an uninterrupted run."""
    from cvae.checkpoint import latest_checkpoint, load_checkpoint

    state = load_checkpoint(latest_checkpoint(run_dir / "checkpoints"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    files = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file())
    return {
        "model": state["model"],
        "optimizer": state["optimizer"]["state"],
        "position": (state["epoch"], state["batch"], state["step"]),
        "rows": [{k: v for k, v in r.items() if k not in TIMING} for r in rows],
        "eval": json.loads((run_dir / "eval.json").read_text()) if (run_dir / "eval.json").exists() else None,
        "pictures": {p: (run_dir / p).read_bytes() for p in ("samples.png", "reconstructions.png") if (run_dir / p).exists()},
        "files": files,
    }


def differences(a: dict, b: dict) -> list[str]:
    """The parts of two final states that differ (bitwise for tensors); empty when they are the same."""
    out = []
    for name in a["model"].keys() | b["model"].keys():
        if name not in a["model"] or name not in b["model"] or not torch.equal(a["model"][name], b["model"][name]):
            out.append(f"parameter {name}")
    for k in a["optimizer"].keys() | b["optimizer"].keys():
        sa, sb = a["optimizer"].get(k, {}), b["optimizer"].get(k, {})
        if sa.keys() != sb.keys() or any(not torch.equal(sa[n], sb[n]) for n in sa):
            out.append(f"optimizer state {k}")
    for key in ("position", "rows", "eval", "pictures", "files"):
        if a[key] != b[key]:
            out.append(key)
    return out


# -- the drills -------------------------------------------------------------------------------------------------------


def kill_drill(train_args: Sequence[str], workdir: Path, kills: int = 20, seed: int = 0,
               max_attempts: int = 400) -> dict:
    """Train once uninterrupted, then again under `kills` random SIGKILLs, each followed by `--resume`.

    Kill moments: uniform over twice the time the rest of the run should take (from its newest checkpoint) divided
    by the kills left, counted from the moment training starts, so the kills spread over the steps, checkpoint
    writes and metrics appends, and the last ones over the pictures and evaluation; one in four is counted from the
    fork instead, so some land while a resumed run reads its checkpoint."""
    from cvae.checkpoint import list_checkpoints

    rng = random.Random(seed)
    log = workdir / "drill.log"
    clean, cut = workdir / "uninterrupted", workdir / "killed"
    start = time.perf_counter()
    killed, code = attempt(["train", *train_args, "--out", str(clean)], log, None)
    assert not killed and code == 0, f"the uninterrupted run failed with exit code {code}; see {log}"
    whole = time.perf_counter() - start
    last_step = final_state(clean)["position"][2]
    done, attempts = 0, 0
    evidence = {"temporary files left": 0, "metrics lines cut": 0, "killed after training ended": 0, "steps saved": []}
    resume: list[str] = []
    step = 0
    while done < kills:
        attempts += 1
        if attempts > max_attempts:
            raise RuntimeError(f"only {done} of {kills} kills landed in {max_attempts} attempts")
        after_start = not resume or rng.random() >= 0.25
        rest = whole * max(1 - step / last_step, 0.05)
        killed, code = attempt(["train", *train_args, "--out", str(cut), *resume], log,
                               rng.uniform(0, 2 * rest / (kills - done)), after_start)
        if not killed:
            assert code == 0, f"attempt {attempts} exited with code {code}; see {log}"
            continue
        done += 1
        resume = ["--resume"]
        evidence["temporary files left"] += sum(1 for p in cut.rglob(".*") if p.is_file())
        metrics = cut / "metrics.jsonl"
        if metrics.exists() and metrics.read_bytes() and not metrics.read_bytes().endswith(b"\n"):
            evidence["metrics lines cut"] += 1
        saved = list_checkpoints(cut / "checkpoints")
        step = int(saved[-1].name[5:-3]) if saved else 0
        evidence["steps saved"].append(step)
        evidence["killed after training ended"] += step == last_step
    killed, code = attempt(["train", *train_args, "--out", str(cut), "--resume"], log, None)
    assert not killed and code == 0, f"the last resume failed with exit code {code}; see {log}"
    diff = differences(final_state(clean), final_state(cut))
    return {"kills": done, "attempts": attempts + 1, "identical": not diff, "differences": diff,
            "evidence": evidence, "seconds": round(time.perf_counter() - start, 1), "last_row": final_state(cut)["rows"][-1]}


def torchrun_command(nproc: int, cli_args: Sequence[str], tiny: bool) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m cvae ARGS` (through this script under `--tiny`)."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    target = [str(Path(__file__).resolve()), "cli", "--tiny"] if tiny else ["-m", "cvae"]
    return [*launcher, *target, *cli_args]


def processes_drill(train_args: Sequence[str], workdir: Path, nproc: int = 2, tiny: bool = False,
                    timeout: float = 600) -> dict:
    """One process against `nproc` torchrun processes with the same global batch: the largest relative difference
    of each metric over the epochs."""
    from cvae.cli import main

    one, many = workdir / "one", workdir / f"{nproc}procs"
    start = time.perf_counter()
    code = main(["train", *train_args, "--out", str(one)])
    assert code == 0
    seconds_one = time.perf_counter() - start
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.perf_counter()
    proc = subprocess.run(torchrun_command(nproc, ["train", *train_args, "--out", str(many)], tiny),
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    seconds_many = time.perf_counter() - start
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, many)]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]]
    worst = {k: max(abs(a[k] - b[k]) / max(abs(a[k]), 1e-12) for a, b in zip(*rows))
             for k in ("loss", "rec", "kl", "test_elbo")}
    return {"nproc": nproc, "epochs": len(rows[0]), "steps": rows[0][-1]["step"],
            "loss_one": [r["loss"] for r in rows[0]], f"loss_{nproc}": [r["loss"] for r in rows[1]],
            "max_relative_difference": worst, "seconds": {"one": round(seconds_one, 1), "torchrun": round(seconds_many, 1)},
            "stderr": proc.stderr}


def _main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["cli"]:  # `cvae ARGS`, optionally on the tiny dataset (torchrun starts this)
        rest = argv[1:]
        if rest[:1] == ["--tiny"]:
            use_tiny()
            rest = rest[1:]
        from cvae.cli import main

        return main(rest)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("drill", choices=("kills", "processes"))
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the 1x4x4 test dataset instead of the digits")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this directory")
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.train_args = argv[split + 1:]
    torch.set_num_threads(1)
    if args.tiny:
        use_tiny()
    train_args = args.train_args or (tiny_options() if args.tiny else list(DIGITS_OPTIONS))
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="cvae-drill-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        if args.drill == "kills":
            result = kill_drill(train_args, workdir, kills=args.kills, seed=args.seed)
        else:
            result = processes_drill(train_args, workdir, nproc=args.nproc, tiny=args.tiny)
            result.pop("stderr")
        print(json.dumps(result, indent=1))
        return 0 if result.get("identical", True) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(_main())
