"""Section ``timings``: medians of each op at the benchmark configurations, side by side.

Paths: ``triton`` (our kernels), ``torch`` (our PyTorch path on the same device,
``OGKERNELS_BACKEND=torch``), ``compile`` (``torch.compile`` of the PyTorch path; one
configuration, ``backend="eager"`` under ``--smoke``) and ``reference`` (``ogkernels.reference``
on the same device). Times: ``triton.testing.do_bench`` medians on CUDA (host timings for the
reference: thousands of syncs), host medians under ``--smoke``.

Per row: GB/s of the minimum bytes (``ogkernels.tools.costmodel``: each input read once, each
output written once) and that as a % of a device-to-device copy measured in the same run; the
cost model's prediction (the design bytes of our kernels on this GPU's datasheet roofline,
``costmodel.GPUS``; none for an unlisted GPU or a backward). A path that could not be selected
in this checkout (its call launched the wrong kernels) is marked, not timed.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .core import Context, SectionResult, measure, op_backend, synchronize, triton_launches, wall
from .workload import Batch, Config, configs, make_batch, middle, patch_gather_indices

GPU_SPECS = (("H200", "H200"), ("H100", "H100-SXM"), ("A100", "A100-80GB-SXM"))
COPY_BYTES = {"cuda": 2**30, "cpu": 2**24}
REFERENCE_RUNS = {"cuda": 1, "cpu": 1}  # after one warm-up call
# a row starts only with this much of the section's time left (the reference runs thousands
# of syncs, torch.compile compiles first)
MIN_SECONDS_LEFT = {"triton": 2.0, "torch": 2.0, "reference": 15.0, "compile": 60.0}


@dataclass
class Entry:
    """One timed call: ``op`` through ``path``; ``min_bytes`` / ``design_bytes`` / ``flops``
    feed the GB/s and the model (None: not modeled)."""

    op: str
    path: str
    fn: Callable[[], Any]
    min_bytes: int | None = None
    design_bytes: int | None = None
    flops: int = 0


def gpu_spec(ctx: Context):
    from ogkernels.tools import costmodel

    name = ctx.environment.get("device", {}).get("name", "")
    for marker, key in GPU_SPECS:
        if marker in name:
            return costmodel.GPUS[key]
    return None


def copy_gbps(ctx: Context) -> float:
    """Device-to-device copy bandwidth, GB/s of bytes read + written."""
    src = torch.randn(COPY_BYTES[ctx.device] // 4, device=ctx.device)
    dst = torch.empty_like(src)
    seconds = measure(lambda: dst.copy_(src), ctx.device, runs=5)
    return 2 * src.numel() * src.element_size() / seconds / 1e9


def _backward(call: Callable[[], torch.Tensor], leaves: list[torch.Tensor]) -> Callable[[], None]:
    """Forward + backward of ``call`` (a fixed upstream gradient of ones)."""

    def step():
        for leaf in leaves:
            leaf.grad = None
        call().float().sum().backward()

    return step


def entries(batch: Batch, spec_bytes: dict) -> list[Entry]:
    """Every timed call of one configuration, ours first (see the module docstring)."""
    from ogkernels import OGFusion, downsample_masks, og_tokens
    from ogkernels import reference as R
    from ogkernels.ops.gather_rows import gather_rows

    cfg = batch.config
    x, masks, bom = batch.features, batch.masks, batch.bom
    bitmaps = list(torch.split(downsample_masks(masks, cfg.tokens), [m.shape[0] for m in masks]))
    table_index, row_index = patch_gather_indices(og_tokens(x, masks, bom))
    flat = x.reshape(-1, cfg.width)
    leaf = x.detach().clone().requires_grad_(True)
    leaf_flat = leaf.reshape(-1, cfg.width)
    leaf_bom = bom.detach().clone().requires_grad_(True)
    torch.manual_seed(0)
    fusion = OGFusion(cfg.width, cfg.llm_dim).to(x.device, cfg.dtype)
    reference = R.ReferenceOGFusion(cfg.width, cfg.llm_dim).to(x.device, cfg.dtype)
    reference.load_state_dict(_reference_state(fusion), strict=True)
    b = spec_bytes
    rows: list[Entry] = []
    for path in ("triton", "torch"):
        rows += [
            Entry("Φ bool masks", path, lambda: downsample_masks(masks, cfg.tokens), b["phi"], b["phi"]),
            Entry("Φ bit-packed masks", path, lambda: downsample_masks(batch.packed, cfg.tokens), b["phi_packed"], b["phi_packed"]),
            Entry("og_tokens from bitmaps", path, lambda: og_tokens(x, bitmaps, bom), b["tokens_from_bitmaps"], b["design_from_bitmaps"]),
            Entry("gather_rows T×F", path, lambda: gather_rows([flat], table_index, row_index), b["gather"], b["gather"]),
            Entry("gather_rows T×F fwd+bwd", path, _backward(lambda: gather_rows([leaf_flat], table_index, row_index), [leaf])),
            Entry("og_tokens", path, lambda: og_tokens(x, masks, bom), b["og_tokens"], b["design"]),
            Entry("og_tokens fwd+bwd", path, _backward(lambda: og_tokens(leaf, masks, leaf_bom).values, [leaf, leaf_bom])),
            Entry(f"OGFusion fwd+bwd D={cfg.llm_dim}", path, _backward(lambda: fusion(leaf, masks).values, [leaf])),
        ]
    rows.append(Entry(f"OGFusion padded fwd+bwd D={cfg.llm_dim}", "triton",
                      _backward(lambda: fusion(leaf, masks, output="padded").tokens, [leaf])))  # fmt: skip
    rows += [
        Entry("Φ bool masks", "reference", lambda: [R.downsample_mask_to_1d_counts(m[j], cfg.tokens) for m in masks for j in range(m.shape[0])], b["phi"]),
        Entry("og_tokens", "reference", lambda: R.og_fusion_embed(x, masks, bom), b["og_tokens"]),
        Entry("og_tokens fwd+bwd", "reference", _backward(lambda: R.og_fusion_embed(leaf, masks, leaf_bom).block, [leaf, leaf_bom])),
        Entry(f"OGFusion fwd+bwd D={cfg.llm_dim}", "reference", _backward(lambda: reference(leaf, masks)[0], [leaf])),
    ]  # fmt: skip
    return rows


def _reference_state(fusion) -> dict:
    """``OGFusion``'s weights under the reference's parameter names."""
    state = {k: v for k, v in fusion.state_dict().items() if k.startswith("mm_projector.")}
    state["mm_bom_mask_token.mm_bom_mask_token"] = fusion.mm_bom_mask_token.detach()
    return state


def byte_counts(batch: Batch, tokens: int) -> dict:
    """Minimum and design bytes of one configuration (``ogkernels.tools.costmodel``)."""
    from ogkernels.tools import costmodel as cm

    cfg, e = batch.config, batch.features.element_size()
    m, v, f = batch.num_masks, cfg.tokens, cfg.width
    features = batch.features.numel() * e
    plan = cm.token_plan_bytes(m, v, cfg.batch, tokens)
    mean = cm.mean_bytes(cfg.batch, v, f, e)
    gather = cm.gather_bytes(tokens, f, e)
    phi = cm.phi_bytes(batch.mask_bytes, m, v)
    return {
        "phi": phi,
        "phi_packed": cm.phi_bytes(batch.packed_bytes, m, v),
        "gather": gather,
        "og_tokens": cm.og_tokens_min_bytes(batch.mask_bytes, features, tokens, f, e),
        "design": phi + plan + mean + gather,
        "tokens_from_bitmaps": cm.og_tokens_min_bytes(m * v, features, tokens, f, e),
        "design_from_bitmaps": plan + mean + gather,
    }


def time_entry(entry: Entry, ctx: Context, copy: float, spec, cfg: Config) -> dict:
    row: dict[str, Any] = {"config": cfg.name, "op": entry.op, "path": entry.path}
    backend = entry.path if entry.path in ("triton", "torch") else None
    with op_backend(backend) if backend else contextlib.nullcontext():
        if backend:  # this call is also the warm-up
            launched = triton_launches(entry.fn)
            if (launched > 0) != (backend == "triton"):
                row["note"] = f"{backend} path not selectable here ({launched} Triton launches)"
                return row
        if entry.path == "compile":  # the first call compiles
            start = time.perf_counter()
            entry.fn()
            synchronize(ctx.device)
            row["compile_s"] = time.perf_counter() - start
        if entry.path == "reference":
            seconds = wall(entry.fn, ctx.device, REFERENCE_RUNS[ctx.device])
        else:
            seconds = measure(entry.fn, ctx.device, runs=1 if ctx.smoke else 3, warm=True)
    row["ms"] = seconds * 1e3
    if entry.min_bytes:
        row["GBps"] = entry.min_bytes / seconds / 1e9
        row["pct_copy"] = 100 * row["GBps"] / copy
    if entry.design_bytes and spec is not None and entry.path == "triton":
        from ogkernels.tools.costmodel import roofline_seconds

        row["model_us"] = roofline_seconds(entry.design_bytes, entry.flops, spec) * 1e6
    return row


def compiled_entry(batch: Batch, ctx: Context) -> Entry:
    """``torch.compile`` of the PyTorch path of ``og_tokens`` (inductor; ``eager`` in smoke)."""
    from ogkernels import og_tokens

    compiled = torch.compile(lambda: og_tokens(batch.features, batch.masks, batch.bom), backend="eager" if ctx.smoke else "inductor")
    return Entry("og_tokens", "compile", compiled)


def run(ctx: Context) -> SectionResult:
    from ogkernels import og_tokens

    result = SectionResult("timings")
    copy = copy_gbps(ctx)
    spec = gpu_spec(ctx)
    result.data.update({"copy_GBps": copy, "model_gpu": spec.name if spec else None, "rows": []})
    rows = result.data["rows"]
    # ours at every configuration first; then, while time lasts, the training step, the middle
    # configuration's reference and torch.compile rows, the other references
    first: list[tuple[Entry, Config]] = []
    later: list[tuple[Entry, Config]] = []
    for cfg in configs(ctx.smoke):
        batch = make_batch(cfg, ctx.device)
        tokens = int(og_tokens(batch.features, batch.masks, batch.bom).cu_seqlens[-1])
        for entry in entries(batch, byte_counts(batch, tokens)):
            if entry.path != "reference":
                rows.append(_timed(entry, ctx, copy, spec, cfg))
            else:
                (first if cfg == middle(ctx.smoke) else later).append((entry, cfg))
        if cfg == middle(ctx.smoke):
            first.append((compiled_entry(batch, ctx), cfg))
        synchronize(ctx.device)
    from .training import training_rows

    result.data["training"] = training_rows(ctx)
    for entry, cfg in first + later:
        rows.append(_timed(entry, ctx, copy, spec, cfg))
    timed = [r for r in rows if "ms" in r]
    result.check("timed", bool(timed), f"{len(timed)} of {len(rows)} rows timed")
    return result


def _timed(entry: Entry, ctx: Context, copy: float, spec, cfg: Config) -> dict:
    if ctx.time_left() < (2.0 if ctx.smoke else MIN_SECONDS_LEFT[entry.path]):
        return {"config": cfg.name, "op": entry.op, "path": entry.path, "note": "skipped: no time left"}
    try:
        if entry.path == "compile":
            with op_backend("torch"):
                return time_entry(entry, ctx, copy, spec, cfg)
        return time_entry(entry, ctx, copy, spec, cfg)
    except Exception as error:  # one broken row does not end the table
        return {"config": cfg.name, "op": entry.op, "path": entry.path, "note": f"error: {type(error).__name__}: {str(error)[:200]}"}
