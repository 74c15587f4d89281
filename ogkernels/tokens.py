"""``og_tokens``: object-guided visual tokens as one packed varlen batch (functional API)."""

from __future__ import annotations

from typing import Sequence, Union

import torch

from ._validation import check_positive_int, describe, fail
from .downsample import Grid, downsample_masks
from .ops.gather_rows import gather_rows
from .ops.token_plan import Layout, TokenPlan, placement_indices, plan_tokens
from .options import INT32_MAX, OGTokenOptions, parse_grid
from .packed_masks import PackedMasks
from .varlen import VarlenBatch

ImageMasks = Union[torch.Tensor, PackedMasks, None]


def token_bitmaps(
    masks: Sequence[ImageMasks], num_tokens: int, options: OGTokenOptions, device: torch.device | None
) -> tuple[torch.Tensor, list[int]]:
    """Bitmaps ``(M, V)`` of every image's masks, in order, and the mask count per image.

    Items may be raw ``(N, H, W)`` masks or :class:`PackedMasks` (downsampled in one call),
    already-downsampled ``(N, V)`` bitmaps, or None (no masks).
    """
    shape = options.grid_shape(num_tokens)
    if not isinstance(masks, (list, tuple)):
        fail("masks", "a list with one entry per image", masks, error=TypeError)
    raw, counts, bitmaps = [], [], []
    for i, item in enumerate(masks):
        name = f"masks[{i}]"
        if item is None:
            counts.append(0)
            continue
        item_device = item.device
        if device is not None and item_device != device:
            fail(name, f"masks on {device} (the device of features)", describe(item) if isinstance(item, torch.Tensor) else f"PackedMasks on {item_device}")
        if isinstance(item, torch.Tensor) and item.dim() == 2:
            if item.shape[1] != num_tokens:
                fail(name, f"downsampled bitmaps (N, V) with V = {num_tokens}", item)
            if item.dtype != torch.bool:
                if item.dtype.is_complex or (item.numel() and not bool(((item == 0) | (item == 1)).all())):
                    fail(name, "bitmap values in {0, 1}", item)
                item = item != 0
            bitmaps.append((i, item))
            counts.append(item.shape[0])
        elif isinstance(item, (torch.Tensor, PackedMasks)):
            if isinstance(item, torch.Tensor) and item.dim() != 3:
                fail(name, "(N, H, W) masks or (N, V) bitmaps", item)
            raw.append((i, item))
            counts.append(item.num_masks if isinstance(item, PackedMasks) else item.shape[0])
        else:
            fail(name, "a mask tensor, a PackedMasks or None", item, error=TypeError)
    target = device if device is not None else _first_device(masks)
    pieces: dict[int, torch.Tensor] = dict(bitmaps)
    if raw:
        flat = downsample_masks(
            [item for _, item in raw], shape, alpha=options.alpha, mode=options.mode, frame=options.frame
        )
        start = 0
        for i, _ in raw:
            pieces[i] = flat[start : start + counts[i]]
            start += counts[i]
    ordered = [pieces[i] for i in range(len(masks)) if i in pieces]
    if not ordered:
        return torch.zeros(0, num_tokens, dtype=torch.bool, device=target), counts
    return (ordered[0] if len(ordered) == 1 else torch.cat(ordered, dim=0)), counts


def _first_device(masks: Sequence[ImageMasks]) -> torch.device:
    for item in masks:
        if item is not None:
            return item.device
    return torch.device("cpu")


def check_budget(layout: Layout, batch: int, num_tokens: int) -> None:
    """Caps must leave room for the global rows, which are never dropped."""
    budget, global_rows = layout.budget, layout.global_rows(num_tokens)
    if budget is None:
        return
    if budget.max_image_tokens is not None and budget.max_image_tokens < global_rows:
        fail("max_image_tokens", f">= {global_rows} (the global rows of global_view={layout.global_view!r})", budget.max_image_tokens)
    if budget.max_batch_tokens is not None and budget.max_batch_tokens < batch * global_rows:
        fail("max_batch_tokens", f">= {batch * global_rows} (B × the global rows)", budget.max_batch_tokens)


def mask_score_vector(
    mask_scores: Sequence[torch.Tensor | None] | None, counts: list[int], layout: Layout, device
) -> torch.Tensor | None:
    """``(M,)`` scores in mask order for ``drop_priority="score"`` (validated)."""
    budget = layout.budget
    if budget is None or budget.priority != "score":
        return None
    if mask_scores is None or not isinstance(mask_scores, (list, tuple)) or len(mask_scores) != len(counts):
        fail("mask_scores", f"a list of {len(counts)} per-image score tensors for drop_priority='score'", mask_scores)
    pieces = []
    for i, (scores, n) in enumerate(zip(mask_scores, counts)):
        if n == 0 and scores is None:
            continue
        if not isinstance(scores, torch.Tensor) or scores.shape != (n,):
            fail(f"mask_scores[{i}]", f"a ({n},) tensor (one score per mask)", scores)
        pieces.append(scores.to(device=device, dtype=torch.float64))
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64, device=device)


