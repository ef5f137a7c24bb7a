"""Configuration: defaults, TOML files, --set overrides, and clear errors for every kind of bad input."""

from __future__ import annotations

import re
import string
import textwrap

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cvae
from cvae import ConfigError, CVAEError, UnknownComponentError
from cvae import config as config_mod
from cvae.config import SCHEMA, apply_overrides, default_config, describe_keys, load_config, validate

EPOCHS = next(k.default for k in config_mod.SCHEMA if k.name == "train.epochs")


class AcceptingRegistry:
    """Accepts every component name and remembers what was asked, so defaults validate without plugins."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str]] = []

    def get(self, kind: str, name: str) -> None:
        self.asked.append((kind, name))


def write_toml(tmp_path, text: str):
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


# -- defaults and describe_keys ---------------------------------------------------------------------------------


def test_defaults_validate_and_name_their_components():
    registry = AcceptingRegistry()
    cfg = default_config()
    validate(cfg, registry)
    assert sorted(registry.asked) == sorted((k.component, k.default) for k in SCHEMA if k.component)
    assert cfg["train"]["epochs"] == EPOCHS and cfg["model"]["architecture_options"] == {}
    cfg["model"]["architecture_options"]["hidden"] = [1]  # a copy: the schema's defaults are untouched
    assert default_config()["model"]["architecture_options"] == {}


def test_describe_keys_lists_every_schema_key_with_its_default():
    text = describe_keys()
    lines = text.splitlines()
    assert len(lines) == len(SCHEMA)
    for key, line in zip(SCHEMA, lines):
        assert line.split()[0] == key.name
        assert "(default: " in line
    assert "train.epochs" in text and f"(default: {EPOCHS})" in text and '"discretized_logistic_mixture"' in text


# -- merging a TOML file and overrides --------------------------------------------------------------------------


def test_toml_file_and_overrides_merge(tiny, tmp_path):
    path = write_toml(tmp_path, textwrap.dedent("""
        seed = 7
        [data]
        name = "tiny"
        [data.options]
        n_train = 96
        [model]
        latent_dim = 3
        likelihood = "bernoulli"
        likelihood_options = {}
        [model.architecture_options]
        hidden = [16]
        activation = "relu"
        [train]
        epochs = 5
    """))
    cfg = load_config(path, ["train.epochs=9", "model.architecture_options.hidden=[8,8]", 'data.options.root="x"',
                             "train.lr=0.01"])
    assert cfg["seed"] == 7 and cfg["model"]["latent_dim"] == 3 and cfg["model"]["likelihood"] == "bernoulli"
    assert cfg["train"]["epochs"] == 9 and cfg["train"]["lr"] == 0.01
    # an override inside an option table sets that entry and keeps the file's others
    assert cfg["model"]["architecture_options"] == {"hidden": [8, 8], "activation": "relu"}
    assert cfg["data"]["options"] == {"n_train": 96, "root": "x"}
    assert cfg["model"]["likelihood_options"] == {}  # a whole table in the file replaces the default one
    assert cfg["train"]["beta"] == 1.0 and cfg["eval"]["iwae_samples"] == 100  # untouched defaults remain


def test_option_tables_start_empty_so_another_component_inherits_nothing(tiny):
    # each component brings its own option defaults: naming another architecture or likelihood does not
    # carry the default one's options (hidden widths, mixture components) into it
    for setting in ('model.architecture="conv"', 'model.likelihood="gaussian_learned"', 'model.likelihood="bernoulli"'):
        cfg = load_config(None, ['data.name="tiny"', setting])
        data = cvae.load_data(cfg)
        cvae.build_model(cfg, data.target, data.conditions)
    cfg = load_config(None, ['data.name="tiny"', 'model.architecture_options.activation="relu"'])
    assert cfg["model"]["architecture_options"] == {"activation": "relu"}
    data = cvae.load_data(cfg)
    model = cvae.build_model(cfg, data.target, data.conditions)
    widths = [m.out_features for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][:2]
    assert widths == [512, 256] and model.likelihood.k == 3  # the default model, as documented


def test_override_values_are_toml_and_a_bare_word_is_a_string(tiny):
    cfg = load_config(None, ["data.name=tiny", "train.progress=false", "train.beta=0.5", "conditions.label.encoder=tiny_onehot",
                             "train={epochs = 3, lr = 0.5}"])
    assert cfg["data"]["name"] == "tiny" and cfg["train"]["progress"] is False and cfg["train"]["beta"] == 0.5
    assert cfg["conditions"] == {"label": {"encoder": "tiny_onehot"}}
    assert cfg["train"]["epochs"] == 3 and cfg["train"]["lr"] == 0.5


# -- errors -----------------------------------------------------------------------------------------------------


def test_malformed_toml_names_the_file(tmp_path):
    path = write_toml(tmp_path, "[train\nepochs = 3\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: malformed TOML"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file .*nope.toml"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.parametrize("where", ["file", "override"])
def test_unknown_key_suggests_the_close_match(tmp_path, where):
    if where == "file":
        args = (write_toml(tmp_path, "[train]\nepoch = 3\n"), [])
    else:
        args = (None, ["train.epoch=3"])
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch': did you mean 'train.epochs'"):
        load_config(*args)


@pytest.mark.parametrize("override, needle", [
    ('train.epochs="ten"', r"train.epochs = 'ten': expected an integer"),
    ("train.epochs=ten", r"train.epochs = 'ten': expected an integer"),
    ("train.epochs=2.5", r"train.epochs = 2.5: expected an integer"),
    ("seed=true", r"seed = True: expected an integer"),
    ("train.lr=-1", r"train.lr = -1: must be finite and > 0"),
    ("train.lr=true", r"train.lr = True: expected a number"),
    ("train.beta=-0.5", r"train.beta = -0.5: must be finite and >= 0"),
    ("data.batch_size=0", r"data.batch_size = 0: must be > 0"),
    ("train.progress=1", r"train.progress = 1: expected true or false"),
    ("model.architecture_options=3", r"model.architecture_options = 3: expected a table"),
    ('eval.sample_mode="median"', r"eval.sample_mode = 'median': allowed are 'mean', 'sample'"),
    ('device="cpux"', r"device = 'cpux': allowed are 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"),
    ("conditions.label=3", r"conditions.label: expected a table with 'encoder' and/or 'options'"),
    ("conditions.label.encodr=x", r"conditions.label: expected a table with 'encoder' and/or 'options'"),
    ("data.options.root.sub=1", r"data.options.root.sub: 'root' is a value, not a table"),
    ("train.epochs", r"override 'train.epochs' is not of the form key=value"),
    ("=3", r"override '=3' is not of the form key=value"),
])
def test_bad_values_name_the_key_and_what_is_allowed(tiny, override, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_config(None, ['data.name="tiny"', 'data.options.root="r"', override])


@pytest.mark.parametrize("override, needle", [
    ("model.likelihood=bernouli", r"model.likelihood: unknown likelihood 'bernouli': did you mean 'bernoulli'"),
    ("model.prior=lerned", r"model.prior: unknown prior 'lerned': did you mean 'learned'"),
    ("data.name=tinny", r"data.name: unknown dataset 'tinny': did you mean 'tiny'"),
    ("train.schedule=linaer", r"train.schedule: unknown schedule 'linaer': did you mean 'linear'"),
    ("model.architecture=transformer", r"model.architecture: unknown architecture 'transformer': known: "),
])
def test_unknown_component_names_the_key_and_the_known_names(tiny, override, needle):
    with pytest.raises(UnknownComponentError, match=re.escape(needle)) as info:
        load_config(None, ['data.name="tiny"', override])
    assert isinstance(info.value, CVAEError) and isinstance(info.value, KeyError)


def test_validate_reports_a_missing_key():
    cfg = default_config()
    del cfg["train"]["lr"]
    with pytest.raises(ConfigError, match="missing config key 'train.lr'"):
        validate(cfg, AcceptingRegistry())


# -- properties ---------------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(epochs=st.integers(min_value=1, max_value=10**12))
def test_any_positive_epoch_count_round_trips_through_set(tiny, epochs):
    cfg = load_config(None, ['data.name="tiny"', f"train.epochs={epochs}"])
    assert cfg["train"]["epochs"] == epochs and type(cfg["train"]["epochs"]) is int


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(epochs=st.integers(max_value=0))
def test_non_positive_epoch_counts_are_rejected(tiny, epochs):
    with pytest.raises(ConfigError, match=rf"train.epochs = {epochs}: must be > 0"):
        load_config(None, ['data.name="tiny"', f"train.epochs={epochs}"])


_TABLES = tuple(k.name for k in SCHEMA if k.table)
_IDENT = set(string.ascii_letters + string.digits + "_.")


def _garbage(key: str) -> bool:
    """Not a schema key, not a path inside an option table, and not made of identifier characters only."""
    name = key.partition("=")[0].strip()
    return (bool(set(name) - _IDENT) or not name) and not name.startswith(tuple(t + "." for t in _TABLES))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.text(min_size=0, max_size=30).filter(_garbage))
def test_garbage_keys_are_rejected_with_a_cvae_error(key):
    cfg = default_config()
    with pytest.raises(CVAEError):  # never a KeyError, TypeError... from deeper down
        apply_overrides(cfg, [f"{key}=1"])
        validate(cfg, AcceptingRegistry())  # every component name passes: only the key can fail


def test_get_reads_dotted_keys():
    cfg = default_config()
    assert config_mod.get(cfg, "train.epochs") == EPOCHS and config_mod.get(cfg, "seed") == 0


@pytest.mark.parametrize("setting", ["train.beta=inf", "train.free_bits=inf", "train.lr=inf", "train.weight_decay=nan"])
def test_non_finite_weights_and_rates_are_config_errors(setting):
    with pytest.raises(ConfigError, match=rf"{re.escape(setting.split('=')[0])} = .*: must be finite"):
        load_config(None, [setting])


@pytest.mark.parametrize("overrides, says", [
    (['train.schedule="linear"', 'train.schedule_options.warmup_steps="abc"'],
     "option 'warmup_steps' = 'abc': expected a number (default 1000)"),
    (['model.architecture_options.hidden="abc"'], "option 'hidden' = 'abc': expected a list (default [512, 256])"),
    (['train.schedule="kl_target"', 'train.schedule_options.target_kl="abc"'], "target_kl must be a number > 0"),
])
def test_text_where_an_option_wants_a_number_or_a_list_is_named(tmp_path, overrides, says):
    from cvae.train import Trainer

    with pytest.raises(CVAEError, match=re.escape(says)):
        Trainer(load_config(None, [*overrides, "train.progress=false"]), tmp_path / "run")


def test_a_device_name_torch_does_not_know_is_a_clear_error():
    from cvae.build import resolve_device

    with pytest.raises(CVAEError, match=r"device 'gpu' is not a device; use 'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("gpu")
