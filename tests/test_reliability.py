"""Hostile input, end to end: property-based config and `--set` parsing; plugins that exit, crash in a lifecycle
hook or are slow to import; datasets with NaNs, wrong dtypes, out-of-range labels or no examples; corrupt,
truncated, foreign and malicious checkpoints given to `--resume`. Each is a one-line error with exit code 2 from
the command line (no traceback), and nothing already written is changed or lost."""

from __future__ import annotations

import hashlib
import math
import os
import sys
import textwrap
import time
import tomllib
import types

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cvae
from cvae import ConfigError, CVAEError
from cvae.checkpoint import FORMAT, latest_checkpoint, list_checkpoints
from cvae.cli import main
from cvae.config import SCHEMA, apply_overrides, default_config, load_config, validate
from conftest import TINY_SETTINGS, load_tiny
from faults import differences, final_state

SETS = [arg for item in TINY_SETTINGS for arg in ("--set", item)]
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str, *needles: str) -> str:
    """The single error line in `err` (after a "starting/resuming" line, if any), checked for every needle."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if not line.startswith("cvae train: starting")
             and not line.startswith("cvae train: resuming")]
    assert len(lines) == 1, err
    assert ": error: " in lines[0], lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def snapshot(run_dir) -> dict[str, str]:
    """Every file of a run directory and a hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


class AcceptingRegistry:
    """Every component name exists: only keys and values are judged."""

    def get(self, kind: str, name: str) -> object:
        return object()


# -- config and --set: properties -------------------------------------------------------------------------------------


def _valid_values(key) -> st.SearchStrategy:
    if key.choices:
        return st.sampled_from(key.choices)
    if key.type is bool:
        return st.booleans()
    if key.type is int:
        low = 1 if key.check_doc == "> 0" else 0 if key.check_doc == ">= 0" else -(2**40)
        return st.integers(min_value=low, max_value=2**40)
    if key.type == (int, float):
        low = {"> 0": 1e-9, "finite and > 0": 1e-9, ">= 0": 0.0, "finite and >= 0": 0.0}.get(key.check_doc, -1e6)
        numbers = st.one_of(st.floats(min_value=low, max_value=1e6, allow_nan=False, allow_infinity=False,
                                      allow_subnormal=False), st.integers(min_value=math.ceil(low), max_value=2**40))
        return numbers.filter(key.check) if key.check else numbers  # a rule beyond a bound (data.validation)
    return st.nothing()


@pytest.fixture(autouse=True)
def _ieee_floats():
    """A trainer flushes subnormal floats to zero process-wide (train.fast); hypothesis needs IEEE floats."""
    torch.set_flush_denormal(False)


_SCALARS = [k for k in SCHEMA if not k.table and k.component is None and k.name != "device"]


def _toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


@PROPERTY
@given(data=st.data())
def test_any_valid_value_of_any_key_round_trips_through_set_and_toml(data, tmp_path_factory):
    keys = data.draw(st.lists(st.sampled_from(_SCALARS), min_size=1, max_size=6, unique_by=lambda k: k.name))
    values = {k.name: data.draw(_valid_values(k)) for k in keys}
    if (values.get("train.keep_best") or values.get("train.patience")) and not values.get("data.validation"):
        values["data.validation"] = 0.1  # the one rule across keys: they pick epochs on a validation split
    cfg = apply_overrides(default_config(), [f"{name}={_toml(v)}" for name, v in values.items()])
    validate(cfg, AcceptingRegistry())
    for name, value in values.items():
        got = cvae.config.get(cfg, name)
        assert got == value and type(got) is type(value), (name, value, got)
    # the same values from a TOML file give the same config
    text = "".join(f"{name} = {_toml(v)}\n" for name, v in values.items() if "." not in name)
    for section in {n.split(".")[0] for n in values if "." in n}:
        text += f"[{section}]\n" + "".join(f"{n.split('.', 1)[1]} = {_toml(v)}\n" for n, v in values.items()
                                           if n.startswith(section + "."))
    path = tmp_path_factory.mktemp("toml") / "run.toml"
    path.write_text(text)
    assert tomllib.loads(text)  # well-formed
    from_file = default_config()
    cvae.config.merge(from_file, tomllib.loads(text))
    assert from_file == cfg


@PROPERTY
@given(key=st.sampled_from([k for k in SCHEMA if not k.table]), text=st.text(max_size=20))
def test_any_text_for_any_key_is_accepted_or_a_cvae_error_naming_the_key(key, text):
    cfg = default_config()
    try:
        apply_overrides(cfg, [f"{key.name}={text}"])
        validate(cfg, AcceptingRegistry())
    except CVAEError as exc:
        assert key.name in str(exc) or "override" in str(exc) or "table" in str(exc), str(exc)


