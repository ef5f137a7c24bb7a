"""Every hook is a documented hookspec with an example, and docs/hooks.md documents exactly these hooks."""

from __future__ import annotations

import inspect
import re
import textwrap
from pathlib import Path

import pluggy
import pytest

from cvae import hookspecs
from cvae.registry import KINDS

DOC = Path(__file__).resolve().parent.parent / "docs" / "hooks.md"

HOOKS = sorted(n for n, f in vars(hookspecs).items() if n.startswith("cvae_") and inspect.isfunction(f))


def _sections() -> dict[str, str]:
    """The doc's hook sections: heading `### `cvae_x`` -> the text up to the next heading."""
    text = DOC.read_text(encoding="utf-8")
    parts = re.split(r"^#{2,3} ", text, flags=re.M)
    out: dict[str, str] = {}
    for part in parts:
        m = re.match(r"`?(cvae_\w+)`?", part)
        if m:
            assert m.group(1) not in out, f"docs/hooks.md documents {m.group(1)} twice"
            out[m.group(1)] = part
    return out


def _example(name: str) -> str:
    doc = inspect.getdoc(getattr(hookspecs, name))
    return textwrap.dedent(doc.partition("Example::")[2].strip("\n")).strip()


def test_there_are_hooks():
    assert len(HOOKS) >= 10
    assert {hook for hook, _ in KINDS.values()} <= set(HOOKS)  # every registry kind has its hook


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_a_hookspec_with_an_example(name):
    fn = getattr(hookspecs, name)
    assert getattr(fn, "cvae_spec", None) is not None, f"{name} is not marked @hookspec"
    doc = inspect.getdoc(fn)
    assert doc and "Example::" in doc, f"{name} needs a docstring with 'Example::'"
    example = _example(name)
    assert f"def {name}(" in example and "@cvae.hookimpl" in example
    compile(example, name, "exec")  # the example is valid Python


def test_plugin_manager_sees_exactly_these_hooks():
    pm = pluggy.PluginManager("cvae")
    pm.add_hookspecs(hookspecs)
    seen = sorted(n for n in vars(pm.hook) if not n.startswith("_"))
    assert seen == HOOKS


def test_docs_document_exactly_the_hooks():
    documented = set(_sections())
    missing, extra = sorted(set(HOOKS) - documented), sorted(documented - set(HOOKS))
    assert not missing and not extra, f"docs/hooks.md: missing sections {missing}, sections for no hook {extra}"
    defined = set(re.findall(r"def (cvae_\w+)\(", DOC.read_text(encoding="utf-8")))
    assert defined == set(HOOKS), f"docs/hooks.md defines {sorted(defined - set(HOOKS))}, which are not hooks"


@pytest.mark.parametrize("name", HOOKS)
def test_doc_section_has_arguments_return_and_example(name):
    section = _sections().get(name)
    assert section is not None, f"docs/hooks.md has no section for {name}"
    params = list(inspect.signature(getattr(hookspecs, name)).parameters)
    assert f"def {name}({', '.join(params)})" in section
    for p in params:
        assert f"`{p}`" in section, f"{name}: argument {p} is not described"
    if not params:
        assert "**Arguments:** none" in section
    assert "**Returns:**" in section
    assert _example(name) in section, f"{name}: the example in docs/hooks.md differs from the docstring"
