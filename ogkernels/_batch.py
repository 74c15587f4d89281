"""From a batch of per-image masks to a token plan and the tables it gathers from.

Shared by :func:`ogkernels.og_tokens`, :func:`ogkernels.tokens.og_token_lengths` and
:class:`ogkernels.OGFusion`: validation of the mask entries, one Phi call for every raw mask
of the batch, the batch gate, the token plan, the buffer size (the only host read, skipped
with a bound) and the gather tables.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from ._validation import check_finite, describe, fail, numpy_hint
from .bitmaps import MaskBitmaps
from .downsample import as_mask_image, run_phi
from .ops.host import resident
from .ops.phi import decimal_alpha
from .ops.token_plan import TokenPlan, plan_tokens
from .options import INT32_MAX, OGTokenOptions, check_cap
from .packed_masks import PackedMasks

ImageMasks = Union[torch.Tensor, PackedMasks, MaskBitmaps, None]


def as_mask_list(masks: object) -> list:
    """``masks`` as a list with one entry per image: a list/tuple as is, a batched
    ``(B, N, H, W)`` tensor (the evaluation harness's layout) as its ``B`` images."""
    if isinstance(masks, torch.Tensor) and masks.dim() == 4:
        return list(masks.unbind(0))
    if not isinstance(masks, (list, tuple)):
        fail("masks", "a list with one entry per image (or a (B, N, H, W) tensor)" + numpy_hint(masks), masks, error=TypeError)
    return list(masks)


def check_features(features: object, num_images: int, bom_token: object, argument: str = "features") -> None:
    if not isinstance(features, torch.Tensor):
        fail(argument, "a (B, V, F) tensor", features, error=TypeError)
    if features.dim() != 3:
        fail(argument, "a (B, V, F) tensor", features)
    if features.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        fail(argument, "dtype float16, bfloat16, float32 or float64", features, error=TypeError)
    if features.shape[1] < 1:
        fail(argument, "V >= 1 patch rows", features)
    if features.device.type == "meta":
        fail(argument, "a tensor with data (not on the meta device)", features)
    if num_images != features.shape[0]:
        fail("masks", f"{features.shape[0]} entries (one per image of {argument})", f"{num_images} entries")
    if bom_token is not None:
        if not isinstance(bom_token, torch.Tensor):
            fail("bom_token", "a (1, F) tensor", bom_token, error=TypeError)
        if tuple(bom_token.shape) != (1, features.shape[2]):
            fail("bom_token", f"shape (1, {features.shape[2]})", bom_token)
        if bom_token.dtype != features.dtype:
            fail("bom_token", f"dtype {features.dtype} (the dtype of {argument})", bom_token, error=TypeError)
        if bom_token.device != features.device:
            fail("bom_token", f"a tensor on {features.device} (the device of {argument})", bom_token)


def _to_device(name: str, item, device: torch.device | None):
    """Masks on the host follow CUDA features (pinned, non-blocking); other mismatches fail."""
    if device is None or item.device == device:
        return item
    if item.device.type == "cpu" and device.type == "cuda":
        if isinstance(item, torch.Tensor):
            return item.pin_memory().to(device, non_blocking=True)
        return item.to(device, non_blocking=True)
    fail(name, f"masks on {device} (the device of the features) or on the CPU", f"{type(item).__name__} on {item.device}")


def _check_bitmaps(name: str, item: MaskBitmaps, shape: tuple[int, int], options: OGTokenOptions) -> None:
    grid, alpha, mode, frame = item.parameters()
    same_grid = grid == shape if options.mode == "patch" else grid[0] * grid[1] == shape[0] * shape[1]
    if not (same_grid and mode == options.mode and frame == options.frame and decimal_alpha(alpha) == decimal_alpha(options.alpha)):
        fail(
            name,
            f"bitmaps made with grid={shape}, alpha={options.alpha}, mode={options.mode!r}, frame={options.frame!r} "
            "(the options in use)",
            f"MaskBitmaps made with grid={grid}, alpha={alpha}, mode={mode!r}, frame={frame!r}",
        )


def _dense_bitmaps(name: str, item: torch.Tensor, num_tokens: int) -> torch.Tensor:
    if item.shape[1] != num_tokens:
        fail(name, f"downsampled bitmaps (N, V) with V = {num_tokens}", item)
    if item.dtype == torch.bool:
        return item.view(torch.uint8) != 0
    if item.dtype.is_complex or (item.numel() and not bool(((item == 0) | (item == 1)).all())):
        fail(name, "bitmap values in {0, 1}", describe(item) + " with other values")
    return item != 0


def _any_set(data: torch.Tensor) -> torch.Tensor | None:
    """0-d bool: an element of ``data`` is non-zero (any non-zero byte of a bool mask; None for
    an empty tensor)."""
    if data.numel() == 0:
        return None
    flat = data.reshape(-1)
    if flat.dtype in (torch.bool, torch.uint8) and not torch.compiler.is_compiling():
        return flat.view(torch.uint8).amax() > 0  # any non-zero byte; ~6x faster than any() on CPU
    return flat.any()  # traceable on every torch (the byte view is not on 2.11)


@dataclass
class MaskBatch:
    """``bitmaps (M, V)`` bool of every mask in image order, the masks per image, and the
    batch gate (0-d bool on the device: some raw mask has a set pixel; None when the options
    have no gate)."""

    bitmaps: torch.Tensor
    counts: list[int]
    gate_open: torch.Tensor | None


def token_bitmaps(masks: list, num_tokens: int, options: OGTokenOptions, device: torch.device | None) -> MaskBatch:
    """Validate the entries (raw ``(N, H, W)`` masks, :class:`PackedMasks`,
    :class:`MaskBitmaps`, ``(N, V)`` bitmaps or None) and downsample every raw mask of the
    batch in one call."""
    shape = options.grid_shape(num_tokens)
    raw, counts, pieces, flags = [], [], {}, []
    for i, item in enumerate(masks):
        name = f"masks[{i}]"
        if item is None:
            counts.append(0)
            continue
        if not isinstance(item, (torch.Tensor, PackedMasks, MaskBitmaps)):
            fail(name, "a mask tensor, a PackedMasks, a MaskBitmaps or None" + numpy_hint(item), item, error=TypeError)
        item = _to_device(name, item, device)
        if isinstance(item, MaskBitmaps):
            _check_bitmaps(name, item, shape, options)
            pieces[i] = item.bits
            flags.append(item.nonempty.any() if item.num_masks else None)
        elif isinstance(item, torch.Tensor) and item.dim() == 2:
            pieces[i] = _dense_bitmaps(name, item, num_tokens)
            flags.append(_any_set(pieces[i]))
        else:
            image = as_mask_image(name, item)
            raw.append((i, image))
            flags.append(_any_set(image.data))
        counts.append(pieces[i].shape[0] if i in pieces else raw[-1][1].num_masks)
    target = device if device is not None else next((p.device for p in pieces.values()), None)
    if target is None:
        target = raw[0][1].data.device if raw else torch.device("cpu")
    if raw:
        flat = run_phi([image for _, image in raw], shape, options.alpha, options.mode, options.frame)
        start = 0
        for i, image in raw:
            pieces[i] = flat[start : start + image.num_masks]
            start += image.num_masks
    ordered = [pieces[i] for i in range(len(masks)) if i in pieces]
    if not ordered:
        bitmaps = torch.zeros(0, num_tokens, dtype=torch.bool, device=target)
    else:
        bitmaps = ordered[0] if len(ordered) == 1 else torch.cat(ordered, dim=0)
    gate_open = None
    if options.gate:
        set_flags = [f for f in flags if f is not None]
        gate_open = torch.stack(set_flags).any() if set_flags else torch.zeros((), dtype=torch.bool, device=target)
    return MaskBatch(bitmaps, counts, gate_open)


def mask_score_vector(
    mask_scores: Sequence[torch.Tensor | None] | None, counts: list[int], options: OGTokenOptions, device
) -> torch.Tensor | None:
    """``(M,)`` scores in mask order for ``drop_priority="score"`` (validated)."""
    if options.budget is None or options.drop_priority != "score":
        return None
    if mask_scores is None or not isinstance(mask_scores, (list, tuple)) or len(mask_scores) != len(counts):
        fail("mask_scores", f"a list of {len(counts)} per-image score tensors for drop_priority='score'", mask_scores)
    pieces = []
    for i, (scores, n) in enumerate(zip(mask_scores, counts)):
        name = f"mask_scores[{i}]"
        if n == 0 and scores is None:
            continue
        if not isinstance(scores, torch.Tensor) or not scores.dtype.is_floating_point:
            fail(name, f"a ({n},) real floating tensor (one score per mask)" + numpy_hint(scores), scores, error=TypeError)
        if scores.shape != (n,):
            fail(name, f"a ({n},) floating tensor (one score per mask)", scores)
        _check_finite_scores(name, scores)
        pieces.append(scores.to(device=device, dtype=torch.float64))
    return torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64, device=device)


