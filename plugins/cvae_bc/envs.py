"""Gymnasium environments with scripted multimodal experts and per-episode mode labels.

Both tasks move a velocity-controlled 2-D point mass: the action is its velocity v in [-1, 1]^2 for
the next step, the position moves by 0.05 v, clipped to the world rectangle. Observations start
with (x, y, vx, vy), the velocity being the last action (zero after a reset).

- `cvae/ObstacleField-v0` (`rows=1`): pass an obstacle field to reach the goal band at the top.
  Row r (0-based) holds r + 1 disc obstacles in a pyramid, so every gap sits right below an obstacle
  of the next row: each row is a left/right choice and `rows` rows give 2**rows routes.
  `cvae/ObstacleFieldMany-v0` is the same task with 3 rows (8 routes).
- `cvae/MultiGoal-v0` (`goals=3`): visit every goal, in any order (3 goals: 6 orders). The
  observation adds one visited flag per goal; the mode is the order of the visits.

`info` at every step holds `t`, `mode` (the route or visiting order as an index, once the episode
has fixed it, else -1), `success`, `collision`, `switches` (how often the agent's committed choice
flipped within one decision, see below), `stage` (decisions taken so far) and `state` (the vector
observation, which the scripted experts read: with image observations it is not in the observation).

Image observations (`obs="image"`, `image_width=48`): the observation is an RGB picture of the scene
(H, W, 3) uint8, W = `image_width` and H from the world's aspect ratio: obstacles, goals, the path
so far (which carries the heading the vector observation gives as a velocity) and the agent. It is
drawn 4x larger and averaged down, so that moves below a pixel still change the picture.

Mode switches: within one decision (the obstacle ahead, or the next goal to visit), the agent is
committed to a side of the obstacle once it is more than 0.05 to that side of its centre, or to a
goal once its velocity points at it (cosine > 0.9, speed > 0.3). A switch is a change of commitment
within the same decision; the scripted experts never switch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

import cvae

from .draw import Canvas

__all__ = ["ObstacleFieldEnv", "MultiGoalEnv", "ObstacleExpert", "MultiGoalExpert", "obstacle_layout", "ENV_IDS",
           "OBS_MODES", "register_envs", "check_action"]

SPEED = 0.05  # world units per step at unit velocity
START_NOISE = 0.03  # the start position is uniform in +-START_NOISE around the origin
AGENT_RADIUS = 0.02
OBSTACLE_RADIUS = 0.08
ROW_START, ROW_SPACING, COLUMN_SPACING = 0.4, 0.5, 0.5
SIDE_MARGIN = 0.05  # commitment to a side of the obstacle ahead
GOAL_RADIUS, GOAL_DISTANCE = 0.1, 0.6
HEADING_COS, HEADING_SPEED = 0.9, 0.3  # commitment to a goal
TRACKING_GAIN = 3.0  # the obstacle expert steers back to its reference path with this gain
GAP_HOLD = 0.1  # the obstacle expert goes straight up for this long past each gap
START_SLOPE = 1.5  # the first leg leaves the start with 1.5 times its mean slope

OBS_MODES = ("vector", "image")
SUPERSAMPLE = 4  # image observations are drawn this much larger and averaged down
PATH_COLOUR, AGENT_COLOUR = (60, 60, 200), (220, 30, 30)

ENV_IDS = {"obstacle": "cvae/ObstacleField-v0", "obstacle_many": "cvae/ObstacleFieldMany-v0",
           "multigoal": "cvae/MultiGoal-v0"}


def check_action(action: Any, space: spaces.Box) -> np.ndarray:
    """The action as float64, or a CVAEError naming what is wrong (shape, NaN, outside the space)."""
    a = np.asarray(action, dtype=np.float64)
    if a.shape != space.shape:
        raise cvae.CVAEError(f"action has shape {a.shape}; the action space is {space}")
    if not np.isfinite(a).all():
        raise cvae.CVAEError(f"action {a.tolist()} is not finite")
    if (a < space.low - 1e-6).any() or (a > space.high + 1e-6).any():
        raise cvae.CVAEError(f"action {np.round(a, 4).tolist()} is outside the action space {space} "
                             f"(clip it to [{space.low.min():g}, {space.high.max():g}])")
    return np.clip(a, space.low, space.high)


def _segment_distance(p: np.ndarray, q: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance from each centre (n, 2) to the segment p-q."""
    d = q - p
    denom = float(d @ d)
    t = np.zeros(len(centres)) if denom == 0 else np.clip((centres - p) @ d / denom, 0.0, 1.0)
    closest = p + t[:, None] * d
    return np.linalg.norm(centres - closest, axis=1)


