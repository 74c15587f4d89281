"""Machine-independent cost of one batch, reference vs ours (counted on the CPU, no timing).

For a named encoder (``workloads.ENCODERS``) and batch size, with SAM2-like masks (20–60 per
image at 336×336) and bf16 features, :func:`cost_record` returns:

* ``phi``: bytes of Φ_α — the minimum (bool and bit-packed masks read once, ``M × V`` written
  once; also the Triton kernel's design traffic) and the counted traffic / aten ops of the
  reference (one CPU call per mask) and of our PyTorch path.
* ``og_tokens``: host syncs, aten ops (≈ kernel launches) and bytes, counted with
  :class:`ogkernels.tools.costmodel.TrafficCounter` for the reference embedder
  (``reference.og_fusion_embed``; also without its Φ, which runs on the host in a CUDA run)
  and for our PyTorch path; our CUDA path's design bytes (Φ kernel + the two token-plan
  kernels + global mean + ``gather_rows``); the minimum (masks + features read once,
  ``T × F`` written once); the reference's analytic sync count ``2B + 1 + (4…5)·M`` of
  ``ogkernels/reference/BEHAVIOUR.md`` §10 (``M`` = kept masks).
* ``projector``: rows, FLOPs and bytes of the ``mlp2x_gelu`` projector at ``D = 4096`` —
  the reference projects ``B·L_max`` rows (pad rows included), ours ``T`` rows or, with
  project-then-gather, ``B·(V+1)+1`` rows (``OGFusion._project_first`` decides) plus a
  gather of ``T`` projected rows.
* ``llm``: LLM tokens and causal attention FLOPs for Llama-3-8B (``ogkernels.jobs.train_metrics.
  padding_cost`` over ``ogkernels.budget``): the reference's padded image rows vs packed.
  Image rows only (text adds the same tokens to both).

Units: bytes, FLOPs, counts. Everything is deterministic (seeded masks and features).
"""

from __future__ import annotations

import dataclasses

import torch

from ogkernels.jobs.train_metrics import padding_cost
from ogkernels import OGFusion, downsample_masks, og_tokens
from ogkernels.tools import costmodel as cm
from ogkernels import reference as R
from ogkernels.packed_masks import packed_row_bytes

from .bench_downsample import run_reference
from .workloads import ENCODERS, features, mask_batch, mask_bytes

LLM = "llama3-8b"
LLM_DIM = 4096
MASK_SIZE = (336, 336)
BATCHES = (8, 16, 32)
DTYPE = torch.bfloat16


@dataclasses.dataclass
class Counted:
    """What a :class:`~ogkernels.tools.costmodel.TrafficCounter` saw: host syncs (by op), aten ops,
    Triton launches, bytes read and written, tensors made from host data (uploads on CUDA)."""

    syncs: int
    sync_ops: dict
    ops: int
    triton_launches: int
    bytes_read: int
    bytes_written: int
    host_uploads: int = 0

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def minus(self, other: Counted) -> Counted:
        """This count without ``other`` (a sub-step of the same run)."""
        ops = {k: v - other.sync_ops.get(k, 0) for k, v in self.sync_ops.items()}
        return Counted(
            self.syncs - other.syncs,
            {k: v for k, v in ops.items() if v},
            self.ops - other.ops,
            self.triton_launches - other.triton_launches,
            self.bytes_read - other.bytes_read,
            self.bytes_written - other.bytes_written,
            self.host_uploads - other.host_uploads,
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "bytes": self.bytes}


def count(fn, *args, **kwargs):
    """``(fn(*args, **kwargs), Counted)``."""
    with cm.TrafficCounter() as counter:
        result = fn(*args, **kwargs)
    seen = Counted(
        counter.syncs, dict(counter.sync_ops), counter.ops, counter.triton_launches,
        counter.bytes_read, counter.bytes_written, sum(counter.host_uploads.values()),
    )  # fmt: skip
    return result, seen


def reference_sync_range(batch: int, kept_masks: int) -> tuple[int, int]:
    """``ogkernels/reference/BEHAVIOUR.md`` §10: ≈ ``2B + 1 + (4…5)·M`` syncs for the connector."""
    return 2 * batch + 1 + 4 * kept_masks, 2 * batch + 1 + 5 * kept_masks


def ours_projector_rows(batch: int, num_tokens: int, width: int, tokens: int) -> tuple[int, bool]:
    """``(rows projected, project-then-gather?)`` as ``OGFusion`` decides for ``tokens`` rows."""
    module = OGFusion(width, LLM_DIM, device="meta")
    project_first = module._project_first(torch.empty(batch, num_tokens, width, device="meta"), tokens)
    return (batch * (num_tokens + 1) + 1 if project_first else tokens), project_first


