"""The README stays true: every config key documented, the plugin example verbatim, its commands real."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cvae.config import SCHEMA

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXAMPLE = ROOT / "examples" / "cvae-laplace"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_every_config_key_is_in_the_readme_table():
    table = README.partition("| key | default | meaning |")[2].partition("\n\n")[0]
    documented = set(re.findall(r"^\| `([\w.]+)` \|", table, flags=re.M))
    assert documented == {k.name for k in SCHEMA}


def test_the_readme_names_exactly_the_keys_a_resume_may_change():
    from cvae.train import RESUMABLE_KEYS

    sentence = README.partition("A resumed run keeps its configuration")[2].partition("\n\n")[0]
    named = set(re.findall(r"`([\w.*]+)`", sentence))
    sections = {n[:-2] for n in named if n.endswith(".*")}
    in_sections = {k.name for k in SCHEMA if k.name.split(".")[0] in sections}  # `eval.*`: every eval key
    assert (named - {f"{s}.*" for s in sections}) | in_sections == set(RESUMABLE_KEYS)


def test_the_plugin_example_is_the_shipped_package():
    assert (EXAMPLE / "pyproject.toml").read_text().strip() in [b.strip() for b in _blocks("toml")]
    assert (EXAMPLE / "cvae_laplace" / "__init__.py").read_text().strip() in [b.strip() for b in _blocks("python")]


def test_the_two_setup_commands():
    bash = "\n".join(_blocks("bash"))
    assert "pip install -e . && cvae train --out runs/digits" in bash
    assert 'pip install -e ".[test]" && pytest' in bash
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in ci and "pytest" in ci


@pytest.mark.slow
def test_a_separately_installed_plugin_is_discovered_and_usable(tmp_path):
    """The README's plugin package, pip-installed on its own, shows up in `cvae plugins` and its
    likelihood trains by name without touching the toolkit's code."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(EXAMPLE)], check=True)
    env = {**os.environ, "PYTHONPATH": str(target)}
    out = subprocess.run([sys.executable, "-m", "cvae", "plugins", "--json"], env=env, check=True,
                         capture_output=True, text=True).stdout
    plugins = {p["name"]: p for p in json.loads(out)["plugins"]}
    assert plugins["laplace"]["distribution"] == "cvae-laplace"
    assert plugins["laplace"]["components"] == {"likelihood": ["laplace"]}
    run = subprocess.run([sys.executable, "-m", "cvae", "train", "--out", str(tmp_path / "run"),
                          "--set", "model.likelihood=laplace", "--set", "model.likelihood_options={}",
                          "--set", "train.epochs=2", "--set", "eval.iwae_samples=2", "--set", "train.progress=false"],
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    ev = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert ev["test_elbo"] == ev["test_elbo"] and ev["nll_nats"] == ev["nll_nats"]  # finite, not NaN
    assert ev["nll_bits_per_dim"] is None  # a density, not a probability: no bits per dimension


@pytest.mark.slow
def test_the_python_api_snippet_runs(tmp_path, monkeypatch):
    snippet = next(b for b in _blocks("python") if "cvae.train(" in b)
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(snippet, "README.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["sevens"].shape == (16, 1, 8, 8)
    assert float(scope["sevens"].min()) >= 0 and float(scope["sevens"].max()) <= 1
    assert scope["nll"].shape == (8,) and bool((scope["nll"] > 0).all())
