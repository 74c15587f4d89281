"""``og_tokens``: object-guided visual tokens as one packed varlen batch (functional API),
and ``og_token_lengths``: their counts without features."""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ._batch import ImageMasks, as_mask_list, buffer_size, check_features, plan_batch, token_tables
from ._validation import fail
from .downsample import Grid
from .ops.gather_rows import gather_rows
from .ops.place_tokens import placement_indices
from .options import OGTokenOptions, parse_grid
from .varlen import VarlenBatch


def og_token_lengths(
    masks: Sequence[ImageMasks],
    grid: Grid,
    options: OGTokenOptions | None = None,
    *,
    mask_scores: Sequence[torch.Tensor | None] | None = None,
    **option_overrides: Any,
) -> torch.Tensor:
    """Each image's OG token count ``(B,)`` int64, exactly ``og_tokens(...).lengths``,
    without touching features. ``grid``: ``V`` or ``(gh, gw)``; ``options`` /
    ``option_overrides``: see :class:`OGTokenOptions`."""
    options = OGTokenOptions.resolve(options, **option_overrides)
    if isinstance(grid, (tuple, list)):
        shape = parse_grid(grid, "patch")
        if options.grid is not None and options.grid != shape:
            fail("grid", f"the options' grid {options.grid}", tuple(shape))
        if options.grid is None and options.mode == "patch":
            options = options.replace(grid=shape)
        num_tokens = shape[0] * shape[1]
    else:
        num_tokens = parse_grid(grid, "flat")[1]
    masks = as_mask_list(masks)
    plan, _ = plan_batch(masks, num_tokens, options, mask_scores, None)
    return plan.lengths


def og_tokens(
    features: torch.Tensor,
    masks: Sequence[ImageMasks],
    bom_token: torch.Tensor | None = None,
    options: OGTokenOptions | None = None,
    *,
    mask_scores: Sequence[torch.Tensor | None] | None = None,
    max_tokens: int | None = None,
    **option_overrides: Any,
) -> VarlenBatch:
    """Build every image's object-guided token sequence into one packed buffer.

    Per image (the reference layout): the global row (``global_view="mean"``: the mean of
    its ``V`` patch rows, accumulated in float32; ``"full"``: all ``V`` rows; ``"none"``),
    then for each kept mask a BOM row and the mask's patch rows in ascending token order.
    Cleaning follows the reference: a lone empty mask selects every token, empty masks are
    dropped when there are several, an image left with none contributes its global row only.
    With the batch gate (default) a batch in which no mask has a set pixel gives every image
    its ``V`` patch rows (the reference's plain path).

    Args:
        features: ``(B, V, F)`` patch features, float16/bfloat16/float32/float64.
        masks: ``B`` entries: raw ``(N, H, W)`` masks, :class:`PackedMasks`,
            :class:`MaskBitmaps`, downsampled ``(N, V)`` bitmaps, or None; on the features'
            device (or on the CPU: then copied, pinned and non-blocking). A ``(B, N, H, W)``
            tensor is taken as ``B`` images.
        bom_token: ``(1, F)`` begin-of-mask row in the features' dtype; None leaves the BOM
            rows zero (their ``source_index`` is ``BOM_ROW``, for the caller to fill).
        options: an :class:`OGTokenOptions` (layout, cleaning, gate, downsampling, token
            caps); default: the reference's behaviour. ``option_overrides``: its fields as
            keywords (``global_view="full"``, ``max_image_tokens=600``, …), applied on top.
        mask_scores: per image ``(N_i,)`` SAM 2 predicted IoU, for ``drop_priority="score"``.
        max_tokens: an upper bound on the total token count: sizes the buffer without any
            host sync (rows past ``cu_seqlens[-1]`` are zero; ``max_seqlen`` becomes a bound).
            Token caps size the buffer the same way.

    Returns:
        :class:`VarlenBatch` with ``values (T, F)``; differentiable w.r.t. ``features`` and
        ``bom_token`` with deterministic gradients. Without a bound or caps, sizing the
        output reads the batch's total length on the host (one sync).
    """
    options = OGTokenOptions.resolve(options, **option_overrides)
    masks = as_mask_list(masks)
    check_features(features, len(masks), bom_token)
    plan, counts = plan_batch(masks, features.shape[1], options, mask_scores, features.device)
    rows, max_seqlen = buffer_size(plan, options, counts, max_tokens)
    table_index, row_index, sources = placement_indices(plan, rows)
    values = gather_rows(token_tables(features, bom_token, plan, counts), table_index, row_index)
    return VarlenBatch(values, plan.cu_seqlens, max_seqlen, sources, validate=False)
