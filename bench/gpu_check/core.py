"""The check's skeleton: run context, budget, guarded sections and their records, timing.

A section is a function ``section(ctx) -> SectionResult``. :func:`run_section` gives it its
deadline, times it, and turns any exception into an ``"error"`` record with the traceback's
tail, so one broken section never stops the others.

Statuses: ``passed`` (every check held), ``failed`` (a check did not hold: a wrong result, an
unexpected sync), ``error`` (the section itself raised), ``skipped`` (cannot run here, or no
time left: ``reason`` says which).
"""

from __future__ import annotations

import os
import statistics
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable
from unittest import mock

STATUSES = ("passed", "failed", "error", "skipped")
TRACEBACK_CHARS = 2500
REPO = Path(__file__).resolve().parents[2]


class SectionSkipped(Exception):
    """Raised by a section that cannot run here (its message is the reason)."""


@dataclass
class Check:
    """One expectation of a section: ``passed`` or ``failed`` (or ``skipped``), with details."""

    name: str
    status: str
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class SectionResult:
    """What a section reports: its checks, free-form ``data`` (tables), and its status
    (derived from the checks unless set: any failed check fails the section)."""

    name: str
    status: str = ""
    seconds: float = 0.0
    reason: str = ""
    checks: list[Check] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    traceback: str = ""

    def check(self, name: str, ok: bool, detail: str = "", **data: Any) -> bool:
        self.checks.append(Check(name, "passed" if ok else "failed", detail, data))
        return ok

    def skip_check(self, name: str, reason: str) -> None:
        self.checks.append(Check(name, "skipped", reason))

    def finish(self) -> "SectionResult":
        if not self.status:
            states = {c.status for c in self.checks}
            self.status = "failed" if "failed" in states else "passed" if "passed" in states else "skipped"
            if self.status == "skipped" and not self.reason:
                self.reason = "; ".join(c.detail for c in self.checks if c.detail) or "nothing ran"
        return self

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Context:
    """One run: where it writes, the device and mode, and the clock."""

    out: Path
    smoke: bool
    device: str  # "cuda" or "cpu"
    budget_s: float
    started: float = field(default_factory=time.monotonic)
    deadline: float = 0.0  # the running section's deadline (monotonic seconds)
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float:
        """Seconds left in the whole run."""
        return self.budget_s - self.elapsed()

    def time_left(self) -> float:
        """Seconds left to the running section."""
        return self.deadline - time.monotonic()


def tail(text: str, limit: int = TRACEBACK_CHARS) -> str:
    return text if len(text) <= limit else "…" + text[-limit:]


def subprocess_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on ``PYTHONPATH``, plus ``extra``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return {**env, **extra}


def as_text(data: bytes | str | None) -> str:
    """A subprocess's output as text (``TimeoutExpired`` carries bytes even with ``text=True``)."""
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def run_section(name: str, fn: Callable[[Context], SectionResult], ctx: Context, seconds: float) -> SectionResult:
    """Run one section with ``seconds`` to its deadline, guarded (see the module docstring)."""
    start = time.monotonic()
    ctx.deadline = start + max(seconds, 0.0)
    if seconds <= 0:
        result = SectionResult(name, "skipped", reason="no time left in the budget")
    else:
        try:
            result = fn(ctx).finish()
        except SectionSkipped as skipped:
            result = SectionResult(name, "skipped", reason=str(skipped))
        except Exception:  # a broken section is recorded, the run goes on
            result = SectionResult(name, "error", traceback=tail(traceback.format_exc()))
            result.reason = result.traceback.strip().splitlines()[-1][:300]
    result.name = name
    result.seconds = round(time.monotonic() - start, 2)
    return result


# ----------------------------------------------------------------------------------------------
# Devices, backends, timing
# ----------------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def op_backend(name: str):
    """Run ogkernels' ops through ``name`` (``"triton"`` or ``"torch"``) inside the block
    (``OGKERNELS_BACKEND``; the older ``OGKERNELS_FORCE_TRITON`` spelling is kept in step)."""
    values = {"OGKERNELS_BACKEND": name, "OGKERNELS_FORCE_TRITON": "1" if name == "triton" else "0"}
    return mock.patch.dict(os.environ, values)


def triton_launches(fn: Callable[[], Any]) -> int:
    """How many Triton kernels one call of ``fn`` launches (which path really ran)."""
    from ogkernels.tools.profiling import HostSyncCounter

    with HostSyncCounter() as counter:
        fn()
    return counter.triton_launches


def measure(
    fn: Callable[[], Any], device: str, *, runs: int = 1, warmup_ms: float = 25, rep_ms: float = 100, warm: bool = False
) -> float:
    """Median seconds of one call of ``fn``: on CUDA ``triton.testing.do_bench`` (CUDA events,
    ``warmup_ms`` / ``rep_ms`` of warm-up and repeats), elsewhere the median of ``runs`` host
    timings after one warm-up call (none when the caller has just called ``fn``: ``warm``)."""
    if device == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median") / 1e3
    if not warm:
        fn()
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def wall(fn: Callable[[], Any], device: str, runs: int, *, warmup: bool = True) -> float:
    """Median seconds of ``runs`` synchronised host timings (after one warm-up call unless
    ``warmup=False``): for calls too slow or too sync-heavy for ``do_bench`` (the reference)."""
    if warmup:
        fn()
        synchronize(device)
    times = []
    for _ in range(max(runs, 1)):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
