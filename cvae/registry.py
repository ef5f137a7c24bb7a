"""Typed component records and the registry that collects them from every plugin.

Each registry hook returns a list of frozen spec records. The registry calls every plugin's
implementation itself, so it knows which plugin gave which component, can reject a duplicate name
naming both plugins, and can answer an unknown name with the close matches.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import ConfigError, PluginError, UnknownComponentError, close_matches

__all__ = [
    "ComponentSpec",
    "ConditionSpec",
    "DatasetSpec",
    "ArchitectureSpec",
    "LikelihoodSpec",
    "PriorSpec",
    "ScheduleSpec",
    "MetricSpec",
    "EnvironmentSpec",
    "BenchmarkSpec",
    "CommandSpec",
    "KINDS",
    "Registry",
    "check_options",
]


@dataclass(frozen=True)
class ComponentSpec:
    """A named component: `factory(**options)` builds it. `plugin` is filled in by the registry."""

    name: str
    factory: Callable[..., Any]
    description: str = ""
    plugin: str = field(default="", compare=False)

    def build(self, *args: Any, options: Mapping[str, Any] | None = None, where: str = "", **kwargs: Any) -> Any:
        """Call the factory with validated user `options` (named `where` in errors) plus fixed arguments."""
        options = dict(options or {})
        check_options(self.factory, options, where or self.name, fixed=set(kwargs), positional=len(args))
        return self.factory(*args, **kwargs, **options)


@dataclass(frozen=True)
class ConditionSpec(ComponentSpec):
    """Turns a raw condition (a label, an observation...) into features: `factory(info, **options)`."""


@dataclass(frozen=True)
class DatasetSpec(ComponentSpec):
    """Builds a `cvae.data.DataBundle` (train and test splits plus metadata): `factory(**options)`."""


@dataclass(frozen=True)
class ArchitectureSpec(ComponentSpec):
    """Builds `(encoder, decoder)`: `factory(target=, cond_features=, latent_dim=, params_per_element=, **options)`."""


@dataclass(frozen=True)
class LikelihoodSpec(ComponentSpec):
    """Builds a `cvae.likelihoods.Likelihood` for a target: `factory(target, **options)`."""


@dataclass(frozen=True)
class PriorSpec(ComponentSpec):
    """Builds a `cvae.priors.Prior`: `factory(cond_features=, latent_dim=, **options)`."""


@dataclass(frozen=True)
class ScheduleSpec(ComponentSpec):
    """Builds a KL-weight schedule (`beta(step)`, `observe(kl)`, state dict): `factory(beta=, **options)`."""


@dataclass(frozen=True)
class MetricSpec(ComponentSpec):
    """An evaluation metric: `factory(**options)` gives a callable `metric(context) -> dict[str, float] | None`."""


@dataclass(frozen=True)
class EnvironmentSpec(ComponentSpec):
    """A gymnasium environment id with its scripted expert: `factory(**options)` returns the expert policy."""

    env_id: str = ""


@dataclass(frozen=True)
class BenchmarkSpec(ComponentSpec):
    """A throughput benchmark: `factory(**options)` returns a callable `run(device) -> list[dict]`."""


@dataclass(frozen=True)
class CommandSpec(ComponentSpec):
    """A `cvae` subcommand: `factory()` returns an object with `help`, `add_arguments(parser)` and `run(args)`."""


# kind -> (hook name, record type)
KINDS: dict[str, tuple[str, type[ComponentSpec]]] = {
    "condition": ("cvae_conditions", ConditionSpec),
    "dataset": ("cvae_datasets", DatasetSpec),
    "architecture": ("cvae_architectures", ArchitectureSpec),
    "likelihood": ("cvae_likelihoods", LikelihoodSpec),
    "prior": ("cvae_priors", PriorSpec),
    "schedule": ("cvae_schedules", ScheduleSpec),
    "metric": ("cvae_metrics", MetricSpec),
    "environment": ("cvae_environments", EnvironmentSpec),
    "benchmark": ("cvae_benchmarks", BenchmarkSpec),
    "command": ("cvae_commands", CommandSpec),
}


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], where: str, fixed: set[str] = frozenset(),
                  positional: int = 0) -> None:
    """Reject option names the factory does not accept, listing the ones it does, and name the options
    it requires that are missing; `fixed` keywords and the first `positional` parameters are supplied by
    the toolkit, so they are not options."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature: let the call decide
        return
    taken = set(fixed) | set(list(params)[:positional])
    named = {n: p for n, p in params.items()
             if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n not in taken and n != "self"}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        for key in options:  # a misspelt option first: its "did you mean" says more than "missing"
            if key not in named:
                raise ConfigError(f"{where}: unknown option {key!r}; {close_matches(key, sorted(named))}")
    required = [n for n, p in named.items() if p.default is p.empty and n not in options]
    if required:
        key = where.split(" ")[0]
        hint = f"; set it, for example --set {key}.{required[0]}=..." if "." in key else ""
        raise ConfigError(f"{where}: required option {', '.join(map(repr, required))} is missing{hint}")
    for key, value in options.items():  # text where the default says a number, a flag or a list: say so here
        default = named[key].default if key in named else None
        expected = ("true or false" if isinstance(default, bool) else "a number" if isinstance(default, (int, float))
                    else "a list" if isinstance(default, (list, tuple)) else None)
        if expected and isinstance(value, str):
            shown = list(default) if isinstance(default, tuple) else default
            raise ConfigError(f"{where}: option {key!r} = {value!r}: expected {expected} (default {shown!r})")


