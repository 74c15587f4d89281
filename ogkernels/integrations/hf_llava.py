"""Hugging Face LLaVA with OG-Fusion and padding-free packed batches.

:func:`apply_ogfusion_to_llava` equips a ``transformers`` ``LlavaForConditionalGeneration``
(5.x) in place: OG-Fusion replaces ``model.model.multi_modal_projector`` (its weights copied
into ``OGFusion.mm_projector`` when shapes match) and the model's ``forward`` accepts ``masks``
and packed batches, as :class:`~ogkernels.integrations.llava_collator.OGLlavaCollator` makes
them::

    model = LlavaForConditionalGeneration.from_pretrained(path, attn_implementation="flash_attention_2")
    apply_ogfusion_to_llava(model)                      # OGFusion(vision_dim, llm_dim, **options)
    collate = OGLlavaCollator(model.config.image_token_id, grid=576, tokenizer=tokenizer)
    out = model(**collate(samples))                     # out.loss, out.logits (1, S, vocab)

A packed batch is one row of ``S`` tokens (``input_ids (1, S)`` with one ``image_token_id`` per
visual token), ``position_ids`` restarting at 0 per sample, ``labels``, and the flash-attn
kwargs ``cu_seq_lens_q/k`` (int32) / ``max_length_q/k``. The forward runs the vision tower on
``pixel_values``, OG-Fusion on its features and ``masks`` (a ``VarlenBatch`` of ``T`` tokens),
writes text embeddings and image tokens into ``inputs_embeds`` in one ``gather_rows`` pass,
and calls the language model with ``attention_mask=None`` and ``use_cache=False``:
``"flash_attention_2"`` then runs ``flash_attn_varlen_func`` on ``cu_seq_lens``; ``"sdpa"`` /
``"eager"`` (CPU) isolate the samples through the packed ``position_ids``; and
``"ogkernels_varlen"`` (:mod:`ogkernels.integrations.hf_attention`) runs
:func:`ogkernels.varlen_attention`. Un-packed ``(B, T)`` batches with an ``attention_mask``
still work (the placeholders are filled the same way).
"""

from __future__ import annotations

import logging
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._validation import fail
from ..packing import REFERENCE_IMAGE_TOKEN_ID, merge_image_tokens
from ..reference.merge import prepare_inputs_labels_for_multimodal
from ..varlen import VarlenBatch

logger = logging.getLogger(__name__)


def apply_ogfusion_to_llava(
    model: nn.Module,
    *,
    connector: nn.Module | None = None,
    copy_projector: bool = True,
    **ogfusion_options: Any,
) -> nn.Module:
    """Equip a ``LlavaForConditionalGeneration`` with OG-Fusion, in place; returns ``model``.

    Args:
        model: a transformers 5.x ``LlavaForConditionalGeneration``.
        connector: the connector to install; default ``ogkernels.OGFusion(vision_dim, llm_dim,
            **ogfusion_options)`` with ``vision_dim = vision hidden size × feature layers`` and
            ``llm_dim`` the text hidden size. Any module with an ``mm_projector``
            (``Linear, GELU, Linear``) and ``forward(features (B, V, F), masks) -> VarlenBatch``.
        copy_projector: copy ``multi_modal_projector.linear_1/linear_2`` into
            ``connector.mm_projector[0]/[2]`` when the shapes match (a missing bias copies as 0).
            Skipped with a warning when the projector's activation is not exact GELU.
        **ogfusion_options: forwarded to ``OGFusion`` (only without ``connector``).

    The connector is moved to the projector's device and dtype and becomes
    ``model.model.multi_modal_projector``; ``model.forward`` becomes
    :func:`ogfusion_llava_forward`. Load checkpoints saved from an equipped model after
    calling this (their connector keys are ``model.multi_modal_projector.mm_projector.*`` and
    ``model.multi_modal_projector.mm_bom_mask_token``).
    """
    llava = getattr(model, "model", None)
    if not all(hasattr(llava, name) for name in ("vision_tower", "multi_modal_projector", "language_model")):
        fail("model", "a transformers LlavaForConditionalGeneration", type(model).__name__, error=TypeError)
    if getattr(model, "ogfusion_applied", False):
        fail("model", "a LLaVA model not yet equipped with OG-Fusion", "one already equipped")
    config = model.config
    old = llava.multi_modal_projector
    if connector is None:
        from ..fusion import OGFusion

        layers = config.vision_feature_layer
        vision_dim = config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
        connector = OGFusion(vision_dim, config.text_config.hidden_size, **ogfusion_options)
    elif ogfusion_options:
        fail("ogfusion_options", "no options when a connector is given", sorted(ogfusion_options), error=TypeError)
    if not isinstance(getattr(connector, "mm_projector", None), nn.Sequential):
        fail("connector", "a module with an mm_projector (Linear, GELU, Linear)", type(connector).__name__, error=TypeError)
    reference = next(old.parameters(), None)
    if copy_projector:
        copy_llava_projector(old, connector.mm_projector, config)
    if reference is not None:
        connector.to(device=reference.device, dtype=reference.dtype)
    llava.multi_modal_projector = connector
    model.forward = types.MethodType(ogfusion_llava_forward, model)
    model.ogfusion_applied = True
    return model


