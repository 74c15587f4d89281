"""The GPU acceptance check (``bench.gpu_check``): its smoke run, its parts, and the large
cases its parity section runs on a GPU.

* ``test_smoke_run_*`` runs ``python -m bench.gpu_check --smoke`` (CPU, Triton interpreter,
  tiny sizes) and checks the report's structure and that every section that can run on a CPU
  passed — so the kit cannot rot between GPU runs;
* the budget split, the section guard, the pytest runner (a real pytest run on generated
  tests: counts, failures, the deadline skip) and the markdown report, each on its own;
* ``test_cuda_*_past_2_31``: row gathers and Φ whose element offsets cross ``2**31``, against
  the PyTorch path and the reference on the same GPU (skipped without CUDA and free memory).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bench.gpu_check import cli, core, publish, report
from bench.gpu_check.pytest_run import run_tests

REPO = Path(__file__).resolve().parents[1]
CPU_SECTIONS = ("environment", "syncs", "parity", "determinism", "sanitizer", "timings")


# ----------------------------------------------------------------------------------------------
# The smoke run
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    proc = subprocess.run(
        # ≈ 85 s of CPU on an idle 2-core machine; the generous budget keeps a busy one from
        # cutting sections short (which the report would rightly show as failures)
        [sys.executable, "-m", "bench.gpu_check", "--smoke", "--out", str(out), "--budget-s", "1200"],
        cwd=REPO, env=core.subprocess_env(), capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    return proc, out


@pytest.mark.slow
def test_smoke_run_passes_every_cpu_section(smoke):
    proc, out = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert data["schema"] == report.SCHEMA and data["mode"] == "smoke" and data["ok"] is True
    assert list(data["sections"]) == [name for name, _ in cli.PLAN]
    for name in CPU_SECTIONS:
        section = data["sections"][name]
        assert section["status"] == "passed", (name, section["reason"], section["traceback"])
        assert section["checks"] and all(c["status"] in ("passed", "skipped") for c in section["checks"])
    tuning = data["sections"]["tuning"]
    assert tuning["status"] == "passed" or "ogkernels.ops.launch" in tuning["reason"], tuning
    assert data["wall_s"] <= data["budget_s"]


@pytest.mark.slow
def test_smoke_run_report_has_every_table(smoke):
    _, out = smoke
    data = json.loads((out / "gpu_check.json").read_text())
    sections = data["sections"]
    # syncs: every case counted against its expectation
    rows = sections["syncs"]["data"]["syncs"]
    assert rows and all(r["counted"] == r["expected"] for r in rows)
    assert any(c["name"] == "cuda graph" and c["status"] == "skipped" for c in sections["syncs"]["checks"])
    # parity / determinism: real pytest runs of the suite's tests, summarised from junit
    for name in ("parity", "determinism"):
        counts = sections[name]["data"]["pytest"]["counts"]
        assert counts["passed"] > 0 and counts["failed"] == counts["errors"] == 0
    twice = [c for c in sections["determinism"]["checks"] if c["name"].startswith("twice")]
    assert len(twice) == 2 and all(c["detail"] == "bit-identical" for c in twice)
    # timings: every path of og_tokens timed, GB/s against the measured copy, the training step
    timings = sections["timings"]["data"]
    og = {r["path"]: r for r in timings["rows"] if r["op"] == "og_tokens"}
    assert {"triton", "torch", "reference", "compile"} <= set(og) and all(r["ms"] > 0 for r in og.values())
    assert og["triton"]["GBps"] > 0 and timings["copy_GBps"] > 0
    assert [r["path"] for r in timings["training"]] == ["packed (OGFusion varlen)", "padded (reference)"]
    assert all(r["tokens_per_s"] > 0 for r in timings["training"])
    sanitizer = {c["name"]: c["status"] for c in sections["sanitizer"]["checks"]}
    assert sanitizer == {"target runs (no sanitizer)": "passed", "memcheck": "skipped", "racecheck": "skipped"}
    markdown = (out / "gpu_check.md").read_text()
    assert all(f"## {name}: " in markdown for name in sections)
    assert (out / "gpu_check.md").stat().st_size < 64 * 1024 and (out / "gpu_check.json").stat().st_size < 1 << 20


# ----------------------------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------------------------


@given(remaining=st.floats(0, 2000), index=st.integers(0, len(cli.PLAN) - 1), scale=st.sampled_from([0.5, 1.0, 2.0]))
def test_a_section_never_takes_the_later_sections_reserve(remaining, index, scale):
    plan = list(cli.PLAN)
    seconds = cli.allotments(plan, remaining, index, scale)
    later = len(plan) - index - 1
    assert 0 <= seconds <= max(remaining - cli.RESERVE_S * (later + 1), 0)
    if remaining >= sum(s for _, s in plan) * scale + cli.RESERVE_S * len(plan):
        assert seconds >= plan[index][1] * scale  # a full budget gives every section its share


def test_run_section_guards_errors_skips_and_the_budget(tmp_path):
    ctx = core.Context(out=tmp_path, smoke=True, device="cpu", budget_s=10)

    def broken(ctx):
        raise ZeroDivisionError("inside a section")

    def cannot(ctx):
        raise core.SectionSkipped("needs a GPU")

    def fine(ctx):
        result = core.SectionResult("fine")
        result.check("holds", True)
        result.check("breaks", ctx.time_left() < 0, "a check that fails")
        return result

    error = core.run_section("broken", broken, ctx, 5)
    assert error.status == "error" and "ZeroDivisionError: inside a section" in error.traceback
    assert error.reason.startswith("ZeroDivisionError")
    assert core.run_section("cannot", cannot, ctx, 5).status == "skipped"
    assert core.run_section("late", fine, ctx, 0).reason == "no time left in the budget"
    failed = core.run_section("fine", fine, ctx, 5)
    assert failed.status == "failed" and [c.status for c in failed.checks] == ["passed", "failed"]


def test_pytest_runner_counts_failures_and_stops_at_the_deadline(tmp_path):
    tests = tmp_path / "test_generated.py"
    tests.write_text(
        "import pytest\n"
        "def test_ok():\n    assert True\n"
        "def test_wrong():\n    assert 1 + 1 == 3, 'arithmetic'\n"
        "@pytest.mark.skip(reason='not here')\ndef test_skipped():\n    pass\n"
    )
    run = run_tests([str(tests)], cuda=False, deadline=time.monotonic() + 120)
    assert run.counts == {"tests": 3, "passed": 1, "failed": 1, "errors": 0, "skipped": 1}
    assert not run.ok and run.returncode == 1
    (failure,) = run.failures
    assert failure["test"].endswith("test_wrong") and "arithmetic" in failure["message"]
    assert run.skip_reasons == {"not here": 1}
    late = run_tests([str(tests)], cuda=False, deadline=time.monotonic() - 1)
    assert late.counts["skipped"] == 3 and sum(n for r, n in late.skip_reasons.items() if "budget" in r) == 2


def test_markdown_report_lists_sections_checks_and_tracebacks():
    ok = core.SectionResult("syncs")
    ok.check("syncs: og_tokens", True, "1 (expected 1)")
    ok.data["syncs"] = [{"case": "og_tokens", "expected": 1, "cuda": 1, "counted": 1, "ops": {}}]
    broken = core.SectionResult("timings", "error", 1.5, "RuntimeError: boom", traceback="Traceback …\nRuntimeError: boom")
    meta = {"mode": "gpu", "wall_s": 3.0, "budget_s": 480.0, "environment": {"device": {"name": "Some GPU"}}}
    data = report.report_dict(meta, [ok.finish(), broken])
    assert data["ok"] is False and data["statuses"] == {"syncs": "passed", "timings": "error"}
    text = report.markdown(data)
    assert "## syncs: passed" in text and "## timings: error (1.5 s)" in text
    assert "| syncs: og_tokens | passed | 1 (expected 1) |" in text and "RuntimeError: boom" in text
    assert any("Some GPU" in line for line in report.summary_lines(data))


def test_sanitizer_record_reads_the_error_summary(tmp_path):
    from bench.gpu_check.sanitizer import ERROR_EXIT, run_tool

    # a stand-in for compute-sanitizer: drops its own options, runs the target, reports
    fake = tmp_path / "compute-sanitizer"
    fake.write_text('#!/bin/sh\nshift 6\n"$@"\ncode=$?\necho "========= ERROR SUMMARY: 3 errors"\n'
                    f'exit {ERROR_EXIT}\n')  # fmt: skip
    fake.chmod(0o755)
    record = run_tool(str(fake), "memcheck", timeout=120, device="cpu")
    assert record["target_ok"] and record["errors"] == 3 and record["returncode"] == ERROR_EXIT


@pytest.mark.slow
def test_tuning_compiles_each_setting_for_its_registers():
    # outside the interpreter, like the GPU run: the audit compiles the launcher's launch
    code = (
        "from bench.gpu_check.tuning import registers\n"
        "print(registers('phi_bins', {}, 90)['registers'], registers('phi_bins', {'BLOCK_C': 4, 'BLOCK_W': 8}, 90)['registers'])"
    )
    env = core.subprocess_env()
    for name in ("TRITON_INTERPRET", "OGKERNELS_FORCE_TRITON", "OGKERNELS_BACKEND"):
        env.pop(name, None)
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    default, small = (int(n) for n in proc.stdout.split())
    assert 0 < small < default <= 255  # a smaller tile holds fewer values in registers


def _gpu_report(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    section = core.SectionResult("parity")
    section.check("op tests: pytest", False, "1 failed")
    meta = {"mode": "gpu", "started": "2026-12-01T10:00:00+00:00", "wall_s": 400.0, "budget_s": 480.0,
            "environment": {"device": {"name": "NVIDIA H200"}}}  # fmt: skip
    report.write(run, report.report_dict(meta, [section.finish()]))
    return run


def test_publish_copies_the_run_and_points_the_readme_at_it(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# bench\n\n{publish.START}\nNo GPU run exists yet.\n{publish.END}\n\nrest\n")
    target = publish.publish(_gpu_report(tmp_path), results=tmp_path / "results-gpu", readme=readme)
    assert target.name == "2026-12-01-nvidia-h200.md" and target.with_suffix(".json").is_file()
    text = readme.read_text()
    assert "No GPU run exists yet" not in text and "results-gpu/2026-12-01-nvidia-h200.md" in text
    assert "failing sections: parity" in text and text.endswith("rest\n")
    smoke = tmp_path / "smoke"
    meta = {"mode": "smoke", "wall_s": 1.0, "budget_s": 480.0, "environment": {}}
    report.write(smoke, report.report_dict(meta, []))
    with pytest.raises(ValueError, match="GPU run"):
        publish.publish(smoke, results=tmp_path / "results-gpu", readme=readme)


def test_bench_readme_shows_the_newest_committed_gpu_run():
    text = (REPO / "bench" / "README.md").read_text()
    block = text[text.index(publish.START) : text.index(publish.END)]
    runs = sorted(p.name for p in (REPO / "bench" / "results-gpu").glob("*.md") if p.name != "README.md")
    if runs:
        assert f"results-gpu/{runs[-1]}" in block
    else:
        assert "No GPU run exists yet" in block


# ----------------------------------------------------------------------------------------------
# Large cases for the GPU run: element offsets past 2**31
# ----------------------------------------------------------------------------------------------

INT32_LIMIT = 2**31


def _needs_gpu_memory(gib: float):
    if not torch.cuda.is_available():
        return pytest.mark.skip(reason="needs a CUDA device")
    free = torch.cuda.mem_get_info()[0] / 2**30
    return pytest.mark.skipif(free < gib, reason=f"needs {gib} GiB of free GPU memory ({free:.0f} free)")


@pytest.fixture
def cuda_generator():
    return torch.Generator(device="cuda").manual_seed(0)


@_needs_gpu_memory(40)
def test_cuda_gather_rows_past_2_31_elements(cuda_generator):
    from ogkernels.ops.gather_rows import gather_rows

    width = 4096
    rows = INT32_LIMIT // width + 4099  # table and output both span more than 2**31 elements
    table = torch.randn(rows, width, device="cuda", generator=cuda_generator).to(torch.bfloat16).requires_grad_(True)
    # each source row used at most twice (exact fp32 sums), the last rows past the int32 offset
    picks = torch.cat([torch.randperm(rows, device="cuda", generator=cuda_generator),
                       torch.arange(rows - 4096, rows, device="cuda")])  # fmt: skip
    index = torch.zeros(picks.numel(), dtype=torch.int32, device="cuda")
    out = gather_rows([table], index, picks)
    assert out.shape[0] * width > INT32_LIMIT
    assert torch.equal(out, table.detach().index_select(0, picks))
    grad = torch.randn(out.shape, device="cuda", generator=cuda_generator).to(torch.bfloat16)
    (got,) = torch.autograd.grad(out, table, grad)
    want = torch.zeros(rows, width, dtype=torch.float32, device="cuda").index_add_(0, picks, grad.float())
    assert torch.equal(got, want.to(torch.bfloat16))


@_needs_gpu_memory(16)
def test_cuda_phi_past_2_31_mask_bytes(cuda_generator):
    from ogkernels import downsample_masks
    from ogkernels import reference as R

    side, grid = 512, 576
    count = INT32_LIMIT // (side * side) + 3  # the last masks start past byte 2**31
    masks = torch.empty(count, side, side, dtype=torch.bool, device="cuda")
    for start in range(0, count, 512):
        chunk = masks[start : start + 512]
        chunk.copy_(torch.rand(chunk.shape, device="cuda", generator=cuda_generator) < 0.3)
    kept = downsample_masks(masks, grid)
    assert kept.shape == (count, grid)
    for j in (0, 1, count // 2, count - 3, count - 2, count - 1):
        assert torch.equal(kept[j].cpu(), R.downsample_mask_to_1d_counts(masks[j].cpu(), grid)), j
