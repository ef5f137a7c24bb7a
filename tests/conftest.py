"""Shared fixtures: fixed seeds, few threads, and a plugin manager that never leaks between tests."""

from __future__ import annotations

import importlib.util
import types
from pathlib import Path

import pytest
import torch

import cvae.plugins

PLUGIN_ENV = ("CVAE_PLUGINS", "CVAE_DISABLE_PLUGINS", "CVAE_STRICT_PLUGINS", "CVAE_LOAD_THIRD_PARTY")

torch.set_num_threads(1)  # small models: one thread is fastest and immune to a busy second core


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str) -> types.ModuleType:
    """A script of examples/ imported as a module (they are not a package)."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """A plugin manager rebuilt from scratch, with no plugin environment variables set; reset again after."""
    for var in PLUGIN_ENV:
        monkeypatch.delenv(var, raising=False)
    cvae.plugins.reset()
    yield cvae.plugins
    cvae.plugins.reset()


@pytest.fixture
def core_registry(fresh_plugins, monkeypatch: pytest.MonkeyPatch):
    """The registry of the engine's own plugin only, whatever else is installed."""
    monkeypatch.setenv("CVAE_PLUGINS", "core")
    fresh_plugins.reset()
    return fresh_plugins.get_registry()


# -- a tiny in-process dataset for the trainer, checkpoint, config and CLI tests ---------------------------------
#
# Registered through `cvae.register_plugin` on top of the engine's own plugin only (CVAE_PLUGINS=core), so these
# tests depend on no dataset or condition plugin from plugins/.

from torch import nn  # noqa: E402

import cvae  # noqa: E402

TINY_CLASSES = 3
TINY_LEVELS = 5
TINY_SHAPE = (1, 4, 4)


class TinyOneHot(nn.Module):
    """Class index -> one-hot features; `parse` reads a class index from the command line."""

    def __init__(self, info: cvae.ConditionInfo) -> None:
        super().__init__()
        self.num_classes = int(info.num_classes)
        self.out_features = self.num_classes

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(labels.long(), self.num_classes).float()

    def parse(self, text: str) -> torch.Tensor:
        try:
            index = int(text)
        except ValueError:
            index = -1
        if not 0 <= index < self.num_classes:
            raise cvae.CVAEError(f"label {text!r} is not a class index 0..{self.num_classes - 1}")
        return torch.tensor(index)


