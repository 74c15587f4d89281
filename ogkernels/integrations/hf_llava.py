"""Hugging Face LLaVA with OG-Fusion: a model class of its own and padding-free packed batches.

:class:`OGLlavaForConditionalGeneration` is a ``LlavaForConditionalGeneration`` whose
``model.multi_modal_projector`` is an :class:`ogkernels.OGFusion`, with its own config class
(:class:`OGLlavaConfig`, ``model_type="og_llava"``) holding the connector's settings
(``og_options`` = ``OGTokenOptions.to_dict()``, ``og_projection``). Importing this
module registers both with ``AutoConfig``, ``AutoModelForImageTextToText``,
``AutoModelForPreTraining``, ``AutoModelForMultimodalLM`` and ``AutoProcessor``
(:class:`~ogkernels.integrations.hf_processor.OGLlavaProcessor`)::

    model = apply_ogfusion_to_llava(LlavaForConditionalGeneration.from_pretrained(path))
    model.save_pretrained(out)                                   # config.json holds og_options
    model = AutoModelForImageTextToText.from_pretrained(out)     # the same class, the same logits

``save_pretrained`` writes the module's own parameter names (no legacy renaming), so
``Trainer`` resumes restore every weight; ``from_pretrained`` also reads plain LLaVA
checkpoints (``linear_1/2`` become the connector's ``mm_projector.0/2``; the BOM starts as
``randn``, as in the reference).

The forward takes ``masks`` (one entry per image) and either ordinary ``(B, T)`` batches
(processor output, generation) or one packed row, as
:class:`~ogkernels.integrations.llava_collator.OGLlavaCollator` makes it: ``input_ids (1, S)``
with one ``image_token_id`` per visual token, ``position_ids`` restarting at 0 per sample,
``labels``, and the flash-attn kwargs ``cu_seq_lens_q/k`` (int32) / ``max_length_q/k``. Packed
rows run the language model with ``attention_mask=None`` and ``use_cache=False``; the model's
attention for them is ``"ogkernels_varlen"``
(:mod:`~ogkernels.integrations.hf_attention`) unless the user chose one. ``generate`` works with
greedy, sampling and beam search (masks expanded with the beams); decode steps embed a
generated image id as an ordinary token, as stock LLaVA does.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
import transformers
from torch import nn
from transformers import AutoConfig, AutoProcessor, LlavaConfig, LlavaForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import LlavaCausalLMOutputWithPast

from .._validation import check_choice, check_int, fail
from ..fusion import PROJECTION_ORDERS, OGFusion
from ..ops.index import position_ids_from_cu_seqlens
from ..options import OGTokenOptions
from ..packing import merge_image_tokens
from ..varlen import VarlenBatch
from .hf_processor import OGLlavaProcessor
from .og_llava import masks_to_device

logger = logging.getLogger(__name__)

MODEL_TYPE = "og_llava"
PACKED_ATTENTION = "ogkernels_varlen"
IMAGE_TOKEN_TYPE = 1  # transformers' mm_token_type_ids value for image tokens
PARKED_IMAGE_ID = -1
AUTO_MODEL_CLASSES = ("AutoModelForImageTextToText", "AutoModelForPreTraining", "AutoModelForMultimodalLM")


class OGLlavaConfig(LlavaConfig):
    """``LlavaConfig`` plus the connector: ``og_options`` (``OGTokenOptions.to_dict()``;
    None reads as the defaults) and ``og_projection`` (``OGFusion(projection=)``)."""

    model_type = MODEL_TYPE
    og_options: dict | None = None
    og_projection: str = "auto"

    def __post_init__(self, **kwargs: Any) -> None:
        super().__post_init__(**kwargs)
        self.set_connector(OGTokenOptions.from_dict(self.og_options or {}), self.og_projection)

    def set_connector(self, options: OGTokenOptions, projection: str) -> None:
        """Store a connector's settings (validated)."""
        if not isinstance(options, OGTokenOptions):
            fail("options", "an OGTokenOptions", options, error=TypeError)
        self.og_options = options.to_dict()
        self.og_projection = check_choice("og_projection", projection, PROJECTION_ORDERS)

    @property
    def og_token_options(self) -> OGTokenOptions:
        return OGTokenOptions.from_dict(self.og_options)

    @classmethod
    def from_llava_config(
        cls,
        config: LlavaConfig,
        options: OGTokenOptions | None = None,
        *,
        projection: str = "auto",
        **option_overrides: Any,
    ) -> "OGLlavaConfig":
        """A new config: ``config``'s LLaVA settings and the connector's (``options`` with
        ``option_overrides``, as for ``OGFusion``); the projector activation is GELU."""
        values = config.to_dict()
        for key in ("model_type", "architectures", "projector_hidden_act"):
            values.pop(key, None)
        return cls(
            **values,
            og_options=OGTokenOptions.resolve(options, **option_overrides).to_dict(),
            og_projection=projection,
        )


