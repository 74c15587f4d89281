"""The static GPU audit: every Triton kernel compiles ahead of time for sm_80 / sm_90 at the
launches its launcher builds for the benchmark shapes, with no spill and 128-bit row copies."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from ogkernels.tools.audit import audit_config, kernel_configs


@pytest.fixture(scope="module")
def static_audit() -> dict[tuple[str, int], dict]:
    """``python -m ogkernels.tools.audit --json`` in a process without the interpreter (a Triton
    function cannot be both interpreted and compiled in one process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "OGKERNELS_FORCE_TRITON")}
    result = subprocess.run(
        [sys.executable, "-m", "ogkernels.tools.audit", "--json"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {(r["name"], r["arch"]): r for r in json.loads(result.stdout)}


@pytest.mark.slow
@pytest.mark.parametrize("config", kernel_configs(), ids=lambda c: c.name)
@pytest.mark.parametrize("arch", [80, 90])
def test_kernels_compile_without_spills(static_audit, config, arch):
    audit = static_audit[(config.name, arch)]
    assert 0 < audit["registers"] <= 255
    assert audit["spill_store_bytes"] == 0 and audit["spill_load_bytes"] == 0, audit
    if config.expect_128bit:
        assert max(audit["load_bits"]) == 128 and max(audit["store_bits"]) == 128, audit


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="the interpreter is on only without a GPU")
def test_audit_refuses_the_interpreter():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        audit_config(kernel_configs()[0], 90)