def _check_finite_scores(name: str, scores: torch.Tensor) -> None:
    """NaN would rank first and inf past every real score: both are refused. Host scores
    are read here; device scores are checked on the device (no sync)."""
    if scores.device.type == "cpu" and not torch.compiler.is_compiling():
        check_finite(name, scores)
    elif scores.numel():
        torch._assert_async(torch.isfinite(scores).all(), f"{name}: expected finite scores (no NaN or inf)")


def check_caps(options: OGTokenOptions, batch: int, num_tokens: int) -> None:
    """Caps must leave room for the global rows, which are never dropped."""
    budget, global_rows = options.budget, options.layout.global_rows(num_tokens)
    if budget is None:
        return
    if budget.max_image_tokens is not None and budget.max_image_tokens < global_rows:
        fail("max_image_tokens", f">= {global_rows} (the global rows of global_view={options.global_view!r})", budget.max_image_tokens)
    if budget.max_batch_tokens is not None and budget.max_batch_tokens < batch * global_rows:
        fail("max_batch_tokens", f">= {batch * global_rows} (B × the global rows)", budget.max_batch_tokens)


def plan_batch(
    masks: list,
    num_tokens: int,
    options: OGTokenOptions,
    mask_scores: Sequence[torch.Tensor | None] | None,
    device: torch.device | None,
) -> tuple[TokenPlan, list[int]]:
    """Downsample, clean, gate, cap and count a batch's masks: the plan and the masks per image."""
    check_caps(options, len(masks), num_tokens)
    batch = token_bitmaps(masks, num_tokens, options, device)
    scores = mask_score_vector(mask_scores, batch.counts, options, batch.bitmaps.device)
    plan = plan_tokens(batch.bitmaps, batch.counts, options.layout, scores, batch.gate_open)
    return plan, batch.counts


