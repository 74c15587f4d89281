"""torch.compile of the connector on the CPU, side by side with eager and the reference.

Workload: B = 8 images with SAM2-like masks at 336×336 (20–60 per image), CLIP features
V = 576, F = 1024, D = 256 (a short CPU step), fp32, forward + backward. Paths:
``reference`` (the reference embedder + projector), ``eager`` (OGFusion), ``compiled``
(``torch.compile(OGFusion, dynamic=True)``: one documented host read, so two graphs),
``compiled-capped`` (a token cap: ``fullgraph=True``, no host sync), and ``eager-capped``
beside it. Compilation happens in the warm-up round, outside the timed rounds; its time is
reported in ``extra_info``.
"""

from __future__ import annotations

import time

import pytest
import torch

from ogkernels import OGFusion
from ogkernels import reference as R

from .workloads import features, mask_batch

BATCH, V, F, D = 8, 576, 1024, 256
CAP = 8 * 2000  # a batch cap above these batches' tokens: nothing is dropped
PATHS = ["reference", "eager", "compiled", "eager-capped", "compiled-capped"]


@pytest.mark.parametrize("path", PATHS)
def test_compiled_connector_step(benchmark, path):
    masks = list(mask_batch(BATCH, 336, 336))
    x = features(BATCH, V, F)
    torch.manual_seed(0)
    ref = R.ReferenceOGFusion(F, D)
    module = OGFusion(F, D, max_batch_tokens=CAP if path.endswith("capped") else None)
    module.load_reference_state_dict(ref.state_dict())
    torch._dynamo.reset()
    if path.startswith("compiled"):
        run = torch.compile(module, dynamic=True, fullgraph=path.endswith("capped"))
    else:
        run = module
    benchmark.group = f"compiled connector fwd+bwd B={BATCH} V={V} F={F} D={D} fp32"

    def step():
        if path == "reference":
            out, _ = ref(x, masks)
            loss = out.square().mean()
        else:
            loss = run(x, masks).values.square().mean()
        loss.backward()

    start = time.perf_counter()
    step()  # compiles the compiled paths
    benchmark.extra_info["first_call_s"] = time.perf_counter() - start
    benchmark.pedantic(step, rounds=3, iterations=1, warmup_rounds=1)
