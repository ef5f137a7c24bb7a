"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

A checkpoint is a `torch.save` of plain containers and tensors, loaded with `weights_only=True`, so a
file from an untrusted source cannot run code. It holds the model, optimiser and schedule state, the
RNG state, the position in training (epoch, batch within the epoch, step, and the running loss sums of
an unfinished epoch) and the resolved config. `best.pt` (with `train.keep_best`) holds the same minus the
optimiser state: the epoch of the highest validation ELBO, which resumes never read.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

__all__ = ["FORMAT", "save_checkpoint", "load_checkpoint", "list_checkpoints", "latest_checkpoint", "checkpoint_path",
           "best_path", "save_best", "atomic_write", "remove_temporaries"]

FORMAT = "cvae-checkpoint"
VERSION = 1
REQUIRED = frozenset({"config", "model", "target", "conditions", "step", "epoch", "batch"})  # what every checkpoint holds
_NAME = re.compile(r"step-(\d+)\.pt$")
_TEMPORARY = re.compile(r"\..+\.[a-z0-9_]{8}$")  # what atomic_write's mkstemp names look like


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


_UMASK = _umask()  # read once, at import: setting it is process-wide and not thread-safe


def atomic_write(path: Path, write: Any) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it into place, so a reader
    (or a resumed run) sees the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's files are private (0600); a run's files get the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (it lives in the directory's entries), where the platform allows."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def remove_temporaries(directory: Path) -> list[Path]:
    """Delete the temporary files that a process killed inside `atomic_write` left in `directory`; the
    files they were to replace are intact. Call it only while no other process writes there."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.iterdir() if p.is_file() and _TEMPORARY.fullmatch(p.name)]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def checkpoint_path(directory: Path, step: int) -> Path:
    """Where the checkpoint of step `step` is written."""
    return Path(directory) / f"step-{int(step):09d}.pt"


def save_checkpoint(directory: Path, state: dict[str, Any], keep: int = 2) -> Path:
    """Write `state` as `step-<step>.pt` in `directory` and drop all but the `keep` newest."""
    path = checkpoint_path(directory, state["step"])
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **state}, f))
    for old in list_checkpoints(directory)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def best_path(directory: Path) -> Path:
    """Where `train.keep_best` keeps the epoch of the highest validation ELBO."""
    return Path(directory) / "best.pt"


def save_best(directory: Path, state: dict[str, Any]) -> Path:
    """Write `state` without its optimiser state (a resume never starts from it) as `best.pt`."""
    path = best_path(directory)
    kept = {k: v for k, v in state.items() if k not in ("optimizer", "rng_ranks")}
    atomic_write(path, lambda f: torch.save({"format": FORMAT, "version": VERSION, **kept}, f))
    return path


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints in `directory`, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted((p for p in directory.iterdir() if _NAME.search(p.name)), key=lambda p: int(_NAME.search(p.name)[1]))


def latest_checkpoint(directory: Path) -> Path:
    found = list_checkpoints(directory)
    if not found:
        raise CheckpointError(f"no checkpoint in {directory}: expected files named step-NNNNNNNNN.pt")
    return found[-1]


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check one checkpoint; a corrupt, truncated or foreign file is a CheckpointError that
    names the previous good checkpoint, if there is one."""
    path = Path(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except pickle.UnpicklingError as exc:  # weights_only refused an object (torch's advice to turn it off is unsafe)
        what = next((line.strip() for line in str(exc).splitlines() if "GLOBAL" in line), "")[:200]
        if not what:
            raise _unusable(path, exc) from None
        raise CheckpointError(f"checkpoint {path} holds pickled objects other than tensors and plain containers "
                              f"({what}); cvae does not unpickle them, because that can run arbitrary code"
                              f"{_fallback(path)}") from None
    except Exception as exc:  # torch raises many types for bad files; all mean "unusable"
        raise _unusable(path, exc) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cvae checkpoint (no '{FORMAT}' marker){_fallback(path)}")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint version {state.get('version')}; this cvae reads version {VERSION}")
    missing = REQUIRED - set(state)
    if missing:
        raise CheckpointError(f"{path} lacks {sorted(missing)}{_fallback(path)}")
    return state


def _unusable(path: Path, exc: Exception) -> CheckpointError:
    first = next(iter(str(exc).splitlines()), "")  # an empty file gives an error without a message
    # torch's own text: its first sentence only, and never its advice to load with weights_only=False
    first = "" if "weights_only" in first else first.split(". ")[0].rstrip(" .;")
    if len(first) > 160:
        first = first[:160].rsplit(" ", 1)[0] + "..."
    return CheckpointError(f"checkpoint {path} is corrupt, truncated or not a cvae checkpoint "
                           f"({type(exc).__name__}{': ' + first if first else ''}){_fallback(path)}")


def _fallback(path: Path) -> str:
    if path.name == best_path(path.parent).name:
        return "; move it away and the run's commands open its newest checkpoint instead"
    older = [p for p in list_checkpoints(path.parent) if p.name < path.name]
    good = next((p for p in reversed(older) if _readable(p)), None)
    if good is not None:
        damaged = [p.name for p in older if p.name > good.name]
        if not damaged:
            return f"; the previous checkpoint {good} is kept: move {path.name} away to resume from it"
        return (f"; the newest usable older checkpoint is {good}: move {', '.join([path.name, *damaged[::-1]])} "
                f"away to resume from it")
    if older:
        return (f"; the older checkpoint{'s' if len(older) > 1 else ''} in {path.parent} "
                f"({', '.join(p.name for p in older)}) {'are' if len(older) > 1 else 'is'} unusable too")
    return ""


def _readable(path: Path) -> bool:
    """Whether `path` loads as a checkpoint of this format (a fallback worth naming); a full read, on error paths only."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False
    return (isinstance(state, dict) and state.get("format") == FORMAT and state.get("version") == VERSION
            and REQUIRED <= set(state))
