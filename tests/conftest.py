"""Shared fixtures: fixed seeds, few threads, and a plugin manager that never leaks between tests."""

from __future__ import annotations

import pytest
import torch

import cvae.plugins

PLUGIN_ENV = ("CVAE_PLUGINS", "CVAE_DISABLE_PLUGINS", "CVAE_STRICT_PLUGINS", "CVAE_LOAD_THIRD_PARTY")

torch.set_num_threads(2)


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
