"""The conv architecture: shapes for any image size, the lecture's parameter count, conditions reaching
both networks, clear errors, and a tiny run through the registry and the trainer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cvae import CVAEError, TargetInfo
from cvae.convnets import build_conv, feature_sizes


def _build(shape, cond=0, latent=8, ppe=1, **options):
    return build_conv(target=TargetInfo(shape), cond_features=cond, latent_dim=latent, params_per_element=ppe, **options)


SMALL = {"channels": [4, 8, 8], "fc": 32}


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32), (3, 64, 64), (3, 7, 13), (2, 1, 1)])
@pytest.mark.parametrize("ppe", [1, 3])
def test_output_shapes_for_any_image_size(shape, ppe):
    encoder, decoder = _build(shape, cond=5, ppe=ppe, **SMALL)
    y, h = torch.rand(3, *shape), torch.randn(3, 5)
    mu, logvar = encoder(y, h)
    assert mu.shape == logvar.shape == (3, 8)
    assert decoder(mu, h).shape == (3, ppe, *shape)


def test_feature_sizes_and_exact_inverse():
    assert feature_sizes(64, [5, 3, 3], [2, 2, 2]) == [64, 32, 16, 8]
    assert feature_sizes(28, [5, 3, 3], [2, 2, 2]) == [28, 14, 7, 4]
    # every transposed convolution restores its encoder size, odd sizes included
    _, decoder = _build((1, 28, 28), **SMALL)
    x = decoder.fc(torch.zeros(1, 8)).view(1, *decoder.map_shape)
    sizes = [tuple(x.shape[-2:])]
    for layer in decoder.deconvs:
        x = layer(x)
        if isinstance(layer, nn.ConvTranspose2d):
            sizes.append(tuple(x.shape[-2:]))
    assert sizes == [(4, 4), (7, 7), (14, 14), (28, 28)]


def test_the_lecture_model():
    """64x64x3, z 256, one parameter per element: about 17.8M parameters, 94% in the two FC layers."""
    encoder, decoder = _build((3, 64, 64), latent=256)
    convs = [m for m in encoder.convs if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [(32, 5, 2), (64, 3, 2), (128, 3, 2)]
    assert encoder.fc[0].out_features == 1024 and encoder.fc[0].in_features == 128 * 8 * 8
    assert decoder.fc[0].out_features == 1024 and decoder.map_shape == (128, 8, 8)
    assert len([m for m in decoder.deconvs if isinstance(m, nn.ConvTranspose2d)]) == 3
    total = sum(p.numel() for m in (encoder, decoder) for p in m.parameters())
    assert 17.7e6 < total < 17.85e6
    fc = encoder.fc[0].weight.numel() + decoder.fc[2].weight.numel()
    assert 0.93 < fc / total < 0.95


@pytest.mark.parametrize("condition_input", ["flat", "maps"])
def test_conditions_reach_encoder_and_decoder(condition_input):
    encoder, decoder = _build((1, 8, 8), cond=4, condition_input=condition_input, **SMALL)
    y, z = torch.rand(2, 1, 8, 8), torch.randn(2, 8)
    h1, h2 = torch.zeros(2, 4), torch.ones(2, 4)
    assert not torch.allclose(encoder(y, h1)[0], encoder(y, h2)[0])
    assert not torch.allclose(decoder(z, h1), decoder(z, h2))
    if condition_input == "maps":
        assert encoder.convs[0].in_channels == 1 + 4


def test_decoder_maps_reach_every_transposed_convolution():
    """With decoder_maps the condition acts at each scale: with its columns in the FC layer zeroed the
    output still depends on it, and with the map channels zeroed too it no longer does."""
    _, decoder = _build((1, 8, 8), cond=4, decoder_maps=True, **SMALL)
    deconvs = [m for m in decoder.deconvs if isinstance(m, nn.ConvTranspose2d)]
    assert [d.in_channels for d in deconvs] == [8 + 4, 8 + 4, 4 + 4]
    with torch.no_grad():
        decoder.fc[0].weight[:, 8:] = 0  # the FC layer no longer sees the condition
    z, h1, h2 = torch.randn(2, 8), torch.zeros(2, 4), torch.ones(2, 4)
    assert not torch.allclose(decoder(z, h1), decoder(z, h2))
    with torch.no_grad():
        for d in deconvs:
            d.weight[d.in_channels - 4:] = 0
    assert torch.allclose(decoder(z, h1), decoder(z, h2))
    # without conditions there is nothing to tile
    _, plain = _build((1, 8, 8), cond=0, decoder_maps=True, **SMALL)
    assert [m.in_channels for m in plain.deconvs if isinstance(m, nn.ConvTranspose2d)] == [8, 8, 4]


def test_unconditional_and_gradients():
    encoder, decoder = _build((3, 16, 16), cond=0, **SMALL)
    y, h = torch.rand(2, 3, 16, 16), torch.zeros(2, 0)
    mu, logvar = encoder(y, h)
    decoder(mu + logvar.exp(), h).sum().backward()
    assert all(p.grad is not None for m in (encoder, decoder) for p in m.parameters())


def test_kernels_default_to_the_lecture_pattern_for_other_depths():
    encoder, _ = _build((1, 32, 32), channels=[4, 4, 4, 4], fc=8)
    convs = [m for m in encoder.convs if isinstance(m, nn.Conv2d)]
    assert [c.kernel_size[0] for c in convs] == [5, 3, 3, 3]


@pytest.mark.parametrize("shape, options, words", [
    ((16,), {}, "image targets"),
    ((1, 8, 8), {"channels": [4, 8], "kernels": [3]}, "one entry per layer"),
    ((1, 8, 8), {"channels": []}, "at least one"),
    ((1, 8, 8), {"fc": 0}, ">= 1"),
    ((1, 8, 8), {"activation": "swish"}, "unknown activation"),
    ((1, 8, 8), {"condition_input": "both"}, "condition_input"),
    ((1, 8, 8), {"decoder_maps": "yes"}, "decoder_maps must be true or false"),
    ((1, 1, 1), {"channels": [4], "kernels": [4]}, "odd kernel"),
    ((1, 4096, 4096), {"channels": [4], "kernels": [3], "strides": [1]}, "add stride-2 layers"),
])
def test_clear_errors(shape, options, words):
    with pytest.raises(CVAEError, match=words):
        _build(shape, **options)


def test_conv_trains_through_the_registry(tiny_config, tmp_path):
    """The tiny 1x4x4 dataset, architecture chosen by name, trained, evaluated and saved."""
    from cvae.runs import load_run
    from cvae.train import Trainer

    cfg = tiny_config('model.architecture="conv"', "model.architecture_options={channels = [4, 8], fc = 16}")
    metrics = Trainer(cfg, tmp_path / "run").fit()
    assert metrics["test_elbo"] == metrics["test_elbo"]
    run = load_run(tmp_path / "run", "cpu")
    assert run.model.sample({"label": torch.tensor([0, 1])}).shape == (2, 1, 4, 4)
