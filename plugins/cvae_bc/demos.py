"""Demonstrations on disk (an `.npz` file), their validation, and the `bc_demos` dataset.

File format (`numpy.savez`, read with `allow_pickle=False`); T steps in E episodes, stored one
episode after another:

| array | shape, dtype | meaning |
|---|---|---|
| `observations` | (T, obs_dim) float, or (T, H, W, C) uint8 | the observation each action was taken in (a vector, or an image) |
| `actions` | (T, act_dim) float | the action taken |
| `episode_starts` | (E,) int | index of each episode's first step (0 first, increasing) |
| `episode_ids` | (T,) int | episode index of every step (optional when `episode_starts` is given) |
| `modes` | (E,) int | mode label per episode, -1 if unknown (optional) |
| `mode_names` | (n_modes,) str | a name per mode index (optional) |
| `mode_probs` | (n_modes,) float | the expert's probability of each mode (optional; evaluation compares with it, else with the modes of the demonstrations) |
| `env_id` | () str | gymnasium id the demonstrations come from (optional) |
| `env` | () str | cvae environment name (optional) |
| `env_kwargs` | () str | JSON of the keyword arguments the environment was made with, e.g. {"obs": "image"} (optional) |
| `action_low`, `action_high` | (act_dim,) float | bounds of valid actions (optional; else the env's action space) |

Only `observations`, `actions` and one of `episode_starts`/`episode_ids` are required, so
demonstrations from elsewhere load the same way as collected ones. Files with image observations
are written compressed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import json
import zipfile

import numpy as np
import torch

import cvae

__all__ = ["Demos", "load_demos", "save_demos", "collect", "load_bc_dataset", "FORMAT"]

FORMAT = "cvae-bc-demos"


@dataclass
class Demos:
    """Demonstrations in memory: validated arrays and what is known about them."""

    observations: np.ndarray
    actions: np.ndarray
    episode_starts: np.ndarray
    modes: np.ndarray
    env_id: str = ""
    env: str = ""
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    action_low: np.ndarray | None = None
    action_high: np.ndarray | None = None
    mode_names: list[str] = field(default_factory=list)
    mode_probs: np.ndarray | None = None

    @property
    def n_episodes(self) -> int:
        return len(self.episode_starts)

    @property
    def episode_ends(self) -> np.ndarray:
        return np.append(self.episode_starts[1:], len(self.actions))

    @property
    def episode_ids(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_episodes), np.diff(np.append(self.episode_starts, len(self.actions))))

    def validate(self, where: str = "demonstrations") -> Demos:
        """Check shapes, finiteness, episode structure and action bounds; raises cvae.CVAEError."""
        obs, act = self.observations, self.actions
        if obs.ndim not in (2, 4) or act.ndim != 2:
            raise cvae.CVAEError(f"{where}: observations must be (steps, features) or images (steps, height, width, "
                                 f"channels) and actions (steps, features); got shapes {obs.shape} and {act.shape}")
        if len(obs) != len(act):
            raise cvae.CVAEError(f"{where}: {len(obs)} observations but {len(act)} actions; each step needs one of each")
        if len(act) == 0:
            raise cvae.CVAEError(f"{where}: no steps")
        for name, arr in (("observations", obs), ("actions", act)):
            if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
                raise cvae.CVAEError(f"{where}: {name} must be real numbers, got dtype {arr.dtype}")
            if not np.issubdtype(arr.dtype, np.floating):
                continue  # integers (image pixels) are always finite
            bad = ~np.isfinite(arr.reshape(len(arr), -1))
            if bad.any():
                rows = np.nonzero(bad.any(1))[0]
                raise cvae.CVAEError(f"{where}: {name} contain NaN or infinite values ({len(rows)} steps, first at "
                                     f"step {int(rows[0])})")
        if obs.ndim == 4 and (obs.min() < 0 or obs.max() > 255):
            raise cvae.CVAEError(f"{where}: image observations must hold pixel values 0..255, got "
                                 f"[{obs.min()}, {obs.max()}]")
        starts = self.episode_starts
        if starts.ndim != 1 or len(starts) == 0 or starts[0] != 0 or (np.diff(starts) <= 0).any() \
                or starts[-1] >= len(act):
            raise cvae.CVAEError(f"{where}: episode_starts must begin at 0 and increase strictly below {len(act)}")
        if len(self.modes) != len(starts):
            raise cvae.CVAEError(f"{where}: {len(self.modes)} mode labels for {len(starts)} episodes")
        if self.mode_names and len(self.modes) and self.modes.max() >= len(self.mode_names):
            raise cvae.CVAEError(f"{where}: mode label {int(self.modes.max())} has no name "
                                 f"({len(self.mode_names)} mode names)")
        if self.mode_probs is not None:
            p = np.asarray(self.mode_probs, dtype=np.float64).reshape(-1)
            if len(p) != len(self.mode_names) or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
                raise cvae.CVAEError(f"{where}: mode_probs must be {len(self.mode_names)} non-negative numbers, one "
                                     f"per mode name")
            self.mode_probs = p / p.sum()
        try:
            space = _env_spaces(self.env_id, self.env_kwargs) if self.env_id else None
        except cvae.CVAEError as exc:
            raise cvae.CVAEError(f"{where}: {exc}") from None
        if space is not None:
            obs_space, act_space = space
            if obs.shape[1:] != obs_space.shape or act.shape[1:] != act_space.shape:
                raise cvae.CVAEError(f"{where}: observations {obs.shape[1:]} and actions {act.shape[1:]} per step do not "
                                     f"match {self.env_id}'s spaces {obs_space.shape} and {act_space.shape}")
            if self.action_low is None:
                self.action_low = np.asarray(act_space.low, dtype=np.float64)
                self.action_high = np.asarray(act_space.high, dtype=np.float64)
        if self.action_low is not None:
            low = np.broadcast_to(np.asarray(self.action_low, dtype=np.float64), act.shape[1:])
            high = np.broadcast_to(np.asarray(self.action_high, dtype=np.float64), act.shape[1:])
            outside = ((act < low - 1e-6) | (act > high + 1e-6)).any(1)
            if outside.any():
                i = int(np.nonzero(outside)[0][0])
                raise cvae.CVAEError(f"{where}: {int(outside.sum())} actions lie outside the action space "
                                     f"[{low.tolist()}, {high.tolist()}]; the first is {act[i].tolist()} at step {i}")
            self.action_low, self.action_high = low.copy(), high.copy()
        return self


def _env_spaces(env_id: str, env_kwargs: dict[str, Any] | None = None) -> tuple[Any, Any]:
    """Observation and action spaces of a registered gymnasium env; an id that is not registered is an
    error here, when the file is read, not after a policy has trained on it."""
    import gymnasium

    from .evaluate import make_env

    try:
        env = make_env(env_id, **(env_kwargs or {}))
    except cvae.CVAEError as exc:
        unknown = env_id not in gymnasium.registry  # (make_env has registered the cvae environments)
        hint = ("; install the package that registers it, or remove env_id from the file to train without "
                "evaluating") if unknown else ""
        raise cvae.CVAEError(f"{exc}{hint}") from None
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()


def save_demos(demos: Demos, path: str | Path) -> Path:
    """Write demonstrations in the documented npz format (atomically)."""
    demos.validate()
    path = Path(path)
    if path.suffix != ".npz":
        raise cvae.CVAEError(f"--out {path}: demonstrations are written as .npz")
    path.parent.mkdir(parents=True, exist_ok=True)
    images = demos.observations.ndim == 4
    arrays: dict[str, Any] = {
        "format": np.array(FORMAT), "version": np.array(1),
        "observations": demos.observations if images else demos.observations.astype(np.float32),
        "actions": demos.actions.astype(np.float32), "env_kwargs": np.array(json.dumps(demos.env_kwargs)),
        "episode_starts": demos.episode_starts.astype(np.int64), "episode_ids": demos.episode_ids.astype(np.int64),
        "modes": demos.modes.astype(np.int64), "env_id": np.array(demos.env_id), "env": np.array(demos.env),
        "mode_names": np.array(demos.mode_names, dtype=str),
    }
    if demos.mode_probs is not None:
        arrays["mode_probs"] = np.asarray(demos.mode_probs, dtype=np.float64)
    if demos.action_low is not None:
        arrays["action_low"] = np.asarray(demos.action_low, dtype=np.float32)
        arrays["action_high"] = np.asarray(demos.action_high, dtype=np.float32)
    tmp = path.with_name(path.name + ".tmp.npz")
    (np.savez_compressed if images else np.savez)(tmp, **arrays)
    tmp.replace(path)
    return path


def load_demos(path: str | Path) -> Demos:
    """Read and validate demonstrations (collected by `cvae bc collect` or brought by a user)."""
    path = Path(path)
    if not path.is_file():
        raise cvae.CVAEError(f"demonstrations file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            data = {k: f[k] for k in f.files}
    except Exception as exc:  # numpy raises many types for bad files
        if not zipfile.is_zipfile(path) and "pickle" in str(exc):  # numpy's guess for bytes of no format it knows
            raise cvae.CVAEError(f"{path} is not a readable .npz file: it is neither a zip of arrays nor a .npy "
                                 f"array (pickled objects are never loaded)") from None
        raise cvae.CVAEError(f"{path} is not a readable .npz file ({type(exc).__name__}: {exc})") from None
    missing = [k for k in ("observations", "actions") if k not in data]
    if missing:
        raise cvae.CVAEError(f"{path}: missing array(s) {missing}; the file needs observations, actions and "
                             f"episode_starts or episode_ids")
    obs, act = np.asarray(data["observations"]), np.asarray(data["actions"])
    if obs.ndim == 1:
        obs = obs[:, None]
    if act.ndim == 1:
        act = act[:, None]
    id_starts = None
    if "episode_ids" in data:
        ids = np.asarray(data["episode_ids"]).reshape(-1)
        if len(ids) != len(obs):  # (observations and actions are compared with each other later)
            raise cvae.CVAEError(f"{path}: {len(ids)} episode ids for {len(obs)} observations")
        id_starts = np.nonzero(np.append(True, ids[1:] != ids[:-1]))[0]
        seen, first = np.unique(ids[id_starts], return_index=True)
        if len(seen) < len(id_starts):  # an episode's steps must be consecutive
            again = int(id_starts[np.setdiff1d(np.arange(len(id_starts)), first)[0]])
            raise cvae.CVAEError(f"{path}: episode id {ids[again].item()!r} comes back at step {again} after other episodes; "
                                 f"each episode's steps must be consecutive")
    if "episode_starts" in data:
        raw = np.asarray(data["episode_starts"]).reshape(-1)
        if not (np.issubdtype(raw.dtype, np.integer) or (np.issubdtype(raw.dtype, np.floating)
                                                         and np.isfinite(raw).all() and (raw == np.round(raw)).all())):
            raise cvae.CVAEError(f"{path}: episode_starts must be whole step indices, got {raw[:5].tolist()}...")
        starts = raw.astype(np.int64)
        if id_starts is not None and not np.array_equal(id_starts, starts):
            raise cvae.CVAEError(f"{path}: episode_ids and episode_starts disagree")
    elif id_starts is not None:
        starts = id_starts
    else:
        raise cvae.CVAEError(f"{path}: give episode_starts (index of each episode's first step) or episode_ids "
                             f"(episode of every step)")
    modes = np.asarray(data.get("modes", np.full(len(starts), -1))).astype(np.int64).reshape(-1)
    text = lambda k: str(data[k]) if k in data and data[k].ndim == 0 else ""  # noqa: E731
    try:
        env_kwargs = json.loads(text("env_kwargs") or "{}")
    except json.JSONDecodeError:
        env_kwargs = None
    if not isinstance(env_kwargs, dict):
        raise cvae.CVAEError(f"{path}: env_kwargs must be a JSON object of keyword arguments, got {text('env_kwargs')!r}")
    demos = Demos(observations=obs, actions=act, episode_starts=starts, modes=modes, env_id=text("env_id"),
                  env=text("env"), env_kwargs=env_kwargs, action_low=data.get("action_low"), action_high=data.get("action_high"),
                  mode_names=[str(n) for n in data.get("mode_names", np.array([], dtype=str)).reshape(-1)],
                  mode_probs=data.get("mode_probs"))
    if (demos.action_low is None) != (demos.action_high is None):
        raise cvae.CVAEError(f"{path}: give both action_low and action_high, or neither")
    return demos.validate(str(path))


def collect(env_name: str, episodes: int, seed: int = 0, expert_options: dict[str, Any] | None = None,
            keep_failures: bool = False, env_kwargs: dict[str, Any] | None = None) -> tuple[Demos, dict[str, Any]]:
    """Roll the scripted expert of a registered environment for `episodes` successful episodes
    (failures are dropped unless `keep_failures`); `env_kwargs` make the environment (e.g.
    `{"obs": "image"}`). Returns the demonstrations and a summary."""
    from .evaluate import make_env, resolve_env

    if int(episodes) < 1:
        raise cvae.CVAEError(f"--episodes must be >= 1, got {episodes!r}")
    spec = resolve_env(env_name)
    expert = spec.build(options=expert_options, where=f"expert options of {spec.name!r}")
    if hasattr(expert, "reset"):
        expert.reset(seed)
    env_kwargs = dict(env_kwargs or {})
    env = make_env(spec.env_id, **env_kwargs)
    obs_rows, act_rows, starts, modes = [], [], [], []
    failures = attempts = 0
    while len(starts) < episodes:
        if attempts > 2 * episodes + 10 and failures > attempts // 2:
            raise cvae.CVAEError(f"the expert of {spec.name!r} fails in {failures} of {attempts} episodes")
        obs, info = env.reset(seed=seed * 100_003 + attempts)
        attempts += 1
        ep_obs, ep_act = [], []
        while True:
            action = expert(obs, info)
            ep_obs.append(obs)
            ep_act.append(action)
            obs, _, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        if not info.get("success", True) and not keep_failures:
            failures += 1
            continue
        starts.append(sum(len(o) for o in obs_rows))
        obs_rows.append(np.array(ep_obs, dtype=env.observation_space.dtype))
        act_rows.append(np.array(ep_act, dtype=np.float32))
        modes.append(int(info.get("mode", -1)))
    names = list(env.unwrapped.mode_names()) if hasattr(env.unwrapped, "mode_names") else []
    demos = Demos(np.concatenate(obs_rows), np.concatenate(act_rows), np.array(starts, dtype=np.int64),
                  np.array(modes, dtype=np.int64), env_id=spec.env_id, env=spec.name, env_kwargs=env_kwargs,
                  action_low=env.action_space.low.astype(np.float64), action_high=env.action_space.high.astype(np.float64),
                  mode_names=names, mode_probs=getattr(expert, "mode_probs", None))
    env.close()
    counts = np.bincount(demos.modes[demos.modes >= 0], minlength=len(names)) if names else np.array([])
    summary = {"env": spec.name, "env_id": spec.env_id, "episodes": int(episodes), "steps": len(demos.actions),
               "dropped_failures": failures, "mode_counts": dict(zip(names, counts.tolist()))}
    return demos.validate(), summary


def load_bc_dataset(path: str, chunk: int = 1, test_fraction: float = 0.1, seed: int = 0) -> cvae.DataBundle:
    """Demonstrations as a DataBundle: condition "obs" (a vector observation through the "vector"
    encoder, an image through "pixels", kept as uint8), target the next `chunk` actions from each
    step, shape (chunk, act_dim); past an episode's end the chunk repeats its last action. Whole
    episodes go to the test split."""
    if int(chunk) != chunk or chunk < 1:
        raise cvae.CVAEError(f"bc_demos: chunk must be an integer >= 1, got {chunk!r}")
    if not 0 < float(test_fraction) < 1:
        raise cvae.CVAEError(f"bc_demos: test_fraction must be in (0, 1), got {test_fraction!r}")
    demos = load_demos(path)
    if demos.n_episodes < 2:
        raise cvae.CVAEError(f"bc_demos: {path} holds {demos.n_episodes} episode; at least 2 are needed "
                             f"(whole episodes are held out for testing)")
    chunk = int(chunk)
    targets = chunk_targets(demos, chunk)
    order = np.random.default_rng(seed).permutation(demos.n_episodes)
    n_test = min(demos.n_episodes - 1, max(1, round(test_fraction * demos.n_episodes)))
    is_test = np.zeros(demos.n_episodes, dtype=bool)
    is_test[order[:n_test]] = True
    step_test = is_test[demos.episode_ids]
    if demos.action_low is not None:
        low, high = float(np.min(demos.action_low)), float(np.max(demos.action_high))
    else:
        low, high = float(demos.actions.min()), float(demos.actions.max())
    target = cvae.TargetInfo(shape=(chunk, demos.actions.shape[1]), low=low, high=high)
    images = demos.observations.ndim == 4
    cond = {"obs": cvae.ConditionInfo("pixels" if images else "vector", shape=tuple(demos.observations.shape[1:]))}
    obs = torch.as_tensor(demos.observations, dtype=torch.uint8 if images else torch.float32)
    y = torch.as_tensor(targets, dtype=torch.float32)

    def split(mask: np.ndarray, name: str) -> cvae.TensorData:
        idx = torch.as_tensor(np.nonzero(mask)[0])
        return cvae.TensorData(y[idx], {"obs": obs[idx]}, target, cond, name=f"bc_demos {name}")

    extras = {"env": demos.env, "env_id": demos.env_id, "env_kwargs": demos.env_kwargs, "chunk": chunk, "mode_names": demos.mode_names,
              "episodes": demos.n_episodes, "test_episodes": n_test}
    return cvae.DataBundle("bc_demos", target, cond, split(~step_test, "train"), split(step_test, "test"), extras)


def chunk_targets(demos: Demos, chunk: int) -> np.ndarray:
    """(T, chunk, act_dim): for every step, the actions of the next `chunk` steps of its episode,
    the last action repeated past the episode's end."""
    t = np.arange(len(demos.actions))
    ends = demos.episode_ends[demos.episode_ids]  # exclusive end of each step's episode
    idx = np.minimum(t[:, None] + np.arange(chunk)[None, :], ends[:, None] - 1)
    return demos.actions[idx].astype(np.float32)
