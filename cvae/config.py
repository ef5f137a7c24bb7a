"""Run configuration: a TOML file plus `--set key=value` overrides, validated against one schema.

The schema below is the single source of every key, its default and its meaning: `cvae train --help`
prints it and the README's table is checked against it by a test.
"""

from __future__ import annotations

import copy
import math
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError, UnknownComponentError, close_matches

__all__ = ["Key", "SCHEMA", "default_config", "from_dict", "load_config", "merge", "apply_overrides", "validate", "describe_keys",
           "with_defaults"]


@dataclass(frozen=True)
class Key:
    """One configuration key: its dotted name, default, accepted type and meaning. `component` names
    the registry kind whose names the value must be; `table` keys hold free-form option tables."""

    name: str
    default: Any
    doc: str
    type: type | tuple[type, ...] = object
    component: str | None = None
    choices: tuple[str, ...] = ()
    check: Callable[[Any], bool] | None = None
    check_doc: str = ""

    @property
    def table(self) -> bool:
        return self.type is dict


def _positive(v: Any) -> bool:
    return v > 0


def _non_negative(v: Any) -> bool:
    return v >= 0


def _finite_positive(v: Any) -> bool:
    return math.isfinite(v) and v > 0


def _finite_non_negative(v: Any) -> bool:
    return math.isfinite(v) and v >= 0


_NUM = (int, float)