class _PointMass(gymnasium.Env):
    """Shared dynamics, bookkeeping and rendering of the point-mass tasks."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(self, bounds: tuple[float, float, float, float], extra_obs: int, max_steps: int,
                 render_mode: str | None, obs: str = "vector", image_width: int = 48) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise cvae.CVAEError(f"render_mode {render_mode!r} is not supported; use 'rgb_array' or None")
        if int(max_steps) < 1:
            raise cvae.CVAEError(f"max_steps must be >= 1, got {max_steps!r}")
        if obs not in OBS_MODES:
            raise cvae.CVAEError(f"obs must be one of {', '.join(OBS_MODES)}, got {obs!r}")
        if not isinstance(image_width, (int, np.integer)) or not 8 <= image_width <= 256:
            raise cvae.CVAEError(f"image_width must be an integer in 8..256, got {image_width!r}")
        self.bounds = bounds
        self.max_steps = int(max_steps)
        self.render_mode = render_mode
        self.obs_mode = obs
        x0, x1, y0, y1 = bounds
        low = np.array([x0, y0, -1.0, -1.0] + [0.0] * extra_obs, dtype=np.float32)
        high = np.array([x1, y1, 1.0, 1.0] + [1.0] * extra_obs, dtype=np.float32)
        self.state_space = spaces.Box(low, high, dtype=np.float32)
        if obs == "image":
            height = max(1, round(int(image_width) * (y1 - y0) / (x1 - x0)))
            self.observation_space = spaces.Box(0, 255, (height, int(image_width), 3), dtype=np.uint8)
        else:
            self.observation_space = self.state_space
        self._image_background: Canvas | None = None
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.pos = np.zeros(2)
        self.vel = np.zeros(2)
        self.t = 0
        self.path: list[np.ndarray] = []

    # -- shared pieces -----------------------------------------------------------------------------

    def _start(self) -> None:
        self.pos = self.np_random.uniform(-START_NOISE, START_NOISE, size=2)
        self.vel = np.zeros(2)
        self.t = 0
        self.path = [self.pos.copy()]
        self.switches = 0
        self._commit_key: Any = None
        self._commit = 0

    def _move(self, action: Any) -> tuple[np.ndarray, np.ndarray]:
        a = check_action(action, self.action_space)
        before = self.pos.copy()
        self.vel = a
        x0, x1, y0, y1 = self.bounds
        self.pos = np.clip(self.pos + SPEED * self.vel, [x0, y0], [x1, y1])
        self.t += 1
        self.path.append(self.pos.copy())
        return before, self.pos

    def _track(self, key: Any, choice: int) -> None:
        """Count a switch when the committed `choice` (0: undecided) flips within decision `key`."""
        if key != self._commit_key:
            self._commit_key, self._commit = key, choice
            return
        if choice != 0:
            if self._commit != 0 and choice != self._commit:
                self.switches += 1
            self._commit = choice

    def _base_obs(self) -> list[float]:
        return [*self.pos, *self.vel]

    def _state(self) -> np.ndarray:  # pragma: no cover - overridden
        """The vector observation."""
        raise NotImplementedError

    def _observation(self) -> np.ndarray:
        return self._image() if self.obs_mode == "image" else self._state()

    def _draw_agent(self, canvas: Canvas, thickness: int) -> Canvas:
        canvas.polyline(np.array(self.path), PATH_COLOUR, thickness=thickness)
        canvas.disc(self.pos, max(AGENT_RADIUS, 0.03), AGENT_COLOUR)
        return canvas

    def _image(self) -> np.ndarray:
        """The image observation: the scene at SUPERSAMPLE times its size, averaged over blocks."""
        f = SUPERSAMPLE
        h, w, _ = self.observation_space.shape
        if self._image_background is None:  # the scene without the agent never changes
            self._image_background = self.background(w * f, h * f)
        big = self._draw_agent(self._image_background.copy(), thickness=2).image
        return big.reshape(h, f, w, f, 3).mean((1, 3)).round().astype(np.uint8)

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array":
            return None
        return self._draw_agent(self.background(), thickness=2).image

    def background(self, width: int = 256, height: int | None = None) -> Canvas:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- mode bookkeeping --------------------------------------------------------------------------

    @property
    def n_modes(self) -> int:
        return len(self.mode_names())

    def mode_names(self) -> list[str]:  # pragma: no cover - overridden
        raise NotImplementedError


def obstacle_layout(rows: int) -> dict[str, Any]:
    """Geometry of an obstacle field with `rows` rows: obstacle centres per row, row heights, gap
    centres per row (row r has r + 2 gaps) and the goal height."""
    if int(rows) != rows or rows < 1 or rows > 6:
        raise cvae.CVAEError(f"an obstacle field has 1 to 6 rows, got {rows!r}")
    rows = int(rows)
    row_y = [ROW_START + r * ROW_SPACING for r in range(rows)]
    obstacles = [np.array([[(j - r / 2) * COLUMN_SPACING, row_y[r]] for j in range(r + 1)]) for r in range(rows)]
    gaps = [np.array([(g - (r + 1) / 2) * COLUMN_SPACING for g in range(r + 2)]) for r in range(rows)]
    half_width = max(1.0, (rows + 1) / 2 * COLUMN_SPACING + 0.25)
    return {"rows": rows, "row_y": row_y, "obstacles": obstacles, "gaps": gaps,
            "goal_y": row_y[-1] + 0.4, "half_width": half_width}


def route_bits(route: int, rows: int) -> list[int]:
    """The left (0) / right (1) choice at each row of route index `route` (first row most significant)."""
    return [(route >> (rows - 1 - r)) & 1 for r in range(rows)]


class ObstacleFieldEnv(_PointMass):
    """Reach the goal band past `rows` rows of obstacles (2**rows routes); touching an obstacle ends
    the episode. Reward 1 on success, -1 on a collision, else 0."""

    def __init__(self, rows: int = 1, max_steps: int | None = None, render_mode: str | None = None,
                 obs: str = "vector", image_width: int = 48) -> None:
        self.layout = obstacle_layout(rows)
        self.rows = self.layout["rows"]
        hw = self.layout["half_width"]
        super().__init__((-hw, hw, -0.2, self.layout["goal_y"] + 0.2), 0,
                         max_steps if max_steps is not None else 40 + 30 * self.rows, render_mode, obs, image_width)
        self._all_obstacles = np.concatenate(self.layout["obstacles"])

    def mode_names(self) -> list[str]:
        return ["".join("LR"[b] for b in route_bits(m, self.rows)) for m in range(2**self.rows)]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._start()
        self.gaps: list[int] = []
        self.collision = self.success = False
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if self.collision or self.success:
            raise cvae.CVAEError("the episode has ended; call reset() before step()")
        before, after = self._move(action)
        lay = self.layout
        while len(self.gaps) < self.rows and after[1] >= lay["row_y"][len(self.gaps)] > before[1] - 1e-12:
            r = len(self.gaps)
            y = lay["row_y"][r]
            frac = (y - before[1]) / max(after[1] - before[1], 1e-12)
            x = before[0] + frac * (after[0] - before[0])
            self.gaps.append(int((x > lay["obstacles"][r][:, 0]).sum()))
        while self.gaps and after[1] < lay["row_y"][len(self.gaps) - 1]:  # moving back down un-crosses a row
            self.gaps.pop()
        self.collision = bool((_segment_distance(before, after, self._all_obstacles)
                               < OBSTACLE_RADIUS + AGENT_RADIUS).any())
        self.success = bool(not self.collision and after[1] >= lay["goal_y"])
        stage = len(self.gaps)
        if stage < self.rows:
            ox = lay["obstacles"][stage][:, 0]
            j = int(np.argmin(np.abs(ox - after[0])))
            d = after[0] - ox[j]
            self._track((stage, j), 1 if d > SIDE_MARGIN else -1 if d < -SIDE_MARGIN else 0)
        terminated = self.collision or self.success
        truncated = not terminated and self.t >= self.max_steps
        reward = 1.0 if self.success else -1.0 if self.collision else 0.0
        return self._observation(), reward, terminated, truncated, self._info()

    def route(self) -> int:
        """The route index of the gaps passed so far, or -1 before the last row or off the expert routes."""
        if len(self.gaps) < self.rows:
            return -1
        prev, route = 0, 0
        for g in self.gaps:
            bit = g - prev
            if bit not in (0, 1):
                return -1
            route, prev = route * 2 + bit, g
        return route

    def _state(self) -> np.ndarray:
        return np.array(self._base_obs(), dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        return {"t": self.t, "mode": self.route(), "success": self.success, "collision": self.collision,
                "switches": self.switches, "stage": len(self.gaps), "state": self._state()}

    def background(self, width: int = 256, height: int | None = None) -> Canvas:
        canvas = Canvas(self.bounds, width, height=height)
        x0, x1, _, y1 = self.bounds
        canvas.rect(x0, self.layout["goal_y"], x1, y1, (200, 240, 200))
        for c in self._all_obstacles:
            canvas.disc(c, OBSTACLE_RADIUS, (90, 90, 90))
        canvas.disc((0.0, 0.0), START_NOISE * 1.5, (230, 200, 120))
        return canvas


class MultiGoalEnv(_PointMass):
    """Visit `goals` goals (on a circle of radius 0.6 around the start) in any order; the episode
    succeeds when all are visited. Reward 1 per new goal."""

    def __init__(self, goals: int = 3, max_steps: int | None = None, render_mode: str | None = None,
                 obs: str = "vector", image_width: int = 48) -> None:
        if int(goals) != goals or not 2 <= goals <= 5:
            raise cvae.CVAEError(f"MultiGoal takes 2 to 5 goals, got {goals!r}")
        self.k = int(goals)
        angles = [math.pi / 2 + 2 * math.pi * i / self.k for i in range(self.k)]
        self.goals = np.array([[GOAL_DISTANCE * math.cos(a), GOAL_DISTANCE * math.sin(a)] for a in angles])
        self.orders = list(itertools.permutations(range(self.k)))
        super().__init__((-1.0, 1.0, -1.0, 1.0), self.k, max_steps if max_steps is not None else 50 * self.k, render_mode,
                         obs, image_width)

    def mode_names(self) -> list[str]:
        return ["".join("ABCDE"[i] for i in order) for order in self.orders]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._start()
        self.order: list[int] = []
        return self._observation(), self._info()

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        if len(self.order) == self.k:
            raise cvae.CVAEError("the episode has ended; call reset() before step()")
        before, after = self._move(action)
        dist = _segment_distance(before, after, self.goals)
        new = [int(i) for i in np.argsort(dist) if dist[i] < GOAL_RADIUS and i not in self.order]
        self.order.extend(new)
        stage = len(self.order)
        if stage < self.k:
            speed = float(np.linalg.norm(self.vel))
            choice = 0
            if speed > HEADING_SPEED:
                left = [i for i in range(self.k) if i not in self.order]
                to = self.goals[left] - after
                cos = to @ self.vel / (np.linalg.norm(to, axis=1) * speed + 1e-12)
                if cos.max() > HEADING_COS:
                    choice = left[int(np.argmax(cos))] + 1
            self._track(stage, choice)
        terminated = stage == self.k
        truncated = not terminated and self.t >= self.max_steps
        return self._observation(), float(len(new)), terminated, truncated, self._info()

    def _state(self) -> np.ndarray:
        visited = [1.0 if i in self.order else 0.0 for i in range(self.k)]
        return np.array(self._base_obs() + visited, dtype=np.float32)

    def _info(self) -> dict[str, Any]:
        done = len(self.order) == self.k
        return {"t": self.t, "mode": self.orders.index(tuple(self.order)) if done else -1, "success": done,
                "collision": False, "switches": self.switches, "stage": len(self.order), "state": self._state()}

    def background(self, width: int = 256, height: int | None = None) -> Canvas:
        canvas = Canvas(self.bounds, width, height=height)
        for g in self.goals:
            canvas.disc(g, GOAL_RADIUS, (200, 240, 200))
        canvas.disc((0.0, 0.0), START_NOISE * 1.5, (230, 200, 120))
        return canvas


# ---------------------------------------------------------------------------------------------------
# Scripted experts
# ---------------------------------------------------------------------------------------------------


def _mode_probs(probs: Sequence[float] | None, n: int, what: str) -> np.ndarray:
    if probs is None:
        return np.full(n, 1.0 / n)
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if len(p) != n or not np.isfinite(p).all() or (p < 0).any() or p.sum() <= 0:
        raise cvae.CVAEError(f"expert probabilities {list(probs)!r}: give {n} non-negative numbers with a positive "
                             f"sum, one per {what} (they are scaled to sum to 1)")
    return p / p.sum()


class _Expert:
    """A scripted expert: `expert(observation, info) -> action`. It draws the episode's mode when it
    sees `info["t"] == 0` (a reset) from `probs`, then follows it; `mode` is that draw and
    `mode_probs` the distribution it comes from. `noise` is the std of Gaussian action noise. It reads
    the vector state from `info["state"]` when there is one (image observations), else the observation."""

    def __init__(self, n_modes: int, probs: Sequence[float] | None, noise: float, seed: int | None, what: str) -> None:
        if not 0 <= float(noise) <= 1:
            raise cvae.CVAEError(f"expert noise must be in [0, 1], got {noise!r}")
        self.mode_probs = _mode_probs(probs, n_modes, what)
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)
        self.mode = -1

    def reset(self, seed: int | None = None) -> None:
        """Reseed the expert's own random choices."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, observation: np.ndarray, info: dict[str, Any]) -> np.ndarray:
        if info.get("t", 0) == 0 or self.mode < 0:
            self.mode = int(self.rng.choice(len(self.mode_probs), p=self.mode_probs))
        d = self._direction(np.asarray(info["state"] if "state" in info else observation, dtype=np.float64))
        a = d / max(float(np.linalg.norm(d)), 1e-9)
        if self.noise > 0:
            a = a + self.rng.normal(0.0, self.noise, size=2)
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def _direction(self, observation: np.ndarray) -> np.ndarray:  # pragma: no cover
        """Where to move (any length) in the episode's mode."""
        raise NotImplementedError


