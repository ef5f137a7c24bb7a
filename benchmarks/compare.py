"""Compare two result files: like with like only, and a regression is a speed-up (or, with
`absolute`, a throughput or latency) worse than the baseline's by more than `factor`.

Exit codes: 0 no regression; 1 a regression, or a failed correctness check in NEW;
2 the files cannot be compared (another device, torch version, thread count or schema; no baseline;
unreadable input), so nothing was judged."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import SCHEMA_VERSION

__all__ = ["DEFAULT_FACTOR", "load", "default_base", "incomparable", "compare", "main"]

DEFAULT_FACTOR = 1.25
LIKE = (("device", "type"), ("device", "name"), ("torch",), ("threads",), ("flags", "tier"))
RECORDED_LATER = (("device", "model"), ("device", "isa"))  # compared where both files record them


def load(path: str | Path) -> dict[str, Any]:
    """A result file, checked: a clear ValueError (naming the file) for anything else."""
    try:
        data = json.loads(Path(path).read_text())
    except IsADirectoryError:
        raise ValueError(f"{path} is a folder, not a benchmark result file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a benchmark result file (not JSON: {exc})") from None
    if not isinstance(data, dict) or "schema_version" not in data or "results" not in data:
        raise ValueError(f"{path} is not a benchmark result file (expected a JSON object with schema_version and "
                         f"results, as python -m benchmarks writes)")
    if not isinstance(data["results"], list) or not all(isinstance(r, dict) for r in data["results"]):
        raise ValueError(f"{path} is not a benchmark result file (its results are not a list of rows)")
    return data


def _older(new: Path) -> list[Path]:
    """The other results in NEW's folder that are older than NEW, newest first (names are UTC timestamps)."""
    return sorted((p for p in new.parent.glob("*.json") if p.name < new.name), reverse=True)


def _verdicts(new: Path, new_doc: Mapping[str, Any]) -> list[tuple[Path, list[str] | None]]:
    """Each older result in NEW's folder, newest first, with why it is not comparable with NEW (empty: it
    is; None: it is not a readable result file)."""
    verdicts: list[tuple[Path, list[str] | None]] = []
    for path in _older(new):
        try:
            verdicts.append((path, incomparable(new_doc, load(path))))
        except (OSError, ValueError):
            verdicts.append((path, None))
    return verdicts


def default_base(new: Path, new_doc: Mapping[str, Any]) -> Path | None:
    """The newest result in NEW's folder, older than NEW, that is readable and comparable with it (a result
    of another tier or torch in between is passed over, not a dead end)."""
    return next((path for path, reasons in _verdicts(new, new_doc) if reasons == []), None)


def _why_none_fits(new: Path, new_doc: Mapping[str, Any]) -> str:
    """Why none of the older results in NEW's folder can be its baseline: the newest readable one's reasons."""
    verdicts = _verdicts(new, new_doc)
    if not verdicts:
        return ""
    path, reasons = next(((p, r) for p, r in verdicts if r is not None), (None, None))
    if path is None:
        return f" that is comparable with it ({len(verdicts)} older, none readable as a result file)"
    return (f" that is comparable with it ({len(verdicts)} older; the newest readable, {path.name}, differs in "
            f"{'; '.join(reasons)})")