@PROPERTY
@given(key=st.sampled_from([k for k in SCHEMA if k.type is int and not k.choices]),
       value=st.one_of(st.text(alphabet="abcxyz", min_size=1, max_size=5), st.floats(allow_nan=False, allow_subnormal=False).filter(
           lambda v: not float(v).is_integer()), st.booleans()))
def test_a_wrongly_typed_value_names_the_key_and_the_type_expected(key, value):
    with pytest.raises(ConfigError, match=rf"^{key.name} = .*: expected an integer$"):
        validate(apply_overrides(default_config(), [f"{key.name}={_toml(value)}"]), AcceptingRegistry())


@PROPERTY
@given(options=st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True),
                               st.one_of(st.integers(-100, 100), st.booleans(), st.text("abc", max_size=4)), max_size=4))
def test_an_inline_table_override_replaces_an_option_table_and_a_dotted_one_adds_to_it(options, tiny):
    table = "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in options.items()) + "}"
    cfg = apply_overrides(default_config(), [f"data.options={table}", "data.options.extra=1"])
    assert cfg["data"]["options"] == {**options, "extra": 1}


def test_set_without_an_equals_sign_and_a_missing_file_exit_2(tiny, capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--set", "train.epochs", "--out", tmp_path / "a")
    assert code == 2
    one_line_error(err, "'train.epochs' is not of the form key=value")
    code, _, err = run_cli(capsys, "train", tmp_path / "nope.toml", "--out", tmp_path / "b")
    assert code == 2
    one_line_error(err, "cannot read config file", "nope.toml")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# -- hostile plugins --------------------------------------------------------------------------------------------------


def make_dist(root, dist: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[cvae]\n" + "".join(f"{n} = {t}\n" for n, t in entry_points.items()))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def hostile(tmp_path, monkeypatch, fresh_plugins):
    """Installed distributions: one whose import calls sys.exit, one that sleeps 0.5 s at import; both leave a
    marker file when imported."""
    marker = tmp_path / "imported"
    make_dist(tmp_path, "exitplug", {"exiter": "exiting_cvae_plugin"},
              {"exiting_cvae_plugin": f"open({str(marker)!r} + '-exiter', 'w').close()\nimport sys\nsys.exit(3)\n"})
    make_dist(tmp_path, "slowplug", {"slow": "slow_cvae_plugin"},
              {"slow_cvae_plugin": f"""
                   import time
                   open({str(marker)!r} + '-slow', 'w').close()
                   time.sleep(0.5)
                   import cvae
                   from cvae.likelihoods import GaussianFixed

                   @cvae.hookimpl
                   def cvae_likelihoods():
                       return [cvae.LikelihoodSpec("slow_gaussian", GaussianFixed, "a Gaussian that took a while")]
                   """})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CVAE_PLUGINS", "core,exiter,slow")
    fresh_plugins.reset()
    yield marker
    for name in ("exiting_cvae_plugin", "slow_cvae_plugin"):
        sys.modules.pop(name, None)


def test_a_plugin_that_exits_at_import_is_reported_and_a_slow_one_still_loads(hostile, capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    assert "FAILED exiter  (exitplug): SystemExit: 3" in out
    assert "slow  (slowplug 0.1)" in out and "likelihood: slow_gaussian" in out


@pytest.mark.parametrize("env", [{"CVAE_LOAD_THIRD_PARTY": "0"}, {"CVAE_DISABLE_PLUGINS": "exiter,slow"},
                                 {"CVAE_PLUGINS": ""}])
def test_switched_off_plugins_are_never_imported(hostile, monkeypatch, capsys, env):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    cvae.plugins.reset()
    start = time.perf_counter()
    code, out, _ = run_cli(capsys, "plugins", "--json")
    assert code == 0 and time.perf_counter() - start < 0.5
    assert not list(hostile.parent.glob("imported-*"))  # neither module ran a line
    names = [p["name"] for p in __import__("json").loads(out)["plugins"]]
    assert names == ([] if env.get("CVAE_PLUGINS") == "" else ["core"])


def test_a_lifecycle_hook_that_raises_is_a_one_line_error_naming_the_plugin_and_the_run_resumes(
        tiny, lifecycle_plugin, capsys, tmp_path):
    args = [*SETS, "--set", "train.epochs=3", "--set", "eval.iwae_samples=2"]
    assert run_cli(capsys, "train", *args, "--out", tmp_path / "clean")[0] == 0

    def cvae_epoch_end(trainer, epoch, metrics):
        if epoch == 2:
            raise ValueError("the logger's disk is full")

    plugin = lifecycle_plugin("flaky_logger", cvae_epoch_end=cvae_epoch_end)
    code, _, err = run_cli(capsys, "train", *args, "--out", tmp_path / "run")
    assert code == 2
    one_line_error(err, "plugin 'flaky_logger' raised in cvae_epoch_end: ValueError(\"the logger's disk is full\")")
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "checkpoints")] == ["step-000000006.pt"]
    cvae.unregister_plugin(plugin.__name__)
    assert run_cli(capsys, "train", *args, "--out", tmp_path / "run", "--resume")[0] == 0
    assert differences(final_state(tmp_path / "clean"), final_state(tmp_path / "run")) == []


def test_a_hook_returning_the_wrong_type_is_a_one_line_error(tiny, capsys, tmp_path):
    wrong = types.ModuleType("wrong_plugin")
    wrong.cvae_schedules = cvae.hookimpl(lambda: "linear")
    cvae.register_plugin(wrong)
    code, _, err = run_cli(capsys, "train", *SETS, "--out", tmp_path / "run")
    assert code == 2
    one_line_error(err, "plugin 'wrong_plugin': cvae_schedules must return a list of ScheduleSpec, got str")
    assert not (tmp_path / "run").exists()


# -- hostile datasets -------------------------------------------------------------------------------------------------


def _nan(bundle):
    bundle.train.y[3, 0, 1, 1] = float("nan")


def _int_targets(bundle):
    bundle.train.y = bundle.train.y.round().long()


def _labels_out_of_range(bundle):
    bundle.train.conditions["label"][5] = 7


def _float_labels(bundle):
    bundle.train.conditions["label"] = bundle.train.conditions["label"].float()


def _empty(bundle):
    bundle.train.y, bundle.train.conditions["label"] = bundle.train.y[:0], bundle.train.conditions["label"][:0]


def _wrong_shape(bundle):
    bundle.train.y = bundle.train.y[..., :3]


def _not_a_bundle(bundle):
    return {"train": bundle.train}


SPOILS = {
    "NaN targets": (_nan, ["targets contain NaN or infinite values (examples [3]"]),
    "integer targets": (_int_targets, ["targets must be a floating-point tensor, got torch.int64"]),
    "labels out of range": (_labels_out_of_range, ["condition 'label' has labels in [0, 7]; allowed are 0..2"]),
    "float labels": (_float_labels, ["condition 'label' holds class indices and must be an integer tensor"]),
    "no examples": (_empty, ["the dataset is empty; it needs at least one example"]),
    "wrong shape": (_wrong_shape, ["targets have shape (1, 4, 3) per example; the dataset declares (1, 4, 4)"]),
    "not a DataBundle": (_not_a_bundle, ["dataset 'spoilt' (plugin 'spoilt_plugin') returned dict, not a cvae.DataBundle"]),
}


def spoilt_loader(spoil):
    """A dataset plugin's loader that builds the tiny data, spoils it, and validates it as a plugin would."""

    def load():
        bundle = load_tiny()
        changed = spoil(bundle)
        if changed is not None:
            return changed
        train = bundle.train
        bundle.train = cvae.TensorData(train.y, train.conditions, bundle.target, bundle.conditions, name="spoilt train")
        return bundle

    return load


@pytest.mark.parametrize("kind", SPOILS)
def test_a_spoilt_dataset_is_a_one_line_error_and_writes_nothing(tiny, capsys, tmp_path, kind):
    spoil, needles = SPOILS[kind]
    plugin = types.ModuleType("spoilt_plugin")
    plugin.cvae_datasets = cvae.hookimpl(lambda: [cvae.DatasetSpec("spoilt", spoilt_loader(spoil), "spoilt tiny data")])
    cvae.register_plugin(plugin)
    code, _, err = run_cli(capsys, "train", *SETS, "--set", 'data.name="spoilt"', "--out", tmp_path / "run")
    assert code == 2
    one_line_error(err, *needles)
    assert not (tmp_path / "run").exists()


def test_a_dataset_spoilt_between_runs_leaves_the_run_as_it_was(tiny, capsys, tmp_path):
    state = {"spoil": None}

    def load():
        bundle = load_tiny()
        if state["spoil"]:
            state["spoil"](bundle)
            train = bundle.train
            bundle.train = cvae.TensorData(train.y, train.conditions, bundle.target, bundle.conditions, name="train")
        return bundle

    plugin = types.ModuleType("changing_plugin")
    plugin.cvae_datasets = cvae.hookimpl(lambda: [cvae.DatasetSpec("changing", load, "tiny data that changes")])
    cvae.register_plugin(plugin)
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *SETS, "--set", 'data.name="changing"', "--set", "train.epochs=1", "--out", out)[0] == 0
    before = snapshot(out)
    state["spoil"] = _nan
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--set", "train.epochs=2")
    assert code == 2
    one_line_error(err, "targets contain NaN or infinite values")
    assert snapshot(out) == before


