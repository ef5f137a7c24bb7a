"""Evaluating every policy of a run (`cvae bc eval`) and the comparison of all policies on all
built-in environments (`cvae bc benchmark`)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import cvae

from .demos import collect, save_demos
from .evaluate import ExpertBatch, draw_rollouts, make_env, resolve_env, rollout, save_panels, summarise
from .policies import POLICIES, Z_RULES, check_overrides, load_policy, run_info, train_policies

__all__ = ["DEFAULT_RULES", "BENCHMARK_ENVS", "default_variants", "evaluate_run", "benchmark", "markdown_table"]

# z rules each kind of policy is evaluated with by default
DEFAULT_RULES = {"mse": ["step"], "mdn": ["step", "episode"], "cvae": ["step", "chunk", "episode", "zero"]}

# built-in environments of the benchmark and how many expert episodes each gets (the 70/30 field gets
# more: a 0.05 total-variation target needs demonstrations whose own route frequencies are that close)
BENCHMARK_ENVS = {"obstacle2": 300, "obstacle2_70_30": 800, "obstacle8": 400, "multigoal": 400}

COLUMNS = [("success_rate", "success"), ("collision_rate", "collision"), ("mode_entropy", "mode entropy"),
           ("tv_to_expert", "TV to expert"), ("mode_coverage", "mode coverage"),
           ("switches_per_episode", "switches / episode")]


def default_variants(info: dict[str, Any]) -> list[str]:
    """`name` or `name/z` for every trained policy of a run and its default z rules."""
    out = []
    for name, settings in info["policies"].items():
        rules = DEFAULT_RULES[settings["kind"]]
        out += [name] if settings["kind"] == "mse" else [f"{name}/{z}" for z in rules]
    return out


def _parse_variant(text: str) -> tuple[str, str]:
    name, _, z = text.partition("/")
    z = z or "step"
    if z not in Z_RULES:
        raise cvae.CVAEError(f"policy {text!r}: unknown z rule {z!r}; allowed: {', '.join(Z_RULES)}")
    return name, z


def evaluate_run(run_dir: str | Path, variants: Sequence[str] | None = None, *, episodes: int = 300,
                 seeds: Sequence[int] = (0, 1, 2), env: str | None = None, png: str | Path | None = None,
                 log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Roll out the expert and every policy variant of a run for `episodes` episodes over `seeds`,
    summarise them, draw all rollouts into one PNG (one panel per variant, the expert first) and
    write `eval.json` into the run directory."""
    torch.set_num_threads(1)
    run_dir = Path(run_dir)
    info = run_info(run_dir)
    variants = list(variants or default_variants(info))
    name = env or info.get("env") or info.get("env_id")
    if not name:
        raise cvae.CVAEError("the demonstrations name no environment to evaluate in; pass --env NAME (see `cvae bc envs`)")
    spec = resolve_env(name)
    if not spec.env_id:
        raise cvae.CVAEError(f"environment {spec.name!r} has no gymnasium id")
    names = info.get("mode_names") or []
    probe = make_env(spec.env_id)
    if hasattr(probe.unwrapped, "mode_names"):
        env_names = list(probe.unwrapped.mode_names())
        if names and names != env_names:
            raise cvae.CVAEError(f"the demonstrations' modes {names} are not those of {spec.env_id} ({env_names})")
        names = env_names
    if not names:
        raise cvae.CVAEError(f"{spec.env_id} does not label modes; the mode metrics need info['mode']")
    if info.get("mode_probs") is not None:
        expert_probs = np.asarray(info["mode_probs"], dtype=np.float64)
    elif sum(info.get("demo_modes") or []) > 0:
        expert_probs = np.asarray(info["demo_modes"], dtype=np.float64)
    else:
        raise cvae.CVAEError("the demonstrations carry no mode labels or expert probabilities to compare with")
    expert_options = {"probs": expert_probs.tolist()} if "probs" in _parameters(spec.factory) else {}
    results: dict[str, Any] = {}
    images = []
    actors: list[tuple[str, Any]] = [("expert", ExpertBatch(lambda: spec.build(options=expert_options)))]
    for text in variants:
        name, z = _parse_variant(text)
        actors.append((text, load_policy(run_dir, name, z=z)))
    for label, actor in actors:
        start = time.perf_counter()
        records = rollout(actor, spec.env_id, episodes, list(seeds), env_kwargs=info.get("env_kwargs") or None)
        results[label] = summarise(records, names, expert_probs)
        results[label]["seconds"] = round(time.perf_counter() - start, 2)
        images.append((label, draw_rollouts(probe, records)))
        if log:
            r = results[label]
            log(f"  {label:<24} success {r['success_rate']:.2f}  entropy {r['mode_entropy']:.2f}  "
                f"TV {r['tv_to_expert']:.2f}  coverage {r['mode_coverage']:.2f}  switches {r['switches_per_episode']:.2f}")
    png = Path(png) if png else run_dir / "rollouts.png"
    save_panels([img for _, img in images], png, titles=[label for label, _ in images])
    out = {"env": spec.name, "env_id": spec.env_id, "episodes": int(episodes), "seeds": [int(s) for s in seeds],
           "mode_names": names, "expert_mode_probs": dict(zip(names, np.round(expert_probs / expert_probs.sum(), 4).tolist())),
           "png": str(png), "policies": results}
    (run_dir / "eval.json").write_text(json.dumps(out, indent=2))
    probe.close()
    return out