def copy_llava_projector(projector: nn.Module, mm_projector: nn.Sequential, config: Any) -> bool:
    """Copy ``LlavaMultiModalProjector`` weights into a ``(Linear, GELU, Linear)`` projector.

    Returns True when copied; False (with a warning) when shapes or the activation differ."""
    act = getattr(config, "projector_hidden_act", "gelu")
    first, last = mm_projector[0], mm_projector[2]
    pairs = ((projector.linear_1, first), (projector.linear_2, last))
    if act != "gelu":
        logger.warning("projector_hidden_act=%r is not exact GELU: OG-Fusion keeps its own projector", act)
        return False
    if any(src.weight.shape != dst.weight.shape for src, dst in pairs):
        logger.warning(
            "projector shapes differ (%s vs %s): OG-Fusion keeps its own projector",
            [tuple(s.weight.shape) for s, _ in pairs],
            [tuple(d.weight.shape) for _, d in pairs],
        )
        return False
    with torch.no_grad():
        for src, dst in pairs:
            dst.weight.copy_(src.weight)
            if dst.bias is not None:
                if src.bias is not None:
                    dst.bias.copy_(src.bias)
                else:
                    dst.bias.zero_()
    return True


def llava_vision_features(model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """Patch features ``(B, V, F)`` of ``pixel_values (B, C, H, W)``, selected as LLaVA does
    (``config.vision_feature_layer``; ``"default"`` strategy drops the CLS row) and before
    any projector."""
    config = model.config
    tower = model.model.vision_tower
    dtype = next(tower.parameters()).dtype
    out = tower(pixel_values.to(dtype), output_hidden_states=True, return_dict=True)
    layers = config.vision_feature_layer
    chosen = [layers] if isinstance(layers, int) else list(layers)
    pieces = [out.hidden_states[i] for i in chosen]
    if config.vision_feature_select_strategy == "default":
        pieces = [p[:, 1:] for p in pieces]
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


def image_tokens_for(model: nn.Module, pixel_values: torch.Tensor, masks: Any) -> VarlenBatch:
    """The connector's tokens for a batch of images: ``VarlenBatch (T, llm_dim)``."""
    features = llava_vision_features(model, pixel_values)
    if masks is not None:
        masks = [None if m is None else m.to(features.device) for m in masks]
    tokens = model.model.multi_modal_projector(features, masks)
    if not isinstance(tokens, VarlenBatch):
        fail("model.model.multi_modal_projector", "a connector returning a VarlenBatch", tokens, error=TypeError)
    return tokens


def packed_position_ids(cu_seq_lens: torch.Tensor) -> torch.Tensor:
    """``(1, S)`` positions restarting at 0 at every offset of ``cu_seq_lens (B+1,)``."""
    cu = cu_seq_lens.long()
    lengths = cu[1:] - cu[:-1]
    starts = torch.repeat_interleave(cu[:-1], lengths)
    return (torch.arange(starts.numel(), device=cu.device) - starts)[None]


def ogfusion_llava_forward(
    self: nn.Module,
    input_ids: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    masks: Any = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    past_key_values: Any = None,
    inputs_embeds: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    use_cache: bool | None = None,
    logits_to_keep: int | torch.Tensor = 0,
    **kwargs: Any,
) -> Any:
    """The forward of an equipped LLaVA (bound by :func:`apply_ogfusion_to_llava`).

    Args:
        input_ids: ``(1, S)`` packed (or ``(B, T)``) ids with one ``config.image_token_id`` per
            image token, images in order.
        pixel_values: ``(n_images, C, H, W)`` or None.
        masks: per image ``(N_i, H_i, W_i)`` masks / ``PackedMasks`` / None, or None: passed to
            the connector (no non-empty mask in the batch → the plain LLaVA path, V tokens per
            image).
        position_ids, labels: ``(1, S)`` for packed batches.
        cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k (in ``kwargs``): the packed
            layout. With them the language model runs with ``attention_mask=None``,
            ``use_cache=False`` (and position ids derived from ``cu_seq_lens_q`` when absent).
        attention_mask, past_key_values, use_cache, inputs_embeds: un-packed use (generation).

    Returns:
        ``LlavaCausalLMOutputWithPast``: ``loss`` (mean over supervised tokens), ``logits``,
        ``image_hidden_states`` = the connector's token rows ``(T, llm_dim)``.
    """
    from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

    if (input_ids is None) == (inputs_embeds is None):
        fail("input_ids", "exactly one of input_ids and inputs_embeds", "both" if input_ids is not None else "neither")
    image_tokens = None
    if pixel_values is not None:
        if input_ids is None:
            fail("input_ids", "token ids with image placeholders when pixel_values is given", "None")
        image_tokens = image_tokens_for(self, pixel_values, masks)
    if inputs_embeds is None:
        inputs_embeds = merge_image_tokens(
            input_ids, image_tokens, self.get_input_embeddings(), self.config.image_token_id
        )

    packed = kwargs.get("cu_seq_lens_q") is not None
    if packed:
        if attention_mask is not None:
            fail("attention_mask", "None for a packed batch (cu_seq_lens_q given)", attention_mask)
        if inputs_embeds.shape[0] != 1:
            fail("input_ids", "one packed row (1, S) with cu_seq_lens_q", inputs_embeds)
        if position_ids is None:
            position_ids = packed_position_ids(kwargs["cu_seq_lens_q"])
        use_cache, past_key_values = False, None

    outputs = self.model.language_model(
        inputs_embeds=inputs_embeds,
        attention_mask=attention_mask,
        position_ids=position_ids,
        past_key_values=past_key_values,
        use_cache=use_cache,
        **kwargs,
    )
    hidden = outputs.last_hidden_state
    if isinstance(logits_to_keep, int):
        hidden = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
    else:
        hidden = hidden[:, logits_to_keep]
    logits = self.lm_head(hidden)
    loss = None
    if labels is not None:
        loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
    return LlavaCausalLMOutputWithPast(
        loss=loss,
        logits=logits,
        past_key_values=outputs.past_key_values,
        hidden_states=outputs.hidden_states,
        attentions=outputs.attentions,
        image_hidden_states=None if image_tokens is None else image_tokens.values,
    )


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
    """The reference OG-LLaVA step on a transformers LLaVA's tower and language model.

    ``connector``: a :class:`ogkernels.reference.ReferenceOGFusion` (padded ``(B, L_max, D)``
    block, pad rows = ``MLP(0)``); the merge is
    :func:`ogkernels.reference.merge.prepare_inputs_labels_for_multimodal` (§9): every image
    spliced with all ``L_max`` rows, then the batch right-padded. ``input_ids (B, T)`` carry
    ``image_token_index`` (-200) where the image goes. The baseline of the tests and benchmarks.
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


def reference_connector_like(connector: nn.Module) -> nn.Module:
    """A :class:`ogkernels.reference.ReferenceOGFusion` holding ``connector``'s projector and
    BOM values (same dtype and device): the baseline twin of an installed connector."""
    from ..reference import ReferenceOGFusion

    first = connector.mm_projector[0]
    twin = ReferenceOGFusion(first.in_features, first.out_features).to(first.weight.device, first.weight.dtype)
    with torch.no_grad():
        twin.mm_projector.load_state_dict(connector.mm_projector.state_dict())
        twin.mm_bom_mask_token.mm_bom_mask_token.copy_(connector.mm_bom_mask_token)
    return twin