SCHEMA: tuple[Key, ...] = (
    Key("seed", 0, "seed for weights, data order and noise: one seed, one run", int),
    Key("device", "auto", "'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or 'cuda:N'", str),
    Key("data.name", "digits", "dataset to train on", str, component="dataset"),
    Key("data.options", {}, "options for the dataset (for example root, download, test_fraction)", dict),
    Key("data.batch_size", 64, "examples per training batch", int, check=_positive, check_doc="> 0"),
    Key("data.validation", 0, "training examples held out as a validation split, at random for the seed: a fraction "
        "below 1 or a count (0: none). With one, each epoch's held-out figures (val_elbo...) and `cvae doctor`'s "
        "epoch advice come from it, and only the evaluation reads the test split", _NUM,
        check=lambda v: math.isfinite(v) and v >= 0 and (v < 1 or float(v).is_integer()),
        check_doc="0, a fraction below 1 (for example 0.1) or a whole number of examples (for example 500)"),
    Key("conditions", {}, "per-condition encoder and options, e.g. conditions.label.options.encoding = 'onehot'; "
        "by default each condition uses the encoder its dataset names", dict),
    Key("model.architecture", "mlp", "encoder/decoder architecture", str, component="architecture"),
    Key("model.architecture_options", {}, "options for the architecture, over its own defaults (for example hidden "
        "widths; mlp: hidden [512, 256])", dict),
    Key("model.latent_dim", 16, "number of latent dimensions (architecture 'fcn': latent channels per position)", int,
        check=_positive, check_doc="> 0"),
    Key("model.likelihood", "discretized_logistic_mixture", "likelihood p(y | x, z)", str, component="likelihood"),
    Key("model.likelihood_options", {}, "options for the likelihood, over its own defaults (for example sigma, levels, "
        "components; discretized_logistic_mixture: 3 components)", dict),
    Key("model.prior", "learned", "prior p(z | x): 'standard' is N(0, I), 'learned' a Gaussian from a network of the "
        "condition, 'mixture' a mixture of such Gaussians, 'pixelcnn' an autoregressive prior over latent maps (architecture "
        "'fcn'); 'fitted_mixture' is what `cvae fit-prior` writes", str,
        component="prior"),
    Key("model.prior_options", {}, "options for the prior (for example hidden widths)", dict),
    Key("train.epochs", 100, "passes over the training split", int, check=_positive, check_doc="> 0"),
    Key("train.lr", 1e-3, "Adam learning rate", _NUM, check=_finite_positive, check_doc="finite and > 0"),
    Key("train.lr_schedule", "constant", "how the learning rate moves over training: 'constant', or 'cosine' (from "
        "train.lr at the first step down to 0 at the last, along half a cosine)", str, choices=("constant", "cosine")),
    Key("train.lr_warmup", 0, "steps over which the learning rate rises linearly to its schedule's value at the start "
        "(0: none): Adam's first updates are about train.lr for every weight at once, whatever the gradient's size, "
        "which can throw a latent's mean or log-variance far off before the KL pulls it back", int,
        check=_non_negative, check_doc=">= 0"),
    Key("train.weight_decay", 1e-4, "Adam weight decay (L2), against overfitting small datasets", _NUM,
        check=_finite_non_negative, check_doc="finite and >= 0"),
    Key("train.beta", 1.0, "KL weight at full strength; 1 is the ELBO, above 1 pushes q toward the prior", _NUM,
        check=_finite_non_negative, check_doc="finite and >= 0"),
    Key("train.schedule", "constant", "how beta moves over training", str, component="schedule"),
    Key("train.schedule_options", {}, "options for the schedule (for example warmup_steps, cycle_steps)", dict),
    Key("train.free_bits", 0.0, "nats of KL per latent dimension that are not penalised (0 turns it off)", _NUM,
        check=_finite_non_negative, check_doc="finite and >= 0"),
    Key("train.free_bits_group", 1, "pool the free bits over groups of this many consecutive latent dimensions "
        "(1: per dimension)", int, check=_positive, check_doc="> 0"),
    Key("train.grad_clip", 100.0, "clip the gradient norm to this value (0 turns clipping off)", _NUM,
        check=_finite_non_negative, check_doc="finite and >= 0"),
    Key("train.fast", True, "the fastest numerically safe settings for the device (fused Adam; on CPU, denormals "
        "flushed to zero); false gives plain Adam and default float handling, as a hand-written loop", bool),
    Key("train.precision", "float32", "arithmetic of the training forward pass: 'bfloat16' runs the networks' layers "
        "under autocast (about 1.3x the steps per second of 'float32' for the shapes model at batch 64 on a "
        "2-core CPU with AMX, none at batch 16, and over 20x fewer on a CPU without AVX512, where `cvae train` "
        "warns; tensor cores on a GPU) while the likelihood, the KL and the weights stay float32", str,
        choices=("float32", "bfloat16")),
    Key("train.checkpoint_every", 1, "write a checkpoint every this many epochs (the last epoch always)", int,
        check=_positive, check_doc="> 0"),
    Key("train.checkpoint_steps", 0, "also write a checkpoint every this many steps, within epochs (0: only at the "
        "ends of epochs); a killed run loses at most this many steps", int, check=_non_negative, check_doc=">= 0"),
    Key("train.keep_checkpoints", 2, "how many recent checkpoints to keep", int, check=_positive, check_doc="> 0"),
    Key("train.keep_best", False, "also keep the epoch of the highest val_elbo as checkpoints/best.pt: the run's "
        "pictures and eval.json, and every command that opens the run, then use that epoch (needs data.validation)",
        bool),
    Key("train.patience", 0, "stop training once val_elbo has not risen for this many epochs (0: never; needs "
        "data.validation)", int, check=_non_negative, check_doc=">= 0"),
    Key("train.progress", True, "show a progress bar", bool),
    Key("eval.at_end", True, "evaluate on the test split when training ends and write eval.json", bool),
    Key("eval.iwae_samples", 100, "importance samples per example for the IWAE log-likelihood", int,
        check=_positive, check_doc="> 0"),
    Key("eval.batch_size", 256, "examples per evaluation batch", int, check=_positive, check_doc="> 0"),
    Key("eval.sample_mode", "mean", "decode samples to the likelihood's mean ('mean') or draw from it ('sample')", str,
        choices=("mean", "sample")),
    Key("eval.temperature", 1.0, "scale of the prior's noise for the samples that metrics judge (1: the prior itself; "
        "below 1: draws nearer its mean, less diverse)", _NUM, check=lambda v: math.isfinite(v) and v > 0,
        check_doc="finite and > 0"),
    Key("fit_prior.after_training", False, "when training ends, also fit the prior again to the training split's "
        "posteriors, as `cvae fit-prior` does, into RUN/fitted (evaluated there when eval.at_end)", bool),
    Key("fit_prior.components", 0, "Gaussians per condition value of a prior fitted after training (0: one per 20 "
        "training draws of the rarest value, at most 50)", int, check=_non_negative, check_doc=">= 0"),
    Key("fit_prior.rank", 32, "correlated directions per fitted Gaussian (0: diagonal; the latent size or more: full "
        "covariance)", int, check=_non_negative, check_doc=">= 0"),
    Key("fit_prior.draws", 1, "posterior draws per training example that the prior is fitted to", int,
        check=_positive, check_doc="> 0"),
)

_BY_NAME = {k.name: k for k in SCHEMA}
_TYPE_NAMES = {int: "an integer", str: "a string", bool: "true or false", dict: "a table"}


def default_config() -> dict[str, Any]:
    """The full default configuration as a nested dict."""
    cfg: dict[str, Any] = {}
    for key in SCHEMA:
        _set(cfg, key.name.split("."), copy.deepcopy(key.default))
    return cfg


