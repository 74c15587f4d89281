"""The OG token plan: which rows go where, computed on the device without host syncs.

From the downsampled bitmaps of every image's masks, apply the reference's cleaning rules
(§3), count each kept mask's tokens, prefix-sum them into per-image lengths, ``cu_seqlens``
and per-mask offsets, then scatter the placement indices that :func:`gather_rows` consumes.
Everything is a handful of vectorised tensor ops over the ``(K, V)`` candidate bitmaps: no
loop over masks, and no host sync except reading the total length to size the output (which
a caller-supplied ``max_tokens`` bound removes).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._dispatch import use_triton
from .._host import upload
from ..varlen import BOM_ROW, GLOBAL_ROW, MASK_MEAN_ROW, PAD_ROW
from .token_budget import TokenBudget, apply_budget

# Tables of the placement gather, in this order.
PATCH_TABLE, GLOBAL_TABLE, BOM_TABLE, MASK_MEAN_TABLE = 0, 1, 2, 3
GLOBAL_VIEWS = ("mean", "full", "none")
MASKLESS = ("reference", "plain")


@dataclass(frozen=True)
class Layout:
    """Per-image sequence layout: ``[global] ++ for each kept mask: [BOM] ++ rows``."""

    global_view: str = "mean"  # "mean": 1 row; "full": the V patch rows; "none"
    bom: bool = True
    averaging: bool = False  # each mask's rows replaced by their mean (1 row)
    image_filling: bool = False  # append the uncovered tokens as a last mask
    # an image with more raw masks than this keeps its first max_masks after cleaning
    max_masks: int | None = None
    budget: TokenBudget | None = None  # token caps, applied last
    # an image without masks in a batch with masks: "reference" (global rows only) or
    # "plain" (its V patch rows, no global row)
    maskless: str = "reference"

    def global_rows(self, num_tokens: int) -> int:
        return {"mean": 1, "full": num_tokens, "none": 0}[self.global_view]


@dataclass
class TokenPlan:
    """Device tensors describing a batch's OG token layout.

    ``bitmaps (K, V)`` bool: candidate masks after cleaning (rows of dropped masks are
    meaningless); ``keep (K,)``; ``mask_image (K,)`` int64; ``token_counts (K,)`` int64 (0
    when dropped); ``mask_offsets (K,)`` int64: first row of each mask's segment;
    ``lengths (B,)`` int64; ``cu_seqlens (B+1,)`` int32; ``state (K,)`` int8 or None.
    """

    layout: Layout
    num_tokens: int
    bitmaps: torch.Tensor
    keep: torch.Tensor
    mask_image: torch.Tensor
    token_counts: torch.Tensor
    mask_offsets: torch.Tensor
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    # Triton plans: per-mask state (0 dropped, 1 kept, 2 kept with every token); the bitmaps
    # are then the raw ones (a lone empty mask is not filled in them)
    state: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.lengths.numel()


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of integer ``values (K, ...)`` per segment id (integer adds: deterministic)."""
    out = torch.zeros((num_segments,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, segment, values)


def _image_ids(counts: list[int], device: torch.device) -> torch.Tensor:
    """``[0]*counts[0] + [1]*counts[1] + …`` on ``device`` (sizes known on the host: no sync)."""
    repeats = upload(counts, torch.int64, device)
    return torch.repeat_interleave(torch.arange(len(counts), device=device), repeats, output_size=sum(counts))


def _exclusive_sum_within(
    values: torch.Tensor, image: torch.Tensor, batch: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exclusive prefix sums of ``values (K,)`` restarted at each image (masks are grouped by
    image, in order), and the per-image totals ``(B,)``."""
    totals = _segment_sum(values, image, batch)
    before_image = torch.cumsum(totals, 0) - totals
    exclusive = torch.cumsum(values, 0) - values - before_image.index_select(0, image)
    return exclusive, totals


def _with_fillers(
    bitmaps: torch.Tensor, image_of_mask: torch.Tensor, counts: list[int], allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``image_filling``: after each image's masks, a candidate covering its uncovered tokens,
    present only if some token is uncovered (and ``allowed`` for that image). Returns the
    candidates, their presence and their image ids."""
    device = bitmaps.device
    batch, num_tokens = len(counts), bitmaps.shape[1]
    covered = _segment_sum(bitmaps.to(torch.int32), image_of_mask, batch) > 0
    uncovered = ~covered
    new_counts = [n + 1 for n in counts]
    ends = upload(new_counts, torch.int64, device).cumsum(0)
    filler_pos = ends - 1
    raw_pos = torch.arange(bitmaps.shape[0], device=device) + image_of_mask
    candidates = torch.empty(sum(new_counts), num_tokens, dtype=torch.bool, device=device)
    candidates.index_copy_(0, raw_pos, bitmaps)
    candidates.index_copy_(0, filler_pos, uncovered)
    present = torch.ones(candidates.shape[0], dtype=torch.bool, device=device)
    present.index_copy_(0, filler_pos, uncovered.any(dim=1) & allowed)
    return candidates, present, _image_ids(new_counts, device)


def plan_tokens(
    bitmaps: torch.Tensor,
    masks_per_image: list[int],
    layout: Layout,
    scores: torch.Tensor | None = None,
) -> TokenPlan:
    """Clean, count and place the masks of a batch.

    Args:
        bitmaps: ``(M, V)`` bool, the downsampled masks of all images in order.
        masks_per_image: ``[N_0, …, N_{B-1}]`` with ``sum == M``.
        layout: the sequence layout, cleaning options and token budget.
        scores: ``(M,)`` per-mask priority scores (SAM 2 predicted IoU) for a budget with
            ``priority="score"``.
    """
    device = bitmaps.device
    if use_triton(device) and not layout.image_filling and layout.budget is None:
        return _plan_tokens_triton(bitmaps, masks_per_image, layout)
    batch, num_tokens = len(masks_per_image), bitmaps.shape[1]
    image_of_mask = _image_ids(masks_per_image, device)
    # The reference's branch order: an image with more masks than the limit is cut (and not
    # filled); the others are filled (and not cut).
    limit = layout.max_masks
    limited = upload([limit is not None and n > limit for n in masks_per_image], torch.bool, device)
    if layout.image_filling:
        raw_image = image_of_mask
        candidates, present, image_of_mask = _with_fillers(
            bitmaps, image_of_mask, masks_per_image, ~limited
        )
        if scores is not None:  # fillers rank last
            filled = torch.full((candidates.shape[0],), float("-inf"), dtype=scores.dtype, device=device)
            scores = filled.index_copy_(0, torch.arange(bitmaps.shape[0], device=device) + raw_image, scores)
    else:
        candidates = bitmaps
        present = torch.ones(bitmaps.shape[0], dtype=torch.bool, device=device)

    # §3 cleaning: a lone empty mask becomes all tokens; with several, empty ones are dropped.
    nonempty = candidates.any(dim=1)
    present_per_image = _segment_sum(present.to(torch.int64), image_of_mask, batch)
    single = present_per_image.index_select(0, image_of_mask) == 1
    keep = present & (nonempty | single)
    fill_all = present & single & ~nonempty
    if candidates.shape[0]:
        candidates = candidates | fill_all.unsqueeze(1)

    if limit is not None:
        kept_before, _ = _exclusive_sum_within(keep.to(torch.int64), image_of_mask, batch)
        keep = keep & ((kept_before < limit) | ~limited.index_select(0, image_of_mask))

    token_counts = candidates.sum(dim=1, dtype=torch.int64) * keep
    rows = token_counts.clamp(max=1) if layout.averaging else token_counts
    segment = rows + int(layout.bom) * keep
    global_rows = layout.global_rows(num_tokens)
    if layout.budget is not None:
        keep = apply_budget(layout.budget, keep, segment, image_of_mask, batch, global_rows, scores)
        token_counts = token_counts * keep
        segment = segment * keep
    within, per_image = _exclusive_sum_within(segment, image_of_mask, batch)
    lengths = per_image + global_rows
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    mask_offsets = cu_seqlens[:-1].index_select(0, image_of_mask) + global_rows + within
    return TokenPlan(
        layout,
        num_tokens,
        candidates,
        keep,
        image_of_mask,
        token_counts,
        mask_offsets,
        lengths,
        cu_seqlens.to(torch.int32),
    )


def _plan_tokens_triton(bitmaps: torch.Tensor, masks_per_image: list[int], layout: Layout) -> TokenPlan:
    """:func:`plan_tokens` in one Triton launch (plus a prefix sum over the images)."""
    from ..kernels.token_plan import KEPT_ALL_TOKENS, token_plan_kernel

    device = bitmaps.device
    batch, (num_masks, num_tokens) = len(masks_per_image), bitmaps.shape
    image_of_mask = _image_ids(masks_per_image, device)
    starts = upload(np.cumsum([0] + list(masks_per_image)), torch.int64, device)
    state = torch.zeros(num_masks, dtype=torch.int8, device=device)
    token_counts = torch.zeros(num_masks, dtype=torch.int64, device=device)
    offsets = torch.zeros(num_masks, dtype=torch.int64, device=device)
    lengths = torch.zeros(batch, dtype=torch.int64, device=device)
    if batch:
        token_plan_kernel[(batch,)](
            bitmaps.contiguous().view(torch.uint8),
            starts,
            state,
            token_counts,
            offsets,
            lengths,
            num_tokens,
            layout.global_rows(num_tokens),
            layout.max_masks if layout.max_masks is not None else 2**62,
            BOM=int(layout.bom),
            AVERAGING=layout.averaging,
            BLOCK_V=min(1024, 1 << max(num_tokens - 1, 0).bit_length()),
            num_warps=4,
        )
    cu_seqlens = torch.zeros(batch + 1, dtype=torch.int64, device=device)
    torch.cumsum(lengths, 0, out=cu_seqlens[1:])
    keep = state != 0
    if layout.averaging and num_masks:  # the mask means read the filled-in bitmaps
        bitmaps = bitmaps | (state == KEPT_ALL_TOKENS).unsqueeze(1)
    mask_offsets = cu_seqlens.index_select(0, image_of_mask) + offsets
    return TokenPlan(
        layout, num_tokens, bitmaps, keep, image_of_mask, token_counts, mask_offsets, lengths,
        cu_seqlens.to(torch.int32), state,
    )  # fmt: skip


GLOBAL_VIEW_CODES = {"none": 0, "mean": 1, "full": 2}


def _placement_triton(plan: TokenPlan, buffer_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from ..kernels.token_plan import place_tokens_kernel

    device = plan.bitmaps.device
    table_index = torch.full((buffer_rows,), -1, dtype=torch.int32, device=device)
    row_index = torch.zeros(buffer_rows, dtype=torch.int64, device=device)
    codes = torch.full((buffer_rows,), PAD_ROW, dtype=torch.int64, device=device)
    num_masks, num_tokens = plan.bitmaps.shape
    block = min(1024, 1 << max(num_tokens - 1, 0).bit_length())
    programs = num_masks + plan.batch_size
    if buffer_rows and programs:
        place_tokens_kernel[(programs, (num_tokens + block - 1) // block)](
            plan.bitmaps.contiguous().view(torch.uint8),
            plan.state,
            plan.mask_image,
            plan.mask_offsets,
            plan.cu_seqlens,
            table_index,
            row_index,
            codes,
            num_masks,
            num_tokens,
            buffer_rows,
            GLOBAL_VIEW=GLOBAL_VIEW_CODES[plan.layout.global_view],
            BOM=int(plan.layout.bom),
            AVERAGING=plan.layout.averaging,
            BLOCK_V=block,
            num_warps=4,
        )
    return table_index, row_index, codes


def placement_indices(plan: TokenPlan, buffer_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(table_index int32 (R,), row_index int64 (R,), source_index int64 (R,))`` for a
    buffer of ``R`` rows: what :func:`gather_rows` copies where, and the
    ``VarlenBatch.source_index`` codes.

    Entries are scattered sync-free; writes that fall outside the buffer (only possible when
    a caller's bound is too small) and unused entries go to a dummy slot that is cut off.
    """
    if plan.state is not None:
        return _placement_triton(plan, buffer_rows)
    device = plan.bitmaps.device
    layout, num_tokens = plan.layout, plan.num_tokens
    dummy = buffer_rows
    table_index = torch.full((buffer_rows + 1,), -1, dtype=torch.int32, device=device)
    row_index = torch.zeros(buffer_rows + 1, dtype=torch.int64, device=device)

    def place(positions: torch.Tensor, valid: torch.Tensor, table: int, rows: torch.Tensor):
        positions = torch.where(valid & (positions < buffer_rows), positions, dummy).reshape(-1)
        table_index.scatter_(0, positions, torch.full_like(positions, table, dtype=torch.int32))
        row_index.scatter_(0, positions, rows.expand_as(valid).reshape(-1))

    image_starts = plan.cu_seqlens[:-1].to(torch.int64)
    batch = image_starts.numel()
    images = torch.arange(batch, device=device)
    all_images = torch.ones(batch, dtype=torch.bool, device=device)
    if layout.global_view == "mean":
        place(image_starts, all_images, GLOBAL_TABLE, images)
    elif layout.global_view == "full":
        token = torch.arange(num_tokens, device=device)
        valid = all_images[:, None].expand(batch, num_tokens)
        place(image_starts[:, None] + token, valid, PATCH_TABLE, images[:, None] * num_tokens + token)
    if plan.keep.numel():
        bom = int(layout.bom)
        if layout.bom:
            place(plan.mask_offsets, plan.keep, BOM_TABLE, torch.zeros_like(plan.mask_offsets))
        if layout.averaging:
            masks = torch.arange(plan.keep.numel(), device=device)
            place(plan.mask_offsets + bom, plan.keep, MASK_MEAN_TABLE, masks)
        else:
            token = torch.arange(num_tokens, device=device)
            rank = torch.cumsum(plan.bitmaps.to(torch.int64), dim=1) - 1
            positions = plan.mask_offsets[:, None] + bom + rank
            valid = plan.keep[:, None] & plan.bitmaps
            rows = plan.mask_image[:, None] * num_tokens + token
            place(positions, valid, PATCH_TABLE, rows)
    table_index, row_index = table_index[:buffer_rows], row_index[:buffer_rows]
    return table_index, row_index, source_index(table_index, row_index)


def source_index(table_index: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
    """``VarlenBatch.source_index`` from placement indices (patch rows keep ``b·V + v``)."""
    # indexed by table + 1; the patch entry is replaced by the row itself
    codes = upload([PAD_ROW, 0, GLOBAL_ROW, BOM_ROW, MASK_MEAN_ROW], torch.int64, row_index.device)
    special = codes.index_select(0, (table_index.to(torch.int64) + 1).clamp(min=0))
    return torch.where(table_index == PATCH_TABLE, row_index, special)