def _sym_max(values, default: int = 0):
    return functools.reduce(torch.sym_max, values, default)


def buffer_size(plan: TokenPlan, options: OGTokenOptions, counts: list[int], max_tokens: int | None) -> tuple[int, int]:
    """Rows of the output buffer and ``max_seqlen``.

    Without a bound: the batch's exact total and longest length, read in **one host sync**
    (the only one of ``og_tokens``/``OGFusion``). With ``max_tokens``, or token caps: static
    sizes from the bound, **no host sync** (rows past the batch's tokens are padding;
    ``max_seqlen`` is then an upper bound)."""
    layout, num_tokens = plan.layout, plan.num_tokens
    budget = layout.budget
    if max_tokens is None and budget is None:
        if plan.batch_size == 0:
            return 0, 0
        total, longest = torch.stack([plan.lengths.sum(), plan.lengths.max()]).tolist()
        if total > INT32_MAX:
            fail("masks", f"at most {INT32_MAX} tokens in a batch (int32 cu_seqlens)", f"{total} tokens")
        return total, longest
    plain_possible = [options.gate or (layout.maskless == "plain" and n == 0) for n in counts]
    fillers = int(layout.image_filling)
    per_image = [
        num_tokens if plain and n == 0 else layout.global_rows(num_tokens) + (n + fillers) * layout.segment_rows(num_tokens)
        for n, plain in zip(counts, plain_possible)
    ]
    if budget is not None and budget.max_image_tokens is not None:
        per_image = [torch.sym_min(b, budget.max_image_tokens) for b in per_image]
    per_image = [torch.sym_max(b, num_tokens) if plain else b for b, plain in zip(per_image, plain_possible)]
    if max_tokens is not None:
        check_cap("max_tokens", max_tokens)
        _check_bound(plan, max_tokens)
        rows = max_tokens
    else:
        maskless_rows = num_tokens * sum(1 for n in counts if layout.maskless == "plain" and n == 0)
        rows = budget.buffer_rows(plan.batch_size) + maskless_rows
        if options.gate:
            rows = torch.sym_max(rows, plan.batch_size * num_tokens)
    return rows, torch.sym_min(_sym_max(per_image), rows)


