"""Rollouts of policies and experts in the environments, the mode metrics, and rollout pictures.

Metrics of a set of episodes (`summarise`):
- `success_rate`, `collision_rate`, `timeout_rate`: fractions of all episodes.
- `mode_counts` / `mode_hist`: how often each expert mode (route, visiting order) was completed;
  episodes that fail or leave the expert's routes have no mode and are left out of the histogram
  (their count is `no_mode`).
- `mode_entropy`: entropy of `mode_hist` divided by log(number of modes of the environment): 1 is
  every mode equally often, 0 a single mode. `expert_entropy` is the same figure for the expert.
- `tv_to_expert`: total-variation distance between `mode_hist` and the expert's mode distribution
  (0: the same, 1: disjoint; 1 when no episode completed a mode).
- `mode_coverage`: fraction of the expert's modes that the policy completes at least a quarter as
  often as the expert does (frequencies among episodes with a mode).
- `switches_per_episode` and `switch_rate`: mean number of flips of the committed choice within one
  decision, and the fraction of episodes with at least one (see cvae_bc.envs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import cvae

from .draw import Canvas, mode_colour

__all__ = ["resolve_env", "make_env", "rollout", "summarise", "draw_rollouts", "ExpertBatch"]


def resolve_env(name: str) -> cvae.EnvironmentSpec:
    """The registered environment called `name`, or the first one (by name) whose gymnasium id is `name`."""
    registry = cvae.get_registry()
    by_id = [s for s in registry.specs("environment") if s.env_id == name]
    if by_id:
        return by_id[0]
    return registry.get("environment", name)


def make_env(env_id: str, **kwargs: Any) -> Any:
    """gymnasium.make with a clear error for an id that is not registered."""
    import gymnasium

    from .envs import register_envs

    register_envs()
    if env_id not in gymnasium.registry:
        ours = sorted(k for k in gymnasium.registry if k.startswith("cvae/"))
        from difflib import get_close_matches

        near = get_close_matches(env_id, list(gymnasium.registry), n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(map(repr, near))}? " if near else ""
        raise cvae.CVAEError(f"unknown environment id {env_id!r}: {hint}(cvae environments: {', '.join(ours)})")
    try:
        return gymnasium.make(env_id, **kwargs)
    except Exception as exc:  # a third-party env's constructor failing is a user problem here
        raise cvae.CVAEError(f"cannot make environment {env_id!r}: {type(exc).__name__}: {exc}") from None


class ExpertBatch:
    """Independent copies of a scripted expert for a batch of parallel episodes, behind the same
    `reset(n, seed)` / `act(obs, infos)` interface the rollout loop uses for policies."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory
        self.experts: list[Any] = []

    def reset(self, n: int, seed: int | None = None) -> None:
        self.experts = [self.factory() for _ in range(n)]
        for i, e in enumerate(self.experts):
            if hasattr(e, "reset"):
                e.reset(None if seed is None else seed * 7919 + i)

    def act(self, obs: np.ndarray, infos: Sequence[dict[str, Any]]) -> np.ndarray:
        return np.stack([e(o, info) for e, o, info in zip(self.experts, obs, infos)])