def connector_for(config: LlavaConfig, **overrides: Any) -> OGFusion:
    """An ``OGFusion`` sized for ``config`` (``vision hidden × feature layers → text hidden``)
    with ``overrides`` (``options``, ``projection``, option fields) or, without them, the
    settings of an :class:`OGLlavaConfig`."""
    layers = config.vision_feature_layer
    vision_dim = config.vision_config.hidden_size * (1 if isinstance(layers, int) else len(layers))
    if not overrides and isinstance(config, OGLlavaConfig):
        overrides = {"options": config.og_token_options, "projection": config.og_projection}
    return OGFusion(vision_dim, config.text_config.hidden_size, **overrides)


class OGLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """LLaVA with OG-Fusion as its connector (``model.multi_modal_projector``).

    Built from an :class:`OGLlavaConfig` (``from_pretrained``, ``_from_config``, or
    :func:`apply_ogfusion_to_llava` on a loaded ``LlavaForConditionalGeneration``). Without an
    ``attn_implementation`` chosen for the language model, it uses ``"ogkernels_varlen"``.
    """

    config_class = OGLlavaConfig
    config: OGLlavaConfig

    def __init__(self, config: OGLlavaConfig) -> None:
        if not isinstance(config, OGLlavaConfig):
            fail("config", "an OGLlavaConfig", type(config).__name__, error=TypeError)
        if getattr(config.text_config, "_attn_implementation", None) is None:
            name = packed_attention()
            if name is not None:
                config.text_config._attn_implementation = name
        if config.projector_hidden_act != "gelu":
            _warn_once(
                f"projector_hidden_act={config.projector_hidden_act!r}: OG-Fusion's projector is exact GELU, so "
                "linear_1/2 weights of a plain LLaVA checkpoint would not compute the same function"
            )
        super().__init__(config)
        self.model.multi_modal_projector = connector_for(config)
        self.post_init()

    def initialize_weights(self) -> None:
        """transformers' initialisation, then the BOM when it was not loaded: ``randn``, as the
        reference creates it (``LlavaModel``'s own initialisation, which covers the connector's
        linear layers, does not know the BOM)."""
        super().initialize_weights()
        for module in self.modules():
            bom = getattr(module, "mm_bom_mask_token", None) if isinstance(module, OGFusion) else None
            if bom is not None and not getattr(bom, "_is_hf_initialized", False):
                with torch.no_grad():
                    _init_normal(bom)
                bom._is_hf_initialized = True

    def save_pretrained(self, save_directory: Any, *args: Any, save_original_format: bool = False, **kwargs: Any) -> Any:
        """``PreTrainedModel.save_pretrained`` writing the module's own parameter names
        (``save_original_format=False``): what ``load_state_dict`` and ``Trainer`` resumes read."""
        return super().save_pretrained(save_directory, *args, save_original_format=save_original_format, **kwargs)

    # -- vision -----------------------------------------------------------------------------
    def vision_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patch features ``(B, V, F)`` of ``pixel_values (B, C, H, W)``, before the connector."""
        return llava_vision_features(self, pixel_values)

    def image_tokens(self, pixel_values: torch.Tensor, masks: Any) -> VarlenBatch:
        """The connector's rows for a batch of images, ``VarlenBatch (T, llm_dim)``; ``masks``
        (one entry per image, or None) may live on another device than the model."""
        return image_tokens_for(self, pixel_values, masks)

    def get_image_features(self, pixel_values: torch.Tensor, masks: Any = None, **kwargs: Any) -> BaseModelOutputWithPooling:
        """``pooler_output``: each image's connector rows ``(L_i, llm_dim)``."""
        tokens = self.image_tokens(pixel_values, masks)
        return BaseModelOutputWithPooling(pooler_output=list(tokens.split()))

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
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
        mm_token_type_ids: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> LlavaCausalLMOutputWithPast:
        """LLaVA's forward with OG-Fusion.

        Args:
            input_ids: ``(B, T)`` (or one packed row ``(1, S)``) with one
                ``config.image_token_id`` per connector row, images in order.
            pixel_values: ``(n_images, C, H, W)`` or None (then image ids are plain tokens).
            masks: None (the plain LLaVA path, ``V`` rows per image) or one entry per image:
                ``(N_i, H_i, W_i)`` masks, ``PackedMasks``, bitmaps or None, on any device.
            cu_seq_lens_q, cu_seq_lens_k, max_length_q, max_length_k (in ``kwargs``): a packed
                row; the language model then runs with ``attention_mask=None``,
                ``use_cache=False`` (position ids derived from ``cu_seq_lens_q`` when absent).
            attention_mask, position_ids, past_key_values, use_cache, inputs_embeds, labels,
                logits_to_keep: as in ``LlavaForConditionalGeneration``.
            mm_token_type_ids: ``(B, T)``, 1 where a placeholder is an image row (the
                processor's output; ``generate`` extends it with 0 for new tokens): an image id
                elsewhere — one the model generated — is an ordinary token.
            image_rows (in ``kwargs``): the number of image placeholders in ``input_ids``
                (``OGLlavaCollator`` returns it): the connector's buffer and the merge are then
                sized by it, with no host read (the counts are checked on the device).

        Returns:
            ``LlavaCausalLMOutputWithPast``: ``loss``, ``logits``, ``image_hidden_states`` =
            the connector's rows ``(T, llm_dim)``.
        """
        image_rows = kwargs.pop("image_rows", None)
        if image_rows is not None:
            check_int("image_rows", image_rows, minimum=1 if pixel_values is not None else 0)
        if (input_ids is None) == (inputs_embeds is None):
            fail("input_ids", "exactly one of input_ids and inputs_embeds", "both" if input_ids is not None else "neither")
        if masks is not None and pixel_values is None:
            fail("masks", "None without pixel_values (masks belong to images)", f"{type(masks).__name__}")
        image_tokens = None
        if pixel_values is not None:
            if input_ids is None:
                fail("input_ids", "token ids with image placeholders when pixel_values is given", "None")
            image_tokens = image_tokens_for(self, pixel_values, masks, max_tokens=image_rows)
        if inputs_embeds is None:
            inputs_embeds = self._embed(input_ids, image_tokens, mm_token_type_ids, image_rows)

        if kwargs.get("cu_seq_lens_q") is not None:
            if attention_mask is not None:
                fail("attention_mask", "None for a packed batch (cu_seq_lens_q given)", attention_mask)
            if inputs_embeds.shape[0] != 1:
                fail("input_ids", "one packed row (1, S) with cu_seq_lens_q", inputs_embeds)
            if position_ids is None:
                position_ids = position_ids_from_cu_seqlens(kwargs["cu_seq_lens_q"], inputs_embeds.shape[1])[None]
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

    def _embed(
        self,
        input_ids: torch.Tensor,
        image_tokens: VarlenBatch | None,
        mm_token_type_ids: torch.Tensor | None,
        image_rows: int | None = None,
    ) -> torch.Tensor:
        embed = self.get_input_embeddings()
        if image_tokens is None:
            return embed(input_ids)  # no images in this call: an image id is a plain token
        image_id = self.config.image_token_id
        if mm_token_type_ids is not None:
            # image ids outside the image rows are text: park them on an id no token has
            plain = (input_ids == image_id) & (mm_token_type_ids != IMAGE_TOKEN_TYPE)
            input_ids = torch.where(plain, PARKED_IMAGE_ID, input_ids)
            table = embed
            embed = lambda ids: table(torch.where(ids == PARKED_IMAGE_ID, image_id, ids))  # noqa: E731
        try:
            return merge_image_tokens(input_ids, image_tokens, embed, image_id, image_rows=image_rows)
        except ValueError as error:
            raise ValueError(
                f"{error}; input_ids must hold each image's OG token count for this model's connector "
                "(make them with OGLlavaProcessor.from_model(model) or OGLlavaCollator.from_model(model))"
            ) from error

    # -- generation -------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        if inputs.get("pixel_values") is None:
            inputs.pop("masks", None)  # decode steps: no images, so no masks
        return inputs

    def _expand_inputs_for_generation(
        self, expand_size: int = 1, is_encoder_decoder: bool = False, input_ids: torch.Tensor | None = None, **model_kwargs: Any
    ) -> tuple[torch.Tensor | None, dict[str, Any]]:
        masks = model_kwargs.get("masks")
        if expand_size > 1 and isinstance(masks, (list, tuple)):
            model_kwargs["masks"] = [item for item in masks for _ in range(expand_size)]  # as pixel_values
        return super()._expand_inputs_for_generation(
            expand_size=expand_size, is_encoder_decoder=is_encoder_decoder, input_ids=input_ids, **model_kwargs
        )


