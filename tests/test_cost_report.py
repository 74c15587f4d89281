"""The cost model and the cost report against hand-computed values on tiny batches.

Hand values: Φ_flat with ``H·W = V = 4`` keeps exactly the pixels that are set; the default
layout gives ``L_b = 1 + Σ_j (1 + k_j)``; bf16 is 2 bytes per element.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from bench import cost_report, modeled, timings, triton_counts
from ogkernels.tools import costmodel as cm

H100 = cm.GPUS["H100-SXM"]
D = cost_report.LLM_DIM


def test_roofline_takes_the_slower_of_bandwidth_and_compute():
    assert cm.roofline_seconds(3.35e9, 0, H100) == pytest.approx(1e-3)  # bytes / 3.35 TB/s
    assert cm.roofline_seconds(0, 989e9, H100, "bf16") == pytest.approx(1e-3)  # FLOPs / 989 TFLOP/s
    assert cm.roofline_seconds(0, 67e9, H100, "fp32") == pytest.approx(1e-3)
    assert cm.roofline_seconds(3.35e9, 2 * 989e9, H100) == pytest.approx(2e-3)  # compute-bound
    assert cm.roofline_seconds(2 * 4.8e9, 989e9, cm.GPUS["H200"]) == pytest.approx(2e-3)  # memory-bound
    assert cm.roofline_seconds(2.039e9, 0, cm.GPUS["A100-80GB-SXM"]) == pytest.approx(1e-3)
    with pytest.raises(ValueError):
        cm.roofline_seconds(-1, 0, H100)
    with pytest.raises(ValueError):
        H100.peak_flops("fp8")
    assert cm.overhead_seconds(100, 3, launch_s=5e-6, sync_s=10e-6) == pytest.approx(530e-6)


def test_register_limited_occupancy():
    assert cm.register_limited_occupancy(32, 4) == 1.0  # 64 warps resident
    # 167 regs → 168 per thread → 5376 per warp; 4-warp blocks: 65536 // 21504 = 3 blocks = 12 warps
    assert cm.register_limited_occupancy(167, 4) == pytest.approx(12 / 64)
    assert cm.register_limited_occupancy(255, 4) == pytest.approx(8 / 64)


def test_traffic_counter_rules():
    a, b = torch.randn(100, 10), torch.randn(100, 10)
    with cm.TrafficCounter() as counter:
        a + b
    assert (counter.bytes_read, counter.bytes_written, counter.ops) == (8000, 4000, 1)
    index = torch.tensor([1, 2, 3])
    with cm.TrafficCounter() as counter:
        a.index_select(0, index)  # 3 rows of 40 bytes + 3 int64 indices read, 3 rows written
    assert (counter.bytes_read, counter.bytes_written) == (3 * 40 + 3 * 8, 3 * 40)
    with cm.TrafficCounter() as counter:
        a + b[0]  # the broadcast row is read once
    assert counter.bytes_read == 4000 + 40
    out = torch.zeros(10, dtype=torch.int64)
    with cm.TrafficCounter() as counter:
        out.scatter_(0, index, index)
    assert (counter.bytes_read, counter.bytes_written) == (24 + 24, 24)
    with cm.TrafficCounter() as counter:
        a[a[:, 0] > 0]  # a bool-index gather is a host sync
    assert counter.syncs == 1
    with cm.TrafficCounter() as counter:
        torch.tensor([1, 2])  # host data: a host→device copy on CUDA
        torch.arange(3)
    assert sum(counter.host_uploads.values()) == 1


def test_cuda_sync_estimate_of_the_triton_counts():
    seen = SimpleNamespace(  # what a TrafficCounter saw
        syncs=1, sync_ops={"tolist": 1}, ops=10, triton_launches=2,
        host_uploads={"ops/host.py:23": 3, "ops/token_plan.py:74": 2},
    )  # fmt: skip

    # uploads through ogkernels.ops.host (pinned, non-blocking) do not sync; the two pageable ones do
    assert triton_counts._record("og_tokens", seen, T=5)["cuda_syncs"] == 1 + 2
    assert triton_counts._record("og_tokens max_tokens", seen, cpu_only_syncs=1)["cuda_syncs"] == 2


def _tiny_batch():
    """B = 2, V = 4 (2×2 masks), F = 3: image 0 keeps pixels {0, 3}; image 1 keeps {0, 1}
    and {3} → lengths 1+(1+2) = 4 and 1+(1+2)+(1+1) = 6, T = 10, L_max = 6."""
    masks = [
        torch.tensor([[[1, 0], [0, 1]]], dtype=torch.bool),
        torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 1]]], dtype=torch.bool),
    ]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 3, generator=g).to(torch.bfloat16)
    bom = torch.randn(1, 3, generator=g).to(torch.bfloat16)
    return masks, x, bom


def test_cost_record_of_a_tiny_batch():
    masks, x, bom = _tiny_batch()
    record = cost_report.cost_record("tiny", 2, masks=masks, x=x, bom=bom)
    assert record["tokens"]["lengths"] == [4, 6]
    assert (record["tokens"]["T"], record["tokens"]["L_max"]) == (10, 6)
    # Φ: 3 masks × 4 bool bytes read + 3 × 4 bitmap bytes written; packed: 1 byte per mask
    assert record["phi"]["min_bytes_bool"] == 12 + 12
    assert record["phi"]["min_bytes_packed"] == 3 + 12
    # og_tokens minimum: masks 12 + features 2·4·3·2 = 48 + output 10·3·2 = 60
    og = record["og_tokens"]
    assert og["min_bytes"] == 12 + 48 + 60
    design = og["ours_cuda_design_bytes"]
    assert design["phi"] == 24
    assert design["mean"] == (2 * 4 + 2) * 3 * 2  # (B, V, F) read + (B, F) written
    assert design["gather"] == 2 * 10 * 3 * 2 + 10 * 12  # rows read + written, 12 index bytes/row
    # token plan kernels: bitmaps read twice (2·3·4), per-mask fields (2·17·3), lengths (8·2),
    # index buffers filled and written (2·20·10)
    assert design["plan"] == 24 + 102 + 16 + 400
    assert design["total"] == 24 + 60 + 240 + design["plan"]
    assert og["reference_syncs_spec"] == (2 * 2 + 1 + 4 * 3, 2 * 2 + 1 + 5 * 3)
    assert og["reference"]["syncs"] > og["ours_torch"]["syncs"] >= 1
    # the reference's Φ runs on the host: its device-side ops exclude it
    assert og["reference_device"]["ops"] == og["reference"]["ops"] - record["phi"]["reference"]["ops"]
    # projector: reference B·L_max = 12 rows; ours T = 10 < B·(V+1)+1 = 11 → gather first, 10 rows
    proj = record["projector"]
    assert proj["reference"]["rows"] == 12
    assert (proj["ours"]["rows"], proj["ours"]["project_first"], proj["ours"]["gather_bytes"]) == (10, False, 0)
    assert proj["ours"]["concat_bytes"] == 0
    assert proj["reference"]["flops"] == 2 * 12 * (3 * D + D * D)
    assert proj["ours"]["flops"] == 2 * 10 * (3 * D + D * D)
    assert proj["ours"]["bytes"] == (3 * D + D * D + 2 * D + 10 * (3 + 5 * D)) * 2
    assert (record["llm"]["tokens"], record["llm"]["tokens_ref"]) == (10, 12)


def test_project_then_gather_rows_and_modeled_totals():
    # three full masks on V = 4: T = 1 + 3·(1 + 4) = 16 > B·(V+1)+1 = 6 → project first
    masks = [torch.ones(3, 2, 2, dtype=torch.bool)]
    x = torch.randn(1, 4, 3).to(torch.bfloat16)
    record = cost_report.cost_record("tiny", 1, masks=masks, x=x, bom=torch.zeros(1, 3, dtype=torch.bfloat16))
    proj = record["projector"]["ours"]
    assert record["tokens"]["T"] == 16
    assert (proj["rows"], proj["project_first"]) == (6, True)
    assert proj["gather_bytes"] == 2 * 16 * D * 2 + 16 * 12
    ops = modeled.modeled_ops(record)
    by_name = {(o["impl"], o["op"]): o for o in ops}
    phi = by_name[("ours", "Φ (bool masks)")]
    assert phi["seconds"]["H100-SXM"] == pytest.approx((12 + 12) / 3.35e12)
    assert proj["concat_bytes"] == 2 * 6 * 3 * 2  # the (B·(V+1)+1, F) input copied once
    parts = ["Φ (bool masks)", "token plan (2 kernels)", "global mean", "concat patch/global/BOM rows",
             "projector 6 rows", "gather_rows T×D (projected)"]  # fmt: skip
    total = by_name[("ours", "connector total")]
    for gpu in cm.GPUS:
        assert total["seconds"][gpu] == pytest.approx(sum(by_name[("ours", p)]["seconds"][gpu] for p in parts))
    ref = by_name[("reference", "connector total")]
    assert ref["flops"] == 2 * 1 * 16 * (3 * D + D * D)  # B·L_max = 16 rows


def test_speedup_rows_from_benchmark_json():
    def bench(path, mean, median):
        return {"group": "g", "fullname": f"t[{path}]", "name": f"t[{path}]", "params": {"path": path},
                "stats": {"mean": mean, "median": median, "rounds": 3}, "extra_info": {}}  # fmt: skip

    rows = timings.speedup_rows({"benchmarks": [bench("reference", 12.0, 10.0), bench("torch", 3.0, 2.0)]})
    by_path = {r["path"]: r for r in rows}
    assert by_path["reference"]["speedup_median"] is None
    assert by_path["torch"]["speedup_median"] == pytest.approx(5.0)
    assert by_path["torch"]["speedup_mean"] == pytest.approx(4.0)
    assert not math.isnan(by_path["torch"]["mean_s"])