def _check_bound(plan: TokenPlan, max_tokens: int) -> None:
    total = plan.lengths.sum()
    if total.device.type == "cpu" and not torch.compiler.is_compiling():
        if int(total) > max_tokens:
            fail("max_tokens", f">= the batch's {int(total)} tokens", max_tokens)
    else:
        torch._assert_async(total <= max_tokens, "og_tokens: max_tokens is smaller than the batch's tokens")


def mask_means(features: torch.Tensor, plan: TokenPlan, counts: list[int]) -> torch.Tensor:
    """``averaging``: the mean of each candidate mask's selected rows ``(K, F)`` (zeros for a
    dropped mask), accumulated in float32 (float64 for float64): one batched matmul of each
    image's mask weights with its own patch rows."""
    batch, num_tokens, width = features.shape
    acc_dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    per_image = [n + int(plan.layout.image_filling) for n in counts]
    widest = max(per_image, default=0)
    starts = np.concatenate([[0], np.cumsum(per_image)[:-1]]).astype(np.int64)
    local = np.arange(sum(per_image), dtype=np.int64) - np.repeat(starts, per_image)
    local = resident(local, torch.int64, features.device, key=("local mask index", tuple(per_image)))
    selected = plan.selected.to(acc_dtype)
    weights = selected.new_zeros(batch, widest, num_tokens)
    weights.index_put_((plan.mask_image, local), selected)
    sums = torch.bmm(weights, features.to(acc_dtype))  # (B, widest, F)
    means = sums[plan.mask_image, local] / plan.token_counts.clamp(min=1).to(acc_dtype)[:, None]
    return means.to(features.dtype)


def token_tables(features: torch.Tensor, bom_token: torch.Tensor | None, plan: TokenPlan, counts: list[int]) -> list[torch.Tensor]:
    """The gather tables of a plan, in table order (``kernels/codes.py``): patch rows
    ``(B·V, F)``, global rows, the BOM row, and (with ``averaging``) the mask means."""
    batch, num_tokens, width = features.shape
    patch = features.reshape(batch * num_tokens, width)
    global_rows = features.mean(dim=1) if plan.layout.global_view == "mean" else features.new_zeros(1, width)
    bom = bom_token if bom_token is not None else features.new_zeros(1, width)
    tables = [patch, global_rows, bom]
    if plan.layout.averaging:
        tables.append(mask_means(features, plan, counts))
    return tables