def _init_normal(parameter: nn.Parameter) -> None:
    try:
        from transformers import initialization
    except ImportError:  # transformers < 5
        initialization = nn.init
    initialization.normal_(parameter, mean=0.0, std=1.0)


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


@functools.lru_cache(maxsize=1)
def packed_attention() -> str | None:
    """``"ogkernels_varlen"``, registered with transformers; None (said once) if it cannot be."""
    try:
        from .hf_attention import register_varlen_attention

        return register_varlen_attention(PACKED_ATTENTION)
    except Exception as error:  # an old or unusual transformers: keep its default attention
        _warn_once(f"cannot register {PACKED_ATTENTION!r} ({error}); packed rows attend with the model's default attention")
        return None


def use_packed_attention(model: nn.Module, attn_implementation: str | None = "auto") -> str:
    """Set the language model's attention for packed rows; returns the one in use.

    ``"auto"``: ``"ogkernels_varlen"`` when the model has transformers' default ``"sdpa"``
    (which attends a packed row through one dense ``S × S`` mask); any other choice is kept.
    A name: that implementation. None: unchanged. Says once (a log line) when it cannot set it.
    """
    language_model = model.model.language_model
    current = language_model.config._attn_implementation
    if attn_implementation is None or (attn_implementation == "auto" and current != "sdpa"):
        return current
    name = packed_attention() if attn_implementation == "auto" else attn_implementation
    if name is None or name == current:
        return current
    if not language_model._can_set_attn_implementation():
        _warn_once(f"{type(language_model).__name__} cannot switch its attention to {name!r}; it keeps {current!r}")
        return current
    language_model.set_attn_implementation(name)
    if attn_implementation == "auto":
        logger.info("packed rows attend with %r instead of %r (pass attn_implementation=None to keep it)", name, current)
    return name


