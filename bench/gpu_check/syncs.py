"""Section ``syncs``: host syncs per call, and a CUDA-graph capture + replay of the bounded path.

Each case runs once to warm up (Triton compiles), then once counted two ways: on CUDA by
``torch.cuda.set_sync_debug_mode("warn")`` (each warning is one synchronising call), and
everywhere by ``ogkernels.tools.profiling.HostSyncCounter`` (the call sites that sync on a
GPU). Expected, as documented: one sync per call (reading the total length), none with a
bound (``max_tokens=``) or a token cap (``max_batch_tokens=``), ``OGFusion``'s batch gate
included (it is part of the token plan). On CPU tensors a ``max_tokens`` bound is checked
with one host read of the total (free there; ``torch._assert_async`` on CUDA), so
``--smoke`` expects one more for those cases.

Graphs: the bounded ``og_tokens`` and ``OGFusion`` forwards are captured after a warm-up,
replayed, compared bit for bit with eager calls, then replayed again on new features.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable

import torch

from .core import Context, SectionResult
from .workload import Batch, make_batch, middle


def cuda_sync_count(fn: Callable[[], Any]) -> int:
    """Synchronising CUDA calls made by ``fn`` (``torch.cuda.set_sync_debug_mode``)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message) for w in caught)


def counted_syncs(fn: Callable[[], Any]) -> tuple[int, dict]:
    from ogkernels.tools.profiling import HostSyncCounter

    with HostSyncCounter() as counter:
        fn()
    return counter.syncs, dict(counter.sync_ops)


def cases(batch: Batch, bound: int) -> list[tuple[str, int, bool, Callable[[], Any]]]:
    """``(name, expected syncs on CUDA, takes max_tokens=, call)`` of every counted case."""
    from ogkernels import OGFusion, og_tokens

    cfg = batch.config
    x, masks, bom = batch.features, batch.masks, batch.bom
    grad_x = x.detach().clone().requires_grad_(True)
    fusion = OGFusion(cfg.width, cfg.llm_dim).to(x.device, cfg.dtype)
    capped = OGFusion(cfg.width, cfg.llm_dim, max_batch_tokens=bound).to(x.device, cfg.dtype)

    def tokens_backward():
        out = og_tokens(grad_x, masks, bom, max_tokens=bound)
        out.values.float().sum().backward()

    def capped_backward():
        capped(grad_x, masks).values.float().sum().backward()

    return [
        ("og_tokens", 1, False, lambda: og_tokens(x, masks, bom)),
        ("og_tokens max_tokens", 0, True, lambda: og_tokens(x, masks, bom, max_tokens=bound)),
        ("og_tokens max_tokens fwd+bwd", 0, True, tokens_backward),
        ("og_tokens packed masks max_tokens", 0, True, lambda: og_tokens(x, batch.packed, bom, max_tokens=bound)),
        ("OGFusion", 1, False, lambda: fusion(x, masks)),
        ("OGFusion max_tokens", 0, True, lambda: fusion(x, masks, max_tokens=bound)),
        ("OGFusion max_batch_tokens fwd+bwd", 0, False, capped_backward),
    ]


def run(ctx: Context) -> SectionResult:
    from ogkernels import og_tokens

    result = SectionResult("syncs")
    batch = make_batch(middle(ctx.smoke), ctx.device)
    total = int(og_tokens(batch.features, batch.masks, batch.bom).cu_seqlens[-1])
    bound = total + 64
    rows = []
    for name, expected, bounded, call in cases(batch, bound):
        if ctx.cuda:
            call()  # warm-up: compile, resident tables
        counted, ops = counted_syncs(call)
        if ctx.cuda:
            measured = cuda_sync_count(call)
        else:
            measured, expected = counted, expected + int(bounded)
        rows.append({"case": name, "expected": expected, "cuda": measured if ctx.cuda else None, "counted": counted, "ops": ops})
        result.check(f"syncs: {name}", measured == expected, f"{measured} (expected {expected}; counted sites {counted})")
    result.data["syncs"] = rows
    result.data["tokens"] = total
    if not ctx.cuda:
        result.skip_check("cuda graph", "needs a CUDA device")
        return result
    for name, make in (("og_tokens", _tokens_call), ("OGFusion", _fusion_call)):
        try:
            result.check(f"cuda graph: {name}", *graph_replay(batch, bound, make))
        except Exception as error:  # a capture that fails is a finding, not a crash
            result.check(f"cuda graph: {name}", False, f"{type(error).__name__}: {str(error)[:400]}")
    return result


def _tokens_call(batch: Batch, x: torch.Tensor, bound: int):
    from ogkernels import og_tokens

    return lambda: og_tokens(x, batch.masks, batch.bom, max_tokens=bound).values


def _fusion_call(batch: Batch, x: torch.Tensor, bound: int):
    from ogkernels import OGFusion

    cfg = batch.config
    fusion = OGFusion(cfg.width, cfg.llm_dim).to(x.device, cfg.dtype)
    return lambda: fusion(x, batch.masks, max_tokens=bound).values


def graph_replay(batch: Batch, bound: int, make) -> tuple[bool, str]:
    """Capture ``make(...)``'s call on a static feature buffer, replay, compare with eager."""
    x = batch.features.clone()
    call = make(batch, x, bound)
    with torch.no_grad():
        eager = call()  # warm-up on the default stream
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            call()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = call()
        graph.replay()
        torch.cuda.synchronize()
        first = torch.equal(captured, eager)
        x.copy_(torch.randn_like(x))
        graph.replay()
        torch.cuda.synchronize()
        second = torch.equal(captured, call())
    return first and second, f"replay equals eager: {first}; after new features: {second}"
