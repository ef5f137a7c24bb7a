"""From a validated config to data and a model, through the registry only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import config as config_mod
from .data import ConditionInfo, DataBundle, TargetInfo, held_out_count, hold_out
from .errors import CVAEError
from .model import CVAE
from .plugins import get_registry

__all__ = ["load_data", "build_model", "resolve_device"]


def _complete(config: Mapping[str, Any], sections: tuple[str, ...]) -> dict[str, Any]:
    """`config` with every key it leaves out at its default, its `sections` validated."""
    cfg = config_mod.with_defaults(config)
    config_mod.validate(cfg, sections=sections)
    return cfg


def load_data(config: Mapping[str, Any]) -> DataBundle:
    """The configured dataset, checked against the data contract, with its validation split held out of
    the training split when `data.validation` asks for one. A partial `config` is completed with the
    defaults (`load_data({})` is the default digits)."""
    config = _complete(config, ("seed", "data"))
    data_cfg = config["data"]
    spec = get_registry().get("dataset", data_cfg["name"])
    bundle = spec.build(options=data_cfg["options"], where=f"data.options (dataset {spec.name!r})")
    if not isinstance(bundle, DataBundle):
        raise CVAEError(f"dataset {spec.name!r} (plugin {spec.plugin!r}) returned {type(bundle).__name__}, "
                        f"not a cvae.DataBundle")
    if len(bundle.train) == 0 or len(bundle.test) == 0:
        raise CVAEError(f"dataset {spec.name!r} has an empty split: {len(bundle.train)} training and "
                        f"{len(bundle.test)} test examples")
    count = held_out_count(len(bundle.train), data_cfg["validation"])
    if count:
        bundle.train, bundle.validation = hold_out(bundle.train, count, config["seed"])
    return bundle


def build_model(config: Mapping[str, Any], target: TargetInfo, condition_info: Mapping[str, ConditionInfo]) -> CVAE:
    """A CVAE for `target` and the dataset's conditions, from the config's named components (a partial
    `config` is completed with the defaults)."""
    config = _complete(config, ("model", "conditions"))
    registry = get_registry()
    model_cfg = config["model"]
    cond_cfg = config["conditions"]
    unknown = sorted(set(cond_cfg) - set(condition_info))
    if unknown:
        raise CVAEError(f"conditions: {unknown} are not conditions of this dataset; it provides "
                        f"{sorted(condition_info) or 'none'}")
    encoders = {}
    for name, info in condition_info.items():
        entry = cond_cfg.get(name, {})
        spec = registry.get("condition", entry.get("encoder", info.encoder))
        encoders[name] = spec.build(info, options=entry.get("options"), where=f"conditions.{name}.options")
    cond_features = sum(e.out_features for e in encoders.values())

    lik_spec = registry.get("likelihood", model_cfg["likelihood"])
    likelihood = lik_spec.build(target, options=model_cfg["likelihood_options"], where="model.likelihood_options")
    latent_dim = model_cfg["latent_dim"]
    arch = registry.get("architecture", model_cfg["architecture"])
    encoder, decoder = arch.build(options=model_cfg["architecture_options"], where="model.architecture_options",
                                  target=target, cond_features=cond_features, latent_dim=latent_dim,
                                  params_per_element=likelihood.params_per_element)
    prior = registry.get("prior", model_cfg["prior"]).build(
        options=model_cfg["prior_options"], where="model.prior_options", cond_features=cond_features,
        latent_dim=latent_dim)
    return CVAE(conditions=encoders, encoder=encoder, decoder=decoder, prior=prior, likelihood=likelihood,
                latent_dim=latent_dim, target=target, condition_info=condition_info)


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit device that is not there is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise CVAEError(f"device {name!r} is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CVAEError(f"device = {name!r}, but CUDA is not available here; use 'auto' or 'cpu'")
    return device
