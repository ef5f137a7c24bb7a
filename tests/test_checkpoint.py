"""Checkpoints: atomic writes, clear errors for truncated, garbage and foreign files (naming an older good
checkpoint), no unpickling of arbitrary objects, pruning, and opening a run from its newest checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from cvae import CheckpointError, CVAEError, load_run
from cvae.checkpoint import FORMAT, atomic_write, latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from cvae.train import Trainer


def minimal_state(step: int) -> dict:
    """The smallest state `load_checkpoint` accepts."""
    return {"config": {}, "model": {"w": torch.full((2,), float(step))}, "target": {}, "conditions": {},
            "step": step, "epoch": 0, "batch": step}


# -- atomic writes --------------------------------------------------------------------------------------------------


def test_atomic_write_replaces_the_file(tmp_path):
    path = tmp_path / "sub" / "f.bin"
    atomic_write(path, lambda f: f.write(b"one"))
    atomic_write(path, lambda f: f.write(b"two"))
    assert path.read_bytes() == b"two" and os.listdir(path.parent) == ["f.bin"]
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"")
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # the mode of any file written here


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path, error):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")

    def writer(f):
        f.write(b"half of the new")
        raise error

    with pytest.raises(type(error)):
        atomic_write(path, writer)
    assert path.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["f.bin"]  # no temporary file left behind


# -- saving, listing, pruning -----------------------------------------------------------------------------------------


def test_save_names_by_step_lists_in_step_order_and_prunes(tmp_path):
    for step in (5, 100, 20, 7):
        save_checkpoint(tmp_path, minimal_state(step), keep=3)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000000007.pt", "step-000000020.pt", "step-000000100.pt"]
    assert latest_checkpoint(tmp_path).name == "step-000000100.pt"
    state = load_checkpoint(latest_checkpoint(tmp_path))
    assert state["format"] == FORMAT and state["step"] == 100 and torch.equal(state["model"]["w"], torch.full((2,), 100.0))
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    assert len(list_checkpoints(tmp_path)) == 3


def test_training_keeps_only_the_newest_checkpoints(tiny_config, tmp_path):
    Trainer(tiny_config("train.epochs=4", "train.keep_checkpoints=2"), tmp_path / "run").fit()
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-000000018.pt", "step-000000024.pt"]
    Trainer(tiny_config("train.epochs=3", "train.keep_checkpoints=1"), tmp_path / "one").fit()
    assert [p.name for p in list_checkpoints(tmp_path / "one" / "checkpoints")] == ["step-000000018.pt"]
    Trainer(tiny_config("train.epochs=4", "train.checkpoint_every=3", "train.keep_checkpoints=5"), tmp_path / "every").fit()
    # every third epoch, and always the last one
    assert [p.name for p in list_checkpoints(tmp_path / "every" / "checkpoints")] == ["step-000000018.pt", "step-000000024.pt"]


def test_no_checkpoint_is_a_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint in .*step-NNNNNNNNN.pt"):
        latest_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        load_checkpoint(tmp_path / "step-000000001.pt")


# -- bad files --------------------------------------------------------------------------------------------------------


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"this is not a checkpoint at all\n" * 10)


def _foreign(path: Path) -> None:
    torch.save({"model": {"w": torch.zeros(2)}, "step": 3}, path)


def _other_format(path: Path) -> None:
    torch.save({"format": "someone-else", "step": 3}, path)


def _not_a_dict(path: Path) -> None:
    torch.save([torch.zeros(2)], path)


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _random_bytes(path: Path) -> None:
    path.write_bytes(bytes(torch.randint(0, 256, (3000,), generator=torch.Generator().manual_seed(1),
                                         dtype=torch.uint8).tolist()))


BAD_FILES = {
    "truncated": (_truncate, "is corrupt, truncated or not a cvae checkpoint"),
    "garbage": (_garbage, "is corrupt, truncated or not a cvae checkpoint"),
    "empty": (_empty, "is corrupt, truncated or not a cvae checkpoint"),
    "random bytes": (_random_bytes, "is corrupt, truncated or not a cvae checkpoint"),
    "no marker": (_foreign, "is not a cvae checkpoint (no 'cvae-checkpoint' marker)"),
    "other marker": (_other_format, "is not a cvae checkpoint (no 'cvae-checkpoint' marker)"),
    "not a dict": (_not_a_dict, "is not a cvae checkpoint (no 'cvae-checkpoint' marker)"),
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_file_is_a_checkpoint_error(tmp_path, kind):
    spoil, needle = BAD_FILES[kind]
    path = save_checkpoint(tmp_path, minimal_state(1))
    spoil(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"{path} is not") or message.startswith(f"checkpoint {path} is")
    assert needle in message
    assert "previous checkpoint" not in message  # there is none
    assert len(message.splitlines()) == 1
    assert "weights_only" not in message  # torch's advice to load unsafely is never passed on


@pytest.mark.parametrize("kind", BAD_FILES)
def test_a_bad_newest_checkpoint_names_the_older_good_one(tmp_path, kind):
    spoil, needle = BAD_FILES[kind]
    good = save_checkpoint(tmp_path, minimal_state(6))
    bad = save_checkpoint(tmp_path, minimal_state(12))
    spoil(bad)
    with pytest.raises(CheckpointError, match=r"the previous checkpoint .* is kept") as info:
        load_checkpoint(bad)
    assert needle in str(info.value)
    assert f"the previous checkpoint {good} is kept: move {bad.name} away to resume from it" in str(info.value)
    bad.unlink()
    assert load_checkpoint(latest_checkpoint(tmp_path))["step"] == 6


def test_a_bad_newest_checkpoint_passes_over_damaged_older_ones(tmp_path):
    good = save_checkpoint(tmp_path, minimal_state(3), keep=3)
    damaged = [save_checkpoint(tmp_path, minimal_state(step), keep=3) for step in (6, 9)]
    damaged[0].write_bytes(b"")
    damaged[1].write_bytes(damaged[1].read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(damaged[1])
    assert (f"the newest usable older checkpoint is {good}: move {damaged[1].name}, {damaged[0].name} away to resume "
            f"from it") in str(info.value)
    good.write_bytes(b"junk")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(damaged[1])
    assert (f"the older checkpoints in {tmp_path} ({good.name}, {damaged[0].name}) are unusable too"
            in str(info.value))


def test_a_checkpoint_missing_fields_or_of_another_version(tmp_path):
    path = tmp_path / "step-000000001.pt"
    torch.save({"format": FORMAT, "version": 1, "step": 1}, path)
    with pytest.raises(CheckpointError, match=r"lacks \['batch', 'conditions', 'config', 'epoch', 'model', 'target'\]"):
        load_checkpoint(path)
    torch.save({"format": FORMAT, "version": 99, **minimal_state(1)}, path)
    with pytest.raises(CheckpointError, match="has checkpoint version 99; this cvae reads version 1"):
        load_checkpoint(path)


class Exploit:
    """Unpickling this would run code: it writes a marker file through os.system."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickled_object_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "step-000000001.pt"
    torch.save({"format": FORMAT, "version": 1, **minimal_state(1), "payload": Exploit(marker)}, path)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match=r"holds pickled objects other than tensors and plain containers "
                                              r"\(.*GLOBAL .*system.*\); cvae does not unpickle them"):
        load_checkpoint(path)
    assert not marker.exists()
    # the same file unpickled without weights_only does run the payload: the test's exploit is real
    torch.load(path, weights_only=False)
    assert marker.exists()


# -- opening runs -------------------------------------------------------------------------------------------------


def test_load_run_opens_the_newest_checkpoint(tiny_config, tmp_path):
    trainer = Trainer(tiny_config(), tmp_path / "run")
    trainer.fit()
    run = load_run(tmp_path / "run", device="cpu")
    assert (run.epoch, run.step) == (2, 12) and run.checkpoint.name == "step-000000012.pt"
    assert not run.model.training and run.config == trainer.config
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, run.model.state_dict()[name])


def test_load_run_errors(tiny_config, tmp_path):
    with pytest.raises(CVAEError, match="run directory .*missing does not exist"):
        load_run(tmp_path / "missing")
    Trainer(tiny_config("train.epochs=1"), tmp_path / "run").fit()
    path = latest_checkpoint(tmp_path / "run" / "checkpoints")
    state = torch.load(path, weights_only=True)
    state["model"] = {k: v[..., :1] if v.ndim else v for k, v in state["model"].items()}  # wrong shapes
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="does not fit the model its config describes"):
        load_run(tmp_path / "run", device="cpu")
