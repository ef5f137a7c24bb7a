"""Behaviour cloning (plugins/cvae_bc): environments, experts, demonstrations, policies, evaluation, CLI."""

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
from cvae_bc.envs import ENV_IDS, route_bits
from cvae_bc.evaluate import ExpertBatch, resolve_env, rollout, summarise

ENV_NAMES = ["obstacle2", "obstacle2_70_30", "obstacle8", "multigoal"]


@pytest.fixture(autouse=True)
def _plugins(fresh_plugins):
    """Every test sees all installed plugins, whatever another test left behind."""


@pytest.fixture(scope="module")
def demos_file(tmp_path_factory):
    demos, _ = cvae_bc.collect("obstacle2", 12, seed=3)
    return cvae_bc.save_demos(demos, tmp_path_factory.mktemp("bc") / "demos.npz")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, demos_file):
    """One CVAE policy (learned prior) and the MSE head, trained for two epochs."""
    out = tmp_path_factory.mktemp("bc") / "run"
    cvae.plugins.reset()
    try:
        cvae_bc.train_policies(demos_file, out, policies=["mse", "cvae_learned"], chunk=3, epochs=2, log=lambda s: None)
    finally:
        cvae.plugins.reset()
    return out


# -- environments and experts -------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", sorted(ENV_IDS.values()))
def test_environments_pass_the_gymnasium_checker_and_render(env_id):
    env = gymnasium.make(env_id, render_mode="rgb_array")
    check_env(env.unwrapped, skip_render_check=False)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3


def test_the_registry_lists_every_environment_with_its_gymnasium_id():
    specs = {s.name: s for s in cvae.get_registry().specs("environment")}
    assert set(ENV_NAMES) <= set(specs)
    for name in ENV_NAMES:
        assert specs[name].env_id in gymnasium.registry and specs[name].plugin == "bc"


@pytest.mark.parametrize("name", ENV_NAMES)
def test_the_expert_reaches_the_goal_and_its_label_is_the_route_taken(name):
    spec = resolve_env(name)
    env = gymnasium.make(spec.env_id)
    expert = spec.build(seed=1)
    for episode in range(12):
        obs, info = env.reset(seed=episode)
        while True:
            obs, _, terminated, truncated, info = env.step(expert(obs, info))
            if terminated or truncated:
                break
        assert info["success"] and not info["collision"] and info["switches"] == 0
        assert info["mode"] == expert.mode


def test_expert_mode_frequencies_match_the_configured_probabilities():
    spec = resolve_env("obstacle2_70_30")
    records = rollout(ExpertBatch(lambda: spec.build()), spec.env_id, 400, [0, 1])
    left = np.mean([r["mode"] == 0 for r in records])
    assert all(r["success"] for r in records)
    assert abs(left - 0.7) < 0.06  # binomial standard error at n=400 is 0.023
    probs = [0.1, 0.0, 0.0, 0.2, 0.0, 0.3, 0.4, 0.0]
    many = resolve_env("obstacle8")
    records = rollout(ExpertBatch(lambda: many.build(options={"probs": probs})), many.env_id, 200, [0])
    counts = np.bincount([r["mode"] for r in records], minlength=8) / 200
    assert np.abs(counts - probs).max() < 0.1 and counts[[1, 2, 4, 7]].sum() == 0


def test_route_labels_follow_the_gaps_passed():
    env = gymnasium.make(ENV_IDS["obstacle_many"]).unwrapped
    assert env.mode_names()[0b011] == "LRR" and route_bits(0b011, 3) == [0, 1, 1]
    env.reset(seed=0)
    env.gaps = [0, 1, 2]
    assert env.route() == 0b011
    env.gaps = [0, 2, 2]  # jumping two gaps is no expert route
    assert env.route() == -1


def test_dithering_counts_as_mode_switches_and_hitting_the_obstacle_as_a_collision():
    env = gymnasium.make(ENV_IDS["obstacle"])
    obs, info = env.reset(seed=0)
    for t in range(60):  # left for 4 steps, right for 8, left for 8...: flips sides in front of the obstacle
        direction = -1.0 if (t + 4) % 16 < 8 else 1.0
        obs, _, terminated, truncated, info = env.step(np.array([direction, 0.1], dtype=np.float32))
        if terminated or truncated:
            break
    assert info["switches"] >= 2
    obs, info = env.reset(seed=0)
    while True:
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], dtype=np.float32))
        if terminated or truncated:
            break
    assert info["collision"] and not info["success"] and reward == -1.0 and info["mode"] == -1


