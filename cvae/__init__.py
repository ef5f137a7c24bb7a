"""cvae: conditional variational autoencoders behind pluggy hook points.

The public API that plugins and users import. Plugins import only from here (and its submodules
named in the docs), never from each other.
"""

from __future__ import annotations

from .data import ConditionInfo, DataBundle, TargetInfo, TensorData, iterate_batches
from .errors import CheckpointError, ConfigError, CVAEError, PluginError, UnknownComponentError
from .likelihoods import Likelihood
from .model import CVAE, LossTerms
from .plugins import get_plugin_manager, get_registry, hookimpl, register_plugin, unregister_plugin
from .priors import Prior
from .registry import (
    ArchitectureSpec,
    BenchmarkSpec,
    CommandSpec,
    ComponentSpec,
    ConditionSpec,
    DatasetSpec,
    EnvironmentSpec,
    LikelihoodSpec,
    MetricSpec,
    PriorSpec,
    ScheduleSpec,
)
from .schedules import Schedule
from .build import build_model, load_data
from .evaluate import evaluate
from .runs import Run, load_run
from .train import Trainer, train

__version__ = "0.1.0"

__all__ = [
    "ArchitectureSpec",
    "BenchmarkSpec",
    "CVAE",
    "CVAEError",
    "CommandSpec",
    "CheckpointError",
    "ComponentSpec",
    "ConditionInfo",
    "ConditionSpec",
    "ConfigError",
    "DataBundle",
    "DatasetSpec",
    "EnvironmentSpec",
    "Likelihood",
    "LikelihoodSpec",
    "LossTerms",
    "MetricSpec",
    "PluginError",
    "Prior",
    "PriorSpec",
    "Schedule",
    "ScheduleSpec",
    "TargetInfo",
    "TensorData",
    "Run",
    "Trainer",
    "UnknownComponentError",
    "build_model",
    "evaluate",
    "load_data",
    "load_run",
    "train",
    "get_plugin_manager",
    "get_registry",
    "hookimpl",
    "iterate_batches",
    "register_plugin",
    "unregister_plugin",
]