def _tiny_images(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """1x4x4 images on 5 levels: class 0 lights the top rows, 1 the left columns, 2 the diagonal; plus noise."""
    protos = torch.zeros(TINY_CLASSES, *TINY_SHAPE)
    protos[0, 0, :2, :] = 1.0
    protos[1, 0, :, :2] = 1.0
    protos[2, 0] = torch.eye(4)
    labels = torch.randint(0, TINY_CLASSES, (n,), generator=g)
    y = (protos[labels] * 0.75 + 0.25 * torch.rand(n, *TINY_SHAPE, generator=g))
    y = (y * (TINY_LEVELS - 1)).round() / (TINY_LEVELS - 1)
    return labels, y.clamp(0, 1)


def load_tiny(n_train: int = 192, n_test: int = 64, seed: int = 0) -> cvae.DataBundle:
    """Tiny labelled images; the split is fixed by `seed`, independent of the global RNG."""
    g = torch.Generator().manual_seed(seed)
    target = cvae.TargetInfo(TINY_SHAPE, 0.0, 1.0, levels=TINY_LEVELS)
    info = {"label": cvae.ConditionInfo("tiny_onehot", (), TINY_CLASSES, ("a", "b", "c"))}
    splits = [_tiny_images(n, g) for n in (n_train, n_test)]
    train, test = (cvae.TensorData(y, {"label": lab}, target, info) for lab, y in splits)
    return cvae.DataBundle("tiny", target, info, train, test)


def load_tiny_vectors(n_train: int = 192, n_test: int = 64, seed: int = 0) -> cvae.DataBundle:
    """Continuous 2-D vectors around one centre per class (not images)."""
    g = torch.Generator().manual_seed(seed)
    target = cvae.TargetInfo((2,), -5.0, 5.0)
    info = {"label": cvae.ConditionInfo("tiny_onehot", (), TINY_CLASSES)}
    centres = torch.tensor([[-2.0, 0.0], [2.0, 0.0], [0.0, 2.0]])

    def split(n: int) -> cvae.TensorData:
        labels = torch.randint(0, TINY_CLASSES, (n,), generator=g)
        y = (centres[labels] + 0.3 * torch.randn(n, 2, generator=g)).clamp(-5, 5)
        return cvae.TensorData(y, {"label": labels}, target, info)

    return cvae.DataBundle("tiny_vectors", target, info, split(n_train), split(n_test))


def make_tiny_plugin() -> types.ModuleType:
    plugin = types.ModuleType("tiny_plugin")
    plugin.cvae_datasets = cvae.hookimpl(lambda: [
        cvae.DatasetSpec("tiny", load_tiny, "1x4x4 labelled images on 5 levels"),
        cvae.DatasetSpec("tiny_vectors", load_tiny_vectors, "2-D labelled vectors"),
    ])
    plugin.cvae_conditions = cvae.hookimpl(lambda: [cvae.ConditionSpec("tiny_onehot", TinyOneHot, "one-hot class")])
    return plugin


# Small settings: each run takes a fraction of a second on two CPU cores.
TINY_SETTINGS = (
    'data.name="tiny"', "data.batch_size=32", 'device="cpu"',
    "model.architecture_options.hidden=[32]", "model.latent_dim=4", 'model.likelihood="discretized_logistic"',
    "model.likelihood_options={}", "model.prior_options.hidden=[16]",
    "train.epochs=2", "train.lr=0.003", "train.progress=false",
    "eval.iwae_samples=4", "eval.batch_size=64",
)


@pytest.fixture
def tiny(fresh_plugins, monkeypatch: pytest.MonkeyPatch):
    """The engine's own plugin plus the tiny dataset plugin; returns the plugins module."""
    monkeypatch.setenv("CVAE_PLUGINS", "core")
    fresh_plugins.reset()
    cvae.register_plugin(make_tiny_plugin())
    return fresh_plugins


@pytest.fixture
def tiny_config(tiny):
    """`tiny_config(*overrides)`: a validated config of the small settings plus `key=value` overrides."""
    from cvae import config as config_mod

    def make(*overrides: str) -> dict:
        return config_mod.load_config(None, [*TINY_SETTINGS, *overrides])

    return make


@pytest.fixture
def lifecycle_plugin(tiny):
    """`lifecycle_plugin(name, **hooks)`: register a plugin module whose `cvae_*` hooks are the given functions."""

    def register(name: str, **hooks) -> types.ModuleType:
        module = types.ModuleType(name)
        for hook_name, fn in hooks.items():
            setattr(module, hook_name, cvae.hookimpl(fn))
        cvae.register_plugin(module)
        return module

    return register


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """One trained tiny run (3 epochs), shared read-only by the tests that sample or evaluate it."""
    from cvae import config as config_mod
    from cvae.train import Trainer

    out = tmp_path_factory.mktemp("tiny_run") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for var in PLUGIN_ENV:
            mp.delenv(var, raising=False)
        mp.setenv("CVAE_PLUGINS", "core")
        cvae.plugins.reset()
        try:
            cvae.register_plugin(make_tiny_plugin())
            cfg = config_mod.load_config(None, [*TINY_SETTINGS, "train.epochs=3", "eval.iwae_samples=32"])
            Trainer(cfg, out).fit()
        finally:
            cvae.plugins.reset()
    return out


# The models here are tiny: one thread is fastest, and two threads spin-waiting on a busy two-core machine made
# each optimiser step a hundred times slower.
torch.set_num_threads(1)
