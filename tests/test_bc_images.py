"""Behaviour cloning from image observations: the environments' obs="image" mode, the `pixels`
condition encoder, and collect -> train -> eval on pictures."""

from __future__ import annotations

import json

import gymnasium
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import cvae
import cvae.cli
import cvae_bc
from cvae_bc.envs import ENV_IDS

WIDTH = 24  # small pictures keep these tests fast


@pytest.fixture(autouse=True)
def _plugins(fresh_plugins):
    """Every test sees all installed plugins, whatever another test left behind."""


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """Image demonstrations and an MSE head and a CVAE (learned prior) trained on them for one epoch."""
    root = tmp_path_factory.mktemp("bc_images")
    cvae.plugins.reset()
    try:
        demos, _ = cvae_bc.collect("obstacle2", 8, seed=2, env_kwargs={"obs": "image", "image_width": WIDTH})
        path = cvae_bc.save_demos(demos, root / "demos.npz")
        cvae_bc.train_policies(path, root / "run", policies=["mse", "cvae_learned"], chunk=2, epochs=1,
                               log=lambda s: None)
    finally:
        cvae.plugins.reset()
    return root


@pytest.mark.parametrize("env_id", sorted(ENV_IDS.values()))
def test_image_observations_pass_the_gymnasium_checker(env_id):
    env = gymnasium.make(env_id, obs="image", image_width=WIDTH)
    check_env(env.unwrapped)
    obs, info = env.reset(seed=0)
    assert obs.dtype == np.uint8 and obs.shape == env.observation_space.shape and obs.shape[1:] == (WIDTH, 3)
    assert info["state"].shape == env.unwrapped.state_space.shape  # the experts read the state from info
    moved, *_ = env.step(np.array([0.3, 0.3], dtype=np.float32))  # 0.02 world units: below one pixel
    assert not np.array_equal(obs, moved)  # drawn larger and averaged down, a small move still shows


def test_bad_observation_options_are_clear_errors():
    with pytest.raises(cvae.CVAEError, match="obs must be one of vector, image"):
        cvae_bc.ObstacleFieldEnv(obs="pixels")
    with pytest.raises(cvae.CVAEError, match="image_width"):
        cvae_bc.MultiGoalEnv(obs="image", image_width=4)


@pytest.mark.parametrize("shape, channels", [((29, 48, 3), (16, 32, 32)), ((8, 8, 1), (4,)), ((17, 11, 4), (8, 8))])
def test_pixel_encoder_gives_its_features_for_any_image_size(shape, channels):
    encoder = cvae_bc.PixelEncoder(cvae.ConditionInfo("pixels", shape=shape), channels=channels, dim=10)
    images = torch.randint(0, 256, (5, *shape), dtype=torch.uint8)
    out = encoder(images)
    assert out.shape == (5, 10) and encoder.out_features == 10 and torch.isfinite(out).all()
    torch.testing.assert_close(encoder(images.float()), out)  # uint8 or floats on the 0..255 scale
    with pytest.raises(cvae.CVAEError, match="takes images of shape"):
        encoder(images[:, :-1])


def test_pixel_encoder_needs_an_image_condition():
    with pytest.raises(cvae.CVAEError, match="needs image observations"):
        cvae_bc.PixelEncoder(cvae.ConditionInfo("pixels", shape=(4,)))
    with pytest.raises(cvae.CVAEError, match="one channel width"):
        cvae_bc.PixelEncoder(cvae.ConditionInfo("pixels", shape=(8, 8, 3)), channels=(8, 8), kernels=(3,))
    spec = cvae.get_registry().get("condition", "pixels")
    assert spec.plugin == "bc"


def test_image_demonstrations_round_trip_and_make_a_pixels_dataset(image_run):
    demos = cvae_bc.load_demos(image_run / "demos.npz")
    assert demos.observations.dtype == np.uint8 and demos.observations.shape[1:] == (14, WIDTH, 3)
    assert demos.env_kwargs == {"obs": "image", "image_width": WIDTH}
    bundle = cvae_bc.load_bc_dataset(str(image_run / "demos.npz"), chunk=2)
    assert bundle.conditions["obs"].encoder == "pixels" and bundle.conditions["obs"].shape == (14, WIDTH, 3)
    conds, _ = bundle.train[0]
    assert conds["obs"].dtype == torch.uint8