def projector_cost(rows: int, width: int, element_size: int) -> dict:
    return {
        "rows": rows,
        "flops": cm.projector_flops(rows, width, LLM_DIM),
        "bytes": cm.projector_bytes(rows, width, LLM_DIM, element_size),
    }


def cost_record(
    encoder: str,
    batch: int,
    *,
    masks: list[torch.Tensor] | None = None,
    x: torch.Tensor | None = None,
    bom: torch.Tensor | None = None,
) -> dict:
    """The cost record of one batch (see the module docstring). ``masks``, ``x`` (``(B, V,
    F)``) and ``bom`` default to the named workload (``encoder`` in ``workloads.ENCODERS``);
    pass them to cost a batch of your own (``encoder`` is then only a label)."""
    if masks is None:
        masks = list(mask_batch(batch, *MASK_SIZE))
    if x is None:
        x = features(batch, *ENCODERS[encoder]).to(DTYPE)
    if bom is None:
        bom = torch.randn(1, x.shape[2], generator=torch.Generator().manual_seed(1)).to(x.dtype)
    batch, num_tokens, width = x.shape
    e = x.element_size()
    stored = mask_bytes(masks)
    stored_packed = sum(m.shape[0] * packed_row_bytes(m.shape[1], m.shape[2]) for m in masks)

    # Φ
    _, phi_ref = count(run_reference, masks, num_tokens)
    bitmaps, phi_ours = count(downsample_masks, masks, num_tokens)
    # og_tokens: reference embedder, our PyTorch path, our CUDA design
    embedding, ref = count(R.og_fusion_embed, x, masks, bom)
    out, ours = count(og_tokens, x, masks, bom)
    tokens = int(out.cu_seqlens[-1])
    lengths = out.lengths.tolist()
    if lengths != embedding.lengths:
        raise RuntimeError(f"og_tokens lengths {lengths} differ from the reference's {embedding.lengths}")
    kept = sum(len(k) for k in embedding.kept_masks)
    features_bytes = x.numel() * e
    phi_min = cm.phi_bytes(stored, len(bitmaps), num_tokens)
    design = {
        "phi": phi_min,
        "plan": cm.token_plan_bytes(len(bitmaps), num_tokens, batch, tokens),
        "mean": cm.mean_bytes(batch, num_tokens, width, e),
        "gather": cm.gather_bytes(tokens, width, e),
    }
    design["total"] = sum(design.values())
    # projector at D = 4096
    longest = max(lengths)
    rows, project_first = ours_projector_rows(batch, num_tokens, width, tokens)
    proj_ours = projector_cost(rows, width, e)
    proj_ours["project_first"] = project_first
    # project-then-gather (OGFusion._project_then_gather) first copies the patch rows, global
    # rows and BOM into one (B·(V+1)+1, F) input, then gathers T projected rows
    proj_ours["concat_bytes"] = 2 * rows * width * e if project_first else 0
    proj_ours["gather_bytes"] = cm.gather_bytes(tokens, LLM_DIM, e) if project_first else 0
    llm = padding_cost(lengths, [0] * batch, LLM)
    return {
        "config": {
            "encoder": encoder, "V": num_tokens, "F": width, "D": LLM_DIM, "B": batch, "llm": LLM,
            "masks": len(bitmaps), "kept_masks": kept, "mask_size": list(masks[0].shape[1:]),
            "dtype": str(x.dtype).removeprefix("torch."),
        },
        "tokens": {"T": tokens, "L_max": longest, "padded": batch * longest, "lengths": lengths},
        "phi": {
            "min_bytes_bool": phi_min,
            "min_bytes_packed": cm.phi_bytes(stored_packed, len(bitmaps), num_tokens),
            "reference": phi_ref.as_dict(),
            "ours_torch": phi_ours.as_dict(),
        },
        "og_tokens": {
            "min_bytes": cm.og_tokens_min_bytes(stored, features_bytes, tokens, width, e),
            "reference": ref.as_dict(),
            # in a CUDA run the reference's Φ runs on the host: its ops are not GPU launches
            "reference_device": ref.minus(phi_ref).as_dict(),
            "reference_syncs_spec": reference_sync_range(batch, kept),
            "ours_torch": ours.as_dict(),
            "ours_cuda_design_bytes": design,
        },
        "projector": {
            "reference": projector_cost(cm.projector_rows_reference(batch, longest), width, e),
            "ours": proj_ours,
        },
        "llm": llm,
    }


def cost_records(encoders=tuple(ENCODERS), batches=BATCHES) -> list[dict]:
    """:func:`cost_record` of every named encoder at every batch size."""
    return [cost_record(encoder, batch) for encoder in encoders for batch in batches]
