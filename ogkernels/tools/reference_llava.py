"""The reference OG-LLaVA step on a Hugging Face LLaVA: the baseline of the tests, the benchmarks
and the main job's ``--baseline``.

The reference connector (:class:`ogkernels.reference.ReferenceOGFusion`: a padded
``(B, L_max, D)`` block, pad rows ``MLP(0)``) followed by the reference merge
(:func:`ogkernels.reference.merge.prepare_inputs_labels_for_multimodal`: every image spliced
with all ``L_max`` rows, then the batch right-padded), on a transformers LLaVA's vision tower
and language model. Kept out of :mod:`ogkernels.integrations` so the library never imports the
reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..integrations.hf_llava import llava_vision_features
from ..packing import REFERENCE_IMAGE_TOKEN_ID
from ..reference import ReferenceOGFusion
from ..reference.merge import prepare_inputs_labels_for_multimodal


@dataclass
class ReferenceOutput:
    """What :func:`reference_llava_forward` returns: ``loss`` (mean over supervised tokens),
    ``logits (B, S_max, vocab)``, merged ``labels (B, S_max)``, ``attention_mask`` or None,
    and ``image_rows``: the visual rows each sample received (``L_max`` for every image)."""

    loss: torch.Tensor | None
    logits: torch.Tensor
    labels: torch.Tensor | None
    attention_mask: torch.Tensor | None
    image_rows: int


def reference_llava_forward(
    model: nn.Module,
    connector: nn.Module,
    pixel_values: torch.Tensor,
    masks: Any,
    input_ids: torch.Tensor,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    *,
    image_token_index: int = REFERENCE_IMAGE_TOKEN_ID,
    model_max_length: int | None = None,
) -> ReferenceOutput:
    """The reference step: ``connector`` (a :class:`ReferenceOGFusion`) on ``model``'s patch
    features, the reference merge, then ``model``'s language model and head.

    ``input_ids (B, T)`` carry ``image_token_index`` (-200) where the image goes; ``model`` is
    any transformers LLaVA (plain or OG-Fusion: only its tower, language model and head run).
    """
    features = llava_vision_features(model, pixel_values)
    block, _ = connector(features, masks)
    _, position_ids, attention, _, embeds, merged_labels = prepare_inputs_labels_for_multimodal(
        input_ids,
        None,
        attention_mask,
        None,
        labels,
        block,
        model.get_input_embeddings(),
        image_token_index=image_token_index,
        model_max_length=model_max_length,
    )
    out = model.model.language_model(
        inputs_embeds=embeds, attention_mask=attention, position_ids=position_ids, use_cache=False
    )
    logits = model.lm_head(out.last_hidden_state)
    loss = None
    if merged_labels is not None:
        loss = model.loss_function(logits=logits, labels=merged_labels, vocab_size=model.config.text_config.vocab_size)
    return ReferenceOutput(loss, logits, merged_labels, attention, block.shape[1])


def reference_connector_like(connector: nn.Module) -> ReferenceOGFusion:
    """A :class:`ReferenceOGFusion` holding ``connector``'s projector and BOM values (same
    dtype and device): the baseline twin of an installed connector."""
    first = connector.mm_projector[0]
    twin = ReferenceOGFusion(first.in_features, first.out_features).to(first.weight.device, first.weight.dtype)
    with torch.no_grad():
        twin.mm_projector.load_state_dict(connector.mm_projector.state_dict())
        twin.mm_bom_mask_token.mm_bom_mask_token.copy_(connector.mm_bom_mask_token)
    return twin


__all__ = ["ReferenceOutput", "reference_connector_like", "reference_llava_forward"]