class ObstacleExpert(_Expert):
    """Follows a smooth path through the gaps of a route drawn per episode from `probs` (one per
    route, in the order of `ObstacleFieldEnv.mode_names()`; default uniform), then straight up into
    the goal band. It passes every gap straight up, so that each decision starts alike."""

    def __init__(self, rows: int = 1, probs: Sequence[float] | None = None, noise: float = 0.1,
                 seed: int | None = None) -> None:
        self.layout = obstacle_layout(rows)
        super().__init__(2 ** self.layout["rows"], probs, noise, seed, "route")

    def path_points(self, route: int) -> np.ndarray:
        """The route's reference points: the start, then the centre of each gap passed and the
        point GAP_HOLD straight above it, where the next decision starts."""
        lay = self.layout
        g, points = 0, [(0.0, 0.0)]
        for r, bit in enumerate(route_bits(route, lay["rows"])):
            g += bit
            x = lay["gaps"][r][g]
            points += [(x, lay["row_y"][r]), (x, lay["row_y"][r] + GAP_HOLD)]
        return np.array(points)

    def reference(self, route: int, y: float) -> tuple[float, float]:
        """x of the route's reference path at height y, and its slope dx/dy. Between consecutive
        points a cubic that passes every gap straight up; the first one leaves the start already
        heading for its gap, so the routes part at once."""
        pts = self.path_points(route)
        i = int(np.clip(np.searchsorted(pts[:, 1], y, side="right") - 1, 0, len(pts) - 2))
        if y >= pts[-1][1]:
            return float(pts[-1][0]), 0.0
        (x0, y0), (x1, y1) = pts[i], pts[i + 1]
        t = float(np.clip((y - y0) / (y1 - y0), 0.0, 1.0))
        m0 = START_SLOPE * (x1 - x0) if i == 0 else 0.0  # start slope, in units of (x1 - x0) over the segment
        # cubic Hermite from (0, 0) with slope m0 to (1, 1) with slope 0, scaled to the segment
        h = (m0 / (x1 - x0) if x1 != x0 else 0.0)
        f = h * (t**3 - 2 * t**2 + t) + (3 * t**2 - 2 * t**3)
        df = h * (3 * t**2 - 4 * t + 1) + (6 * t - 6 * t**2)
        return float(x0 + (x1 - x0) * f), float((x1 - x0) * df / (y1 - y0))

    def _direction(self, observation: np.ndarray) -> np.ndarray:
        x, y = observation[0], observation[1]
        ref, slope = self.reference(self.mode, y)
        return np.array([slope + TRACKING_GAIN * (ref - x), 1.0])