class Registry:
    """Every component of every kind, collected once from a plugin manager."""

    def __init__(self, pm: Any, missing_plugins: str = "") -> None:
        # what an unknown name's error adds: plugins that failed to load or were left out, which may hold it
        self.missing_plugins = missing_plugins
        self._by_kind: dict[str, dict[str, ComponentSpec]] = {}
        for kind, (hook_name, record) in KINDS.items():
            found: dict[str, ComponentSpec] = {}
            for impl in getattr(pm.hook, hook_name).get_hookimpls():
                plugin = impl.plugin_name
                try:
                    specs = impl.function()
                except Exception as exc:  # a plugin's bug must not look like ours
                    raise PluginError(f"plugin {plugin!r} raised in {hook_name}: {exc!r}") from exc
                if specs is None:
                    continue
                if not isinstance(specs, (list, tuple)):
                    raise PluginError(f"plugin {plugin!r}: {hook_name} must return a list of {record.__name__}, "
                                      f"got {type(specs).__name__}")
                for spec in specs:
                    if not isinstance(spec, record):
                        raise PluginError(f"plugin {plugin!r}: {hook_name} returned {spec!r}; "
                                          f"expected {record.__name__} records")
                    if spec.name in found:
                        raise PluginError(
                            f"{kind} {spec.name!r} is registered by both plugin {found[spec.name].plugin!r} and "
                            f"plugin {plugin!r}; disable one with CVAE_DISABLE_PLUGINS=<name>")
                    found[spec.name] = replace(spec, plugin=plugin)
            self._by_kind[kind] = found

    def get(self, kind: str, name: str) -> ComponentSpec:
        """The spec called `name`; an unknown name is an error that lists close matches."""
        table = self._table(kind)
        if name not in table:
            note = f"; {self.missing_plugins}" if self.missing_plugins else ""
            raise UnknownComponentError(f"unknown {kind} {name!r}: {close_matches(str(name), table)}{note}")
        return table[name]

    def names(self, kind: str) -> list[str]:
        return sorted(self._table(kind))

    def specs(self, kind: str) -> list[ComponentSpec]:
        return [self._table(kind)[n] for n in self.names(kind)]

    def contributed_by(self, plugin: str) -> dict[str, list[str]]:
        """Component names per kind that `plugin` registered."""
        out = {kind: sorted(n for n, s in table.items() if s.plugin == plugin) for kind, table in self._by_kind.items()}
        return {k: v for k, v in out.items() if v}

    def _table(self, kind: str) -> dict[str, ComponentSpec]:
        if kind not in self._by_kind:
            raise UnknownComponentError(f"unknown component kind {kind!r}: {close_matches(kind, self._by_kind)}")
        return self._by_kind[kind]
