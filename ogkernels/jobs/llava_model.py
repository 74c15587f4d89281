"""Models for the main job (:mod:`ogkernels.jobs.train_llava`): the tiny random LLaVA, the
attention choice, which parameters train (connector / LLM / LoRA), and the reference baseline's
connector.
"""

from __future__ import annotations

from typing import Any

import torch

from ..integrations.hf_llava import apply_ogfusion_to_llava, connector_for, copy_llava_projector
from ..reference import ReferenceOGFusion

#: LoRA on every attention and MLP projection of the language model (stage 2 of OG-LLaVA).
LORA_TARGETS = r".*language_model.*\.(q|k|v|o|gate|up|down)_proj"


def tiny_llava_config(
    *,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    text_hidden: int = 128,
    text_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 128,
) -> Any:
    """A small ``LlavaConfig``: CLIP vision tower (``(image_size / patch_size)²`` patches),
    Llama language model with grouped-query attention, ``image_token_id = vocab_size - 1``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        use_cache=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab_size - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def build_tiny_llava(attn_implementation: str = "sdpa", seed: int = 0, **config: Any) -> Any:
    """A randomly initialised tiny ``LlavaForConditionalGeneration`` (no download)."""
    from transformers import LlavaForConditionalGeneration

    register_attention(attn_implementation)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration._from_config(tiny_llava_config(**config), attn_implementation=attn_implementation)


def register_attention(name: str) -> None:
    """Make ``"ogkernels_varlen"`` known to transformers when it is the one asked for."""
    if name == "ogkernels_varlen":
        from ..integrations.hf_attention import register_varlen_attention

        register_varlen_attention()


def default_attention(device: torch.device) -> str:
    """``flash_attention_2`` on CUDA with flash-attn installed, else ``ogkernels_varlen``.

    ``sdpa`` is exact on packed batches too (transformers isolates the samples through the
    packed ``position_ids``), but it materialises one block-diagonal ``S × S`` mask over the
    whole packed row and attends densely: ``(Σ L_i)²`` work instead of ``Σ L_i²``."""
    from ..attention import flash_attn_available

    return "flash_attention_2" if device.type == "cuda" and flash_attn_available() else "ogkernels_varlen"


def num_patches(model: Any) -> int:
    """``V``, the vision tower's patch rows per image."""
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def set_trainable(model: Any, which: str) -> None:
    """``all``; ``connector`` (stage 1: projector and BOM); ``connector+llm`` (stage 2, full)."""
    for name, param in model.named_parameters():
        if which == "all":
            param.requires_grad_(True)
        elif which == "connector":
            param.requires_grad_(".multi_modal_projector." in name or name.startswith("model.multi_modal_projector"))
        else:
            param.requires_grad_(not name.startswith("model.vision_tower"))


def apply_lora(model: Any, rank: int) -> Any:
    """``peft`` LoRA of rank ``rank`` (``alpha = 2 · rank``, dropout 0.05) on the language
    model's projections, the connector trained in full (``modules_to_save``): OG-LLaVA's
    stage 2. Returns the ``PeftModel``; every other parameter is frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        lora_dropout=0.05,
        target_modules=LORA_TARGETS,
        modules_to_save=["multi_modal_projector"],
    )
    return get_peft_model(model, config)


def reference_connector(core_model: Any) -> ReferenceOGFusion:
    """The baseline's connector: a reference OG-Fusion with the model's projector weights."""
    projector = core_model.model.multi_modal_projector
    first = projector.linear_1
    reference = ReferenceOGFusion(first.in_features, first.out_features)
    copy_llava_projector(projector, reference.mm_projector, core_model.config)
    return reference.to(device=first.weight.device, dtype=first.weight.dtype)


def equip_with_reference_weights(model: Any, reference: ReferenceOGFusion) -> Any:
    """The baseline's trained model as an ``OGLlavaForConditionalGeneration``: its tower and
    LLM with an ``OGFusion`` holding the reference connector's weights (what it saves)."""
    connector = connector_for(model.config)
    connector.load_reference_state_dict(reference.state_dict())
    return apply_ogfusion_to_llava(model, connector=connector, attn_implementation=None)


def unwrap(model: Any) -> Any:
    """The transformers model under DDP / accelerate / peft wrappers."""
    while True:
        if hasattr(model, "module"):
            model = model.module
        elif hasattr(model, "get_base_model"):
            model = model.get_base_model()
        else:
            return model
