"""The static GPU audit (``python -m ogkernels.tools.audit --json``) for the report, with the
theoretical occupancy its register counts allow.

The audit compiles every Triton kernel for sm_80 / sm_90 ahead of time; a Triton function
cannot be both interpreted and compiled in one process, so it runs in a subprocess without
``TRITON_INTERPRET`` (as ``tests/test_triton_kernels.py`` does).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from ogkernels.tools.audit import kernel_configs
from ogkernels.tools.costmodel import register_limited_occupancy

ROOT = Path(__file__).resolve().parents[1]


def run_audit(timeout: float = 600) -> list[dict]:
    """Audit records (name, arch, registers, spill bytes, shared bytes, load/store bits) plus
    ``num_warps`` and ``occupancy`` (register-limited, fraction of 64 warps per SM)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OGKERNELS_FORCE_TRITON")}
    result = subprocess.run(
        [sys.executable, "-m", "ogkernels.tools.audit", "--json"], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"ogkernels.tools.audit failed:\n{result.stderr[-3000:]}")
    warps = {config.name: config.num_warps for config in kernel_configs()}
    records = json.loads(result.stdout)
    for record in records:
        record["num_warps"] = warps[record["name"]]
        record["occupancy"] = register_limited_occupancy(record["registers"], record["num_warps"])
    return records
