"""The pose warp of the conv architecture: identity at a zero pose, turns and shifts where the pose
says, a decoder that cannot see the pose, clear errors, and a run through the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cvae import CVAEError, TargetInfo
from cvae.convnets import build_conv
from cvae.pose_warp import ANGLE_SCALE, POSE_DIMS, SHIFT_BOUND, SHIFT_SCALE, PoseWarp, pose_matrices


class Fixed(nn.Module):
    """A 'decoder' that always draws the same canonical image: a bright 4x4 block right of the centre."""

    def __init__(self, size: int = 32) -> None:
        super().__init__()
        self.image = torch.zeros(1, 1, 1, size, size)
        self.image[..., 14:18, 22:26] = 1.0

    def forward(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.image.expand(len(z), -1, -1, -1, -1)


def _block_centre(image: torch.Tensor) -> tuple[float, float]:
    rows, cols = (image > 0.5).nonzero(as_tuple=True)
    return rows.float().mean().item(), cols.float().mean().item()


def _pose(angle: float = 0.0, shift_x: float = 0.0, shift_y: float = 0.0) -> torch.Tensor:
    """A latent of 8 dimensions whose pose is this angle (radians) and shift (half-widths)."""
    z = torch.zeros(1, 8)
    z[0, 0] = angle / ANGLE_SCALE
    z[0, 1:3] = torch.atanh(torch.tensor([shift_x, shift_y]) / SHIFT_BOUND) / SHIFT_SCALE
    return z


def test_a_zero_pose_leaves_the_drawing_as_it_is():
    warp = PoseWarp(Fixed())
    out = warp(torch.zeros(3, 8), torch.zeros(3, 0))
    assert torch.allclose(out, Fixed().image.expand(3, -1, -1, -1, -1), atol=1e-6)


@pytest.mark.parametrize("angle, expected", [(math.pi / 2, (23.5, 15.5)), (math.pi, (15.5, 7.5)),
                                             (-math.pi / 2, (7.5, 15.5))])
def test_the_angle_turns_the_drawing_about_the_centre(angle, expected):
    """The block 8 pixels right of the centre (row 15.5, column 23.5) goes round the centre, a quarter
    turn at a time (rows grow downwards)."""
    out = PoseWarp(Fixed())(_pose(angle), torch.zeros(1, 0))[0, 0, 0]
    assert _block_centre(out) == pytest.approx(expected, abs=0.01)


def test_the_shift_moves_the_drawing_by_half_widths():
    out = PoseWarp(Fixed())(_pose(shift_x=-0.25, shift_y=0.5), torch.zeros(1, 0))[0, 0, 0]
    assert _block_centre(out) == pytest.approx((15.5 + 8, 23.5 - 4), abs=0.01)


def test_shifts_stay_inside_the_frame():
    """However far the latent goes, the drawing moves at most SHIFT_BOUND half-widths along each axis."""
    z = torch.tensor([[0.0, 1e6, -1e6], [0.0, 3.0, 0.0]])
    shifts = -pose_matrices(z)[:, :, 2]  # at angle 0 the matrix reads the drawing at q - shift
    assert shifts[0].tolist() == pytest.approx([SHIFT_BOUND, -SHIFT_BOUND])
    assert 0 < shifts[1, 0] < SHIFT_BOUND


def test_the_conv_decoder_never_sees_the_pose():
    """With pose_warp the decoder's layers take the latent without its pose dimensions: the encoder still
    gives the whole latent, and the warp hands its layers the rest of it."""
    encoder, decoder = build_conv(target=TargetInfo((3, 16, 16)), cond_features=2, latent_dim=8, params_per_element=1,
                                  channels=[4, 8], fc=16, pose_warp=True)
    assert isinstance(decoder, PoseWarp)
    assert decoder.decoder.fc[0].in_features == 8 - POSE_DIMS + 2
    assert encoder.mu.out_features == 8
    seen = []
    decoder.decoder.register_forward_hook(lambda module, inputs, output: seen.append(inputs))
    z, h = torch.randn(4, 8), torch.randn(4, 2)
    assert decoder(z, h).shape == (4, 1, 3, 16, 16)
    (drawn_from, conditions), = seen
    assert torch.equal(drawn_from, z[:, POSE_DIMS:]) and torch.equal(conditions, h)


@pytest.mark.parametrize("options, latent, words", [
    ({"pose_warp": "yes"}, 8, "pose_warp must be true or false"),
    ({"pose_warp": True}, POSE_DIMS, "latent_dim must be above 3"),
])
def test_clear_errors(options, latent, words):
    with pytest.raises(CVAEError, match=words):
        build_conv(target=TargetInfo((1, 8, 8)), cond_features=0, latent_dim=latent, params_per_element=1, **options)


def test_pose_warp_trains_through_the_registry(tiny_config, tmp_path):
    """The tiny dataset with the warp chosen by option: trained under bfloat16 autocast, evaluated, reloaded
    and sampled."""
    from cvae.runs import load_run
    from cvae.train import Trainer

    cfg = tiny_config('model.architecture="conv"', 'train.precision="bfloat16"',
                      "model.architecture_options={channels = [4, 8], fc = 16, pose_warp = true}")
    metrics = Trainer(cfg, tmp_path / "run").fit()
    assert math.isfinite(metrics["test_elbo"])
    run = load_run(tmp_path / "run", "cpu")
    assert isinstance(run.model.decoder, PoseWarp)
    assert run.model.sample({"label": torch.tensor([0, 1])}).shape == (2, 1, 4, 4)


def test_the_shipped_shapes_pose_config_trains_with_the_warp(tmp_path):
    """plugins/cvae_images/configs/shapes_pose.toml as the README runs it, cut to one step of 64 shapes."""
    from pathlib import Path

    from cvae import config as config_mod
    from cvae.runs import load_run
    from cvae.train import Trainer

    path = Path(__file__).resolve().parents[1] / "plugins" / "cvae_images" / "configs" / "shapes_pose.toml"
    cfg = config_mod.load_config(path, ["data.options={n_train=64, n_test=8}", "train.epochs=1", "eval.at_end=false",
                                        "fit_prior.after_training=false", "train.progress=false"])
    assert cfg["model"]["architecture_options"]["pose_warp"] is True and cfg["train"]["lr_warmup"] > 0
    Trainer(cfg, tmp_path / "run").fit()
    run = load_run(tmp_path / "run", "cpu")
    assert isinstance(run.model.decoder, PoseWarp)
    assert run.model.sample({"label": torch.arange(6)}).shape == (6, 3, 64, 64)