def og_token_lengths(
    masks: Sequence[ImageMasks],
    grid: Grid,
    options: OGTokenOptions | None = None,
    *,
    mask_scores: Sequence[torch.Tensor | None] | None = None,
    **option_overrides,
) -> torch.Tensor:
    """Each image's OG token count ``(B,)`` int64, exactly ``og_tokens(...).lengths``,
    without touching features. ``grid``: ``V`` or ``(gh, gw)``; ``options`` /
    ``option_overrides``: see :class:`OGTokenOptions`."""
    options = OGTokenOptions.resolve(options, **option_overrides)
    shape = parse_grid(grid, options.mode)
    if options.grid is not None and options.grid != shape:
        fail("grid", f"the options' grid {options.grid}", tuple(shape))
    if not isinstance(masks, (list, tuple)):
        fail("masks", "a list with one entry per image", masks, error=TypeError)
    options = options.replace(grid=shape) if options.mode == "patch" else options
    plan, _ = plan_batch(masks, shape[0] * shape[1], options, mask_scores, None)
    return plan.lengths


def plan_batch(
    masks: Sequence[ImageMasks],
    num_tokens: int,
    options: OGTokenOptions,
    mask_scores: Sequence[torch.Tensor | None] | None,
    device: torch.device | None,
) -> tuple[TokenPlan, list[int]]:
    """Downsample, clean, cap and count a batch's masks: the plan and the masks per image."""
    layout = options.layout
    check_budget(layout, len(masks), num_tokens)
    bitmaps, counts = token_bitmaps(masks, num_tokens, options, device)
    scores = mask_score_vector(mask_scores, counts, layout, bitmaps.device)
    return plan_tokens(bitmaps, counts, layout, scores), counts


def as_mask_list(masks: object) -> object:
    """A batched mask tensor ``(B, N, H, W)`` (the evaluation harness's layout) as a list of
    its ``B`` images; anything else unchanged (validated later)."""
    if isinstance(masks, torch.Tensor) and masks.dim() == 4:
        return list(masks.unbind(0))
    return masks


def check_features(features: torch.Tensor, masks: object, bom_token: torch.Tensor | None) -> None:
    if not isinstance(features, torch.Tensor):
        fail("features", "a (B, V, F) tensor", features, error=TypeError)
    if features.dim() != 3:
        fail("features", "a (B, V, F) tensor", features)
    if features.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        fail("features", "dtype float16, bfloat16, float32 or float64", features, error=TypeError)
    if features.shape[1] < 1:
        fail("features", "V >= 1 patch rows", features)
    if not isinstance(masks, (list, tuple)):
        fail("masks", "a list with one entry per image (or a (B, N, H, W) tensor)", masks, error=TypeError)
    if len(masks) != features.shape[0]:
        fail("masks", f"{features.shape[0]} entries (one per image of features)", masks)
    if bom_token is not None:
        if not isinstance(bom_token, torch.Tensor):
            fail("bom_token", "a (1, F) tensor", bom_token, error=TypeError)
        if tuple(bom_token.shape) != (1, features.shape[2]):
            fail("bom_token", f"shape (1, {features.shape[2]})", bom_token)
        if bom_token.dtype != features.dtype:
            fail("bom_token", f"dtype {features.dtype} (the dtype of features)", bom_token, error=TypeError)
        if bom_token.device != features.device:
            fail("bom_token", f"a tensor on {features.device} (the device of features)", bom_token)


def buffer_size(
    plan: TokenPlan, max_tokens: int | None, counts: list[int], flags: Sequence[torch.Tensor] = ()
) -> tuple[int, int, list[bool]]:
    """Rows of the output buffer, ``max_seqlen`` and the values of the device ``flags``, read
    in one host sync — or, with a ``max_tokens`` bound or a token budget and no flags, in
    none."""
    budget = plan.layout.budget
    capped = budget.buffer_rows(plan.batch_size) if budget is not None else None
    if max_tokens is None and capped is not None:
        bound = budget.max_image_tokens if budget.max_image_tokens is not None else capped
        values = torch.stack([f.to(torch.int64) for f in flags]).tolist() if flags else []
        return capped, min(bound, capped), [bool(v) for v in values]
    if max_tokens is None:
        if plan.batch_size == 0:
            return 0, 0, [bool(f) for f in flags]
        stats = [plan.cu_seqlens[-1].long(), plan.lengths.max()] + [f.to(torch.int64) for f in flags]
        total, longest, *values = torch.stack(stats).tolist()
        if total > INT32_MAX:
            fail("masks", f"at most {INT32_MAX} tokens in total (int32 cu_seqlens)", f"{total} tokens")
        return total, longest, [bool(v) for v in values]
    check_positive_int("max_tokens", max_tokens)
    if max_tokens > INT32_MAX:
        fail("max_tokens", f"<= {INT32_MAX} (int32 cu_seqlens)", max_tokens)
    total = plan.cu_seqlens[-1]
    if total.device.type == "cpu":
        if int(total) > max_tokens:
            fail("max_tokens", f">= the batch's {int(total)} tokens", max_tokens)
    else:
        torch._assert_async(total <= max_tokens, "og_tokens: max_tokens is smaller than the batch's tokens")
    layout = plan.layout
    per_mask = int(layout.bom) + (1 if layout.averaging else plan.num_tokens)
    fillers = int(layout.image_filling)
    bound = max(
        (layout.global_rows(plan.num_tokens) + (n + fillers) * per_mask for n in counts), default=0
    )
    values = torch.stack([f.to(torch.int64) for f in flags]).tolist() if flags else []
    return max_tokens, min(bound, max_tokens), [bool(v) for v in values]


