"""Adapter for the reference OG-LLaVA code base (``MatteoNulli/og_llava``).

``use_ogfusion_in_reference_model(model)`` replaces the model's ``encode_images(images,
masks, masking=False)`` — vision tower, mask embedder, projector — with the vision tower
followed by :class:`ogkernels.OGFusion` in its reference-compatible padded mode. The
connector *shares* the model's ``mm_projector`` and BOM parameter (no copies), so
checkpoints, optimisers and LoRA set-ups keep working unchanged. The reference code base is
not a dependency: the model only needs ``get_model()`` returning an object with
``get_vision_tower()``, ``mm_projector`` and ``mm_bom_mask_token``.

Two things the reference does around its connector are kept: masks may come from the host
while the model runs on CUDA (its evaluation passes CPU masks; they are moved with
:func:`masks_to_device`), and with ``custom_rotary_embedding`` set on ``get_model()`` the
rotary embedding receives the reference's ``group_ranges`` (:func:`reference_group_ranges`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import torch
from torch import nn

from ..fusion import OGFusion
from ..varlen import BOM_ROW, VarlenBatch


def masks_to_device(masks: Any, device: torch.device) -> Any:
    """``masks`` (a tensor, or a list of per-image tensors / ``PackedMasks`` / ``MaskBitmaps``
    / None) with every tensor on ``device``. Host tensors bound for CUDA are staged in pinned
    memory and copied without blocking the host (the caching host allocator keeps the staging
    buffer alive until the copy has run)."""
    if isinstance(masks, (list, tuple)):
        return [masks_to_device(item, device) for item in masks]
    if isinstance(masks, torch.Tensor):
        if masks.device == device:
            return masks
        if masks.device.type == "cpu" and device.type == "cuda":
            masks = masks.pin_memory()
        return masks.to(device, non_blocking=True)
    if dataclasses.is_dataclass(masks) and not isinstance(masks, type):
        moved = {
            f.name: masks_to_device(getattr(masks, f.name), device)
            for f in dataclasses.fields(masks)
            if isinstance(getattr(masks, f.name), torch.Tensor)
        }
        return dataclasses.replace(masks, **moved)
    return masks


def reference_group_ranges(tokens: VarlenBatch) -> list[list[tuple[int, int]]]:
    """The reference's ``group_ranges`` (its ``batch_ranges``) of a BOM layout, per image.

    Groups are the global row(s) (when present) and each mask's ``[BOM, rows…]``; ends are
    cumulative lengths, the first start is 0 and every later start is the previous end + 2 —
    the reference's rule, off-by-one quirks included (``ogkernels/reference/BEHAVIOUR.md`` §7). Read from
    ``tokens.source_index`` (one host read)."""
    if tokens.source_index is None:
        raise ValueError("tokens: expected a VarlenBatch with source_index (OGFusion's output), got none")
    bounds = tokens.cu_seqlens.tolist()
    is_bom = (tokens.source_index == BOM_ROW).tolist()
    out = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        if end == start:
            out.append([])
            continue
        cuts = [i - start for i in range(start, end) if is_bom[i]]
        edges = ([0] if cuts[:1] != [0] else []) + cuts + [end - start]
        ranges: list[tuple[int, int]] = []
        for group_end in edges[1:]:
            ranges.append((ranges[-1][1] + 2 if ranges else 0, group_end))
        out.append(ranges)
    return out


def _bom_parameter(model: Any) -> nn.Parameter:
    for owner in (model.get_model(), model):
        holder = getattr(owner, "mm_bom_mask_token", None)
        if isinstance(holder, nn.Parameter):
            return holder
        if isinstance(holder, nn.Module) and isinstance(getattr(holder, "mm_bom_mask_token", None), nn.Parameter):
            return holder.mm_bom_mask_token
    raise ValueError(
        "model: expected a reference OG-LLaVA model with mm_bom_mask_token (a BOMMaskToken "
        "module or a (1, F) parameter) on get_model() or the model, found none"
    )


def use_ogfusion_in_reference_model(model: Any, **ogfusion_options: Any) -> OGFusion:
    """Route the reference model's ``encode_images`` through OGFusion; returns the connector.

    ``ogfusion_options`` are :class:`OGFusion` keyword options (the defaults reproduce the
    reference's hard-coded flags). The returned connector is not registered as a submodule,
    so the model's state dict keeps its reference names. With
    ``model.get_model().custom_rotary_embedding`` true, each OG-Fusion call sets
    ``get_model().rotary_emb.group_ranges`` as the reference does (BOM layouts only).
    """
    inner = model.get_model()
    if not hasattr(inner, "get_vision_tower") or not isinstance(getattr(inner, "mm_projector", None), nn.Sequential):
        raise ValueError(
            "model: expected get_model() with get_vision_tower() and an nn.Sequential mm_projector"
        )
    fusion = OGFusion.from_modules(inner.mm_projector, _bom_parameter(model), **ogfusion_options)

    def encode_images(images: torch.Tensor, masks: Any, masking: bool = False) -> torch.Tensor:
        features = inner.get_vision_tower()(images)
        if not masking or masks is None:
            return inner.mm_projector(features)
        features = features.to(images.dtype).to(images.device)
        masks = masks_to_device(list(masks), features.device)
        if not getattr(inner, "custom_rotary_embedding", False):
            return fusion(features, masks, output="padded").tokens
        return _padded_with_ranges(fusion, features, masks, inner)

    encode_images.__doc__ = "encode_images through ogkernels.OGFusion (reference-compatible padded output)"
    model.encode_images = encode_images
    return fusion


def _plain_path(tokens: VarlenBatch, batch: int, num_tokens: int) -> bool:
    """Did every image take the plain path (its ``V`` patch rows, in order)?"""
    rows = batch * num_tokens
    source = tokens.source_index
    return (
        source is not None
        and tokens.total_tokens == rows
        and bool((tokens.lengths == num_tokens).all())
        and torch.equal(source[:rows], torch.arange(rows, device=source.device))
    )


def _padded_with_ranges(fusion: OGFusion, features: torch.Tensor, masks: Sequence[Any], inner: Any) -> torch.Tensor:
    """The padded block, and ``inner.rotary_emb.group_ranges`` set when OG-Fusion runs (the
    reference sets them only on its OG-Fusion branch, not on the plain path)."""
    if fusion.options.no_masktoken:
        raise ValueError(
            "custom_rotary_embedding: expected a connector with BOM rows (they mark the mask groups), "
            "got no_masktoken=True"
        )
    tokens = fusion(features, masks)
    if not _plain_path(tokens, features.shape[0], features.shape[1]):
        inner.rotary_emb.group_ranges = reference_group_ranges(tokens)
    zero_row = fusion.mm_projector(tokens.values.new_zeros(1, fusion.vision_dim))
    return tokens.to_padded(zero_row[0])
