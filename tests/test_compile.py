"""torch.compile and CUDA graphs: the ops are custom ops with fakes, so OGFusion compiles.

With a bound (a token cap or ``max_tokens``): ``fullgraph=True`` (no graph break, no host
sync) and ``dynamic=True`` over several mask layouts with a single graph. Without a bound:
``dynamic=True`` works with the one documented host read as its only graph break, and does
not recompile per layout. Compiled == eager: row placement, ``cu_seqlens`` and
``source_index`` bit for bit; values that go through a float reduction or the projector
(the global-row mean, the MLP: inductor orders its sums differently) within 1e-6 (fp32);
gradients within 1e-5 (fp32).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

from ogkernels import OGFusion, og_tokens
from ogkernels.varlen import GLOBAL_ROW

pytestmark = pytest.mark.slow

LAYOUTS = [(3, 20, 24), (5, 17, 30), (2, 40, 11)]  # masks, height, width of image 0


def batches(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for n, h, w in LAYOUTS:
        features = torch.randn(2, 9, 16, generator=g)
        masks = [torch.rand(n, h, w, generator=g) < 0.2, torch.rand(n + 1, h + 3, w, generator=g) < 0.3]
        yield features, masks


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def graph_breaks() -> int:
    return sum(counters["graph_break"].values())


def compare(compiled, eager, params):
    assert torch.equal(compiled.cu_seqlens, eager.cu_seqlens)
    assert torch.equal(compiled.source_index, eager.source_index)
    assert compiled.max_seqlen == eager.max_seqlen
    torch.testing.assert_close(compiled.values, eager.values, rtol=1e-6, atol=1e-6)
    weights = torch.randn(eager.values.shape, generator=torch.Generator().manual_seed(1))
    got = torch.autograd.grad((compiled.values * weights).sum(), params)
    want = torch.autograd.grad((eager.values * weights).sum(), params)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


def test_ogfusion_with_a_cap_compiles_fullgraph_dynamic_over_layouts():
    torch.manual_seed(0)
    module = OGFusion(16, 8, max_batch_tokens=200)
    compiled = torch.compile(module, fullgraph=True, dynamic=True)
    for features, masks in batches():
        x = features.requires_grad_(True)
        params = [x, module.mm_bom_mask_token, module.mm_projector[0].weight]
        compare(compiled(x, masks), module(x, masks), params)
    assert graph_breaks() == 0
    assert counters["stats"]["unique_graphs"] == 1  # one graph for every layout: no recompile


def test_ogfusion_without_a_bound_compiles_dynamic_with_one_host_read():
    torch.manual_seed(0)
    module = OGFusion(16, 8)
    compiled = torch.compile(module, dynamic=True)
    graphs = []
    for features, masks in batches():
        x = features.requires_grad_(True)
        compare(compiled(x, masks), module(x, masks), [x, module.mm_bom_mask_token])
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] == graphs[-1]  # the later layouts reuse the first layout's graphs
    reasons = [reason for reason in counters["graph_break"] if "_local_scalar_dense" not in reason]
    assert not reasons  # the only break is the documented read of the batch's total length


def test_og_tokens_with_max_tokens_is_bit_exact_but_the_mean_rows():
    run = torch.compile(lambda x, masks: og_tokens(x, masks, max_tokens=300), fullgraph=True, dynamic=True)
    for features, masks in batches(3):
        compiled, eager = run(features, masks), og_tokens(features, masks, max_tokens=300)
        mean = eager.source_index == GLOBAL_ROW
        assert torch.equal(compiled.values[~mean], eager.values[~mean])
        torch.testing.assert_close(compiled.values[mean], eager.values[mean], rtol=1e-6, atol=1e-6)
        assert torch.equal(compiled.cu_seqlens, eager.cu_seqlens)
    assert graph_breaks() == 0 and counters["stats"]["unique_graphs"] == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU (run by python -m bench.gpu_check)")
def test_cuda_graph_captures_the_capped_forward():
    torch.manual_seed(0)
    device = torch.device("cuda")
    module = OGFusion(64, 32, max_batch_tokens=1024).to(device)
    features = torch.randn(2, 16, 64, device=device)
    masks = [torch.zeros(3, 40, 48, dtype=torch.bool, device=device), torch.zeros(2, 33, 50, dtype=torch.bool, device=device)]

    def fill(seed: int) -> None:
        g = torch.Generator(device=device).manual_seed(seed)
        features.copy_(torch.randn(features.shape, generator=g, device=device))
        for m in masks:
            m.copy_(torch.rand(m.shape, generator=g, device=device) < 0.2)

    fill(0)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.no_grad():
        for _ in range(2):  # warm-up: compiles the kernels, makes the index tables resident
            module(features, masks)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        static = module(features, masks)
    for seed in (1, 2):
        fill(seed)
        graph.replay()
        with torch.no_grad():
            eager = module(features, masks)
        assert torch.equal(static.cu_seqlens, eager.cu_seqlens)
        assert torch.equal(static.values, eager.values)