# ------------------------------------------------------------------------------------ equipping


def apply_ogfusion_to_llava(
    model: nn.Module,
    *,
    connector: OGFusion | None = None,
    copy_projector: bool | None = None,
    attn_implementation: str | None = "auto",
    **ogfusion_options: Any,
) -> OGLlavaForConditionalGeneration:
    """Equip a ``LlavaForConditionalGeneration`` with OG-Fusion, in place; returns it as an
    :class:`OGLlavaForConditionalGeneration` (the same object: every weight shared).

    Args:
        model: a transformers 5.x ``LlavaForConditionalGeneration``.
        connector: the ``OGFusion`` to install (e.g. ``OGFusion.from_reference_checkpoint``);
            default ``OGFusion(vision_dim, llm_dim, **ogfusion_options)`` with ``vision_dim =
            vision hidden size × feature layers`` and ``llm_dim`` the text hidden size.
        copy_projector: copy ``multi_modal_projector.linear_1/linear_2`` into
            ``connector.mm_projector[0]/[2]`` (a missing bias copies as 0; skipped with a
            warning when the shapes or the activation differ). Default: True when the
            connector is built here, False for a given ``connector`` (its weights are kept).
        attn_implementation: the language model's attention for packed rows, see
            :func:`use_packed_attention` (default ``"auto"``: ``"ogkernels_varlen"`` instead
            of the default ``"sdpa"``).
        **ogfusion_options: ``OGFusion`` keyword options (``options=``, ``projection=``,
            ``OGTokenOptions`` fields such as ``gate=``); only without ``connector``.

    The config becomes an :class:`OGLlavaConfig` holding the connector's settings, so
    ``save_pretrained`` / ``from_pretrained`` round-trip the model.
    """
    if not isinstance(model, LlavaForConditionalGeneration):
        fail("model", "a transformers LlavaForConditionalGeneration", type(model).__name__, error=TypeError)
    if isinstance(model, OGLlavaForConditionalGeneration):
        fail("model", "a LLaVA model not yet equipped with OG-Fusion", "one already equipped")
    config = model.config
    old = model.model.multi_modal_projector
    if connector is None:
        connector = connector_for(config, **ogfusion_options)
        copy_projector = True if copy_projector is None else copy_projector
    elif ogfusion_options:
        fail("ogfusion_options", "no options when a connector is given", sorted(ogfusion_options), error=TypeError)
    if not isinstance(connector, OGFusion):
        fail("connector", "an ogkernels.OGFusion (its settings go into the config)", type(connector).__name__, error=TypeError)
    if copy_projector:
        copy_llava_projector(old, connector.mm_projector, config)
    reference = next(old.parameters(), None)
    if reference is not None:
        connector.to(device=reference.device, dtype=reference.dtype)
    model.model.multi_modal_projector = connector
    config.__class__ = OGLlavaConfig  # in place: the model, its submodules and generation share it
    config.set_connector(connector.options, connector.projection)
    config.projector_hidden_act = "gelu"  # the connector's activation
    model.__class__ = OGLlavaForConditionalGeneration
    use_packed_attention(model, attn_implementation)
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


