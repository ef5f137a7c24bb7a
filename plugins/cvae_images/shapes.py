"""A procedurally generated RGB shapes dataset (offline, deterministic): one filled shape per image, of
a class from SHAPE_NAMES, with random colour, size, position and rotation on a random dark background.

Each image is rendered at 4x4 sub-pixels per pixel and averaged (anti-aliased edges), then quantised to
8 bits. The same `seed` gives the same images on every machine; train and test come from separate
streams of it, so changing `n_train` does not change the test split.
"""

from __future__ import annotations

import math

import torch

import cvae

from .data import ByteImages, byte_target

__all__ = ["SHAPE_NAMES", "render_shapes", "load_shapes"]

SHAPE_NAMES = ("circle", "square", "triangle", "cross", "ring", "star")
SUPERSAMPLE = 4
CHUNK = 128  # images rendered at once (memory: CHUNK * (size * SUPERSAMPLE)^2 floats per intermediate)


def _polygon(*points: tuple[float, float]) -> torch.Tensor:
    return torch.tensor(points, dtype=torch.float32)


def _regular(n: int, radius: float, phase: float = math.pi / 2) -> list[tuple[float, float]]:
    return [(radius * math.cos(phase + 2 * math.pi * i / n), radius * math.sin(phase + 2 * math.pi * i / n))
            for i in range(n)]


# the star's outline in its own frame (unit circumradius); the other shapes are tested in closed form
_STAR = _polygon(*[p for outer, inner in zip(_regular(5, 1.0), _regular(5, 0.42, math.pi / 2 + math.pi / 5))
                   for p in (outer, inner)])


def _inside_polygon(u: torch.Tensor, v: torch.Tensor, poly: torch.Tensor) -> torch.Tensor:
    """Even-odd rule: is each point (u, v) inside the closed polygon `poly` (k, 2)?"""
    inside = torch.zeros_like(u, dtype=torch.bool)
    for (x1, y1), (x2, y2) in zip(poly.tolist(), poly.roll(-1, 0).tolist()):
        if y1 == y2:
            continue
        crosses = ((y1 > v) != (y2 > v)) & (u < (x2 - x1) * (v - y1) / (y2 - y1) + x1)
        inside ^= crosses
    return inside


def _inside(shape: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    name = SHAPE_NAMES[shape]
    if name in ("circle", "ring"):
        r2 = u * u + v * v
        return r2 <= 0.9**2 if name == "circle" else (r2 <= 0.95**2) & (r2 >= 0.55**2)
    au, av = u.abs(), v.abs()
    if name == "square":
        return torch.maximum(au, av) <= 0.75
    if name == "cross":
        return (torch.maximum(au, av) <= 1) & (torch.minimum(au, av) <= 0.3)
    if name == "triangle":  # three half-planes of the triangle with circumradius 1, apex up
        return (v >= -0.5) & (v <= 1 - math.sqrt(3) * au)
    return _inside_polygon(u, v, _STAR)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(n,) hue, saturation, value in [0, 1] -> (n, 3) RGB."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)
    return v[:, None] - v[:, None] * s[:, None] * (torch.minimum(k, 4 - k).clamp(0, 1))


def render_shapes(labels: torch.Tensor, params: torch.Tensor, size: int, rotate: bool = True) -> torch.Tensor:
    """Render one shape per row: `labels` (n,) class indices, `params` (n, 9) uniform numbers in [0, 1)
    for radius, centre x, centre y, rotation, hue, saturation, value and two background levels; with
    `rotate=False` every shape stands upright. Returns uint8 images (n, 3, size, size)."""
    n = len(labels)
    fine = size * SUPERSAMPLE
    coords = (torch.arange(fine, dtype=torch.float32) + 0.5) / fine * 2 - 1  # [-1, 1], sub-pixel centres
    gy, gx = torch.meshgrid(coords, coords, indexing="ij")
    out = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for start in range(0, n, CHUNK):
        p = params[start:start + CHUNK]
        lab = labels[start:start + CHUNK]
        radius = 0.35 + 0.4 * p[:, 0]  # 0.35..0.75 of the half-width
        cx = (2 * p[:, 1] - 1) * (1 - radius)  # the shape stays inside the frame
        cy = (2 * p[:, 2] - 1) * (1 - radius)
        angle = 2 * math.pi * p[:, 3] if rotate else torch.zeros(len(p))
        cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
        dx, dy = gx - cx[:, None, None], gy - cy[:, None, None]
        r = radius[:, None, None]
        u, v = (dx * cos + dy * sin) / r, (-dx * sin + dy * cos) / r
        mask = torch.zeros(len(p), fine, fine, dtype=torch.bool)
        for c in lab.unique().tolist():
            rows = (lab == c).nonzero().flatten()
            mask[rows] = _inside(c, u[rows], v[rows])
        cover = mask.float().view(len(p), size, SUPERSAMPLE, size, SUPERSAMPLE).mean((2, 4))
        colour = _hsv_to_rgb(p[:, 4], 0.6 + 0.4 * p[:, 5], 0.75 + 0.25 * p[:, 6])
        background = 0.25 * p[:, 7:8] * torch.tensor([1.0, 1.0, 1.0]) + 0.05 * (p[:, 8:9] - 0.5)
        background = background.clamp(0, 1)
        img = background[:, :, None, None] + (colour - background)[:, :, None, None] * cover[:, None]
        out[start:start + CHUNK] = (img * 255).round().clamp(0, 255).to(torch.uint8)
    return out


def _make(n: int, seed: int, size: int, rotate: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    k = len(SHAPE_NAMES)
    labels = (torch.arange(n) % k)[torch.randperm(n, generator=g)]  # balanced classes
    params = torch.rand(n, 9, generator=g)
    return render_shapes(labels, params, size, rotate), labels


def load_shapes(*, n_train: int = 6000, n_test: int = 600, size: int = 64, seed: int = 0,
                rotate: bool = True) -> cvae.DataBundle:
    """`n_train` and `n_test` RGB images of `size` x `size` pixels (8 bits per channel) with condition
    "label" (one of SHAPE_NAMES, classes balanced), generated from `seed`. `rotate=False` stands every
    shape upright (the same images otherwise): a control for how much the rotation costs a model."""
    if int(n_train) < 1 or int(n_test) < 1:
        raise cvae.CVAEError(f"dataset 'shapes': n_train and n_test must be >= 1, got {n_train} and {n_test}")
    if int(size) < 4:
        raise cvae.CVAEError(f"dataset 'shapes': size must be >= 4 pixels, got {size}")
    if not isinstance(rotate, bool):
        raise cvae.CVAEError(f"dataset 'shapes': rotate must be true or false, got {rotate!r}")
    size = int(size)
    info = {"label": cvae.ConditionInfo("label", (), len(SHAPE_NAMES), SHAPE_NAMES)}
    splits = []
    for part, n, stream in (("train", int(n_train), 0), ("test", int(n_test), 1)):
        pixels, labels = _make(n, 2 * int(seed) + stream, size, rotate)
        splits.append(ByteImages(pixels, {"label": labels}, info, name=f"shapes/{part}"))
    return cvae.DataBundle("shapes", byte_target((3, size, size)), info, *splits)