# -- hostile checkpoints given to --resume and eval -------------------------------------------------------------------


class Exploit:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _truncate(path, tmp_path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _garbage(path, tmp_path):
    path.write_bytes(os.urandom(4096))


def _foreign(path, tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 4}, path)


def _malicious(path, tmp_path):
    state = torch.load(path, weights_only=True)
    state["schedule"] = {"payload": Exploit(tmp_path / "pwned")}
    torch.save(state, path)


BAD_CHECKPOINTS = {
    "truncated": (_truncate, "is corrupt, truncated or not a cvae checkpoint"),
    "random bytes": (_garbage, "is corrupt, truncated or not a cvae checkpoint"),
    "foreign": (_foreign, f"is not a cvae checkpoint (no '{FORMAT}' marker)"),
    "malicious": (_malicious, "holds pickled objects other than tensors and plain containers"),
}


@pytest.mark.parametrize("kind", BAD_CHECKPOINTS)
@pytest.mark.parametrize("command", ["resume", "eval", "sample"])
def test_a_bad_newest_checkpoint_is_refused_runs_nothing_and_changes_nothing(tiny, capsys, tmp_path, kind, command):
    spoil, needle = BAD_CHECKPOINTS[kind]
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *SETS, "--out", out)[0] == 0
    newest = latest_checkpoint(out / "checkpoints")
    spoil(newest, tmp_path)
    assert not (tmp_path / "pwned").exists()
    before = snapshot(out)
    argv = {"resume": ["train", "--out", out, "--resume", "--set", "train.epochs=3"],
            "eval": ["eval", out], "sample": ["sample", out, "--out", tmp_path / "grid.png"]}[command]
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    line = one_line_error(err, str(newest), needle)
    assert "the previous checkpoint" in line and "step-000000006.pt is kept" in line
    assert not (tmp_path / "pwned").exists(), "the checkpoint ran code"
    assert snapshot(out) == before and not (tmp_path / "grid.png").exists()


