"""The benchmark suite: a tiny run writes a well-formed result whose correctness checks hold, a wrong
variant fails its check, `compare` judges only like with like, and third-party benchmarks run too.
Nothing here asserts a speed: that is the benchmark's job, not a test's."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cvae

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # `benchmarks` is a folder of the repository, not an installed package

from benchmarks import SCHEMA_VERSION  # noqa: E402
from benchmarks import compare as cmp  # noqa: E402

TRAIN_KEYS = {"benchmark", "kind", "model", "device", "batch", "variant", "levers", "safe", "path", "metric", "unit",
              "higher_is_better", "value", "ratio", "ratio_min", "ratio_max", "step_ms", "clock", "rounds",
              "steps_per_round", "check", "gflop_per_step", "tflop_per_s"}


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory) -> tuple[Path, dict]:
    """`python -m benchmarks --tiny` on the CPU, in a process of its own (a minute or two)."""
    out = tmp_path_factory.mktemp("results")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVAE_")}
    run = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--device", "cpu", "--out", str(out)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (path,) = (out / "cpu").glob("*.json")
    return path, json.loads(path.read_text())


def test_the_result_file_is_versioned_and_complete(tiny_result):
    path, result = tiny_result
    assert result["schema_version"] == SCHEMA_VERSION
    assert set(result) >= {"created", "git", "python", "torch", "cuda", "device", "threads", "flags", "tolerances",
                           "memory", "results", "skipped", "errors", "summary"}
    assert result["torch"] == torch.__version__ and "cuda" in result
    assert result["device"]["type"] == "cpu" and result["device"]["slug"] == "cpu" and result["device"]["name"]
    assert {"model", "isa"} <= set(result["device"])  # what tells apart CPUs that share a name
    assert result["threads"] == 1
    assert result["flags"]["tier"] == "tiny" and result["flags"]["flush_denormal"] is True
    assert result["git"]["sha"] is None or len(result["git"]["sha"]) == 40
    assert path.name.endswith("Z.json") and not result["errors"]


def test_every_variant_passed_its_correctness_check(tiny_result):
    _, result = tiny_result
    rows = result["results"]
    train = [r for r in rows if r["kind"] == "train"]
    assert {r["model"] for r in train} >= {"policy", "image"}
    for r in train:
        assert TRAIN_KEYS <= set(r), TRAIN_KEYS - set(r)
        chk = r["check"]
        assert chk["ok"], r
        assert chk["rel_diff"] <= chk["tol"] and chk["steps"] >= 1
        assert r["value"] > 0 and r["ratio"] > 0 and r["ratio_min"] <= r["ratio"] <= r["ratio_max"]
    variants = {r["variant"] for r in train}
    assert {"naive", "model_plain", "toolkit_plain", "toolkit", "toolkit_bf16", "fused", "bf16"} <= variants
    # the toolkit computes the same update as the hand-written loop: its loss matches to fp32 rounding
    assert all(r["check"]["rel_diff"] < 2e-6 for r in train
               if (r["path"] != "hand_written" and r["safe"]) or r["levers"] == ["fused"])
    # and under train.precision = "bfloat16" it stays within the stated bf16 bound of the fp32 loop
    assert all(r["config"]["train.precision"] == "bfloat16" for r in train if r["variant"] == "toolkit_bf16")
    naive = [r for r in train if r["variant"] == "naive"]
    assert all(r["ratio"] == 1.0 and r["check"]["rel_diff"] == 0.0 for r in naive)
    kinds = {r["kind"] for r in rows}
    assert kinds == {"train", "sample", "latency"}
    assert all(r["check"]["ok"] for r in rows)
    latency = [r for r in rows if r["kind"] == "latency"]
    assert latency and all(r["batch"] == 1 and r["unit"] == "us" and not r["higher_is_better"] for r in latency)
    if "conv" not in cvae.get_registry().names("architecture"):
        assert {s["benchmark"] for s in result["skipped"]} >= {"train.conv", "sample.conv"}
    summary = result["summary"]
    assert set(summary) >= {"train.policy@16", "train.image@16"}
    assert all(s["all_checks_ok"] and s["toolkit_vs_naive"] > 0 for s in summary.values())


def test_compare_passes_a_result_against_itself(tiny_result, capsys):
    path, _ = tiny_result
    assert cmp.main(str(path), str(path)) == 0
    assert "toolkit" in capsys.readouterr().out


def test_compare_refuses_another_device_or_torch(tiny_result, tmp_path, capsys):
    path, result = tiny_result
    for field, value in (("device", {**result["device"], "name": "another CPU"}), ("torch", "0.0.0"), ("threads", 2)):
        other = tmp_path / f"{field}.json"
        other.write_text(json.dumps({**result, field: value}))
        assert cmp.main(str(path), str(other)) == 2
        assert "not comparable" in capsys.readouterr().out


def test_compare_refuses_another_tier_cpu_model_or_instruction_set(tiny_result, tmp_path, capsys):
    path, result = tiny_result
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps({**result, "flags": {**result["flags"], "tier": "quick"}}))
    assert cmp.main(str(path), str(quick)) == 2
    assert "flags.tier: 'quick' vs 'tiny'" in capsys.readouterr().out
    other = tmp_path / "isa.json"
    other.write_text(json.dumps({**result, "device": {**result["device"], "isa": ["avx2", "avx512_bf16", "x"]}}))
    assert cmp.main(str(path), str(other)) == 2
    assert "device.isa" in capsys.readouterr().out
    if result["device"]["model"] is not None:  # a CPU of the same name, another generation
        model = tmp_path / "model.json"
        model.write_text(json.dumps({**result, "device": {**result["device"], "model": "family 0 model 0 stepping 0"}}))
        assert cmp.main(str(path), str(model)) == 2
        assert "device.model: 'family 0 model 0 stepping 0' vs" in capsys.readouterr().out
    unrecorded = tmp_path / "older.json"  # written before the CPU model and instruction sets were recorded
    unrecorded.write_text(json.dumps({**result, "device": {k: v for k, v in result["device"].items()
                                                           if k not in ("isa", "model")}}))
    assert cmp.main(str(path), str(unrecorded)) == 0
    assert f"note: {unrecorded} records no CPU model or instruction sets" in capsys.readouterr().out
    assert cmp.main(str(path), str(path)) == 0
    assert "note:" not in capsys.readouterr().out


def test_compare_with_nothing_in_common_judges_nothing(tiny_result, tmp_path, capsys):
    path, result = tiny_result
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**result, "results": []}))
    assert cmp.main(str(path), str(empty)) == 2
    assert "no benchmark rows in common" in capsys.readouterr().out


@pytest.mark.parametrize("text, says", [('{"schema_version": 1, "results"', "not JSON"), ('{"a": 1}', "expected a JSON object"),
                                        ('{"schema_version": 1, "results": {"a": 1}}', "not a list of rows")])
def test_a_broken_result_file_is_named(tiny_result, tmp_path, capsys, text, says):
    path, _ = tiny_result
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert cmp.main(str(path), str(bad)) == 2
    out = capsys.readouterr().out
    assert str(bad) in out and says in out
    assert _benchmarks_cli("table", str(bad)).returncode == 2


def _benchmarks_cli(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVAE_")}
    return subprocess.run([sys.executable, "-m", "benchmarks", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


def test_a_reader_that_leaves_stops_the_listing_quietly():
    env = {k: v for k, v in os.environ.items() if not k.startswith("CVAE_")}
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks", "list"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the interpreter is up, so every write finds the pipe closed (`... | head -0`)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 141 and stderr == ""


@pytest.mark.parametrize("args, says", [(["--only", "nosuch"], "--only nosuch matches no benchmark; known: "),
                                        (["--threads", "0"], "--threads must be >= 1"),
                                        (["--device", "tpu"], "--device must be auto, cpu or cuda"),
                                        (["compare", "a.json", "--factor", "0"], "--factor must be >= 1")])
def test_bad_arguments_stop_before_any_benchmark_runs(args, says, tmp_path):
    run = _benchmarks_cli("--tiny", *args, "--out", str(tmp_path)) if args[0] != "compare" else _benchmarks_cli(*args)
    assert run.returncode == 2 and says in run.stderr and "Traceback" not in run.stderr
    assert not any(tmp_path.iterdir())  # no result file written


def test_an_out_that_is_a_file_is_refused_before_running(tmp_path):
    taken = tmp_path / "results"
    taken.write_text("a file")
    run = _benchmarks_cli("--tiny", "--only", "latency.policy", "--out", str(taken))
    assert run.returncode == 2 and "is a file; give a folder" in run.stderr and taken.read_text() == "a file"


def test_compare_flags_a_regression_and_a_failed_check(tiny_result, tmp_path, capsys):
    path, result = tiny_result
    better = copy.deepcopy(result)
    for r in better["results"]:
        if r["variant"] == "fused":
            r["ratio"] *= 2  # the baseline was twice as fast relative to the hand-written loop
    base = tmp_path / "base.json"
    base.write_text(json.dumps(better))
    assert cmp.main(str(path), str(base)) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert cmp.main(str(path), str(base), factor=3.0) == 0
    broken = copy.deepcopy(result)
    broken["results"][0]["check"]["ok"] = False
    new = tmp_path / "new.json"
    new.write_text(json.dumps(broken))
    assert cmp.main(str(new), str(path)) == 1
    assert "correctness check failed" in capsys.readouterr().out


def test_compare_without_a_baseline_says_so(tmp_path, capsys):
    lone = tmp_path / "2030-01-01T00-00-00Z.json"
    lone.write_text(json.dumps({"schema_version": SCHEMA_VERSION, "results": []}))
    assert cmp.main(str(lone), None) == 2
    assert "no baseline" in capsys.readouterr().out


def test_the_default_baseline_passes_over_incomparable_and_unreadable_results(tiny_result, tmp_path, capsys):
    _, result = tiny_result
    folder = tmp_path / "results"
    folder.mkdir()
    write = lambda name, doc: (folder / name).write_text(json.dumps(doc))  # noqa: E731
    write("2030-01-01T00-00-00Z.json", result)                                      # comparable
    write("2030-01-02T00-00-00Z.json", {**result, "flags": {**result["flags"], "tier": "quick"}})
    (folder / "2030-01-03T00-00-00Z.json").write_text("{cut short")
    write("2030-01-04T00-00-00Z.json", result)                                      # NEW
    new = folder / "2030-01-04T00-00-00Z.json"
    assert cmp.default_base(new, result).name == "2030-01-01T00-00-00Z.json"
    assert cmp.main(str(new), None) == 0
    assert "2030-01-01T00-00-00Z.json  ->" in capsys.readouterr().out
    (folder / "2030-01-01T00-00-00Z.json").unlink()  # only incomparable ones left: no baseline, and why
    assert cmp.main(str(new), None) == 2
    said = capsys.readouterr().out
    assert ("no result older than 2030-01-04T00-00-00Z.json that is comparable with it (2 older; the newest readable, "
            "2030-01-02T00-00-00Z.json, differs in flags.tier: 'quick' vs 'tiny')") in said


def test_absolute_mode_knows_latency_is_lower_is_better():
    row = {"benchmark": "latency.policy", "batch": 1, "variant": "toolkit", "metric": "latency_us", "unit": "us",
           "higher_is_better": False, "value": 100.0, "ratio": 0.5}
    base = {"results": [row]}
    slower = {"results": [{**row, "value": 200.0}]}
    faster = {"results": [{**row, "value": 50.0}]}
    assert cmp.compare(slower, base, 1.25, absolute=True)[1]
    assert not cmp.compare(faster, base, 1.25, absolute=True)[1]
    assert not cmp.compare(slower, base, 1.25, absolute=False)[1]  # speed-ups alone by default


@pytest.fixture
def bench_plugins(fresh_plugins, monkeypatch):
    """The installed plugins plus the suite's own (datasets and built-in benchmarks)."""
    import benchmarks.plugin

    cvae.register_plugin(benchmarks.plugin, name="benchmarks")
    return fresh_plugins