def test_an_action_outside_the_action_space_is_a_clear_error():
    env = gymnasium.make(ENV_IDS["obstacle"]).unwrapped
    env.reset(seed=0)
    with pytest.raises(cvae.CVAEError, match="outside the action space"):
        env.step(np.array([1.5, 0.0], dtype=np.float32))
    with pytest.raises(cvae.CVAEError, match="not finite"):
        env.step(np.array([np.nan, 0.0], dtype=np.float32))


def test_bad_expert_options_and_unknown_environments_are_clear_errors():
    with pytest.raises(cvae.CVAEError, match="2 non-negative numbers"):
        resolve_env("obstacle2").build(options={"probs": [0.5, 0.3, 0.2]})
    with pytest.raises(cvae.UnknownComponentError, match="obstacle2"):
        cvae_bc.collect("obstacel2", 2)
    with pytest.raises(cvae.CVAEError, match="unknown environment id"):
        cvae_bc.make_env("cvae/NoSuchEnv-v0")


# -- demonstrations ------------------------------------------------------------------------------------------


def test_collect_and_load_round_trip(demos_file):
    demos = cvae_bc.load_demos(demos_file)
    again, summary = cvae_bc.collect("obstacle2", 12, seed=3)
    assert demos.n_episodes == 12 == summary["episodes"]
    np.testing.assert_array_equal(demos.observations, again.observations)
    np.testing.assert_array_equal(demos.actions, again.actions)
    np.testing.assert_array_equal(demos.episode_starts, again.episode_starts)
    np.testing.assert_array_equal(demos.modes, again.modes)
    assert demos.env_id == ENV_IDS["obstacle"] and demos.mode_names == ["L", "R"]
    np.testing.assert_allclose(demos.mode_probs, [0.5, 0.5])
    with np.load(demos_file) as f:
        assert {"observations", "actions", "episode_starts", "episode_ids", "modes"} <= set(f.files)


def test_user_demonstrations_with_episode_ids_only_load_the_same_way(tmp_path):
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(10, 3)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(10, 2)).astype(np.float32)
    ids = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.savez(tmp_path / "mine.npz", observations=obs, actions=act, episode_ids=ids)
    demos = cvae_bc.load_demos(tmp_path / "mine.npz")
    assert demos.episode_starts.tolist() == [0, 4, 7] and demos.modes.tolist() == [-1, -1, -1]
    bundle = cvae_bc.load_bc_dataset(str(tmp_path / "mine.npz"), chunk=2, test_fraction=0.34)
    assert bundle.target.shape == (2, 2) and bundle.conditions["obs"].shape == (3,)
    assert len(bundle.train) + len(bundle.test) == 10


def test_chunks_repeat_the_last_action_past_the_episode_end(demos_file):
    demos = cvae_bc.load_demos(demos_file)
    bundle = cvae.get_registry().get("dataset", "bc_demos").build(options={"path": str(demos_file), "chunk": 5})
    assert bundle.target.shape == (5, 2) and (bundle.target.low, bundle.target.high) == (-1.0, 1.0)
    assert bundle.conditions["obs"].encoder == "vector"
    from cvae_bc.demos import chunk_targets

    chunks = chunk_targets(demos, 5)
    end = demos.episode_ends[0] - 1
    np.testing.assert_array_equal(chunks[end], np.repeat(demos.actions[end][None], 5, axis=0))
    np.testing.assert_array_equal(chunks[0], demos.actions[:5])


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("problem, arrays, message", [
    ("mismatched lengths", dict(observations=np.zeros((5, 4)), actions=np.zeros((4, 2)), episode_starts=[0]),
     "5 observations but 4 actions"),
    ("mismatched lengths, as written with both boundaries", dict(
        observations=np.zeros((5, 4)), actions=np.zeros((4, 2)), episode_starts=[0], episode_ids=np.zeros(5)),
     "5 observations but 4 actions"),
    ("episode ids of other steps", dict(observations=np.zeros((5, 4)), actions=np.zeros((5, 2)), episode_ids=np.zeros(4)),
     "4 episode ids for 5 observations"),
    ("boundaries that disagree", dict(observations=np.zeros((5, 4)), actions=np.zeros((5, 2)), episode_starts=[0, 2],
                                      episode_ids=np.array([0, 0, 0, 1, 1])), "episode_ids and episode_starts disagree"),
    ("NaN observation", dict(observations=np.array([[0, 0, 0, np.nan]] * 3), actions=np.zeros((3, 2)), episode_starts=[0]),
     "NaN or infinite"),
    ("NaN action", dict(observations=np.zeros((3, 4)), actions=np.array([[0, np.inf]] * 3), episode_starts=[0]),
     "NaN or infinite"),
    ("no episodes", dict(observations=np.zeros((3, 4)), actions=np.zeros((3, 2))), "episode_starts"),
    ("bad starts", dict(observations=np.zeros((3, 4)), actions=np.zeros((3, 2)), episode_starts=[1, 2]),
     "episode_starts must begin at 0"),
    ("wrong shape for the env", dict(observations=np.zeros((3, 5)), actions=np.zeros((3, 2)), episode_starts=[0],
                                     env_id=np.array(ENV_IDS["obstacle"])), "do not match"),
    ("action outside the space", dict(observations=np.zeros((3, 4)), actions=np.full((3, 2), 1.5), episode_starts=[0],
                                      env_id=np.array(ENV_IDS["obstacle"])), "outside the action space"),
    ("an episode split in two", dict(observations=np.zeros((5, 4)), actions=np.zeros((5, 2)),
                                     episode_ids=np.array([0, 0, 1, 0, 2])),
     "episode id 0 comes back at step 3 after other episodes"),
    ("fractional starts", dict(observations=np.zeros((5, 4)), actions=np.zeros((5, 2)), episode_starts=[0.0, 2.5]),
     "episode_starts must be whole step indices"),
    ("an unknown environment id", dict(observations=np.zeros((3, 4)), actions=np.zeros((3, 2)), episode_starts=[0],
                                       env_id=np.array("cvae/ObstacleFeild-v0")),
     "unknown environment id 'cvae/ObstacleFeild-v0': did you mean 'cvae/ObstacleField-v0'.*remove env_id"),
])
def test_bad_demonstrations_raise_a_clear_error(tmp_path, problem, arrays, message):
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(cvae.CVAEError, match=message):
        cvae_bc.load_demos(path)