class MultiGoalExpert(_Expert):
    """Visits the goals in an order drawn per episode from `probs` (one per order, in the order of
    `MultiGoalEnv.mode_names()`; default uniform)."""

    def __init__(self, goals: int = 3, probs: Sequence[float] | None = None, noise: float = 0.1,
                 seed: int | None = None) -> None:
        self.geometry = MultiGoalEnv(goals)
        super().__init__(len(self.geometry.orders), probs, noise, seed, "visiting order")

    def _direction(self, observation: np.ndarray) -> np.ndarray:
        k = self.geometry.k
        visited = observation[4:4 + k] > 0.5
        for i in self.geometry.orders[self.mode]:
            if not visited[i]:
                return self.geometry.goals[i] - observation[:2]
        return -observation[:2]


def register_envs() -> None:
    """Register the environments with gymnasium (once; later calls do nothing)."""
    entries = {
        ENV_IDS["obstacle"]: ("cvae_bc.envs:ObstacleFieldEnv", {"rows": 1}),
        ENV_IDS["obstacle_many"]: ("cvae_bc.envs:ObstacleFieldEnv", {"rows": 3}),
        ENV_IDS["multigoal"]: ("cvae_bc.envs:MultiGoalEnv", {"goals": 3}),
    }
    for env_id, (entry, kwargs) in entries.items():
        if env_id not in gymnasium.registry:
            gymnasium.register(env_id, entry_point=entry, kwargs=kwargs)
