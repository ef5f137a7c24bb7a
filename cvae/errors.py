"""Errors a user can cause. The CLI turns each into a clear message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["CVAEError", "ConfigError", "UnknownComponentError", "PluginError", "CheckpointError", "close_matches"]


class CVAEError(Exception):
    """Base class for every error caused by input: a config, a name, a file, a tensor shape."""


class ConfigError(CVAEError):
    """A configuration key or value is not allowed."""


class UnknownComponentError(CVAEError, KeyError):
    """A component name that no plugin registers."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class PluginError(CVAEError):
    """A plugin failed to load, broke a hook contract, or clashed with another plugin."""


class CheckpointError(CVAEError):
    """A checkpoint is missing, truncated, corrupt or not a cvae checkpoint."""


def close_matches(name: str, choices: Iterable[str]) -> str:
    """Say which of `choices` look like `name`, or list them all when none does."""
    choices = sorted(choices)
    near = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    if near:
        return f"did you mean {', '.join(repr(c) for c in near)}? (known: {', '.join(choices)})"
    return f"known: {', '.join(choices) if choices else 'none'}"
