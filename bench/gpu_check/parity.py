"""Sections ``parity`` and ``determinism``: the suite's own tests on the GPU, and one large
call twice.

``parity`` runs the op tests (every Triton path against the reference and the PyTorch path,
hypothesis over empty / full / overlapping masks, odd sizes, fp32 / bf16 / fp16; the large
cases past 2**31 element offsets in ``tests/test_gpu_check.py``; the attention backends; the
slow tests too: ``torch.compile``, the CUDA-graph capture, the ahead-of-time compile) with
pytest on CUDA (:mod:`bench.gpu_check.pytest_run`). ``determinism`` runs the suite's
determinism tests the same way, then calls ``og_tokens`` and ``OGFusion`` forward + backward
twice on the benchmark-sized batch and compares outputs and gradients bit for bit.
``--smoke`` runs a few of the same tests on the CPU.
"""

from __future__ import annotations

import torch

from .core import Context, SectionResult
from .pytest_run import TestRun, existing, run_tests
from .workload import make_batch, middle

# The op tests (their ``backend`` fixture runs torch and triton on the ``device`` fixture:
# OGKERNELS_TEST_DEVICE) and the other tests of the ops' public API. Not the static audit
# (tests/test_audit.py): it compiles for sm_80 / sm_90 on the host, the same on any machine.
OP_TESTS = (
    "tests/ops",
    "tests/test_downsample.py",
    "tests/test_og_tokens.py",
    "tests/test_bitmaps.py",
    "tests/test_token_budget.py",
    "tests/test_fusion.py",
    "tests/test_attention.py",
    "tests/test_compile.py",
    "tests/test_gpu_check.py",
)
NOT_THE_KIT = ("-k", "not smoke_run")  # the kit's own smoke run (a CPU check of this code)
NOT_SLOW = ("-m", "not slow")
# --smoke: a few of the same tests on the CPU, from two files (collection costs time too)
SMOKE_TESTS = ("tests/ops/test_gather_rows.py", "tests/test_attention.py")
SMOKE_SELECTION = ("-k", "four_tables or exact_path or refused or adapter")
DETERMINISM_SELECTION = ("-k", "determinis")
SMOKE_DETERMINISM_TESTS = ("tests/ops", "tests/test_og_tokens.py")


def _record(result: SectionResult, run: TestRun, label: str) -> None:
    result.data["pytest"] = run.summary()
    counts = run.counts
    detail = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "errors", "skipped")) or run.output_tail[-300:]
    result.check(f"{label}: pytest", run.ok, f"{detail} in {run.seconds:.0f} s (exit {run.returncode})")


def run_parity(ctx: Context) -> SectionResult:
    result = SectionResult("parity")
    paths, selection = (SMOKE_TESTS, NOT_SLOW + SMOKE_SELECTION) if ctx.smoke else (OP_TESTS, NOT_THE_KIT)
    run = run_tests(existing(paths), cuda=ctx.cuda, deadline=ctx.deadline, extra=selection)
    _record(result, run, "op tests")
    return result


def run_determinism(ctx: Context) -> SectionResult:
    result = SectionResult("determinism")
    # leave time for the large case
    deadline = ctx.deadline - (10 if ctx.smoke else 20)
    paths = SMOKE_DETERMINISM_TESTS if ctx.smoke else OP_TESTS
    run = run_tests(existing(paths), cuda=ctx.cuda, deadline=deadline, extra=DETERMINISM_SELECTION)
    _record(result, run, "determinism tests")
    twice(result, ctx)
    return result


def twice(result: SectionResult, ctx: Context) -> None:
    """``og_tokens`` and ``OGFusion`` forward + backward twice: equal bits, or a failed check
    naming the tensors that differ."""
    from ogkernels import OGFusion, og_tokens

    batch = make_batch(middle(ctx.smoke), ctx.device)
    cfg = batch.config
    torch.manual_seed(0)
    fusion = OGFusion(cfg.width, cfg.llm_dim).to(ctx.device, cfg.dtype)

    def tokens_step():
        x = batch.features.clone().requires_grad_(True)
        bom = batch.bom.clone().requires_grad_(True)
        out = og_tokens(x, batch.masks, bom)
        weights = torch.linspace(-1, 1, out.values.numel(), device=x.device).view_as(out.values)
        (out.values.float() * weights).sum().backward()
        return {"values": out.values, "cu_seqlens": out.cu_seqlens, "grad features": x.grad, "grad bom": bom.grad}

    def fusion_step():
        fusion.zero_grad(set_to_none=True)
        x = batch.features.clone().requires_grad_(True)
        out = fusion(x, batch.masks)
        (out.values.float().square()).mean().backward()
        grads = {f"grad {n}": p.grad.clone() for n, p in fusion.named_parameters()}
        return {"values": out.values, "grad features": x.grad, **grads}

    for name, step in (("og_tokens fwd+bwd", tokens_step), ("OGFusion fwd+bwd", fusion_step)):
        first, second = step(), step()
        differ = [key for key in first if not torch.equal(first[key], second[key])]
        result.check(
            f"twice: {name} ({cfg.name})", not differ,
            "bit-identical" if not differ else "differ: " + ", ".join(differ),
        )  # fmt: skip
