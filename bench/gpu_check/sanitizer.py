"""Section ``sanitizer``: ``compute-sanitizer`` memcheck and racecheck on the small target.

Each tool runs ``python -m bench.gpu_check.sanitize_target`` under
``compute-sanitizer --tool <tool> --error-exitcode 86``; the check passes when the target
printed ``target ok`` and the sanitizer's ``ERROR SUMMARY`` counts 0 errors. Without the
binary, or without CUDA, the tools are skipped; ``--smoke`` still runs the target plainly
(through the PyTorch ops).
Some sandboxes refuse the device to the sanitizer (seen: ``Device not supported`` under
gVisor): that is recorded as the tool's output, not as a kernel error.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

from .core import REPO, Context, SectionResult, as_text, subprocess_env, tail
from .environment import sanitizer_binary

TOOLS = ("memcheck", "racecheck")
ERROR_EXIT = 86
_SUMMARY = re.compile(r"ERROR SUMMARY:\s*(\d+)")


def target_command(device: str) -> list[str]:
    return [sys.executable, "-m", "bench.gpu_check.sanitize_target", "--device", device]


def _env() -> dict[str, str]:
    # lazy module loading: the sanitizer instruments only the kernels that run
    return subprocess_env(CUDA_MODULE_LOADING=os.environ.get("CUDA_MODULE_LOADING", "LAZY"))


def run_tool(binary: str, tool: str, timeout: float, device: str = "cuda") -> dict:
    """One sanitizer tool over the target: exit code, the ``ERROR SUMMARY`` count, whether the
    target printed ``target ok``, and the output's tail."""
    command = [binary, "--tool", tool, "--error-exitcode", str(ERROR_EXIT), "--print-limit", "20", *target_command(device)]
    start = time.monotonic()
    try:
        proc = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=timeout)
        code, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as expired:
        code = None
        output = f"{as_text(expired.stdout)}{as_text(expired.stderr)}\n[gpu_check] timed out after {timeout:.0f} s"
    errors = [int(n) for n in _SUMMARY.findall(output)]
    return {
        "tool": tool, "returncode": code, "seconds": round(time.monotonic() - start, 1),
        "errors": errors[-1] if errors else None, "target_ok": "target ok" in output,
        "output_tail": tail(output, 2000),
    }  # fmt: skip


def run(ctx: Context) -> SectionResult:
    result = SectionResult("sanitizer")
    binary = sanitizer_binary()
    result.data["binary"] = binary
    if not ctx.cuda:  # the target's own code, on the PyTorch ops (the kernels run in parity)
        proc = subprocess.run(target_command("cpu"), cwd=REPO, env={**_env(), "OGKERNELS_BACKEND": "torch"},
                              capture_output=True, text=True, timeout=max(ctx.time_left(), 5))  # fmt: skip
        result.check("target runs (no sanitizer)", proc.returncode == 0 and "target ok" in proc.stdout,
                     tail(proc.stdout + proc.stderr, 400))  # fmt: skip
        for tool in TOOLS:
            result.skip_check(tool, "needs a CUDA device")
        return result
    if binary is None:
        for tool in TOOLS:
            result.skip_check(tool, "compute-sanitizer not found")
        return result
    runs = []
    for i, tool in enumerate(TOOLS):
        share = ctx.time_left() / (len(TOOLS) - i)
        if share < 10:
            result.skip_check(tool, "no time left in the budget")
            continue
        record = run_tool(binary, tool, share)
        runs.append(record)
        ok = record["returncode"] == 0 and record["errors"] == 0 and record["target_ok"]
        detail = f"exit {record['returncode']}, {record['errors']} errors, target ok: {record['target_ok']}, {record['seconds']} s"
        result.check(tool, ok, detail if ok else detail + " | " + record["output_tail"][-600:])
    result.data["runs"] = runs
    return result
