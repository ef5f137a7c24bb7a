"""Multimodal behaviour cloning with CVAE policies.

Environments with scripted multimodal experts (registered with gymnasium), demonstrations on disk,
policies (MSE regression, a mixture-density head, CVAEs with a fixed, learned Gaussian or learned
mixture prior) trained side by side, and an evaluation that counts modes, not only successes.
Observations are state vectors, or pictures (`obs="image"`) through the `pixels` condition encoder.
The command line is `cvae bc`; `load_policy(run_dir, name, z=...)` gives `policy.act(obs)`.
"""

from __future__ import annotations

import functools

import cvae

from .bench import benchmark, evaluate_run
from .cli import BehaviourCloningCommand
from .demos import Demos, collect, load_bc_dataset, load_demos, save_demos
from .envs import ENV_IDS, MultiGoalEnv, MultiGoalExpert, ObstacleExpert, ObstacleFieldEnv, register_envs
from .evaluate import make_env, rollout, summarise
from .pixels import PixelEncoder
from .policies import POLICIES, Z_RULES, Policy, load_policy, train_policies

__all__ = [
    "BehaviourCloningCommand", "Demos", "ENV_IDS", "MultiGoalEnv", "MultiGoalExpert", "ObstacleExpert",
    "ObstacleFieldEnv", "POLICIES", "PixelEncoder", "Policy", "Z_RULES", "benchmark", "collect", "evaluate_run", "load_bc_dataset",
    "load_demos", "load_policy", "make_env", "rollout", "save_demos", "summarise", "train_policies",
    "cvae_environments", "cvae_datasets", "cvae_conditions", "cvae_commands",
]

register_envs()


@cvae.hookimpl
def cvae_environments() -> list[cvae.EnvironmentSpec]:
    return [
        cvae.EnvironmentSpec("obstacle2", functools.partial(ObstacleExpert, rows=1),
                             "point mass past one obstacle: 2 routes, expert 50/50", env_id=ENV_IDS["obstacle"]),
        cvae.EnvironmentSpec("obstacle2_70_30", functools.partial(ObstacleExpert, rows=1, probs=(0.7, 0.3)),
                             "point mass past one obstacle: 2 routes, expert 70/30", env_id=ENV_IDS["obstacle"]),
        cvae.EnvironmentSpec("obstacle8", functools.partial(ObstacleExpert, rows=3),
                             "point mass past 3 rows of obstacles: 8 routes, expert uniform",
                             env_id=ENV_IDS["obstacle_many"]),
        cvae.EnvironmentSpec("multigoal", functools.partial(MultiGoalExpert, goals=3),
                             "visit 3 goals: 6 orders, expert uniform", env_id=ENV_IDS["multigoal"]),
    ]


@cvae.hookimpl
def cvae_datasets() -> list[cvae.DatasetSpec]:
    return [cvae.DatasetSpec("bc_demos", load_bc_dataset,
                             "behaviour-cloning demonstrations (.npz): condition obs, target a chunk of actions "
                             "(options path, chunk, test_fraction, seed)")]


@cvae.hookimpl
def cvae_conditions() -> list[cvae.ConditionSpec]:
    return [cvae.ConditionSpec("pixels", PixelEncoder, "image observations (height, width, channels; 0..255) through "
                               "strided convolutions, as the conv architecture's encoder (channels, dim)")]


@cvae.hookimpl
def cvae_commands() -> list[cvae.CommandSpec]:
    return [cvae.CommandSpec("bc", BehaviourCloningCommand,
                             "behaviour cloning: envs, collect, train, eval, benchmark")]