def rollout(actor: Any, env_id: str, episodes: int, seeds: Sequence[int], *, env_kwargs: dict | None = None,
            progress: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Run `episodes` episodes split evenly over `seeds` (the first seeds take the remainder), all
    episodes of a seed in parallel. `actor` is a Policy (act(obs)) or an ExpertBatch (act(obs, infos)).
    Environment i of seed s is reset with seed s * 10_007 + i; the actor's noise is seeded with s."""
    if int(episodes) < 1 or not seeds:
        raise cvae.CVAEError("evaluation needs at least one episode and one seed")
    per = [episodes // len(seeds) + (1 if i < episodes % len(seeds) else 0) for i in range(len(seeds))]
    records: list[dict[str, Any]] = []
    for seed, n in zip(seeds, per):
        if n == 0:
            continue
        envs = [make_env(env_id, **(env_kwargs or {})) for _ in range(n)]
        obs, infos = zip(*(env.reset(seed=int(seed) * 10_007 + i) for i, env in enumerate(envs)))
        obs, infos = np.stack(obs), list(infos)
        actor.reset(n, seed=int(seed))
        active = np.ones(n, dtype=bool)
        paths = [[env.unwrapped.pos.copy()] for env in envs]
        while active.any():
            actions = actor.act(obs, infos) if isinstance(actor, ExpertBatch) else actor.act(obs)
            for i in np.nonzero(active)[0]:
                o, _, terminated, truncated, info = envs[i].step(actions[i])
                obs[i], infos[i] = o, info
                paths[i].append(envs[i].unwrapped.pos.copy())
                if terminated or truncated:
                    active[i] = False
        for i, env in enumerate(envs):
            info = infos[i]
            records.append({"seed": int(seed), "episode": i, "steps": int(info.get("t", len(paths[i]) - 1)),
                            "mode": int(info.get("mode", -1)), "success": bool(info.get("success", False)),
                            "collision": bool(info.get("collision", False)), "switches": int(info.get("switches", 0)),
                            "path": np.array(paths[i])})
            env.close()
        if progress:
            progress(f"  seed {seed}: {n} episodes")
    return records


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return max(0.0, float(-(p * np.log(p)).sum()))


def summarise(records: Sequence[dict[str, Any]], mode_names: Sequence[str], expert_probs: Sequence[float]) -> dict[str, Any]:
    """The metrics above for one policy's episodes."""
    n = len(records)
    k = len(mode_names)
    q = np.asarray(expert_probs, dtype=np.float64)
    if len(q) != k or q.sum() <= 0:
        raise cvae.CVAEError(f"{len(q)} expert mode probabilities for {k} modes")
    q = q / q.sum()
    modes = np.array([r["mode"] for r in records], dtype=np.int64)
    valid = modes[(modes >= 0) & (modes < k)]
    counts = np.bincount(valid, minlength=k)[:k]
    hist = counts / counts.sum() if counts.sum() else np.zeros(k)
    norm = math.log(k) if k > 1 else 1.0
    covered = (hist >= 0.25 * q) & (q > 0) if counts.sum() else np.zeros(k, dtype=bool)
    switches = np.array([r["switches"] for r in records])
    success = np.array([r["success"] for r in records])
    collision = np.array([r["collision"] for r in records])
    return {
        "episodes": n,
        "seeds": sorted({r["seed"] for r in records}),
        "success_rate": float(success.mean()),
        "collision_rate": float(collision.mean()),
        "timeout_rate": float((~success & ~collision).mean()),
        "mode_counts": dict(zip(mode_names, counts.tolist())),
        "no_mode": int(n - counts.sum()),
        "mode_hist": dict(zip(mode_names, hist.round(4).tolist())),
        "expert_mode_probs": dict(zip(mode_names, q.round(4).tolist())),
        "mode_entropy": _entropy(hist) / norm if counts.sum() else 0.0,
        "expert_entropy": _entropy(q) / norm,
        "tv_to_expert": float(0.5 * np.abs(hist - q).sum()) if counts.sum() else 1.0,
        "mode_coverage": float(covered.sum() / (q > 0).sum()),
        "switches_per_episode": float(switches.mean()),
        "switch_rate": float((switches > 0).mean()),
        "mean_steps": float(np.mean([r["steps"] for r in records])),
    }


def draw_rollouts(env: Any, records: Sequence[dict[str, Any]], width: int = 256) -> np.ndarray:
    """Every episode's path over the environment, coloured by its mode (grey: no mode), with a red
    dot where an episode ended in a collision."""
    canvas: Canvas = env.unwrapped.background(width)
    for r in records:
        canvas.polyline(r["path"], mode_colour(r["mode"]), thickness=1)
    for r in records:
        if r["collision"]:
            canvas.disc(r["path"][-1], 0.015, (220, 30, 30))
    return canvas.image


def save_panels(images: Sequence[np.ndarray], path: str | Path, titles: Sequence[str] | None = None,
                columns: int = 4, gap: int = 4) -> Path:
    """Images of equal size side by side (`columns` per row) in one PNG, each under its title."""
    from PIL import Image, ImageDraw

    h, w, _ = images[0].shape
    top = 14 if titles else 0
    rows = math.ceil(len(images) / columns)
    cols = min(columns, len(images))
    ph = h + top
    out = np.full((rows * ph + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        out[r * (ph + gap) + top:r * (ph + gap) + ph, c * (w + gap):c * (w + gap) + w] = img
    picture = Image.fromarray(out)
    if titles:
        draw = ImageDraw.Draw(picture)
        for i, title in enumerate(titles):
            r, c = divmod(i, columns)
            draw.text((c * (w + gap) + 3, r * (ph + gap) + 1), str(title), fill=(0, 0, 0))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path
