"""``python -m bench.gpu_check --out DIR [--smoke] [--budget-s S] [--sections a,b,…]``.

Exit status: 0 when no section failed or errored, 1 otherwise, 2 without a CUDA device
(and without ``--smoke``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from .core import Context, run_section

# (section, share of the default 480 s budget in seconds), in run order
PLAN = (
    ("environment", 10),
    ("syncs", 20),
    ("parity", 140),
    ("determinism", 40),
    ("sanitizer", 130),
    ("timings", 105),
    ("tuning", 35),
)
DEFAULT_BUDGET_S = 480.0
RESERVE_S = 3.0  # kept for each later section, and for writing the report


def _section(name: str):
    """The section's function (imported late: the smoke run sets the interpreter up first)."""
    from . import environment, parity, sanitizer, syncs, timings, tuning

    return {
        "environment": environment.run,
        "syncs": syncs.run,
        "parity": parity.run_parity,
        "determinism": parity.run_determinism,
        "sanitizer": sanitizer.run,
        "timings": timings.run,
        "tuning": tuning.run,
    }[name]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny sizes (the test suite's run)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="wall-clock limit of the whole run (default 480)")
    parser.add_argument("--sections", default="", help="comma-separated subset, e.g. parity,timings (environment always runs)")
    args = parser.parse_args(argv)
    names = [name for name, _ in PLAN]
    args.only = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in args.only if s not in names]
    if unknown:
        parser.error(f"--sections: expected names among {', '.join(names)}, got {', '.join(unknown)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s: expected a positive number of seconds, got {args.budget_s}")
    return args


def allotments(plan: list[tuple[str, float]], remaining: float, index: int, scale: float) -> float:
    """Seconds for section ``index``: its share, or more when earlier sections left time,
    never eating the later sections' reserve."""
    later = plan[index + 1 :]
    share = plan[index][1] * scale
    spare = remaining - sum(seconds * scale for _, seconds in later)
    return max(0.0, min(max(share, spare), remaining - RESERVE_S * (len(later) + 1)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.smoke:  # before triton is first imported
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["OGKERNELS_FORCE_TRITON"] = "1"
        os.environ["OGKERNELS_BACKEND"] = "triton"
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from .report import report_dict, summary_lines, write

    cuda = torch.cuda.is_available() and not args.smoke
    ctx = Context(out=args.out, smoke=args.smoke, device="cuda" if cuda else "cpu", budget_s=args.budget_s)
    plan = [(n, s) for n, s in PLAN if n == "environment" or not args.only or n in args.only]
    if not cuda and not args.smoke:
        plan = [("environment", 10)]
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results = []
    scale = args.budget_s / DEFAULT_BUDGET_S
    for index, (name, _) in enumerate(plan):
        seconds = allotments(plan, ctx.remaining(), index, scale)
        print(f"[gpu_check] {name} ({seconds:.0f} s) …", flush=True)
        results.append(run_section(name, _section(name), ctx, seconds))
        print(f"[gpu_check] {name}: {results[-1].status} in {results[-1].seconds:.1f} s", flush=True)
    meta = {
        "mode": "smoke" if args.smoke else "gpu",
        "started": started,
        "wall_s": round(ctx.elapsed(), 1),
        "budget_s": args.budget_s,
        "argv": sys.argv[1:] if argv is None else argv,
        "environment": ctx.environment,
    }
    report = report_dict(meta, results)
    if not cuda and not args.smoke:
        report["ok"] = False
        report["note"] = "no CUDA device: run with --smoke on a CPU machine"
    json_path, md_path = write(args.out, report)
    print("\n".join(summary_lines(report)))
    print(f"  report: {json_path}  {md_path}")
    if not cuda and not args.smoke:
        print("no CUDA device: nothing to check (use --smoke on a CPU machine)", file=sys.stderr)
        return 2
    return 0 if report["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
