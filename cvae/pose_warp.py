"""A decoder that draws in a canonical pose, and a warp that turns and moves the drawing.

Rotated shapes are hard for a decoder of fully connected and transposed-convolution layers: it learns
each rotation as a drawing of its own, and a latent point between two rotations decodes to a blend of
both, so samples come out blunt. With `PoseWarp` the first POSE_DIMS latent dimensions are a pose:
an angle and a shift. The wrapped decoder never sees them; it draws from the other dimensions, and
the warp (an affine grid, bilinear sampling) turns its output by the angle about the image centre and
moves it by the shift. Turning a drawing is then geometry rather than something to learn per angle, and
a latent point between two poses decodes to an intermediate pose (as in spatial VAEs, Bepler et al. 2019).

Scales (why): z_0 * ANGLE_SCALE radians, so a prior of unit width starts near the identity and a turn
of pi costs a few units; the shift is SHIFT_BOUND * tanh(z_i * SHIFT_SCALE) image half-widths, bounded
so that the drawing's centre stays inside the frame (moving the drawing out would let an early decoder
win by showing only the background), and near the identity at the start as well.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PoseWarp", "POSE_DIMS", "pose_matrices"]

POSE_DIMS = 3  # angle, shift along x, shift along y
ANGLE_SCALE = 0.3  # radians per latent unit
SHIFT_SCALE = 0.1
SHIFT_BOUND = 0.7  # image half-widths
PADDING = "border"  # beyond the drawing's edges the warp repeats its edge pixels (the background)


def pose_matrices(pose: torch.Tensor) -> torch.Tensor:
    """(batch, 2, 3) affine matrices for `F.affine_grid` from latent poses (batch, POSE_DIMS): output
    point q (in [-1, 1] coordinates) reads the canonical drawing at R(-angle) (q - shift)."""
    angle = ANGLE_SCALE * pose[:, 0]
    shift = SHIFT_BOUND * torch.tanh(SHIFT_SCALE * pose[:, 1:3])
    cos, sin = angle.cos(), angle.sin()
    tx, ty = shift[:, 0], shift[:, 1]
    return torch.stack([torch.stack([cos, sin, -(cos * tx + sin * ty)], 1),
                        torch.stack([-sin, cos, sin * tx - cos * ty], 1)], 1)


class PoseWarp(nn.Module):
    """Wraps a decoder of image parameters (batch, params_per_element, C, H, W) for latents of
    POSE_DIMS fewer dimensions: it takes the full z, hands the decoder z[:, POSE_DIMS:] and warps every
    output map by the pose in z[:, :POSE_DIMS]."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        canonical = self.decoder(z[:, POSE_DIMS:], h)
        b, p, c, height, width = canonical.shape
        maps = canonical.reshape(b, p * c, height, width).float()  # grid sampling in float32, also under autocast
        grid = F.affine_grid(pose_matrices(z[:, :POSE_DIMS].float()), [b, p * c, height, width], align_corners=False)
        warped = F.grid_sample(maps, grid, mode="bilinear", padding_mode=PADDING, align_corners=False)
        return warped.view(b, p, c, height, width)
