"""Adapter for the reference OG-LLaVA code base (``MatteoNulli/og_llava``).

``use_ogfusion_in_reference_model(model)`` replaces the model's ``encode_images(images,
masks, masking=False)`` — vision tower, mask embedder, projector — with the vision tower
followed by :class:`ogkernels.OGFusion` in its reference-compatible padded mode. The
connector *shares* the model's ``mm_projector`` and BOM parameter (no copies), so
checkpoints, optimisers and LoRA set-ups keep working unchanged. The reference code base is
not a dependency: the model only needs ``get_model()`` returning an object with
``get_vision_tower()``, ``mm_projector`` and ``mm_bom_mask_token``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..fusion import OGFusion


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


def use_ogfusion_in_reference_model(model: Any, **ogfusion_options) -> OGFusion:
    """Route the reference model's ``encode_images`` through OGFusion; returns the connector.

    ``ogfusion_options`` are :class:`OGFusion` keyword options (the defaults reproduce the
    reference's hard-coded flags). The returned connector is not registered as a submodule,
    so the model's state dict keeps its reference names.
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
        return fusion(features, list(masks), output="padded").tokens

    encode_images.__doc__ = "encode_images through ogkernels.OGFusion (reference-compatible padded output)"
    model.encode_images = encode_images
    return fusion