def test_a_wrong_variant_fails_its_check(bench_plugins, monkeypatch):
    """A variant that is fast because it computes something else (here: a 10x learning rate) is caught."""
    from benchmarks import training

    original = training.HandLoop.__init__

    def init(self, variant, *args, **kwargs):
        original(self, variant, *args, **kwargs)
        if variant.name == "wrong":
            for group in self.opt.param_groups:
                group["lr"] *= 10

    monkeypatch.setattr(training.HandLoop, "__init__", init)
    variants = [training.Variant("naive"), training.Variant("fused", frozenset({"fused"})),
                training.Variant("wrong", frozenset({"fused", "x"}))]
    rows = training.train_benchmark("policy", torch.device("cpu"), 8, rounds=1, round_seconds=0.001, check_steps=3,
                                    compile=False, variants=variants)
    ok = {r["variant"]: r["check"]["ok"] for r in rows}
    assert ok == {"naive": True, "fused": True, "wrong": False}


def test_third_party_benchmarks_run_and_a_broken_one_is_reported(bench_plugins, monkeypatch):
    from benchmarks.suite import passed, run_device

    def make_ok():
        return lambda device: [{"metric": "widgets_per_s", "value": 3.0, "unit": "widgets/s"}]

    def make_broken():
        def run(device):
            raise RuntimeError("no widgets")
        return run

    plugin = type(sys)("widgets_plugin")
    plugin.cvae_benchmarks = cvae.hookimpl(lambda: [cvae.BenchmarkSpec("widgets.ok", make_ok, "widgets"),
                                                   cvae.BenchmarkSpec("widgets.broken", make_broken, "broken widgets")])
    cvae.register_plugin(plugin)
    result = run_device(torch.device("cpu"), "tiny", threads=1, only=["widgets.*"])
    assert [(r["benchmark"], r["plugin"], r["value"]) for r in result["results"]] == [("widgets.ok", "widgets_plugin", 3.0)]
    assert [e["benchmark"] for e in result["errors"]] == ["widgets.broken"]
    assert not passed(result)


def test_the_engine_never_imports_the_benchmarks():
    for path in (ROOT / "cvae").rglob("*.py"):
        text = path.read_text()
        assert "import benchmarks" not in text and "from benchmarks" not in text, path
