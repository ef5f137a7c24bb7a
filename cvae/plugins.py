"""The plugin manager: built-ins and third-party packages load the same way, through entry points.

Environment variables:
- `CVAE_PLUGINS=a,b`: load only these entry points (by entry-point name).
- `CVAE_DISABLE_PLUGINS=a,b`: skip these entry points.
- `CVAE_STRICT_PLUGINS=1`: a plugin that fails to load is an error instead of a skipped report.
- `CVAE_LOAD_THIRD_PARTY=0`: load only the plugins shipped in the cvae distribution itself.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .errors import CVAEError, PluginError, close_matches
from .registry import Registry

__all__ = ["hookimpl", "PluginRecord", "PluginFailure", "get_plugin_manager", "get_registry", "register_plugin", "reset"]

ENTRY_POINT_GROUP = "cvae"
hookimpl = pluggy.HookimplMarker("cvae")


@dataclass(frozen=True)
class PluginRecord:
    """A loaded plugin: where it came from and which hooks it implements."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that was skipped, and why."""

    name: str
    distribution: str
    reason: str


@dataclass
class _State:
    pm: pluggy.PluginManager
    records: dict[str, PluginRecord] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)  # installed plugins not loaded, and the variable why
    registry: Registry | None = None


_state: _State | None = None


class _Manager(pluggy.PluginManager):
    """Treats every `cvae_*` function as a hook implementation, marked or not, so a misspelled hook
    name is caught by `check_pending` instead of being silently ignored."""

    def parse_hookimpl_opts(self, plugin: object, name: str):  # type: ignore[override]
        opts = super().parse_hookimpl_opts(plugin, name)
        if opts is None and name.startswith("cvae_") and callable(getattr(plugin, name, None)):
            return {}
        return opts


def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def _flag(var: str, default: bool) -> bool:
    value = os.environ.get(var)
    return default if value is None else value.strip().lower() not in ("0", "false", "no", "off", "")


def _hooks_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, ...]:
    return tuple(sorted(caller.name for caller in pm.get_hookcallers(plugin) or []))


def _add(state: _State, plugin: object, name: str, distribution: str, version: str) -> None:
    """Register one plugin, rejecting it (by name) if its hook implementations do not fit the specs."""
    pm = state.pm
    if pm.is_registered(plugin):  # leave the plugin already there alone
        raise PluginError(f"plugin {name!r} ({distribution}) is already registered as {pm.get_name(plugin)!r}")
    try:
        pm.register(plugin, name=name)
        pm.check_pending()
    except (pluggy.PluginValidationError, ValueError) as exc:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise PluginError(f"plugin {name!r} ({distribution}) has an invalid hook implementation: {exc}") from exc
    state.records[name] = PluginRecord(name, distribution, version, _hooks_of(pm, plugin))


def _load_entry_points(state: _State) -> None:
    only = _env_names("CVAE_PLUGINS")
    disabled = _env_names("CVAE_DISABLE_PLUGINS") or set()
    strict = _flag("CVAE_STRICT_PLUGINS", False)
    third_party = _flag("CVAE_LOAD_THIRD_PARTY", True)
    entry_points = sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)
    installed = {ep.name for ep in entry_points}
    for variable, names in (("CVAE_PLUGINS", only or set()), ("CVAE_DISABLE_PLUGINS", disabled)):
        for name in sorted(names - installed):  # a typo here would otherwise load, or keep, the wrong plugins
            reason = f"{variable} names it, but no installed plugin has this name: {close_matches(name, installed)}"
            if strict:
                raise PluginError(f"plugin {name!r}: {reason}")
            state.failures.append(PluginFailure(name, "?", reason))
    for ep in entry_points:
        dist = ep.dist.metadata["Name"] if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        if ep.name in disabled or (only is not None and ep.name not in only):
            state.left_out[ep.name] = "CVAE_DISABLE_PLUGINS" if ep.name in disabled else "CVAE_PLUGINS"
            continue
        if not third_party and dist != "cvae":
            state.left_out[ep.name] = "CVAE_LOAD_THIRD_PARTY=0"
            continue
        if ep.name in state.records:
            if strict:
                raise PluginError(f"plugin {ep.name!r} from {dist}: another plugin already uses this name")
            state.failures.append(PluginFailure(ep.name, dist, "another plugin already uses this name"))
            continue
        try:
            _add(state, ep.load(), ep.name, dist, version)
        except (Exception, SystemExit) as exc:  # any import-time error (even sys.exit) is reported, never fatal by default
            reason = str(exc) if isinstance(exc, PluginError) else f"{type(exc).__name__}: {exc}"
            if strict:
                raise PluginError(f"plugin {ep.name!r} from {dist} failed to load: {reason}") from exc
            state.failures.append(PluginFailure(ep.name, dist, reason))