def test_a_file_that_is_not_npz_is_a_clear_error(tmp_path):
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(cvae.CVAEError, match="not a readable .npz file: it is neither a zip of arrays nor a .npy "
                                             r"array \(pickled objects are never loaded\)$"):
        cvae_bc.load_demos(tmp_path / "junk.npz")


def test_the_cli_exits_2_on_bad_input(tmp_path, capsys):
    assert cvae.cli.main(["bc", "collect", "no_such_env", "--episodes", "2", "--out", str(tmp_path / "d.npz")]) == 2
    assert "unknown environment" in capsys.readouterr().err
    bad = _write(tmp_path / "bad.npz", observations=np.zeros((5, 4)), actions=np.zeros((4, 2)), episode_starts=[0])
    assert cvae.cli.main(["bc", "train", str(bad), "--out", str(tmp_path / "run")]) == 2
    assert "5 observations but 4 actions" in capsys.readouterr().err
    assert cvae.cli.main(["bc", "benchmark", "--out", str(tmp_path / "bench"), "--envs", "obstacle2", "--demos", "0"]) == 2
    assert "--demos must be >= 1" in capsys.readouterr().err and not (tmp_path / "bench" / "obstacle2").exists()


def test_a_bad_override_stops_bc_train_before_any_policy_trains(tmp_path, demos_file, capsys):
    code = cvae.cli.main(["bc", "train", str(demos_file), "--out", str(tmp_path / "run"), "--set", "train.betaa=2"])
    captured = capsys.readouterr()
    assert code == 2 and "unknown config key 'train.betaa': did you mean 'train.beta'" in captured.err
    assert "training mse" not in captured.err + captured.out and not (tmp_path / "run").exists()


def test_cli_collect_writes_the_documented_file(tmp_path, capsys):
    out = tmp_path / "d.npz"
    assert cvae.cli.main(["bc", "collect", "obstacle2", "--episodes", "4", "--probs", "1,0", "--out", str(out)]) == 0
    assert "L 4, R 0" in capsys.readouterr().out
    demos = cvae_bc.load_demos(out)
    assert demos.modes.tolist() == [0, 0, 0, 0] and demos.mode_probs.tolist() == [1.0, 0.0]


# -- policies -------------------------------------------------------------------------------------------------


def test_a_tiny_run_trains_through_the_toolkit_and_resumes(tiny_run, demos_file):
    info = cvae_bc.policies.run_info(tiny_run)
    assert set(info["policies"]) == {"mse", "cvae_learned"} and info["chunk"] == 3
    assert (tiny_run / "cvae_learned" / "checkpoints").is_dir() and (tiny_run / "cvae_learned" / "metrics.jsonl").exists()
    assert cvae.load_run(tiny_run / "cvae_learned").epoch == 2
    with pytest.raises(cvae.CVAEError, match="--resume"):
        cvae_bc.train_policies(demos_file, tiny_run, policies=["mse"], chunk=3, epochs=2, log=lambda s: None)