def _mask_means(features: torch.Tensor, plan: TokenPlan) -> torch.Tensor:
    """``averaging``: the mean of each kept mask's rows ``(K, F)``, accumulated in float32."""
    weights = (plan.bitmaps & plan.keep[:, None]).to(torch.float32)
    counts = plan.token_counts.clamp(min=1).to(torch.float32)[:, None]
    acc_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    rows = features.to(acc_dtype)
    gathered = torch.bmm(weights.to(acc_dtype).unsqueeze(1), rows.index_select(0, plan.mask_image))
    return (gathered.squeeze(1) / counts).to(features.dtype)


def og_tokens(
    features: torch.Tensor,
    masks: Sequence[ImageMasks],
    bom_token: torch.Tensor | None = None,
    options: OGTokenOptions | None = None,
    *,
    mask_scores: Sequence[torch.Tensor | None] | None = None,
    max_tokens: int | None = None,
    **option_overrides,
) -> VarlenBatch:
    """Build every image's object-guided token sequence into one packed buffer.

    Per image (the reference layout): the global row (``global_view="mean"``: the mean of
    its ``V`` patch rows, accumulated in float32; ``"full"``: all ``V`` rows; ``"none"``),
    then for each kept mask a BOM row and the mask's patch rows in ascending token order.
    Cleaning follows the reference: a lone empty mask selects every token, empty masks are
    dropped when there are several, an image left with none contributes its global row only.

    Args:
        features: ``(B, V, F)`` patch features, float16/bfloat16/float32/float64.
        masks: ``B`` entries: raw ``(N, H, W)`` masks, :class:`PackedMasks`, downsampled
            ``(N, V)`` bitmaps, or None; on the features' device. A ``(B, N, H, W)`` tensor
            is taken as ``B`` images.
        bom_token: ``(1, F)`` begin-of-mask row in the features' dtype; None leaves the BOM
            rows zero (their ``source_index`` is ``BOM_ROW``, for the caller to fill).
        options: an :class:`OGTokenOptions` (layout, cleaning, downsampling, token caps);
            default: the reference's behaviour. ``option_overrides``: its fields as keywords
            (``global_view="full"``, ``max_image_tokens=600``, …), applied on top.
        mask_scores: per image ``(N_i,)`` SAM 2 predicted IoU, for ``drop_priority="score"``.
        max_tokens: an upper bound on the total token count: sizes the buffer without any
            host sync (rows past ``cu_seqlens[-1]`` are zero; ``max_seqlen`` becomes a bound).

    Returns:
        :class:`VarlenBatch` with ``values (T, F)``; differentiable w.r.t. ``features`` and
        ``bom_token`` with deterministic gradients.
    """
    options = OGTokenOptions.resolve(options, **option_overrides)
    masks = as_mask_list(masks)
    check_features(features, masks, bom_token)
    plan, counts = plan_batch(masks, features.shape[1], options, mask_scores, features.device)
    rows, max_seqlen, _ = buffer_size(plan, max_tokens, counts)
    table_index, row_index, sources = placement_indices(plan, rows)
    return VarlenBatch(
        gather_rows(token_tables(features, bom_token, plan), table_index, row_index),
        plan.cu_seqlens,
        max_seqlen,
        sources,
    )


def token_tables(
    features: torch.Tensor, bom_token: torch.Tensor | None, plan: TokenPlan
) -> list[torch.Tensor]:
    """The gather tables of a plan, in table order: patch rows ``(B·V, F)``, global rows,
    BOM row, and (with ``averaging``) mask means."""
    batch, num_tokens, width = features.shape
    patch = features.reshape(batch * num_tokens, width)
    if plan.layout.global_view == "mean":
        global_rows = features.mean(dim=1)
    else:
        global_rows = features.new_zeros(1, width)
    bom = bom_token if bom_token is not None else features.new_zeros(1, width)
    tables = [patch, global_rows, bom]
    if plan.layout.averaging:
        tables.append(_mask_means(features, plan))
    return tables