def _get_state() -> _State:
    global _state
    if _state is None:
        pm = _Manager(ENTRY_POINT_GROUP)
        pm.add_hookspecs(hookspecs)
        state = _State(pm)
        _load_entry_points(state)
        _state = state
    return _state


def get_plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager, loading entry points on first use."""
    return _get_state().pm


def get_registry() -> Registry:
    """The component registry built from every loaded plugin (rebuilt after `register_plugin`)."""
    state = _get_state()
    if state.registry is None:
        state.registry = Registry(state.pm, _missing_plugins(state))
    return state.registry


def _missing_plugins(state: _State) -> str:
    """Installed plugins whose components are absent, for the error of an unknown component name."""
    parts = [f"plugin {f.name!r} failed to load ({f.reason})" for f in state.failures if f.distribution != "?"]
    if state.left_out:
        left = ", ".join(f"{n!r} ({why})" for n, why in sorted(state.left_out.items()))
        parts.append(f"left out by the environment: {left}")
    return "; ".join(parts) + " (see `cvae plugins`)" if parts else ""


def register_plugin(plugin: Any, name: str | None = None) -> None:
    """Register a plugin object or module in this process (for scripts, notebooks and tests)."""
    state = _get_state()
    name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
    if name in state.records:
        raise PluginError(f"a plugin named {name!r} is already registered")
    _add(state, plugin, name, "registered in-process", "")
    state.registry = None


def unregister_plugin(name: str) -> None:
    """Remove a plugin registered earlier."""
    state = _get_state()
    if state.pm.get_plugin(name) is None:
        raise PluginError(f"no plugin named {name!r} is registered; registered: {', '.join(sorted(state.records))}")
    state.pm.unregister(name=name)
    state.records.pop(name, None)
    state.registry = None


def plugin_records() -> list[PluginRecord]:
    return list(_get_state().records.values())


def plugin_failures() -> list[PluginFailure]:
    return list(_get_state().failures)


def reset() -> None:
    """Forget every plugin; the next use reloads entry points (and reads the environment again)."""
    global _state
    _state = None


def call_hook(name: str, **kwargs: Any) -> list[Any]:
    """Call a lifecycle hook on every plugin. A plugin's exception becomes a PluginError that names the plugin
    (cvae's own errors and KeyboardInterrupt pass unchanged); the try costs nothing while nothing is raised."""
    hook = getattr(get_plugin_manager().hook, name)
    try:
        return hook(**kwargs)
    except CVAEError:
        raise
    except Exception as exc:  # a plugin's bug must not look like ours, nor end in a bare traceback
        raise PluginError(f"plugin {_culprit(hook, exc)!r} raised in {name}: {exc!r}") from exc


def _culprit(hook: Any, exc: BaseException) -> str:
    """The plugin whose hook implementation is on `exc`'s traceback."""
    owners = {impl.function.__code__: impl.plugin_name for impl in hook.get_hookimpls()
              if hasattr(impl.function, "__code__")}
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in owners:
            return owners[tb.tb_frame.f_code]
        tb = tb.tb_next
    return "?"
