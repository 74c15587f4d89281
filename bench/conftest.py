"""Benchmark set-up: the machine's memcpy bandwidth, shared batches, and a side-by-side table.

Every benchmark puts ``reference`` and our paths in one ``benchmark.group``; at the end of the
run the table prints each group's mean times and the ratio of the reference to each path
(measured in this one run, on this machine), plus the figures the benchmarks stored in
``benchmark.extra_info`` (GB/s, roofline fraction, syncs, rows).
"""

from __future__ import annotations

import functools
import os
import time

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@functools.lru_cache(maxsize=1)
def memcpy_gbps() -> float:
    """Measured copy bandwidth of this machine, GB/s of (read + write) bytes, 64 MiB copy."""
    src = torch.ones(16 * 2**20, dtype=torch.float32)
    dst = torch.empty_like(src)
    times = []
    for _ in range(15):
        start = time.perf_counter()
        dst.copy_(src)
        times.append(time.perf_counter() - start)
    times.sort()
    return 2 * src.numel() * src.element_size() / times[len(times) // 2] / 1e9


@pytest.fixture(scope="session")
def bandwidth() -> float:
    return memcpy_gbps()


def _format_extra(extra: dict) -> str:
    parts = []
    for key, value in extra.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        else:
            parts.append(f"{key}={value}")
    return ", ".join(parts)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups: dict[str, list] = {}
    for bench in session.benchmarks:
        if bench.has_error or not bench.stats:
            continue
        groups.setdefault(bench.group or bench.fullname, []).append(bench)
    write = terminalreporter.write_line
    write("")
    write(f"=== ogkernels: side by side (memcpy {memcpy_gbps():.1f} GB/s on this machine) ===")
    for group, benches in groups.items():
        reference = next((b for b in benches if "reference" in b.name), None)
        write(f"[{group}]")
        for bench in benches:
            mean_ms = bench.stats.mean * 1e3
            ratio = f"  {reference.stats.mean / bench.stats.mean:6.1f}x vs reference" if reference and bench is not reference else ""
            write(f"  {bench.name:60} {mean_ms:10.3f} ms{ratio}")
            if bench.extra_info:
                write(f"      {_format_extra(bench.extra_info)}")