def test_resume_continues_a_cvae_policy(tmp_path, demos_file):
    out = tmp_path / "run"
    cvae_bc.train_policies(demos_file, out, policies=["cvae_fixed"], chunk=2, epochs=1, log=lambda s: None)
    cvae_bc.train_policies(demos_file, out, policies=["cvae_fixed"], chunk=2, epochs=3, resume=True, log=lambda s: None)
    run = cvae.load_run(out / "cvae_fixed")
    assert run.epoch == 3 and run.config["model"]["prior"] == "standard"
    rows = [json.loads(line) for line in (out / "cvae_fixed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_policy_act_in_a_plain_gymnasium_loop(tiny_run):
    policy = cvae_bc.load_policy(tiny_run, "cvae_learned", z="episode", seed=0)
    env = gymnasium.make("cvae/ObstacleField-v0")
    for episode in range(2):
        obs, info = env.reset(seed=episode)
        policy.reset()
        for _ in range(200):
            action = policy.act(obs)
            assert action.shape == (2,) and env.action_space.contains(action)
            obs, reward, terminated, truncated, info = env.step(action)
            if terminated or truncated:
                break
        assert terminated or truncated
    with pytest.raises(cvae.CVAEError, match="observations must be"):
        policy.act(np.zeros(5, dtype=np.float32))
    mse = cvae_bc.load_policy(tiny_run, "mse")
    assert mse.act(np.zeros((3, 4), dtype=np.float32)).shape == (3, 2)


def test_z_rules_decide_when_the_noise_is_drawn_and_how_often_the_model_is_queried(tiny_run):
    calls = []

    def count(policy):
        head = policy.head
        original = head.predict
        calls.clear()

        def predict(obs, noise):
            calls.append(None if noise is None else noise.clone())
            return original(obs, noise)

        head.predict = predict
        return policy

    obs = np.zeros((2, 4), dtype=np.float32)
    for z, queries in [("step", 6), ("chunk", 2), ("episode", 6), ("zero", 6)]:
        policy = count(cvae_bc.load_policy(tiny_run, "cvae_learned", z=z, seed=0))
        policy.reset(2)
        for _ in range(6):
            policy.act(obs)
        assert len(calls) == queries, z
        if z == "episode":
            assert torch.equal(calls[0], calls[1])
        if z in ("step", "chunk"):
            assert not torch.equal(calls[0], calls[1])
        if z == "zero":
            assert calls[0] is None
    with pytest.raises(cvae.CVAEError, match="unknown z rule"):
        cvae_bc.load_policy(tiny_run, "cvae_learned", z="sometimes")


def test_eval_json_has_every_metric(tiny_run, capsys, tmp_path):
    png = tmp_path / "rollouts.png"
    code = cvae.cli.main(["bc", "eval", str(tiny_run), "--json", "--episodes", "6", "--seeds", "0,1,2",
                          "--policies", "mse,cvae_learned/step,cvae_learned/episode", "--png", str(png)])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result["policies"]) == ["expert", "mse", "cvae_learned/step", "cvae_learned/episode"]
    for r in result["policies"].values():
        assert {"success_rate", "collision_rate", "mode_counts", "mode_hist", "mode_entropy", "tv_to_expert",
                "mode_coverage", "switches_per_episode", "episodes", "seeds"} <= set(r)
        assert r["episodes"] == 6 and r["seeds"] == [0, 1, 2]
    assert result["policies"]["expert"]["success_rate"] == 1.0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tiny_run / "eval.json").read_text())["episodes"] == 6


def test_summary_metrics_on_known_histograms():
    names = ["L", "R"]
    records = [{"seed": 0, "mode": 0, "success": True, "collision": False, "switches": 0, "steps": 10}] * 7 + \
              [{"seed": 1, "mode": 1, "success": True, "collision": False, "switches": 1, "steps": 10}] * 3 + \
              [{"seed": 1, "mode": -1, "success": False, "collision": True, "switches": 2, "steps": 5}] * 2
    s = summarise(records, names, [0.5, 0.5])
    assert s["success_rate"] == pytest.approx(10 / 12) and s["collision_rate"] == pytest.approx(2 / 12)
    assert s["tv_to_expert"] == pytest.approx(0.2) and s["mode_coverage"] == 1.0 and s["no_mode"] == 2
    assert s["mode_entropy"] == pytest.approx(-(0.7 * np.log(0.7) + 0.3 * np.log(0.3)) / np.log(2))
    assert s["switches_per_episode"] == pytest.approx(7 / 12) and s["switch_rate"] == pytest.approx(5 / 12)
    collapsed = summarise(records[:7], names, [0.7, 0.3])
    assert collapsed["mode_entropy"] == 0 and collapsed["tv_to_expert"] == pytest.approx(0.3)
    assert collapsed["mode_coverage"] == 0.5


