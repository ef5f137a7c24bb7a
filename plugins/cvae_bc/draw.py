"""Small numpy drawing helpers: filled discs, rectangles and polylines on an RGB canvas in world
coordinates. Used by the environments' `render()` and by the rollout pictures."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Canvas", "mode_colour"]

# a qualitative palette (Tableau 10) for mode colours; failures are drawn in grey
_PALETTE = np.array([
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (188, 189, 34), (23, 190, 207), (127, 127, 127),
], dtype=np.uint8)


def mode_colour(mode: int) -> tuple[int, int, int]:
    """A colour per mode index; -1 (no expert mode) is light grey."""
    if mode < 0:
        return (170, 170, 170)
    return tuple(int(c) for c in _PALETTE[mode % (len(_PALETTE) - 1)])


class Canvas:
    """An RGB image over the world rectangle [x0, x1] x [y0, y1] (y points up); `height` defaults to
    the one that keeps the world's aspect ratio."""

    def __init__(self, bounds: Sequence[float], width: int = 256, background: tuple[int, int, int] = (255, 255, 255),
                 height: int | None = None) -> None:
        self.x0, self.x1, self.y0, self.y1 = (float(b) for b in bounds)
        self.width = int(width)
        self.height = int(height) if height else max(1, int(round(width * (self.y1 - self.y0) / (self.x1 - self.x0))))
        self.scale = self.width / (self.x1 - self.x0)
        self.scale_y = self.height / (self.y1 - self.y0)
        self.image = np.empty((self.height, self.width, 3), dtype=np.uint8)
        self.image[:] = background
        rows, cols = np.mgrid[0:self.height, 0:self.width]
        # world coordinates of every pixel centre
        self._wx = self.x0 + (cols + 0.5) / self.scale
        self._wy = self.y1 - (rows + 0.5) / self.scale_y

    def copy(self) -> Canvas:
        """A canvas with a copy of this one's picture (the pixel grid is shared: it never changes)."""
        out = Canvas.__new__(Canvas)
        out.__dict__.update(self.__dict__)
        out.image = self.image.copy()
        return out

    def disc(self, centre: Sequence[float], radius: float, colour: tuple[int, int, int]) -> None:
        mask = (self._wx - centre[0]) ** 2 + (self._wy - centre[1]) ** 2 <= radius**2
        self.image[mask] = colour

    def rect(self, x0: float, y0: float, x1: float, y1: float, colour: tuple[int, int, int]) -> None:
        mask = (self._wx >= x0) & (self._wx <= x1) & (self._wy >= y0) & (self._wy <= y1)
        self.image[mask] = colour

    def polyline(self, points: np.ndarray, colour: tuple[int, int, int], thickness: int = 1) -> None:
        """Connect world points (n, 2) with lines of about `thickness` pixels."""
        pts = np.asarray(points, dtype=np.float64)
        if len(pts) == 0:
            return
        if len(pts) == 1:
            pts = np.repeat(pts, 2, axis=0)
        seg = np.diff(pts, axis=0)
        steps = np.maximum(1, np.ceil(np.abs(seg).max(1) * max(self.scale, self.scale_y) * 2)).astype(int)
        t = np.concatenate([np.linspace(0, 1, s, endpoint=False) for s in steps] + [np.ones(1)])
        idx = np.concatenate([np.full(s, i) for i, s in enumerate(steps)] + [np.array([len(seg) - 1])])
        xy = pts[idx] + seg[idx] * t[:, None]
        cols = ((xy[:, 0] - self.x0) * self.scale).astype(int)
        rows = ((self.y1 - xy[:, 1]) * self.scale_y).astype(int)
        half = max(0, thickness // 2)
        for dr in range(-half, thickness - half):
            for dc in range(-half, thickness - half):
                r, c = rows + dr, cols + dc
                ok = (r >= 0) & (r < self.height) & (c >= 0) & (c < self.width)
                self.image[r[ok], c[ok]] = colour
