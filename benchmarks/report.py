"""Tables of result rows, as plain text for the terminal or Markdown for the README."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["format_value", "result_table", "headline", "summary"]


def format_value(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit == "us":
        return f"{value:,.0f} us" if value >= 100 else f"{value:.1f} us"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _notes(row: Mapping[str, Any]) -> str:
    notes = []
    if "compile_s" in row:
        notes.append(f"compile {row['compile_s']:.1f} s")
        even = row.get("break_even_steps", row.get("break_even_calls", "absent"))
        if even != "absent":
            unit = "steps" if "break_even_steps" in row else "calls"
            notes.append("never pays off" if even is None else f"pays off after {even:,.0f} {unit}")
        if "recompiles" in row:
            notes.append(f"{row['recompiles']} recompiles")
    if "mfu" in row:
        notes.append(f"{row['tflop_per_s']:.2f} TFLOP/s, MFU {100 * row['mfu']:.2f}%")
    if "step_peak_mib" in row:
        notes.append(f"step peak {row['step_peak_mib']:.0f} MiB")
    if not row.get("safe", True):
        notes.append("bf16: not a default")
    return "; ".join(notes)


def _check(row: Mapping[str, Any]) -> str:
    chk = row.get("check")
    if not chk:
        return "-"
    diff = chk.get("rel_diff", chk.get("max_abs_diff"))
    return f"{'ok' if chk.get('ok') else 'FAIL'} {diff:.0e}" if diff is not None else ("ok" if chk.get("ok") else "FAIL")


def result_table(rows: Iterable[Mapping[str, Any]], markdown: bool = False) -> str:
    """One line per row: benchmark, batch, variant, value, speed-up over the hand-written baseline
    (median over rounds, with the slowest and fastest round's), loss/sample check and notes."""
    header = ["benchmark", "batch", "variant", "value", "vs naive (min-max)", "check", "notes"]
    lines = []
    for r in rows:
        if "skipped" in r or "metric" not in r:
            continue
        ratio = r.get("ratio")
        spread = f"{ratio:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})" if ratio is not None and "ratio_min" in r else (
            f"{ratio:.2f}x" if ratio is not None else "-")
        lines.append([r.get("benchmark", "?"), str(r.get("batch", "-")), r.get("variant", "-"),
                      f"{format_value(r.get('value'), r.get('unit', ''))} {'' if r.get('unit') == 'us' else r.get('unit', '')}".strip(),
                      spread, _check(r), _notes(r)])
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
        out += ["| " + " | ".join(cells) + " |" for cells in lines]
        return "\n".join(out)
    widths = [max(len(h), *(len(c[i]) for c in lines)) if lines else len(h) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*cells).rstrip() for cells in [header, ["-" * w for w in widths], *lines])


def summary(rows: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Per training benchmark and batch size: the toolkit's trainer against the hand-written loop
    (with its defaults, and with plain Adam like the baseline), and the best safe and best variants."""
    out: dict[str, Any] = {}
    groups: dict[tuple[str, int], list[Mapping[str, Any]]] = {}
    for r in rows:
        if r.get("kind") == "train" and "ratio" in r:
            groups.setdefault((r["benchmark"], r["batch"]), []).append(r)
    for (bench, batch), rs in groups.items():
        by = {r["variant"]: r for r in rs}
        ok = [r for r in rs if r.get("check", {}).get("ok")]
        safe = [r for r in ok if r.get("safe")]
        best_safe = max(safe, key=lambda r: r["ratio"], default=None)
        best = max(ok, key=lambda r: r["ratio"], default=None)
        out[f"{bench}@{batch}"] = {
            "toolkit_vs_naive": by.get("toolkit", {}).get("ratio"),
            "toolkit_plain_vs_naive": by.get("toolkit_plain", {}).get("ratio"),
            "best_safe": best_safe and {"variant": best_safe["variant"], "ratio": best_safe["ratio"]},
            "best": best and {"variant": best["variant"], "ratio": best["ratio"]},
            "all_checks_ok": len(ok) == len(rs),
        }
    return out


def headline(result: Mapping[str, Any]) -> str:
    """A few lines on the targets: toolkit vs hand-written loop, best safe variant."""
    lines = []
    for key, s in result.get("summary", {}).items():
        parts = []
        if s["toolkit_vs_naive"] is not None:
            parts.append(f"toolkit {s['toolkit_vs_naive']:.2f}x")
        if s["toolkit_plain_vs_naive"] is not None:
            parts.append(f"toolkit with plain Adam {s['toolkit_plain_vs_naive']:.2f}x")
        if s["best_safe"]:
            parts.append(f"best safe {s['best_safe']['variant']} {s['best_safe']['ratio']:.2f}x")
        if s["best"] and s["best"] != s["best_safe"]:
            parts.append(f"best {s['best']['variant']} {s['best']['ratio']:.2f}x")
        lines.append(f"{key}: " + ", ".join(parts) + ("" if s["all_checks_ok"] else "  (A CHECK FAILED)"))
    return "\n".join(lines)