def _parameters(factory: Any) -> set[str]:
    import inspect

    try:
        return set(inspect.signature(factory).parameters)
    except (TypeError, ValueError):
        return set()


def markdown_table(result: dict[str, Any]) -> str:
    """One environment's evaluation as a Markdown table."""
    lines = ["| policy | " + " | ".join(title for _, title in COLUMNS) + " | modes (counts) |",
             "|---|" + "---:|" * len(COLUMNS) + "---|"]
    for label, r in result["policies"].items():
        cells = [f"{r[key]:.2f}" for key, _ in COLUMNS]
        counts = " ".join(str(c) for c in r["mode_counts"].values())
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {counts} |")
    return "\n".join(lines)


def benchmark(out: str | Path, *, envs: Sequence[str] | None = None, demos: int | None = None, epochs: int = 150,
              chunk: int = 4, episodes: int = 300, seeds: Sequence[int] = (0, 1, 2), seed: int = 0,
              cvae_overrides: Sequence[str] = (), env_kwargs: dict[str, Any] | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """For each environment: collect expert demonstrations (the environment made with `env_kwargs`,
    e.g. `{"obs": "image"}`), train every policy, evaluate every variant. Writes `benchmark.md` and
    `benchmark.json` into `out` and returns the JSON."""
    torch.set_num_threads(1)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(envs or BENCHMARK_ENVS)
    for name in names:
        resolve_env(name)  # unknown names fail before any work
    if demos is not None and int(demos) < 1:
        raise cvae.CVAEError(f"--demos must be >= 1 expert episodes per environment, got {demos}")
    check_overrides(cvae_overrides)
    started = time.perf_counter()
    report: dict[str, Any] = {"settings": {"epochs": epochs, "chunk": chunk, "episodes": episodes,
                                           "seeds": [int(s) for s in seeds], "seed": seed,
                                           "cvae_overrides": list(cvae_overrides), "env_kwargs": dict(env_kwargs or {})},
                              "environments": {}}
    for name in names:
        t0 = time.perf_counter()
        n_demos = int(demos) if demos is not None else BENCHMARK_ENVS.get(name, 300)
        log(f"[{name}] collecting {n_demos} expert episodes")
        d, summary = collect(name, n_demos, seed=seed, env_kwargs=env_kwargs)
        where = out / name
        path = save_demos(d, where / "demos.npz")
        run = where / "run"
        if (run / "bc.json").exists():  # a benchmark always starts its runs afresh
            shutil.rmtree(run)
        log(f"[{name}] training {', '.join(POLICIES)}")
        train_policies(path, run, chunk=chunk, epochs=epochs, seed=seed, cvae_overrides=cvae_overrides,
                       log=lambda s: None)
        t1 = time.perf_counter()
        log(f"[{name}] evaluating ({t1 - t0:.0f} s so far)")
        result = evaluate_run(run, episodes=episodes, seeds=seeds, png=where / "rollouts.png", log=log)
        result["demos"] = summary
        result["train_seconds"] = round(t1 - t0, 1)
        result["eval_seconds"] = round(time.perf_counter() - t1, 1)
        report["environments"][name] = result
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["markdown"] = render_markdown(report)
    (out / "benchmark.json").write_text(json.dumps(report, indent=2))
    (out / "benchmark.md").write_text(report["markdown"])
    return report


def render_markdown(report: dict[str, Any]) -> str:
    s = report["settings"]
    parts = [f"Behaviour-cloning benchmark: {s['episodes']} evaluation episodes per policy over seeds "
             f"{', '.join(map(str, s['seeds']))}; chunk {s['chunk']}, {s['epochs']} epochs; "
             f"total {report.get('seconds', 0):.0f} s."
             + (f" Environments made with {s['env_kwargs']}." if s.get("env_kwargs") else "")]
    for name, result in report["environments"].items():
        probs = ", ".join(f"{k} {v:.2f}" for k, v in result["expert_mode_probs"].items())
        parts.append(f"\n### {name} ({result['env_id']})\n\nexpert modes: {probs}; "
                     f"{result['demos']['episodes']} demonstrations; train {result['train_seconds']:.0f} s, "
                     f"eval {result['eval_seconds']:.0f} s\n\n{markdown_table(result)}")
    return "\n".join(parts) + "\n"
