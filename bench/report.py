"""The performance report in one command: ``python -m bench.report``.

1. CPU timings: the pytest-benchmark suites (``bench.timings``; default downsample, og_tokens,
   fusion), reference and our paths side by side → speedups.
2. Cost per batch, machine-independent (``bench.cost_report``): host syncs, aten ops, bytes
   vs the minimum, projector FLOPs, LLM tokens and attention FLOPs, for LLaVA-1.5 and SigLIP
   at B = 8, 16, 32; our Triton path's syncs and launches counted under the interpreter on
   tiny batches (``bench.triton_counts``).
3. The static GPU audit (``ogkernels.tools.audit``: registers, spills, access widths; plus the
   register-limited occupancy).
4. Modeled GPU time per op on A100 / H100 / H200 (``bench.modeled``) — modeled, not measured.

Prints Markdown tables, writes ``<out>/report.json``, ``<out>/cpu_benchmarks.json`` and the
figure ``<out>/report.png``. A few minutes on a 2-core CPU machine (``--suites downsample
og_tokens`` or ``--timings-json`` to reuse a run make it shorter). Options: ``--help``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from ogkernels.tools import costmodel

from . import cost_report, modeled, plot, static_audit, tables, timings, triton_counts
from .conftest import memcpy_gbps
from .workloads import ENCODERS

ROOT = Path(__file__).resolve().parents[1]


def _log(message: str) -> None:
    print(f"[bench.report {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def machine_info() -> dict:
    """Where the figures were taken: date, CPU, cores, memcpy bandwidth, versions, commit."""
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))  # fmt: skip
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:  # pragma: no cover - triton missing
        triton_version = None
    return {
        "date_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu, "cores": os.cpu_count(), "memcpy_GBps": memcpy_gbps(),
        "cuda": torch.cuda.is_available(), "torch": torch.__version__, "triton": triton_version,
        "python": platform.python_version(), "commit": commit or None,
    }  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="output folder")
    p.add_argument("--suites", nargs="*", default=list(timings.DEFAULT_SUITES), choices=list(timings.SUITES),
                   help="benchmark suites to time (none: skip the timings)")  # fmt: skip
    p.add_argument("--timings-json", type=Path, help="reuse a pytest-benchmark JSON instead of running the suites")
    p.add_argument("--encoders", nargs="*", default=list(ENCODERS), choices=list(ENCODERS))
    p.add_argument("--batches", nargs="*", type=int, default=list(cost_report.BATCHES))
    p.add_argument("--gpu", default="H100-SXM", help="GPU of the summary table and figure")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    # the cost counts run our PyTorch path in this process; the Triton path is counted apart
    os.environ.pop("OGKERNELS_FORCE_TRITON", None)
    args.out.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    _log(f"{info['cores']} cores, memcpy {info['memcpy_GBps']:.1f} GB/s")

    timing_rows: list[dict] = []
    if args.timings_json is not None:
        timing_rows = timings.speedup_rows(timings.load(args.timings_json))
    elif args.suites:
        json_path = args.out / "cpu_benchmarks.json"
        _log(f"timing {', '.join(args.suites)} (pytest-benchmark → {json_path})")
        timings.run_benchmarks(args.suites, json_path)
        timing_rows = timings.speedup_rows(timings.load(json_path))

    _log("counting syncs, ops and bytes per batch")
    records = cost_report.cost_records(args.encoders, args.batches)
    _log("counting the Triton path under the interpreter (tiny batches)")
    triton = triton_counts.run_subprocess()
    _log("static audit (ahead-of-time compile for sm_80 / sm_90)")
    audit = static_audit.run_audit()
    ops = [modeled.modeled_ops(r) for r in records]
    floors = [modeled.overhead_floors(r, triton) for r in records]

    sections = {
        "CPU timings (measured)": tables.timings_table(timing_rows) if timing_rows else "(not run)",
        "Host syncs and launches per batch (counted)": tables.syncs_table(records, triton),
        "Our Triton path, counted under the interpreter": tables.triton_table(triton),
        "Bytes per batch vs the minimum (counted / design)": tables.bytes_table(records),
        "Projector (D=4096) and LLM (Llama-3-8B) per batch": tables.projector_llm_table(records),
        "Modeled GPU time per batch (MODELED, not measured)": tables.modeled_summary_table(records, ops, floors, args.gpu),
    }
    detail = next((i for i, r in enumerate(records) if r["config"]["B"] == 16), 0)
    sections[f"Modeled GPU time per op, {tables.batch_name(records[detail])} (MODELED)"] = tables.modeled_ops_table(ops[detail])
    sections["Static GPU audit (ptxas, no GPU)"] = tables.audit_table(audit)
    print(f"# ogkernels performance report — {info['date_utc']}, {info['cores']} cores ({info['cpu']}), "
          f"memcpy {info['memcpy_GBps']:.1f} GB/s, torch {info['torch']}, commit {(info['commit'] or '?')[:10]}\n")  # fmt: skip
    for title, table in sections.items():
        print(f"## {title}\n\n{table}\n")

    report = {
        "machine": info, "timings": timing_rows, "cost": records, "triton_counts": triton, "audit": audit,
        "modeled": ops, "overhead_floors": floors,
        "assumptions": {"launch_s": costmodel.ASSUMED_LAUNCH_S, "sync_s": costmodel.ASSUMED_SYNC_S,
                        "gpus": {k: vars(v) for k, v in costmodel.GPUS.items()}},
    }  # fmt: skip
    (args.out / "report.json").write_text(json.dumps(report, indent=1, default=str))
    plot.draw(args.out / "report.png", timing_rows, records, ops, floors, args.gpu)
    _log(f"wrote {args.out / 'report.json'} and {args.out / 'report.png'}")
    return report


if __name__ == "__main__":
    main()
