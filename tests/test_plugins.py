"""The plugin manager: in-process plugins, installed distributions (faked in tmp_path), failures,
environment selection, hook validation, duplicate and unknown names."""

from __future__ import annotations

import importlib
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import cvae
import cvae.builtin
from cvae import LikelihoodSpec, PluginError, PriorSpec, TargetInfo, UnknownComponentError
from cvae.likelihoods import GaussianFixed


@pytest.fixture(autouse=True)
def plugins(fresh_plugins):
    """Every test here starts from a fresh plugin manager and leaves one behind."""
    return fresh_plugins


@pytest.fixture
def fake_modules():
    """Names of fake plugin modules to drop from sys.modules afterwards, so no test sees another's."""
    names: list[str] = []
    yield names
    for name in names:
        sys.modules.pop(name, None)
    importlib.invalidate_caches()


FAKE_PLUGIN = '''
import cvae
from cvae.likelihoods import GaussianFixed


class Wide(GaussianFixed):
    """A Gaussian with sigma 2 by default."""

    def __init__(self, target, sigma=2.0):
        super().__init__(target, sigma)


@cvae.hookimpl
def cvae_likelihoods():
    return [cvae.LikelihoodSpec("fake_wide", Wide, "a wide Gaussian")]
'''


def make_dist(root: Path, fake_modules: list[str], dist: str, version: str, entry_points: dict[str, str],
              modules: dict[str, str]) -> None:
    """An installed distribution as importlib.metadata sees it: a .dist-info folder plus its modules."""
    info = root / f"{dist}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[cvae]\n{lines}")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))
        fake_modules.append(module)


