"""The OG token plan as the custom op ``ogkernels::token_plan``: which masks are kept, how
many rows each image gets and where each mask's segment starts — on the device, no host sync.

From the downsampled bitmaps of every image's masks: the reference's cleaning rules (a lone
empty mask selects every token; with several masks, empty ones are dropped), ``max_masks``,
``image_filling``, token caps, and *plain* images (the batch gate closed, or a mask-less image
under ``maskless="plain"``: its ``V`` patch rows, no global row). Then per-image lengths,
``cu_seqlens`` and per-mask offsets. On CUDA without fillers or caps: one Triton program per
image walks its masks (``kernels/token_plan.py``); otherwise a handful of vectorised tensor
ops, no loop over masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ..kernels import codes
from . import launch
from .dispatch import use_triton
from .host import resident
from .index import cu_seqlens_from_lengths, exclusive_cumsum
from .token_budget import TokenBudget, apply_budget

GLOBAL_VIEWS = ("mean", "full", "none")
MASKLESS = ("reference", "plain")
NO_LIMIT = 2**62


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

    def segment_rows(self, num_tokens: int) -> int:
        """The most rows one mask can add: its BOM and its tokens (or their mean)."""
        return int(self.bom) + (1 if self.averaging else num_tokens)


@dataclass
class TokenPlan:
    """Device tensors describing a batch's OG token layout (``K`` candidate masks: the masks
    in order, and with ``image_filling`` one filler after each image's masks).

    ``candidates (K, V)`` bool; ``state (K,)`` int8 (``codes.DROPPED``/``KEPT``/
    ``KEPT_ALL_TOKENS``); ``mask_image (K,)`` int64; ``token_counts (K,)`` int64 (0 when
    dropped); ``mask_offsets (K,)`` int64: first row of each mask's segment in the buffer;
    ``lengths (B,)`` int64; ``cu_seqlens (B + 1,)`` int32; ``plain (B,)`` bool.
    """

    layout: Layout
    num_tokens: int
    candidates: torch.Tensor
    state: torch.Tensor
    mask_image: torch.Tensor
    token_counts: torch.Tensor
    mask_offsets: torch.Tensor
    lengths: torch.Tensor
    cu_seqlens: torch.Tensor
    plain: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    @property
    def keep(self) -> torch.Tensor:
        return self.state != codes.DROPPED

    @property
    def selected(self) -> torch.Tensor:
        """``(K, V)`` bool: the tokens each kept mask contributes."""
        return (self.candidates | (self.state == codes.KEPT_ALL_TOKENS)[:, None]) & self.keep[:, None]


def plan_tokens(
    bitmaps: torch.Tensor,
    masks_per_image: Sequence[int],
    layout: Layout,
    scores: torch.Tensor | None = None,
    gate_open: torch.Tensor | None = None,
) -> TokenPlan:
    """Clean, count and place the masks of a batch.

    Args:
        bitmaps: ``(M, V)`` bool, the downsampled masks of all images in order.
        masks_per_image: ``[N_0, …, N_{B-1}]`` with ``sum == M``.
        layout: the sequence layout, cleaning options and token budget.
        scores: ``(M,)`` per-mask priority scores for a budget with ``priority="score"``.
        gate_open: 0-d bool on the device, or None: False sends every image down the plain
            path (the reference's batch gate).
    """
    budget = layout.budget
    outputs = torch.ops.ogkernels.token_plan(
        bitmaps,
        list(masks_per_image),
        scores,
        gate_open,
        layout.global_view,
        layout.bom,
        layout.averaging,
        layout.image_filling,
        layout.max_masks,
        budget.max_image_tokens if budget is not None else None,
        budget.max_batch_tokens if budget is not None else None,
        budget.priority if budget is not None else "order",
        layout.maskless,
    )
    candidates, state, mask_image, token_counts, mask_offsets, lengths, cu_seqlens, plain = outputs
    if not layout.image_filling:
        candidates = bitmaps
    return TokenPlan(
        layout, bitmaps.shape[1], candidates, state, mask_image, token_counts, mask_offsets, lengths, cu_seqlens, plain
    )


# ----------------------------------------------------------------------------------------------
# The custom op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("ogkernels::token_plan", mutates_args=())
def token_plan(
    bitmaps: torch.Tensor,
    masks_per_image: Sequence[int],
    scores: torch.Tensor | None,
    gate_open: torch.Tensor | None,
    global_view: str,
    bom: bool,
    averaging: bool,
    image_filling: bool,
    max_masks: int | None,
    max_image_tokens: int | None,
    max_batch_tokens: int | None,
    drop_priority: str,
    maskless: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(candidates, state, mask_image, token_counts, mask_offsets, lengths, cu_seqlens,
    plain)`` of :class:`TokenPlan` (``candidates`` is ``(0, V)`` without ``image_filling``:
    the candidates are then the bitmaps themselves)."""
    budget = None
    if max_image_tokens is not None or max_batch_tokens is not None:
        budget = TokenBudget(max_image_tokens, max_batch_tokens, drop_priority)
    layout = Layout(global_view, bom, averaging, image_filling, max_masks, budget, maskless)
    counts = [int(n) for n in masks_per_image]
    plain = _plain_images(counts, layout, gate_open, bitmaps.device)
    if use_triton(bitmaps.device) and not image_filling and budget is None:
        return _plan_triton(bitmaps, counts, layout, plain)
    return _plan_torch(bitmaps, counts, layout, scores, plain)


@token_plan.register_fake
def _(bitmaps, masks_per_image, scores, gate_open, global_view, bom, averaging, image_filling, max_masks,
      max_image_tokens, max_batch_tokens, drop_priority, maskless):  # fmt: skip
    batch, (num_masks, num_tokens) = len(masks_per_image), bitmaps.shape
    candidates = num_masks + batch if image_filling else num_masks
    new = bitmaps.new_empty
    return (
        new((candidates, num_tokens) if image_filling else (0, num_tokens), dtype=torch.bool),
        new(candidates, dtype=torch.int8),
        new(candidates, dtype=torch.int64),
        new(candidates, dtype=torch.int64),
        new(candidates, dtype=torch.int64),
        new(batch, dtype=torch.int64),
        new(batch + 1, dtype=torch.int32),
        new(batch, dtype=torch.bool),
    )


def _plain_images(counts: list[int], layout: Layout, gate_open: torch.Tensor | None, device) -> torch.Tensor:
    """``(B,)`` bool: the images that take their ``V`` patch rows."""
    maskless = [layout.maskless == "plain" and n == 0 for n in counts]
    plain = resident(maskless, torch.bool, device, key=("plain images", tuple(maskless)))
    if gate_open is not None:
        plain = plain | ~gate_open.to(device=device, dtype=torch.bool)
    return plain


def _image_ids(counts: Sequence[int], device: torch.device) -> torch.Tensor:
    """``[0]*counts[0] + [1]*counts[1] + …`` (a resident table: no upload when repeated)."""
    ids = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    return resident(ids, torch.int64, device, key=("image ids", tuple(counts)))


def _segment_sum(values: torch.Tensor, segment: torch.Tensor, num_segments: int) -> torch.Tensor:
    """Sum of integer ``values (K, ...)`` per segment id (integer adds: deterministic)."""
    out = torch.zeros((num_segments,) + tuple(values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, segment, values)


def _exclusive_sum_within(values: torch.Tensor, image: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exclusive prefix sums of ``values (K,)`` restarted at each image (masks are grouped by
    image, in order), and the per-image totals ``(B,)``."""
    totals = _segment_sum(values, image, batch)
    within = exclusive_cumsum(values) - exclusive_cumsum(totals).index_select(0, image)
    return within, totals


def _with_fillers(
    bitmaps: torch.Tensor, image_of_mask: torch.Tensor, counts: list[int], allowed: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``image_filling``: after each image's masks, a candidate covering its uncovered tokens,
    present only if some token is uncovered (and ``allowed`` for that image). Returns the
    candidates, their presence and their image ids."""
    device = bitmaps.device
    batch, num_tokens = len(counts), bitmaps.shape[1]
    uncovered = _segment_sum(bitmaps.to(torch.int32), image_of_mask, batch) == 0
    new_counts = [n + 1 for n in counts]
    filler_pos = resident(np.cumsum(new_counts) - 1, torch.int64, device, key=("filler rows", tuple(counts)))
    raw_pos = torch.arange(bitmaps.shape[0], device=device) + image_of_mask
    candidates = torch.empty(sum(new_counts), num_tokens, dtype=torch.bool, device=device)
    candidates.index_copy_(0, raw_pos, bitmaps)
    candidates.index_copy_(0, filler_pos, uncovered)
    present = torch.ones(candidates.shape[0], dtype=torch.bool, device=device)
    present.index_copy_(0, filler_pos, uncovered.any(dim=1) & allowed)
    return candidates, present, _image_ids(new_counts, device)


def _plan_torch(bitmaps, counts: list[int], layout: Layout, scores, plain: torch.Tensor):
    device = bitmaps.device
    batch, num_tokens = len(counts), bitmaps.shape[1]
    image_of_mask = _image_ids(counts, device)
    # The reference's branch order: an image with more masks than the limit is cut (and not
    # filled); the others are filled (and not cut).
    limit = layout.max_masks
    limited_list = [limit is not None and n > limit for n in counts]
    limited = resident(limited_list, torch.bool, device, key=("limited", tuple(limited_list)))
    if layout.image_filling:
        raw_image = image_of_mask
        candidates, present, image_of_mask = _with_fillers(bitmaps, image_of_mask, counts, ~limited)
        if scores is not None:  # fillers rank last
            filled = torch.full((candidates.shape[0],), float("-inf"), dtype=scores.dtype, device=device)
            scores = filled.index_copy_(0, torch.arange(bitmaps.shape[0], device=device) + raw_image, scores)
        out_candidates = candidates
    else:
        candidates = bitmaps
        present = torch.ones(bitmaps.shape[0], dtype=torch.bool, device=device)
        out_candidates = bitmaps.new_empty(0, num_tokens)
    present = present & ~plain.index_select(0, image_of_mask)

    # cleaning: a lone empty mask selects every token; with several, empty ones are dropped.
    nonempty = candidates.any(dim=1)
    present_per_image = _segment_sum(present.to(torch.int64), image_of_mask, batch)
    single = present_per_image.index_select(0, image_of_mask) == 1
    keep = present & (nonempty | single)
    fill_all = present & single & ~nonempty
    if limit is not None:
        kept_before, _ = _exclusive_sum_within(keep.to(torch.int64), image_of_mask, batch)
        keep = keep & ((kept_before < limit) | ~limited.index_select(0, image_of_mask))

    token_counts = torch.where(fill_all, num_tokens, candidates.sum(dim=1, dtype=torch.int64)) * keep
    rows = token_counts.clamp(max=1) if layout.averaging else token_counts
    segment = rows + int(layout.bom) * keep
    global_rows = layout.global_rows(num_tokens)
    if layout.budget is not None:
        global_total = (~plain).sum() * global_rows
        keep = apply_budget(layout.budget, keep, segment, image_of_mask, batch, global_rows, global_total, scores)
        token_counts = token_counts * keep
        segment = segment * keep
    within, per_image = _exclusive_sum_within(segment, image_of_mask, batch)
    lengths = torch.where(plain, num_tokens, per_image + global_rows)
    cu_seqlens = cu_seqlens_from_lengths(lengths)
    mask_offsets = exclusive_cumsum(lengths).index_select(0, image_of_mask) + global_rows + within
    state = (keep.to(torch.int8) * (1 + fill_all.to(torch.int8))).to(torch.int8)
    return out_candidates, state, image_of_mask.clone(), token_counts, mask_offsets, lengths, cu_seqlens, plain.clone()


def token_plan_launch(bitmaps, starts, plain, state, token_counts, offsets, lengths, layout: Layout) -> launch.Launch:
    from ..kernels.token_plan import token_plan_kernel

    num_tokens = bitmaps.shape[1]
    return launch.Launch.of(
        token_plan_kernel,
        (lengths.numel(),),
        {
            "bitmaps_ptr": bitmaps.view(torch.uint8),
            "mask_start_ptr": starts,
            "plain_ptr": plain.view(torch.uint8),
            "state_ptr": state,
            "token_counts_ptr": token_counts,
            "offsets_ptr": offsets,
            "lengths_ptr": lengths,
            "num_tokens": num_tokens,
            "global_rows": layout.global_rows(num_tokens),
            "max_masks": layout.max_masks if layout.max_masks is not None else NO_LIMIT,
        },
        launch.token_plan(num_tokens),
        BOM=int(layout.bom),
        AVERAGING=layout.averaging,
    )


def _plan_triton(bitmaps, counts: list[int], layout: Layout, plain: torch.Tensor):
    """The plan in one Triton launch (plus a prefix sum over the images)."""
    device = bitmaps.device
    batch, (num_masks, num_tokens) = len(counts), bitmaps.shape
    image_of_mask = _image_ids(counts, device)
    starts = resident(np.cumsum([0] + counts), torch.int64, device, key=("mask starts", tuple(counts)))
    state = torch.zeros(num_masks, dtype=torch.int8, device=device)
    token_counts = torch.zeros(num_masks, dtype=torch.int64, device=device)
    offsets = torch.zeros(num_masks, dtype=torch.int64, device=device)
    lengths = torch.zeros(batch, dtype=torch.int64, device=device)
    token_plan_launch(bitmaps.contiguous(), starts, plain, state, token_counts, offsets, lengths, layout).run()
    mask_offsets = exclusive_cumsum(lengths).index_select(0, image_of_mask) + offsets
    empty = bitmaps.new_empty(0, num_tokens)
    cu_seqlens = cu_seqlens_from_lengths(lengths)
    return empty, state, image_of_mask.clone(), token_counts, mask_offsets, lengths, cu_seqlens, plain.clone()
