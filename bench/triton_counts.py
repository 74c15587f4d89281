"""Host syncs, aten ops and Triton launches of our Triton path, counted under the interpreter.

``python -m bench.triton_counts`` (run with ``TRITON_INTERPRET=1 OGKERNELS_FORCE_TRITON=1``;
:func:`run_subprocess` does) prints one JSON list. The interpreter runs the Φ kernel at
≈ 40 programs/s (9–12 programs per mask) and the backward at one program per source row, so
the batches are tiny (B = 2 and 3, 1–3 masks of 24×24 per image, F = 32). The counts depend on
the code path, not on the shapes — the rows with different B, M and V show it, except the
connector's gate (two ops per image) — so they hold for the realistic batches too.

``cuda_syncs`` estimates the host syncs of the same call on CUDA: the device→host reads counted
here, minus the CPU-only bound check of ``max_tokens`` (``int(total)`` on the CPU,
``torch._assert_async`` on CUDA), plus one per blocking host→device upload (tensors made from
host data, ``costmodel.TrafficCounter.host_uploads``) outside the Φ launcher, whose tables are
copied from pinned memory with ``non_blocking=True``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

# (V, B, masks per image, also count the connector); the connector's backward: first case only
CASES = [(576, 2, (1, 2), True), (576, 3, (2, 3), True), (729, 3, (1, 2), False)]
WIDTH, LLM_DIM, MASK_SIDE = 32, 16, 24


# ogkernels.ops.host.upload stages every host table in pinned memory and copies it with
# non_blocking=True: no host sync on CUDA
ASYNC_UPLOAD_SITES = ("ops/host.py",)


def _record(case: str, counter, cpu_only_syncs: int = 0, **extra) -> dict:
    blocking = sum(n for site, n in counter.host_uploads.items() if not site.startswith(ASYNC_UPLOAD_SITES))
    return {
        "case": case, "syncs": counter.syncs, "sync_ops": dict(counter.sync_ops), "ops": counter.ops,
        "triton_launches": counter.triton_launches, "host_uploads": dict(counter.host_uploads),
        "cuda_syncs": counter.syncs - cpu_only_syncs + blocking, **extra,
    }  # fmt: skip


def count_cases() -> list[dict]:
    """Count ``og_tokens`` (plain and with ``max_tokens``) and an ``OGFusion`` forward and
    forward + backward on the small cases; must run with the Triton path forced."""
    import torch

    from ogkernels import OGFusion, og_tokens
    from ogkernels.ops.dispatch import use_triton
    from ogkernels.tools.costmodel import TrafficCounter
    from ogkernels.tools.synthetic import sam2_like_batch

    if not use_triton(torch.device("cpu")):
        raise RuntimeError("run with TRITON_INTERPRET=1 OGKERNELS_FORCE_TRITON=1 (see run_subprocess)")
    rows = []
    for v, batch, per_image, connector_too in CASES:
        masks = sam2_like_batch(batch, per_image, (MASK_SIDE, MASK_SIDE), seed=v)
        g = torch.Generator().manual_seed(batch)
        x = torch.randn(batch, v, WIDTH, generator=g)
        bom = torch.randn(1, WIDTH, generator=g)
        shape = {"V": v, "B": batch, "M": sum(m.shape[0] for m in masks)}
        with TrafficCounter() as counter:
            out = og_tokens(x, masks, bom)
        tokens = int(out.cu_seqlens[-1])
        rows.append(_record("og_tokens", counter, T=tokens, **shape))
        with TrafficCounter() as counter:
            og_tokens(x, masks, bom, max_tokens=tokens)
        rows.append(_record("og_tokens max_tokens", counter, cpu_only_syncs=1, T=tokens, **shape))
        if not connector_too:
            continue
        connector = OGFusion(WIDTH, LLM_DIM)
        with TrafficCounter() as counter:
            values = connector(x, masks).values
        rows.append(_record("OGFusion forward", counter, T=values.shape[0], **shape))
        if batch == 2:
            with TrafficCounter() as counter:
                connector(x.requires_grad_(), masks).values.square().mean().backward()
            rows.append(_record("OGFusion forward+backward", counter, T=tokens, **shape))
    return rows


def run_subprocess(timeout: float = 600) -> list[dict]:
    """:func:`count_cases` in a fresh interpreter-mode process; returns its JSON records."""
    env = dict(os.environ, TRITON_INTERPRET="1", OGKERNELS_FORCE_TRITON="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, "-m", "bench.triton_counts"], check=False, env=env, cwd=root, capture_output=True, text=True, timeout=timeout
    )
    if result.returncode != 0:
        raise RuntimeError(f"bench.triton_counts failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    print(json.dumps(count_cases()))