def with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A config saved by an earlier version, completed with the keys added since (at their defaults)."""
    cfg = default_config()
    merge(cfg, saved)
    return cfg


def _set(cfg: dict[str, Any], parts: list[str], value: Any) -> None:
    for p in parts[:-1]:
        node = cfg.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parts)}: {p!r} is a value, not a table")
        cfg = node
    cfg[parts[-1]] = value


def _flatten(cfg: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    """Leaf keys of a nested config, stopping at keys the schema knows (so option tables stay whole)."""
    for k, v in cfg.items():
        name = f"{prefix}{k}"
        if name in _BY_NAME or not isinstance(v, dict):
            yield name, v
        else:
            yield from _flatten(v, name + ".")


def _key_for(name: str) -> tuple[Key, list[str]]:
    """The schema key owning dotted `name` (itself, or an option table above it) and the rest of the path."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        key = _BY_NAME.get(".".join(parts[:i]))
        if key is not None and (i == len(parts) or key.table):
            return key, parts[i:]
    raise ConfigError(f"unknown config key {name!r}: {close_matches(name, _BY_NAME)}")


def merge(cfg: dict[str, Any], updates: Mapping[str, Any]) -> None:
    """Merge a nested (partial) config into `cfg` in place; unknown keys are errors."""
    for name, value in _flatten(updates):
        key, rest = _key_for(name)
        _set(cfg, key.name.split(".") + rest, value)


def from_dict(partial: Mapping[str, Any] | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then a (partial) config dict, then `key=value` overrides; validated."""
    cfg = default_config()
    merge(cfg, partial or {})
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """Defaults, then the TOML file (if any), then `key=value` overrides; validated."""
    cfg = default_config()
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: malformed TOML: {exc}") from exc
        merge(cfg, data)
    apply_overrides(cfg, overrides)
    validate(cfg)
    return cfg


def parse_value(text: str) -> Any:
    """A TOML value (numbers, booleans, strings, arrays, inline tables); a bare word is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(cfg: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply `key=value` strings in place."""
    for item in overrides:
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"override {item!r} is not of the form key=value (for example train.epochs=10)")
        value = parse_value(text.strip())
        try:
            _, rest = _key_for(name)
        except ConfigError:
            rest = []  # not a key: merge() below says so, or spreads an inline table over known keys
        if rest:  # one entry inside an option table: set it and keep the table's other entries
            _set(cfg, name.split("."), value)
        else:
            merge(cfg, _nest(name, value))
    return cfg


def _nest(name: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    _set(out, name.split("."), value)
    return out


def get(cfg: Mapping[str, Any], name: str) -> Any:
    node: Any = cfg
    for p in name.split("."):
        node = node[p]
    return node


def validate(cfg: Mapping[str, Any], registry: Any = None, sections: Iterable[str] | None = None) -> None:
    """Check every value's type and range and every component name (of the keys in `sections` alone,
    e.g. ("model", "conditions"), when given); errors name the key, the bad value and what is allowed."""
    wanted = None if sections is None else tuple(sections)
    for key in SCHEMA:
        if wanted is not None and key.name.split(".")[0] not in wanted:
            continue
        try:
            value = get(cfg, key.name)
        except (KeyError, TypeError):
            raise ConfigError(f"missing config key {key.name!r}") from None
        ok_type = isinstance(value, key.type) and not (isinstance(value, bool) and key.type in (int, _NUM))
        if not ok_type:
            raise ConfigError(f"{key.name} = {value!r}: expected {_TYPE_NAMES.get(key.type, 'a number')}")
        if key.choices and value not in key.choices:
            raise ConfigError(f"{key.name} = {value!r}: allowed are {', '.join(map(repr, key.choices))}")
        if key.check is not None and not key.check(value):
            raise ConfigError(f"{key.name} = {value!r}: must be {key.check_doc}")
        if key.component is not None:
            if registry is None:
                from .plugins import get_registry

                registry = get_registry()
            try:
                registry.get(key.component, value)
            except UnknownComponentError as exc:
                raise UnknownComponentError(f"{key.name}: {exc}") from None
    if (wanted is None or "device" in wanted) and not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", cfg["device"]):
        raise ConfigError(f"device = {cfg['device']!r}: allowed are 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
    if wanted is None or {"data", "train"} <= set(wanted):
        needs = [k for k in ("train.keep_best", "train.patience") if get(cfg, k)]
        if needs and not get(cfg, "data.validation"):
            verb = "pick" if len(needs) > 1 else "picks"
            raise ConfigError(f"{' and '.join(needs)} {verb} epochs by the validation ELBO, and this run has no "
                              f"validation split: add --set data.validation=0.1 (a fraction, or a count of examples)")
    for name, entry in cfg["conditions"].items() if wanted is None or "conditions" in wanted else ():
        if not isinstance(entry, dict) or set(entry) - {"encoder", "options"}:
            raise ConfigError(f"conditions.{name}: expected a table with 'encoder' and/or 'options', got {entry!r}")


def describe_keys() -> str:
    """Every key with its default and meaning, for `cvae train --help`."""
    width = max(len(k.name) for k in SCHEMA)
    lines = []
    for k in SCHEMA:
        lines.append(f"  {k.name:<{width}}  {k.doc} (default: {_toml(k.default)})")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value).replace("'", '"')
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)
