"""The check's outputs: ``gpu_check.json`` (everything), ``gpu_check.md`` (tables for people,
small enough to commit under ``bench/results-gpu/``) and a one-screen console summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .core import SectionResult

SCHEMA = 1
DETAIL_CHARS = 220


def report_dict(meta: dict[str, Any], results: list[SectionResult]) -> dict[str, Any]:
    statuses = {r.name: r.status for r in results}
    return {
        "schema": SCHEMA,
        **meta,
        "statuses": statuses,
        "ok": all(s in ("passed", "skipped") for s in statuses.values()),
        "sections": {r.name: r.as_dict() for r in results},
    }


def write(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps(report, indent=1, default=_plain) + "\n")
    md_path.write_text(markdown(report))
    return json_path, md_path


def _plain(value: Any) -> Any:
    return str(value)


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:,.3g}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value).replace("|", "/").replace("\n", " ")


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |")
    return lines


def headline(section: dict[str, Any]) -> str:
    """One line for a section: its key figure, or what failed."""
    data, name = section.get("data", {}), section["name"]
    failed = [c["name"] for c in section.get("checks", []) if c["status"] == "failed"]
    if section["status"] in ("error", "skipped"):
        return section.get("reason", "")[:DETAIL_CHARS]
    if name in ("parity", "determinism") and "pytest" in data:
        counts = data["pytest"]["counts"]
        text = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped"))
        names = [f["test"].rsplit("::", 1)[-1] for f in data["pytest"]["failures"][:3]]
        return text + (" | failing: " + ", ".join(names) if names else "") + (" | " + ", ".join(failed) if failed and not names else "")
    if name == "syncs":
        rows = data.get("syncs", [])
        return ", ".join(f"{r['case']}: {r['cuda'] if r['cuda'] is not None else r['counted']}" for r in rows[:4]) + (
            " | failed: " + ", ".join(failed) if failed else ""
        )
    if name == "timings":
        return f"{sum('ms' in r for r in data.get('rows', []))} rows, copy {data.get('copy_GBps', 0):.0f} GB/s"
    if name == "tuning":
        return " | ".join(f"{b['kernel']}: {b['settings']} ({b['speedup_vs_default']:.2f}x)" for b in data.get("best", []))
    return ", ".join(f"{c['name']}: {c['status']}" for c in section.get("checks", []))[:DETAIL_CHARS]


def summary_lines(report: dict[str, Any]) -> list[str]:
    env = report.get("environment", {})
    device = env.get("device", {})
    packages = env.get("packages", {})
    lines = [
        f"ogkernels GPU check ({report['mode']}) — {device.get('name', 'no CUDA device')} "
        f"| torch {packages.get('torch')} triton {packages.get('triton')} | commit {env.get('commit')} "
        f"| {report['wall_s']:.0f} s of {report['budget_s']:.0f}",
    ]
    for name, section in report["sections"].items():
        lines.append(f"  {name:12} {section['status']:8} {section['seconds']:6.1f} s  {headline(section)}"[:160])
    timings = report["sections"].get("timings", {}).get("data", {})
    for row in _key_timings(timings.get("rows", [])):
        lines.append(f"  {row}"[:160])
    for row in timings.get("training", []):
        if "tokens_per_s" in row:
            lines.append(f"  train step {row['path']}: {row['ms']:.1f} ms, {row['tokens_per_s']:,.0f} tokens/s ({row['attention']})")
    lines.append("  overall: " + ("OK" if report["ok"] else "FAILURES (see gpu_check.md)"))
    return lines


def _key_timings(rows: list[dict]) -> list[str]:
    """og_tokens at each configuration: ours vs the others, one line each."""
    lines = []
    for config in dict.fromkeys(r["config"] for r in rows):
        here = {r["path"]: r for r in rows if r["config"] == config and r["op"] == "og_tokens"}
        ours = here.get("triton", {})
        if "ms" not in ours:
            continue
        parts = [f"og_tokens {config}: triton {ours['ms']:.3g} ms"]
        if "pct_copy" in ours:
            parts.append(f"{ours['pct_copy']:.0f}% of copy")
        for path in ("torch", "compile", "reference"):
            if "ms" in here.get(path, {}):
                parts.append(f"{path} {here[path]['ms']:.3g} ms ({here[path]['ms'] / ours['ms']:.1f}x)")
        lines.append(", ".join(parts))
    return lines


def markdown(report: dict[str, Any]) -> str:
    env = report.get("environment", {})
    lines = ["# ogkernels GPU check", "", "```", *summary_lines(report), "```", ""]
    lines += ["## Environment", "", "```json", json.dumps(env, indent=1, default=_plain)[:4000], "```", ""]
    for name, section in report["sections"].items():
        lines += [f"## {name}: {section['status']} ({section['seconds']:.1f} s)", ""]
        if section.get("reason"):
            lines += [f"Reason: {section['reason']}", ""]
        checks = [{**c, "detail": str(c.get("detail", ""))[:DETAIL_CHARS]} for c in section.get("checks", [])]
        if checks:
            lines += _table(checks, ["name", "status", "detail"]) + [""]
        lines += _section_tables(name, section.get("data", {}))
        if section.get("traceback"):
            lines += ["```", section["traceback"], "```", ""]
    return "\n".join(lines) + "\n"


def _section_tables(name: str, data: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "pytest" in data:
        run = data["pytest"]
        lines += [f"`{run['command']}`", ""]
        for failure in run["failures"]:
            lines += [f"* **{failure['test']}** ({failure['kind']}): {failure['message'][:300]}"]
        if run["skip_reasons"]:
            lines += ["", "Skipped: " + "; ".join(f"{n}× {r}" for r, n in run["skip_reasons"].items())[:1500]]
        if run.get("output_tail"):
            lines += ["", "```", run["output_tail"][-1500:], "```"]
        lines.append("")
    if name == "syncs":
        lines += _table(data.get("syncs", []), ["case", "expected", "cuda", "counted", "ops"]) + [""]
    if name == "sanitizer":
        lines += _table(data.get("runs", []), ["tool", "returncode", "errors", "target_ok", "seconds"]) + [""]
    if name == "timings":
        lines += [f"Device-to-device copy: {_fmt(data.get('copy_GBps'))} GB/s (read + write); model: {data.get('model_gpu')}", ""]
        lines += _table(data.get("rows", []), ["config", "op", "path", "ms", "GBps", "pct_copy", "model_us", "compile_s", "note"]) + [""]
        lines += _table(data.get("training", []), ["path", "config", "dtype", "ms", "tokens", "llm_rows", "tokens_per_s", "attention", "note"]) + [""]
    if name == "tuning":
        lines += _table(data.get("sweeps", []), ["kernel", "settings", "exact", "ms", "registers", "spill_bytes", "note"]) + [""]
        lines += _table(data.get("best", []), ["kernel", "settings", "ms", "speedup_vs_default", "default"]) + [""]
    return lines