def test_the_mixture_policy_uses_the_core_mixture_prior_and_its_noise_fixes_z(tmp_path, demos_file):
    out = tmp_path / "run"
    cvae_bc.train_policies(demos_file, out, policies=["cvae_mixture"], chunk=2, epochs=1, log=lambda s: None)
    run = cvae.load_run(out / "cvae_mixture")
    assert run.config["model"]["prior"] == "mixture" and run.config["model"]["prior_options"]["components"] == 5
    assert type(run.model.prior) is cvae.priors.MixturePrior
    policy = cvae_bc.load_policy(out, "cvae_mixture", z="episode", seed=0)
    policy.reset(3)
    obs = np.zeros((3, 4), dtype=np.float32)
    first = policy.head.predict(torch.as_tensor(obs), policy._noise)
    torch.testing.assert_close(policy.head.predict(torch.as_tensor(obs), policy._noise), first)
    with pytest.raises(cvae.UnknownComponentError, match="mixture"):
        cvae.get_registry().get("prior", "learned_mixture")  # renamed: the core's prior replaces the plugin's


@pytest.mark.slow
def test_benchmark_targets_on_the_two_route_fields(tmp_path):
    """50/50: the CVAE with a learned prior succeeds and keeps both routes, MSE keeps one. 70/30: the
    CVAE's route histogram is within 0.05 total variation of the expert's; MSE collapses to one route."""
    report = cvae_bc.benchmark(tmp_path, envs=["obstacle2", "obstacle2_70_30"], log=lambda s: None)
    even = report["environments"]["obstacle2"]["policies"]
    assert even["cvae_learned/step"]["success_rate"] >= 0.95 and even["cvae_learned/step"]["mode_entropy"] >= 0.9
    assert even["mse"]["mode_entropy"] < 0.5
    uneven = report["environments"]["obstacle2_70_30"]["policies"]
    assert uneven["cvae_learned/step"]["tv_to_expert"] <= 0.05
    assert min(uneven["mse"]["mode_hist"].values()) == 0
    assert (tmp_path / "benchmark.md").exists() and (tmp_path / "obstacle2" / "rollouts.png").exists()


def test_a_bad_keyword_for_a_known_environment_is_not_called_unknown(tmp_path):
    path = _write(tmp_path / "kw.npz", observations=np.zeros((3, 4)), actions=np.zeros((3, 2)), episode_starts=[0],
                  env_id=np.array(ENV_IDS["obstacle"]), env_kwargs=np.array('{"bogus": 1}'))
    with pytest.raises(cvae.CVAEError) as info:
        cvae_bc.load_demos(path)
    assert "cannot make environment" in str(info.value) and "bogus" in str(info.value)
    assert "install the package" not in str(info.value)
    objects = tmp_path / "objects.npz"
    np.savez(objects, observations=np.zeros((3, 4)), actions=np.zeros((3, 2)), episode_starts=[0],
             extra=np.array([object()], dtype=object))
    with pytest.raises(cvae.CVAEError, match="Object arrays cannot be loaded"):  # a real .npz: numpy's own words
        cvae_bc.load_demos(objects)


def test_heads_and_cvae_policies_train_on_the_same_examples(tmp_path, demos_file, monkeypatch):
    """With another seed and a validation split, the heads see what the CVAE policies see."""
    import cvae_bc.policies as policies

    seen = {}
    real_fit_head = policies.fit_head

    def spy(head, data, **kwargs):
        seen["head"] = (len(data.train), len(data.test))
        return real_fit_head(head, data, **kwargs)

    monkeypatch.setattr(policies, "fit_head", spy)
    cvae_bc.train_policies(demos_file, tmp_path / "run", policies=["mse", "cvae_learned"], chunk=3, epochs=1, seed=1,
                           cvae_overrides=["data.validation=20"], log=lambda s: None)
    run = cvae.load_run(tmp_path / "run" / "cvae_learned")
    data = cvae.load_data(run.config)
    assert run.config["data"]["options"]["seed"] == 1 and len(data.validation) == 20
    assert seen["head"] == (len(data.train), len(data.test))
