"""Token placement as the custom op ``ogkernels::place_tokens``: for every row of the output
buffer, which gather table and row it is copied from, and its ``VarlenBatch.source_index``.

Per image: its global rows (or, for a plain image, its ``V`` patch rows), then per kept mask
its BOM row and its selected patch rows in ascending token order (or their mean row). Entries
are scattered sync-free; rows past the batch's tokens stay ``NO_TABLE`` / ``PAD_ROW``, and
writes past the buffer (only possible when a caller's bound is too small) are dropped. On
CUDA one Triton program per (mask, block of tokens) writes the ranks of its selected tokens;
elsewhere a few vectorised ops.
"""

from __future__ import annotations

import torch

from ..kernels import codes
from . import launch
from .dispatch import use_triton
from .host import resident
from .token_plan import TokenPlan

SOURCE_CODES = {  # source_index of a row, by its table (the patch table keeps the row itself)
    codes.NO_TABLE: codes.PAD_ROW,
    codes.GLOBAL_TABLE: codes.GLOBAL_ROW,
    codes.BOM_TABLE: codes.BOM_ROW,
    codes.MASK_MEAN_TABLE: codes.MASK_MEAN_ROW,
}


def placement_indices(plan: TokenPlan, buffer_rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(table_index int32 (R,), row_index int64 (R,), source_index int64 (R,))`` for a
    buffer of ``R`` rows: what :func:`~ogkernels.ops.gather_rows.gather_rows` copies where."""
    layout = plan.layout
    return torch.ops.ogkernels.place_tokens(
        plan.candidates,
        plan.state,
        plan.mask_image,
        plan.mask_offsets,
        plan.cu_seqlens,
        plan.plain,
        buffer_rows,
        plan.num_tokens,
        layout.global_view,
        layout.bom,
        layout.averaging,
    )


@torch.library.custom_op("ogkernels::place_tokens", mutates_args=())
def place_tokens(
    candidates: torch.Tensor,
    state: torch.Tensor,
    mask_image: torch.Tensor,
    mask_offsets: torch.Tensor,
    cu_seqlens: torch.Tensor,
    plain: torch.Tensor,
    buffer_rows: int,
    num_tokens: int,
    global_view: str,
    bom: bool,
    averaging: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """See :func:`placement_indices` (the arguments are the fields of a :class:`TokenPlan`)."""
    args = (candidates, state, mask_image, mask_offsets, cu_seqlens, plain, buffer_rows, num_tokens, global_view, bom, averaging)
    if use_triton(candidates.device):
        return _place_triton(*args)
    return _place_torch(*args)


@place_tokens.register_fake
def _(candidates, state, mask_image, mask_offsets, cu_seqlens, plain, buffer_rows, num_tokens, global_view, bom, averaging):
    new = candidates.new_empty
    return new(buffer_rows, dtype=torch.int32), new(buffer_rows, dtype=torch.int64), new(buffer_rows, dtype=torch.int64)


def source_index(table_index: torch.Tensor, row_index: torch.Tensor) -> torch.Tensor:
    """``VarlenBatch.source_index`` from placement indices (patch rows keep ``b·V + v``)."""
    offset = -min(SOURCE_CODES)  # tables indexed from NO_TABLE = -1
    table = [0] * (offset + max(SOURCE_CODES) + 1)
    for t, code in SOURCE_CODES.items():
        table[t + offset] = code
    lookup = resident(table, torch.int64, row_index.device, key=("source codes",))
    special = lookup.index_select(0, (table_index.to(torch.int64) + offset).clamp(min=0))
    return torch.where(table_index == codes.PATCH_TABLE, row_index, special)


def _place_torch(candidates, state, mask_image, mask_offsets, cu_seqlens, plain, buffer_rows, num_tokens, global_view, bom, averaging):
    device = state.device
    dummy = buffer_rows  # writes that are not placed go to an extra slot, cut off at the end
    table_index = torch.full((buffer_rows + 1,), codes.NO_TABLE, dtype=torch.int32, device=device)
    row_index = torch.zeros(buffer_rows + 1, dtype=torch.int64, device=device)

    def place(positions: torch.Tensor, valid: torch.Tensor, table: int, rows: torch.Tensor):
        positions = torch.where(valid & (positions < buffer_rows), positions, dummy).reshape(-1)
        table_index.scatter_(0, positions, torch.full_like(positions, table, dtype=torch.int32))
        row_index.scatter_(0, positions, rows.expand_as(valid).reshape(-1))

    image_starts = cu_seqlens[:-1].to(torch.int64)
    batch = image_starts.numel()
    images = torch.arange(batch, device=device)
    token = torch.arange(num_tokens, device=device)
    patch_images = plain | (global_view == "full")
    place(image_starts[:, None] + token, patch_images[:, None].expand(batch, num_tokens), codes.PATCH_TABLE,
          images[:, None] * num_tokens + token)  # fmt: skip
    if global_view == "mean":
        place(image_starts, ~plain, codes.GLOBAL_TABLE, images)
    keep = state != codes.DROPPED
    if keep.numel():
        if bom:
            place(mask_offsets, keep, codes.BOM_TABLE, torch.zeros_like(mask_offsets))
        if averaging:
            masks = torch.arange(keep.numel(), device=device)
            place(mask_offsets + int(bom), keep, codes.MASK_MEAN_TABLE, masks)
        else:
            selected = (candidates | (state == codes.KEPT_ALL_TOKENS)[:, None]) & keep[:, None]
            rank = torch.cumsum(selected.to(torch.int64), dim=1) - 1
            positions = mask_offsets[:, None] + int(bom) + rank
            rows = mask_image[:, None] * num_tokens + token
            place(positions, selected, codes.PATCH_TABLE, rows)
    table_index, row_index = table_index[:buffer_rows], row_index[:buffer_rows]
    return table_index, row_index, source_index(table_index, row_index)


def place_tokens_launch(candidates, state, mask_image, mask_offsets, cu_seqlens, plain, table_index, row_index,
                        sources, num_tokens, global_view, bom, averaging) -> launch.Launch:  # fmt: skip
    from ..kernels.token_plan import place_tokens_kernel

    num_masks = state.numel()
    settings = launch.place_tokens(num_tokens)
    return launch.Launch.of(
        place_tokens_kernel,
        (num_masks + plain.numel(), launch.cdiv(num_tokens, settings["BLOCK_V"])),
        {
            "bitmaps_ptr": candidates.view(torch.uint8),
            "state_ptr": state,
            "mask_image_ptr": mask_image,
            "offsets_ptr": mask_offsets,
            "cu_seqlens_ptr": cu_seqlens,
            "plain_ptr": plain.view(torch.uint8),
            "table_ptr": table_index,
            "row_ptr": row_index,
            "source_ptr": sources,
            "num_masks": num_masks,
            "num_tokens": num_tokens,
            "buffer_rows": table_index.numel(),
        },
        settings,
        GLOBAL_VIEW=codes.GLOBAL_VIEW_CODES[global_view],
        BOM=int(bom),
        AVERAGING=averaging,
    )


def _place_triton(candidates, state, mask_image, mask_offsets, cu_seqlens, plain, buffer_rows, num_tokens, global_view, bom, averaging):
    device = state.device
    table_index = torch.full((buffer_rows,), codes.NO_TABLE, dtype=torch.int32, device=device)
    row_index = torch.zeros(buffer_rows, dtype=torch.int64, device=device)
    sources = torch.full((buffer_rows,), codes.PAD_ROW, dtype=torch.int64, device=device)
    if buffer_rows:
        place_tokens_launch(candidates.contiguous(), state, mask_image, mask_offsets, cu_seqlens, plain, table_index,
                            row_index, sources, num_tokens, global_view, bom, averaging).run()  # fmt: skip
    return table_index, row_index, sources
