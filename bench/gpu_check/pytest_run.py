"""Run the test suite's own tests in a pytest subprocess and summarise its junit report.

No second implementation: the parity and determinism sections are these runs. On a GPU the
subprocess gets ``OGKERNELS_TEST_DEVICE=cuda`` (the op tests' ``device`` fixture: each
backend runs on CUDA tensors), a larger example budget (``OGKERNELS_TEST_SCALE``, default
:data:`TEST_SCALE`, for the op tests; the hypothesis profile ``gpu`` for the others) and,
when pytest-xdist is installed, several workers. A run cut short by the section's deadline
skips its remaining tests (:mod:`bench.gpu_check.pytest_plugin`) and still reports.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from .core import REPO, as_text, subprocess_env, tail

GRACE_S = 30  # after the deadline: the subprocess is killed only this much later
MESSAGE_CHARS = 600
TRACE_CHARS = 1500
MAX_FAILURES = 25
TEST_SCALE = "2"  # hypothesis examples of the op tests on a GPU, times their CPU counts


@dataclass
class TestRun:
    """The outcome of one pytest run."""

    command: list[str]
    returncode: int | None
    seconds: float
    counts: dict[str, int] = field(default_factory=dict)  # tests, passed, failed, errors, skipped
    failures: list[dict] = field(default_factory=list)  # {test, kind, message, trace}
    skip_reasons: dict[str, int] = field(default_factory=dict)
    slowest: list[dict] = field(default_factory=list)
    by_file: dict[str, dict[str, int]] = field(default_factory=dict)
    output_tail: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failures and self.counts.get("passed", 0) > 0

    def summary(self) -> dict:
        out = {
            "counts": self.counts, "returncode": self.returncode, "seconds": round(self.seconds, 1),
            "failures": self.failures, "skip_reasons": self.skip_reasons, "slowest": self.slowest,
            "by_file": self.by_file, "command": " ".join(self.command),
        }  # fmt: skip
        if not self.counts.get("tests") or self.returncode not in (0, 1):  # pytest itself broke
            out["output_tail"] = self.output_tail
        return out


def existing(paths: tuple[str, ...]) -> list[str]:
    """The test paths (files, folders, ``file::test`` ids) present in this checkout."""
    return [p for p in paths if (REPO / p.split("::")[0]).exists()]


def pytest_command(paths: list[str], junit: Path, *, cuda: bool, extra: tuple[str, ...] = ()) -> list[str]:
    """The pytest command line: quiet, the check's plugin, a junit report; on CUDA the
    ``gpu`` hypothesis profile and pytest-xdist workers when installed (on the CPU the suite's
    own profile: CI's budget)."""
    command = [sys.executable, "-m", "pytest", "-q", "-rfE", "--tb=short", "-p", "no:cacheprovider"]
    command += ["-p", "bench.gpu_check.pytest_plugin", f"--junitxml={junit}", "-o", "junit_family=xunit2"]
    if cuda:
        command.append("--hypothesis-profile=gpu")
        workers = min(8, os.cpu_count() or 1)
        if workers > 1 and importlib.util.find_spec("xdist") is not None:
            command += ["-n", str(workers)]
    return command + list(extra) + list(paths)


def run_tests(paths: list[str], *, cuda: bool, deadline: float, extra: tuple[str, ...] = ()) -> TestRun:
    """Run ``paths`` with pytest until ``deadline`` (monotonic seconds) and summarise."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        junit = Path(tmp) / "junit.xml"
        command = pytest_command(paths, junit, cuda=cuda, extra=extra)
        env = subprocess_env(OGKERNELS_GPU_CHECK_DEADLINE=str(time.time() + max(deadline - time.monotonic(), 0)))
        for forced in ("OGKERNELS_FORCE_TRITON", "OGKERNELS_BACKEND"):  # the tests pick their paths
            env.pop(forced, None)
        if cuda:
            env["OGKERNELS_TEST_DEVICE"] = "cuda"
            env.setdefault("OGKERNELS_TEST_SCALE", TEST_SCALE)
        start = time.monotonic()
        try:
            proc = subprocess.run(
                command, cwd=REPO, env=env, capture_output=True, text=True,
                timeout=max(deadline - time.monotonic(), 1) + GRACE_S,
            )  # fmt: skip
            returncode, output = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as expired:
            returncode = None
            output = as_text(expired.stdout) + as_text(expired.stderr) + "\n[gpu_check] killed at the deadline"
        run = TestRun(command, returncode, time.monotonic() - start, output_tail=tail(output, 3000))
        if junit.is_file():
            parse_junit(junit, run)
    return run


def parse_junit(path: Path, run: TestRun) -> None:
    """Fill ``run``'s counts, failures, skip reasons, slowest tests and per-file counts."""
    root = ET.parse(path).getroot()
    counts = dict.fromkeys(("tests", "passed", "failed", "errors", "skipped"), 0)
    timed = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        module = case.get("classname", "").rsplit(".", 1)[0] if "." in case.get("classname", "") else case.get("classname", "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "errors"
                if len(run.failures) < MAX_FAILURES:
                    run.failures.append({
                        "test": name, "kind": child.tag, "message": (child.get("message") or "")[:MESSAGE_CHARS],
                        "trace": tail(child.text or "", TRACE_CHARS),
                    })  # fmt: skip
            elif child.tag == "skipped":
                outcome = "skipped"
                reason = (child.get("message") or "").strip()[:160]
                run.skip_reasons[reason] = run.skip_reasons.get(reason, 0) + 1
        counts["tests"] += 1
        counts[outcome] += 1
        per_file = run.by_file.setdefault(module, dict.fromkeys(("passed", "failed", "errors", "skipped"), 0))
        per_file[outcome] += 1
        timed.append((float(case.get("time") or 0), name))
    run.counts = counts
    run.slowest = [{"test": n, "seconds": round(t, 2)} for t, n in sorted(timed, reverse=True)[:5]]
