"""OGFusion training step (forward + backward) vs the reference embedder + projector.

Workload: B images with SAM2-like masks at 336×336 (20–60 per image), CLIP features
V = 576, F = 1024. D = 256 keeps the CPU step short; the projector rows are also reported
for D = 4096 (Llama-3.1-8B), where FLOPs scale with rows × (F·D + D²).
extra_info: projector rows (reference: B·L_max, pad rows included; ours: T real rows or
B·(V+1)+1 with project-then-gather), projector GFLOPs at D = 4096 for those rows, and the
bytes of tensors saved for backward (activation memory, via saved-tensor hooks).
"""

from __future__ import annotations

import pytest
import torch

from ogkernels import OGFusion
from ogkernels import reference as R

from .workloads import features, mask_batch

V, F, D = 576, 1024, 256
CONFIGS = [8, 16]
PATHS = ["reference", "ogfusion-varlen", "ogfusion-padded", "ogfusion-gather-first"]


def saved_bytes(step) -> int:
    seen: dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step(backward=False)
    return sum(seen.values())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch", CONFIGS, ids=lambda b: f"B{b}")
def test_connector_step(benchmark, batch, path):
    masks = list(mask_batch(batch, 336, 336))
    x = features(batch, V, F)
    torch.manual_seed(0)
    ref = R.ReferenceOGFusion(F, D)
    ours = OGFusion(F, D, projection="gather_first" if path.endswith("gather-first") else "auto")
    ours.load_reference_state_dict(ref.state_dict())
    benchmark.group = f"connector fwd+bwd B={batch} V={V} F={F} D={D} fp32"

    def step(backward=True):
        if path == "reference":
            out, embedding = ref(x, masks)
            rows = out.shape[0] * out.shape[1]
            loss = out.square().mean()
        else:
            result = ours(x, masks, output="padded" if path == "ogfusion-padded" else "varlen")
            tokens = result.tokens if path == "ogfusion-padded" else result.values
            rows = None
            loss = tokens.square().mean()
        if backward:
            loss.backward()
        return rows

    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
    if path == "reference":
        _, embedding = ref(x, masks)
        rows = batch * max(embedding.lengths)
    else:
        tokens = int(ours(x, masks).cu_seqlens[-1])
        project_first = ours._project_first(x, tokens)
        rows = batch * (V + 1) + 1 if project_first else tokens
    benchmark.extra_info.update(
        {
            "projector_rows": rows,
            "projector_GFLOP_at_D4096": 2 * rows * (F * 4096 + 4096 * 4096) / 1e9,
            "saved_activation_MB": saved_bytes(step) / 1e6,
        }
    )
