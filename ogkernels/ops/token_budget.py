"""Token budgets: drop masks, lowest priority first, until every cap holds.

Caps bound each image's tokens and/or the batch's. Masks are taken in priority order —
``"order"`` (the reference's order), ``"area"`` (most tokens first, i.e. the largest masks),
``"score"`` (highest SAM 2 predicted IoU first) — and kept while the running total fits; the
first mask that would overflow and every mask after it (in priority order) are dropped.
Global rows are always kept. Kept masks stay in their original order in the output. All of it
is sorting and prefix sums on the device: no host sync, and output shapes are bounded by the
caps, so a capped batch needs no sync at all to be sized.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PRIORITIES = ("order", "area", "score")


@dataclass(frozen=True)
class TokenBudget:
    """Caps on OG tokens. ``max_image_tokens`` per image and/or ``max_batch_tokens`` per batch
    (global rows included); ``priority`` decides which masks go first."""

    max_image_tokens: int | None = None
    max_batch_tokens: int | None = None
    priority: str = "order"

    def buffer_rows(self, batch: int) -> int | None:
        """A static upper bound of the batch's tokens under these caps, if any."""
        bounds = []
        if self.max_batch_tokens is not None:
            bounds.append(self.max_batch_tokens)
        if self.max_image_tokens is not None:
            bounds.append(batch * self.max_image_tokens)
        return min(bounds) if bounds else None


def _priority_order(key: torch.Tensor, group: torch.Tensor | None) -> torch.Tensor:
    """Indices sorted by ``key`` descending (ties: original order), then grouped by ``group``
    ascending with the priority order kept inside each group."""
    order = torch.sort(key, descending=True, stable=True).indices
    if group is None:
        return order
    regroup = torch.sort(group.index_select(0, order), stable=True).indices
    return order.index_select(0, regroup)


def _fits(segment: torch.Tensor, order: torch.Tensor, group: torch.Tensor | None, room: torch.Tensor) -> torch.Tensor:
    """In priority ``order``: True while the running sum of ``segment`` (restarted per group)
    stays within ``room`` (per group, or a scalar)."""
    ordered = segment.index_select(0, order)
    running = torch.cumsum(ordered, 0)
    if group is not None:
        g = group.index_select(0, order)
        totals = torch.zeros_like(room).index_add_(0, g, ordered)
        before = torch.cumsum(totals, 0) - totals
        running = running - before.index_select(0, g)
        limit = room.index_select(0, g)
    else:
        limit = room
    # a mask that does not fit stops its group: later masks are dropped even if smaller
    overflow = (running > limit).to(torch.int64)
    if group is not None:
        seen = torch.cumsum(overflow, 0)
        totals = torch.zeros_like(room).index_add_(0, g, overflow)
        before = torch.cumsum(totals, 0) - totals
        stopped = (seen - before.index_select(0, g)) > 0
    else:
        stopped = torch.cumsum(overflow, 0) > 0
    fits = torch.empty_like(stopped)
    fits.index_copy_(0, order, ~stopped)
    return fits


def apply_budget(
    budget: TokenBudget,
    keep: torch.Tensor,
    segment: torch.Tensor,
    image_of_mask: torch.Tensor,
    batch: int,
    global_rows: int,
    global_total: torch.Tensor,
    scores: torch.Tensor | None,
) -> torch.Tensor:
    """The masks still kept under ``budget``. ``segment (K,)``: rows each kept mask adds;
    ``global_rows``: the global rows of each image; ``global_total``: the batch's rows that
    are not masks' (0-d int64: global rows of the images that have them); ``scores (K,)``
    float for ``priority="score"`` (fillers and missing scores: −inf; NaN ranks last too)."""
    if budget.priority == "score":
        key = torch.nan_to_num(scores.to(torch.float64), nan=float("-inf"))
    elif budget.priority == "area":
        key = segment.to(torch.float64)
    else:
        key = -torch.arange(segment.numel(), device=segment.device, dtype=torch.float64)
    key = torch.where(keep, key, float("-inf"))
    segment = segment * keep
    if budget.max_image_tokens is not None:
        room = torch.full((batch,), budget.max_image_tokens - global_rows, dtype=torch.int64, device=keep.device)
        order = _priority_order(key, image_of_mask)
        keep = keep & _fits(segment, order, image_of_mask, room)
        segment = segment * keep
    if budget.max_batch_tokens is not None:
        room = budget.max_batch_tokens - global_total.to(torch.int64)
        keep = keep & _fits(segment, _priority_order(key, None), None, room)
    return keep