@pytest.fixture
def fakeplug(tmp_path, monkeypatch, fake_modules, plugins):
    """`fakeplug` 1.2.3 installed on sys.path, with one entry point `fake`."""
    make_dist(tmp_path, fake_modules, "fakeplug", "1.2.3", {"fake": "fake_cvae_plugin"},
              {"fake_cvae_plugin": FAKE_PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins.reset()
    return tmp_path


def make_plugin(name: str, **hooks) -> types.ModuleType:
    """A plugin module built in memory, each hook marked with `cvae.hookimpl`."""
    module = types.ModuleType(name)
    for hook_name, fn in hooks.items():
        setattr(module, hook_name, cvae.hookimpl(fn))
    return module


def records(plugins) -> dict[str, object]:
    return {r.name: r for r in plugins.plugin_records()}


class Narrow(GaussianFixed):
    def __init__(self, target, sigma=0.05):
        super().__init__(target, sigma)


# -- (a) in-process registration -----------------------------------------------------------------------------


def test_in_process_plugin_contributes_a_likelihood(plugins):
    plugin = make_plugin("narrow_plugin", cvae_likelihoods=lambda: [LikelihoodSpec("narrow", Narrow, "sigma 0.05")])
    cvae.register_plugin(plugin)
    spec = cvae.get_registry().get("likelihood", "narrow")
    assert spec.plugin == "narrow_plugin" and spec.description == "sigma 0.05"
    lik = spec.build(TargetInfo((3,)), options={"sigma": 0.5})
    assert isinstance(lik, Narrow) and lik.sigma == 0.5
    mu, y = torch.zeros(2, 1, 3), torch.ones(2, 3)
    torch.testing.assert_close(lik.log_prob(mu, y), torch.distributions.Normal(0.0, 0.5).log_prob(y).sum(1))
    rec = records(plugins)["narrow_plugin"]
    assert rec.distribution == "registered in-process" and rec.hooks == ("cvae_likelihoods",)
    assert cvae.get_registry().contributed_by("narrow_plugin") == {"likelihood": ["narrow"]}
    assert "bernoulli" in cvae.get_registry().names("likelihood")  # the built-ins are still there


def test_unregister_plugin(plugins):
    cvae.register_plugin(make_plugin("p", cvae_likelihoods=lambda: [LikelihoodSpec("narrow", Narrow)]))
    assert "narrow" in cvae.get_registry().names("likelihood")
    cvae.unregister_plugin("p")
    assert "narrow" not in cvae.get_registry().names("likelihood")
    assert "p" not in records(plugins)
    with pytest.raises(PluginError, match="no plugin named 'p'"):
        cvae.unregister_plugin("p")


def test_registering_a_plugin_twice_is_an_error(plugins):
    plugin = make_plugin("twice", cvae_likelihoods=lambda: [])
    cvae.register_plugin(plugin)
    with pytest.raises(PluginError, match="'twice' is already registered"):
        cvae.register_plugin(make_plugin("twice"))


def test_registering_a_loaded_module_again_leaves_it_in_place(plugins, monkeypatch):
    monkeypatch.setenv("CVAE_PLUGINS", "core")
    plugins.reset()
    with pytest.raises(PluginError, match="already registered as 'core'"):
        cvae.register_plugin(cvae.builtin)
    assert "bernoulli" in cvae.get_registry().names("likelihood")
    assert "cvae_likelihoods" in records(plugins)["core"].hooks


def test_lifecycle_hooks_reach_plugins(plugins):
    seen = []
    cvae.register_plugin(make_plugin("logger", cvae_step_end=lambda trainer, step, losses: seen.append((step, losses))))
    plugins.call_hook("cvae_step_end", trainer=None, step=7, losses={"loss": 1.5})
    assert seen == [(7, {"loss": 1.5})]


# -- (b) installed distributions, through importlib.metadata ---------------------------------------------------


def test_installed_distribution_is_discovered(plugins, fakeplug):
    rec = records(plugins)["fake"]
    assert rec.distribution == "fakeplug" and rec.version == "1.2.3"
    assert rec.hooks == ("cvae_likelihoods",)
    spec = cvae.get_registry().get("likelihood", "fake_wide")
    assert spec.plugin == "fake"
    lik = spec.build(TargetInfo((2,)))
    assert lik.sigma == 2.0 and lik.log_prob(torch.zeros(1, 1, 2), torch.zeros(1, 2)).shape == (1,)
    assert records(plugins)["core"].distribution == "cvae"
    assert plugins.plugin_failures() == [] or all(f.name != "fake" for f in plugins.plugin_failures())


def test_entry_points_to_the_same_module_do_not_break_the_first(plugins, tmp_path, monkeypatch, fake_modules):
    make_dist(tmp_path, fake_modules, "fakeplug", "1.2.3", {"fake": "fake_cvae_plugin", "fake_again": "fake_cvae_plugin"},
              {"fake_cvae_plugin": FAKE_PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CVAE_PLUGINS", "core,fake,fake_again")
    plugins.reset()
    assert cvae.get_registry().get("likelihood", "fake_wide").plugin == "fake"
    failures = {f.name: f for f in plugins.plugin_failures()}
    assert "already registered as 'fake'" in failures["fake_again"].reason


# -- (c) failures at import ---------------------------------------------------------------------------------------


@pytest.fixture
def brokenplug(tmp_path, monkeypatch, fake_modules, plugins):
    make_dist(tmp_path, fake_modules, "brokenplug", "0.1", {"broken": "broken_cvae_plugin"},
              {"broken_cvae_plugin": "raise RuntimeError('boom: a missing dependency')\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CVAE_PLUGINS", "core,broken")
    plugins.reset()


def test_plugin_failing_at_import_is_skipped_and_reported(plugins, brokenplug):
    assert "bernoulli" in cvae.get_registry().names("likelihood")
    assert "broken" not in records(plugins)
    (failure,) = plugins.plugin_failures()
    assert failure.name == "broken" and failure.distribution == "brokenplug"
    assert "RuntimeError" in failure.reason and "boom: a missing dependency" in failure.reason


def test_strict_mode_turns_a_failing_plugin_into_an_error(plugins, brokenplug, monkeypatch):
    monkeypatch.setenv("CVAE_STRICT_PLUGINS", "1")
    plugins.reset()
    with pytest.raises(PluginError, match=r"plugin 'broken' from brokenplug failed to load: .*boom"):
        cvae.get_registry()


# -- (d) duplicate names --------------------------------------------------------------------------------------------


def test_duplicate_component_names_name_both_plugins(plugins):
    cvae.register_plugin(make_plugin("first_plugin", cvae_likelihoods=lambda: [LikelihoodSpec("dup", Narrow)]))
    cvae.register_plugin(make_plugin("second_plugin", cvae_likelihoods=lambda: [LikelihoodSpec("dup", Narrow)]))
    with pytest.raises(PluginError, match=r"likelihood 'dup' .*'first_plugin'.*'second_plugin'"):
        cvae.get_registry()


def test_clash_with_a_built_in_names_the_built_in(plugins, monkeypatch):
    monkeypatch.setenv("CVAE_PLUGINS", "core")
    plugins.reset()
    cvae.register_plugin(make_plugin("mine", cvae_priors=lambda: [PriorSpec("standard", object)]))
    with pytest.raises(PluginError, match=r"prior 'standard' .*'core'.*'mine'"):
        cvae.get_registry()


# -- (e) selecting and disabling plugins -------------------------------------------------------------------------


def test_disable_plugins(plugins, fakeplug, monkeypatch):
    assert "fake" in records(plugins)
    monkeypatch.setenv("CVAE_DISABLE_PLUGINS", "fake")
    plugins.reset()
    assert "fake" not in records(plugins) and "core" in records(plugins)
    with pytest.raises(UnknownComponentError):
        cvae.get_registry().get("likelihood", "fake_wide")


def test_only_listed_plugins(plugins, fakeplug, monkeypatch):
    monkeypatch.setenv("CVAE_PLUGINS", "core,fake")
    plugins.reset()
    assert set(records(plugins)) == {"core", "fake"}
    monkeypatch.setenv("CVAE_PLUGINS", "core")
    plugins.reset()
    assert set(records(plugins)) == {"core"}
    assert "fake_wide" not in cvae.get_registry().names("likelihood")


@pytest.mark.parametrize("variable", ["CVAE_PLUGINS", "CVAE_DISABLE_PLUGINS"])
def test_a_name_no_installed_plugin_has_is_reported(plugins, fakeplug, monkeypatch, variable):
    monkeypatch.setenv(variable, "core,faek")  # a typo would otherwise load, or keep, the wrong plugins
    plugins.reset()
    (failure,) = plugins.plugin_failures()
    assert failure.name == "faek" and f"{variable} names it" in failure.reason and "did you mean 'fake'" in failure.reason
    monkeypatch.setenv("CVAE_STRICT_PLUGINS", "1")
    plugins.reset()
    with pytest.raises(PluginError, match=rf"plugin 'faek': {variable} names it"):
        cvae.get_registry()


def test_third_party_plugins_can_be_skipped(plugins, fakeplug, monkeypatch):
    monkeypatch.setenv("CVAE_LOAD_THIRD_PARTY", "0")
    plugins.reset()
    recs = records(plugins)
    assert "fake" not in recs and "core" in recs
    assert all(r.distribution == "cvae" for r in recs.values())


# -- (f) hook implementations that do not fit -----------------------------------------------------------------------


@pytest.mark.parametrize("marked", [True, False])
def test_misspelled_hook_is_rejected_naming_the_plugin(plugins, marked):
    plugin = types.ModuleType("typo_plugin")

    def cvae_likelihood():  # singular: not a hook
        return [LikelihoodSpec("typo", Narrow)]

    plugin.cvae_likelihood = cvae.hookimpl(cvae_likelihood) if marked else cvae_likelihood
    with pytest.raises(PluginError, match=r"'typo_plugin'.*cvae_likelihood"):
        cvae.register_plugin(plugin)
    assert "typo_plugin" not in records(plugins)
    assert "bernoulli" in cvae.get_registry().names("likelihood")  # the manager is still usable


def test_wrong_argument_name_is_rejected_naming_the_plugin(plugins):
    def cvae_step_end(trainer, step, loss):  # the hook passes `losses`
        pass

    with pytest.raises(PluginError, match=r"(?s)'argname_plugin'.*cvae_step_end.*'loss'"):
        cvae.register_plugin(make_plugin("argname_plugin", cvae_step_end=cvae_step_end))
    assert "argname_plugin" not in records(plugins)
    plugins.call_hook("cvae_step_end", trainer=None, step=1, losses={})  # nothing half-registered is left


def test_misspelled_hook_in_an_installed_plugin_is_reported(plugins, tmp_path, monkeypatch, fake_modules):
    make_dist(tmp_path, fake_modules, "typoplug", "2.0", {"typo": "typo_cvae_plugin"},
              {"typo_cvae_plugin": "def cvae_prior():\n    return []\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("CVAE_PLUGINS", "core,typo")
    plugins.reset()
    failures = {f.name: f for f in plugins.plugin_failures()}
    assert "cvae_prior" in failures["typo"].reason and failures["typo"].distribution == "typoplug"
    assert "typo" not in records(plugins)


# -- (g) unknown names ------------------------------------------------------------------------------------------------


def test_unknown_component_lists_close_matches(plugins):
    with pytest.raises(UnknownComponentError, match=r"unknown likelihood 'bernouli': did you mean 'bernoulli'"):
        cvae.get_registry().get("likelihood", "bernouli")
    with pytest.raises(KeyError):  # also a KeyError, for code that looks names up like a dict
        cvae.get_registry().get("prior", "lerned")
    with pytest.raises(UnknownComponentError, match=r"unknown component kind 'priors': did you mean 'prior'"):
        cvae.get_registry().names("priors")


# -- (h) hooks that break the contract ---------------------------------------------------------------------------------


@pytest.mark.parametrize("result, needle", [
    (LikelihoodSpec("single", Narrow), "must return a list of LikelihoodSpec, got LikelihoodSpec"),
    ({"single": Narrow}, "must return a list of LikelihoodSpec, got dict"),
    ([PriorSpec("wrong_kind", Narrow)], "expected LikelihoodSpec records"),
    (["narrow"], "expected LikelihoodSpec records"),
])
def test_bad_hook_results_name_the_plugin(plugins, result, needle):
    cvae.register_plugin(make_plugin("bad_plugin", cvae_likelihoods=lambda: result))
    with pytest.raises(PluginError, match=rf"plugin 'bad_plugin': cvae_likelihoods .*{needle}"):
        cvae.get_registry()


def test_hook_raising_names_the_plugin(plugins):
    def cvae_priors():
        raise ValueError("oops")

    cvae.register_plugin(make_plugin("raising_plugin", cvae_priors=cvae_priors))
    with pytest.raises(PluginError, match=r"plugin 'raising_plugin' raised in cvae_priors: ValueError\('oops'\)"):
        cvae.get_registry()


def test_a_missing_required_option_is_named_before_the_factory_runs(fresh_plugins):
    from cvae.registry import check_options

    def load(path: str, *, size: int = 8):
        raise AssertionError("never called")

    spec = cvae.DatasetSpec("needs_path", load, "a dataset that needs a file")
    with pytest.raises(cvae.ConfigError, match=r"data.options \(dataset 'needs_path'\): required option 'path' is "
                                               r"missing; set it, for example --set data.options.path=\.\.\."):
        spec.build(options={"size": 4}, where="data.options (dataset 'needs_path')")
    with pytest.raises(cvae.ConfigError, match=r"^needs_path: required option 'path' is missing$"):
        spec.build(options={})
    check_options(load, {"path": "x"}, "data.options")  # given: accepted
    check_options(lambda target, *, sigma: None, {"sigma": 1.0}, "model.likelihood_options", positional=1)


def test_bc_demos_without_a_path_is_a_one_line_error(fresh_plugins, capsys, tmp_path):
    from cvae.cli import main

    code = main(["train", "--set", "data.name=bc_demos", "--set", "model.likelihood=gaussian_learned",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "data.options (dataset 'bc_demos'): required option 'path' is missing" in err


def test_an_unknown_name_says_which_plugins_failed_or_were_left_out(fresh_plugins, monkeypatch):
    monkeypatch.setenv("CVAE_DISABLE_PLUGINS", "bc")
    fresh_plugins.reset()
    with pytest.raises(UnknownComponentError, match=r"unknown dataset 'bc_demos': .*left out by the environment: "
                                                     r"'bc' \(CVAE_DISABLE_PLUGINS\) \(see `cvae plugins`\)"):
        cvae.get_registry().get("dataset", "bc_demos")
    state = fresh_plugins._get_state()
    state.failures.append(fresh_plugins.PluginFailure("laplace", "cvae-laplace", "ModuleNotFoundError: No module named 'x'"))
    state.registry = None
    with pytest.raises(UnknownComponentError, match=r"unknown likelihood 'laplace': .*plugin 'laplace' failed to load "
                                                     r"\(ModuleNotFoundError: No module named 'x'\)"):
        cvae.get_registry().get("likelihood", "laplace")
    monkeypatch.delenv("CVAE_DISABLE_PLUGINS")
    fresh_plugins.reset()
    with pytest.raises(UnknownComponentError) as plain:
        cvae.get_registry().get("likelihood", "nope")
    assert "left out" not in str(plain.value) and "failed to load" not in str(plain.value)


def test_a_misspelt_required_option_is_named_as_unknown_with_its_match(fresh_plugins):
    spec = cvae.DatasetSpec("needs_path", lambda path, size=8: None, "a dataset that needs a file")
    with pytest.raises(cvae.ConfigError, match=r"unknown option 'pth'; did you mean 'path'"):
        spec.build(options={"pth": "x"}, where="data.options (dataset 'needs_path')")