def _get(doc: Mapping[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        doc = doc.get(key, {}) if isinstance(doc, Mapping) else {}
    return doc if doc != {} else None


def incomparable(new: Mapping[str, Any], base: Mapping[str, Any]) -> list[str]:
    """Why the two results are not like with like (empty if they are)."""
    reasons = []
    if new["schema_version"] != base["schema_version"] or new["schema_version"] != SCHEMA_VERSION:
        reasons.append(f"schema version {base['schema_version']} vs {new['schema_version']} (this code reads {SCHEMA_VERSION})")
    for path in LIKE:
        a, b = _get(base, path), _get(new, path)
        if a != b:
            reasons.append(f"{'.'.join(path)}: {a!r} vs {b!r}")
    # CPUs of one model name differ in speed and in what they can run fast (bfloat16 without AVX512-BF16 is
    # emulated); results written before these were recorded are compared by name alone
    for path in RECORDED_LATER:
        a, b = _get(base, path), _get(new, path)
        if a is not None and b is not None and a != b:
            reasons.append(f"{'.'.join(path)}: {a!r} vs {b!r}")
    return reasons


def _key(row: Mapping[str, Any]) -> tuple:
    return row.get("benchmark"), row.get("batch"), row.get("variant"), row.get("metric")


def compare(new: Mapping[str, Any], base: Mapping[str, Any], factor: float = DEFAULT_FACTOR,
            absolute: bool = False) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows present in both, with their change; and the list of regressions (empty: none)."""
    base_rows = {_key(r): r for r in base["results"]}
    table, regressions = [], []
    for r in new["results"]:
        b = base_rows.get(_key(r))
        if b is None:
            continue
        entry = {"key": _key(r), "base_ratio": b.get("ratio"), "new_ratio": r.get("ratio"),
                 "base_value": b.get("value"), "new_value": r.get("value"), "unit": r.get("unit", ""), "flags": []}
        if entry["base_ratio"] and entry["new_ratio"] is not None:
            entry["ratio_change"] = entry["new_ratio"] / entry["base_ratio"]
            if entry["ratio_change"] < 1 / factor:
                entry["flags"].append("slower vs naive")
        if entry["base_value"] and entry["new_value"]:
            better = r.get("higher_is_better", True)
            change = entry["new_value"] / entry["base_value"]
            entry["value_change"] = change
            if absolute and (change < 1 / factor if better else change > factor):
                entry["flags"].append("slower")
        if entry["flags"]:
            bench, batch, variant, metric = entry["key"]
            regressions.append(f"{bench} batch {batch} {variant} ({metric}): {', '.join(entry['flags'])}")
        table.append(entry)
    return table, regressions


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def main(new_path: str, base_path: str | None, factor: float = DEFAULT_FACTOR, absolute: bool = False) -> int:
    new_file = Path(new_path)
    try:
        new = load(new_file)
        base_file = Path(base_path) if base_path else default_base(new_file, new)
        if base_file is None:
            print(f"no baseline: {new_file.parent} holds no result older than {new_file.name}"
                  + _why_none_fits(new_file, new) + "; nothing compared")
            return 2
        base = load(base_file)
    except (OSError, ValueError) as exc:
        print(f"cannot compare: {exc}")
        return 2
    reasons = incomparable(new, base)
    if reasons:
        print(f"not comparable ({base_file} -> {new_file}): " + "; ".join(reasons))
        print("results are compared only on the same device, torch version and thread count; nothing compared")
        return 2
    table, regressions = compare(new, base, factor, absolute)
    if not table:
        print(f"no benchmark rows in common ({base_file} -> {new_file}); nothing compared")
        return 2
    print(f"{base_file}  ->  {new_file}   (regression: worse by more than {factor}x"
          f"{', speed-ups and absolute figures' if absolute else ', speed-ups over the hand-written loop'})")
    unrecorded = [str(f) for f, doc in ((base_file, base), (new_file, new))
                  if any(_get(doc, p) is None for p in RECORDED_LATER)]
    if unrecorded and _get(new, ("device", "type")) == "cpu":  # machines of one CPU name can differ in speed: absolute figures may not be like with like
        print(f"note: {', '.join(unrecorded)} {'records' if len(unrecorded) == 1 else 'record'} no CPU model or "
              f"instruction sets, so the CPUs are matched by name alone ({_get(new, ('device', 'name'))!r}); "
              f"speed-ups stay comparable, absolute figures may not")
    header = f"{'benchmark':<16} {'batch':>5} {'variant':<14} {'vs naive':>17} {'change':>7} {'value':>25} {'change':>7}"
    print(header)
    print("-" * len(header))
    for e in table:
        bench, batch, variant, _ = e["key"]
        ratios = f"{_fmt(e['base_ratio'], '.2f')} -> {_fmt(e['new_ratio'], '.2f')}"
        values = f"{_fmt(e['base_value'], ',.0f')} -> {_fmt(e['new_value'], ',.0f')} {e['unit']}"
        line = (f"{bench:<16} {str(batch):>5} {variant:<14} {ratios:>17} {_fmt(e.get('ratio_change'), '.2f'):>7} "
                f"{values:>25} {_fmt(e.get('value_change'), '.2f'):>7}")
        print(line + ("   <-- " + ", ".join(e["flags"]) if e["flags"] else ""))
    failed = [f"{r['benchmark']} batch {r.get('batch')} {r.get('variant')}" for r in new["results"]
              if not r.get("check", {}).get("ok", True)]
    for f in failed:
        print(f"correctness check failed in the new result: {f}")
    for r in regressions:
        print(f"REGRESSION: {r}")
    if new.get("errors"):
        print(f"the new result records {len(new['errors'])} benchmark error(s)")
    return 1 if regressions or failed or new.get("errors") else 0