def test_image_demonstrations_of_the_wrong_size_or_range_are_clear_errors(tmp_path):
    base = dict(actions=np.zeros((3, 2)), episode_starts=[0], env_id=np.array(ENV_IDS["obstacle"]),
                env_kwargs=np.array(json.dumps({"obs": "image", "image_width": WIDTH})))
    np.savez(tmp_path / "size.npz", observations=np.zeros((3, 10, WIDTH, 3), dtype=np.uint8), **base)
    with pytest.raises(cvae.CVAEError, match="do not match"):
        cvae_bc.load_demos(tmp_path / "size.npz")
    np.savez(tmp_path / "range.npz", observations=np.full((3, 14, WIDTH, 3), 300.0), **base)
    with pytest.raises(cvae.CVAEError, match="0..255"):
        cvae_bc.load_demos(tmp_path / "range.npz")


def test_an_image_policy_acts_in_a_plain_gymnasium_loop(image_run):
    policy = cvae_bc.load_policy(image_run / "run", "cvae_learned", z="episode", seed=0)
    assert policy.env_kwargs == {"obs": "image", "image_width": WIDTH}
    env = gymnasium.make("cvae/ObstacleField-v0", **policy.env_kwargs)
    obs, info = env.reset(seed=0)
    policy.reset()
    for _ in range(200):
        action = policy.act(obs)
        assert action.shape == (2,) and env.action_space.contains(action)
        obs, _, terminated, truncated, info = env.step(action)
        if terminated or truncated:
            break
    assert terminated or truncated
    assert cvae_bc.load_policy(image_run / "run", "mse").act(np.stack([obs, obs])).shape == (2, 2)


def test_an_image_policy_given_vectors_or_another_size_says_what_it_needs(image_run, tmp_path):
    policy = cvae_bc.load_policy(image_run / "run", "cvae_learned")
    with pytest.raises(cvae.CVAEError, match=r"takes images .*got shape \(4,\).*obs='image', image_width=24"):
        policy.act(np.zeros(4, dtype=np.float32))
    with pytest.raises(cvae.CVAEError, match=r"observations must be \(14, 24, 3\).*got shape \(29, 48, 3\)"):
        policy.act(np.zeros((29, 48, 3), dtype=np.uint8))
    demos, _ = cvae_bc.collect("obstacle2", 3, seed=0)
    cvae_bc.train_policies(cvae_bc.save_demos(demos, tmp_path / "v.npz"), tmp_path / "run", policies=["mse"],
                           chunk=2, epochs=1, log=lambda s: None)
    with pytest.raises(cvae.CVAEError, match="trained on vector observations"):
        cvae_bc.load_policy(tmp_path / "run", "mse").act(np.zeros((14, WIDTH, 3), dtype=np.uint8))


def test_collect_train_eval_on_images_from_the_command_line(tmp_path, capsys):
    demos, run = tmp_path / "d.npz", tmp_path / "run"
    assert cvae.cli.main(["bc", "collect", "obstacle2", "--episodes", "6", "--obs", "image", "--image-width",
                          str(WIDTH), "--out", str(demos)]) == 0
    assert cvae.cli.main(["bc", "train", str(demos), "--out", str(run), "--policies", "mse,cvae_mixture",
                          "--epochs", "1", "--chunk", "2"]) == 0
    capsys.readouterr()
    assert cvae.cli.main(["bc", "eval", str(run), "--json", "--episodes", "4", "--seeds", "0",
                          "--policies", "mse,cvae_mixture/episode"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["policies"]) == ["expert", "mse", "cvae_mixture/episode"]
    assert result["policies"]["expert"]["success_rate"] == 1.0  # the expert reads the state from info
    assert json.loads((run / "bc.json").read_text())["obs_shape"] == [14, WIDTH, 3]