def test_the_malicious_checkpoint_really_would_run_code_under_plain_torch_load(tiny, capsys, tmp_path):
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *SETS, "--out", out)[0] == 0
    path = latest_checkpoint(out / "checkpoints")
    _malicious(path, tmp_path)
    torch.load(path, weights_only=False)
    assert (tmp_path / "pwned").exists()


def test_a_config_json_that_is_not_json_with_no_checkpoint_is_a_one_line_error(tiny, capsys, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{ not json")
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume")
    assert code == 2
    one_line_error(err, "config.json is unreadable", "start the run again without --resume")
    assert (out / "config.json").read_text() == "{ not json"


def test_non_finite_values_in_a_checkpoint_state_do_not_pass_silently(tiny, capsys, tmp_path):
    """A checkpoint whose weights are NaN (a disk bit flip, a bad edit) fails at the first step with a message
    naming the step and term, exit 1, and keeps the checkpoints as they were."""
    out = tmp_path / "run"
    assert run_cli(capsys, "train", *SETS, "--out", out)[0] == 0
    path = latest_checkpoint(out / "checkpoints")
    state = torch.load(path, weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.full_like(state["model"][first], math.nan)
    torch.save(state, path)
    code, _, err = run_cli(capsys, "train", "--out", out, "--resume", "--set", "train.epochs=3")
    assert code == 1 and "Traceback" not in err
    assert "step 12 (epoch 3, batch 0)" in err and "not finite" in err
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000006.pt", "step-000000012.pt"]


def test_array_conditions_from_files_are_checked(tmp_path):
    """`cvae sample --condition visible=FILE.npy`: the file must hold one plain array of the right shape."""
    import numpy as np

    from cvae.data import load_array

    np.save(tmp_path / "ok.npy", np.ones((2, 3)))
    assert load_array(str(tmp_path / "ok.npy"), (2, 3), "image condition").dtype == torch.float32
    np.save(tmp_path / "wrong.npy", np.ones((3, 2)))
    with pytest.raises(cvae.CVAEError, match=r"image condition .*shape \(3, 2\), expected \(2, 3\)"):
        load_array(str(tmp_path / "wrong.npy"), (2, 3), "image condition")
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(cvae.CVAEError, match=r"give the path of a \.npy file"):
        load_array(str(tmp_path / "pickled.npy"), (1,), "image condition")
    with pytest.raises(cvae.CVAEError, match=r"give the path of a \.npy file"):
        load_array(str(tmp_path / "missing.npy"), (1,), "image observation")
