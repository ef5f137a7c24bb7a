"""Killed runs: a SIGKILL at an exact point (inside a checkpoint write, a metrics append, a picture, the evaluation,
before the first checkpoint) and then `cvae train --resume` ends in the uninterrupted run's final state, bitwise;
what a kill leaves behind (temporary files, a cut metrics line) is cleaned up. The slow drill SIGKILLs a run at
twenty random moments. Every killed run is a forked child process (tests/faults.py)."""

from __future__ import annotations

import importlib
import io
import json
import os
import signal

import pytest
import torch

import cvae.checkpoint
import cvae.pictures
from conftest import TINY_SETTINGS
from faults import attempt, differences, final_state, kill_drill

train_module = importlib.import_module("cvae.train")  # `cvae.train` is also the train() function

SETS = [arg for item in TINY_SETTINGS for arg in ("--set", item)]
ARGS = [*SETS, "--set", "train.epochs=3", "--set", "eval.iwae_samples=2"]


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.fixture
def uninterrupted(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean") / "run"
    killed, code = attempt(["train", *ARGS, "--out", str(out)], out.parent / "log", None)
    assert (killed, code) == (False, 0)
    return final_state(out)


def kill_then_resume(tmp_path, fault, expect_left=()) -> dict:
    """Run with `fault` installed in the child (it must SIGKILL it), check what was left, resume to the end."""
    out, log = tmp_path / "run", tmp_path / "log"
    killed, code = attempt(["train", *ARGS, "--out", str(out)], log, None, fault=fault)
    assert killed, f"the fault never fired (exit code {code}): {log.read_text()}"
    for check in expect_left:
        check(out)
    killed, code = attempt(["train", *ARGS, "--out", str(out), "--resume"], log, None)
    assert (killed, code) == (False, 0), log.read_text()
    assert not [p for p in out.rglob(".*") if p.is_file()], "temporary files were left behind"
    return final_state(out)


def has_temporary(out) -> None:
    assert [p for p in out.rglob(".*") if p.is_file()], "the kill was meant to leave a temporary file"


def cut_metrics_line(out) -> None:
    text = (out / "metrics.jsonl").read_bytes()
    assert text and not text.endswith(b"\n"), text


def no_checkpoint(out) -> None:
    assert not cvae.checkpoint.list_checkpoints(out / "checkpoints") and (out / "config.json").exists()


def kill_in_second_checkpoint() -> None:
    """Write half of the second checkpoint's bytes into its temporary file, then die."""
    real, calls = torch.save, []

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            buffer = io.BytesIO()
            real(obj, buffer, *args, **kwargs)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            die()
        return real(obj, f, *args, **kwargs)

    cvae.checkpoint.torch.save = save


def kill_in_second_metrics_append() -> None:
    """Append half of epoch 2's metrics line, then die."""
    real = json.dumps

    def dumps(obj, *args, **kwargs):
        text = real(obj, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("epoch") == 2 and "test_elbo" in obj:
            with open(os.environ["DRILL_METRICS"], "a") as f:
                f.write(text[: len(text) // 2])
            die()
        return text

    train_module.json.dumps = dumps


def kill_in_picture() -> None:
    """Die halfway through writing samples.png."""
    def save_image(images, f, **kwargs):
        f.write(b"\x89PNG\r\n\x1a\n half a picture")
        f.flush()
        die()

    cvae.pictures.save_image = save_image


def kill_in_eval_json() -> None:
    """Die halfway through writing eval.json."""
    real = train_module.atomic_write

    def atomic_write(path, write):
        if path.name == "eval.json":
            real(path, lambda f: (f.write(b'{"test_elbo": -1'), f.flush(), die()))
        return real(path, write)

    train_module.atomic_write = atomic_write


def kill_at_first_checkpoint() -> None:
    """Die where the first checkpoint would be written: the run has its config.json and one metrics row only."""
    train_module.Trainer.save = lambda self, gather=True: die()


@pytest.mark.parametrize("fault, left", [
    (kill_in_second_checkpoint, (has_temporary,)),
    (kill_in_picture, (has_temporary,)),
    (kill_in_eval_json, (has_temporary,)),
    (kill_at_first_checkpoint, (no_checkpoint,)),
])
def test_a_kill_at_an_exact_point_then_resume_ends_in_the_same_state(uninterrupted, tmp_path, fault, left):
    resumed = kill_then_resume(tmp_path, fault, left)
    assert differences(uninterrupted, resumed) == []


def test_a_metrics_line_cut_by_a_kill_is_redone_not_duplicated(uninterrupted, tmp_path, monkeypatch):
    monkeypatch.setenv("DRILL_METRICS", str(tmp_path / "run" / "metrics.jsonl"))
    resumed = kill_then_resume(tmp_path, kill_in_second_metrics_append, (cut_metrics_line,))
    assert [r["epoch"] for r in resumed["rows"]] == [1, 2, 3]
    assert differences(uninterrupted, resumed) == []


def test_resume_of_a_run_killed_after_training_only_finishes_it(uninterrupted, tmp_path, capsys):
    from cvae.cli import main

    out = tmp_path / "run"
    assert main(["train", *ARGS, "--out", str(out)]) == 0
    (out / "eval.json").unlink()
    (out / "samples.png").unlink()
    capsys.readouterr()
    assert main(["train", *ARGS, "--out", str(out), "--resume"]) == 0
    stdout = capsys.readouterr().out
    assert "trained 3 epochs (18 steps): test ELBO" in stdout
    assert differences(uninterrupted, final_state(out)) == []


def test_mid_epoch_checkpoints_every_n_steps(tiny_config, tmp_path):
    trainer = train_module.Trainer(tiny_config("train.epochs=2", "train.checkpoint_steps=4", "train.keep_checkpoints=10"),
                                 tmp_path / "run")
    trainer.fit()
    steps = [int(p.name[5:-3]) for p in cvae.checkpoint.list_checkpoints(tmp_path / "run" / "checkpoints")]
    assert steps == [4, 6, 8, 12]  # every 4 steps, and every epoch's end (6 steps per epoch)


def test_checkpoint_steps_may_change_on_resume(tiny_config, tmp_path):
    train_module.Trainer(tiny_config("train.epochs=1"), tmp_path / "run").fit()
    trainer = train_module.Trainer(tiny_config("train.epochs=2", "train.checkpoint_steps=5"), tmp_path / "run", resume=True)
    assert trainer.config["train"]["checkpoint_steps"] == 5


def test_remove_temporaries_spares_real_files(tmp_path):
    for name in ("step-000000006.pt", ".step-000000012.pt.ab_c9xyz", ".metrics.jsonl.q1w2e3r4", "metrics.jsonl", ".hidden"):
        (tmp_path / name).write_bytes(b"x")
    removed = cvae.checkpoint.remove_temporaries(tmp_path)
    assert sorted(p.name for p in removed) == [".metrics.jsonl.q1w2e3r4", ".step-000000012.pt.ab_c9xyz"]
    assert sorted(os.listdir(tmp_path)) == [".hidden", "metrics.jsonl", "step-000000006.pt"]


@pytest.mark.slow
def test_twenty_random_sigkills_end_in_the_uninterrupted_state_bitwise(tiny, tmp_path):
    args = [*SETS, "--set", "train.epochs=6", "--set", "train.checkpoint_steps=4"]
    result = kill_drill(args, tmp_path, kills=20, seed=0)
    print(json.dumps(result, indent=1))
    assert result["kills"] == 20
    assert len(set(result["evidence"]["steps saved"])) >= 4  # the kills landed all over the run, not in one spot
    assert result["identical"], result["differences"]
