"""CPU timings: run the pytest-benchmark suites in a subprocess and read their JSON.

The benchmarks themselves live in ``bench_*.py`` (one group per workload, the reference and
our paths side by side); this module only runs them (``pytest bench/<file> --benchmark-json``)
and turns the JSON into rows: per group and path the mean and median time (seconds) and the
reference's time divided by the path's (the speedup, > 1 = faster than the reference), from
medians — robust on a shared machine — and from means (what ``bench/conftest.py`` prints).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = {
    "downsample": "bench/bench_downsample.py",
    "og_tokens": "bench/bench_og_tokens.py",
    "fusion": "bench/bench_fusion.py",
    "training": "bench/bench_training.py",
    "mask_store": "bench/bench_mask_store.py",
}
DEFAULT_SUITES = ("downsample", "og_tokens", "fusion")


def run_benchmarks(suites, json_path: Path, timeout: float = 1800) -> None:
    """``pytest <suites> --benchmark-json json_path`` in a subprocess (raises on failure)."""
    files = [SUITES[name] for name in suites]
    command = [sys.executable, "-m", "pytest", *files, "-q", "--benchmark-json", str(json_path)]
    result = subprocess.run(command, check=False, cwd=ROOT, env=dict(os.environ), capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"benchmarks failed ({' '.join(command)}):\n{result.stdout[-3000:]}\n{result.stderr[-2000:]}")


def speedup_rows(report: dict) -> list[dict]:
    """Rows ``{group, path, mean_s, median_s, speedup_median, speedup_mean, extra}`` from a
    pytest-benchmark JSON report; speedups are None for the reference and where a group has
    no reference."""
    groups: dict[str, list[dict]] = {}
    for bench in report["benchmarks"]:
        groups.setdefault(bench["group"] or bench["fullname"], []).append(bench)
    rows = []
    for group, benches in groups.items():
        reference = next((b for b in benches if (b.get("params") or {}).get("path") == "reference"), None)
        for bench in benches:
            path = (bench.get("params") or {}).get("path") or bench["name"]
            stats = bench["stats"]
            faster = reference is not None and bench is not reference
            rows.append(
                {
                    "group": group,
                    "path": path,
                    "mean_s": stats["mean"],
                    "median_s": stats["median"],
                    "rounds": stats["rounds"],
                    "speedup_median": reference["stats"]["median"] / stats["median"] if faster else None,
                    "speedup_mean": reference["stats"]["mean"] / stats["mean"] if faster else None,
                    "extra": bench.get("extra_info") or {},
                }
            )
    return rows


def load(json_path: Path) -> dict:
    return json.loads(Path(json_path).read_text())