def image_tokens_for(model: nn.Module, pixel_values: torch.Tensor, masks: Any, *, max_tokens: int | None = None) -> VarlenBatch:
    """The connector's tokens for a batch of images: ``VarlenBatch (T, llm_dim)``; ``masks``
    are moved to the features' device first (pinned, non-blocking from the host).
    ``max_tokens``: a bound on the batch's rows (sizes the buffer without a host read)."""
    features = llava_vision_features(model, pixel_values)
    if masks is not None:
        masks = masks_to_device(masks, features.device)
    projector = model.model.multi_modal_projector
    tokens = projector(features, masks) if max_tokens is None else projector(features, masks, max_tokens=max_tokens)
    if not isinstance(tokens, VarlenBatch):
        fail("model.model.multi_modal_projector", "a connector returning a VarlenBatch", tokens, error=TypeError)
    return tokens


# ------------------------------------------------------------------------------------ registration


def _register() -> None:
    AutoConfig.register(MODEL_TYPE, OGLlavaConfig, exist_ok=True)
    for name in AUTO_MODEL_CLASSES:
        auto = getattr(transformers, name, None)
        if auto is not None:
            auto.register(OGLlavaConfig, OGLlavaForConditionalGeneration, exist_ok=True)
    AutoProcessor.register(OGLlavaConfig, OGLlavaProcessor, exist_ok=True)
    try:
        from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping
        from transformers.core_model_loading import WeightRenaming
    except ImportError:  # transformers without checkpoint conversion mappings
        return
    projector = [
        WeightRenaming(source_patterns=rf"multi_modal_projector\.linear_{i}\.", target_patterns=f"multi_modal_projector.mm_projector.{j}.")
        for i, j in ((1, 0), (2, 2))
    ]
    mapping = (get_checkpoint_conversion_mapping("llava") or []) + projector  # legacy LLaVA names, then the projector
    register_checkpoint_conversion_mapping(OGLlavaForConditionalGeneration.__name__, mapping, overwrite=True)


_register()

__all__ = [
    "OGLlavaConfig",
    "OGLlavaForConditionalGeneration",
    "OGLlavaProcessor",
    "apply_ogfusion_to_llava",
    "connector_for",
    "copy_llava_projector",
    "image_tokens_for",
    "llava_vision_features",
    "packed_attention",
    "use_packed_attention",
]
