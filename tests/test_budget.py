"""Visual-token budget (``ogkernels.budget``) and its CLI (``ogkernels.tools.budget_cli``).

Counts are checked against hand derivations from the published formulas and against
transformers' own functions (``smart_resize``, ``select_best_resolution``,
``image_size_to_num_patches``, ``unpad_image``, the Gemma 3 projector); LLM costs against a
tiny ``LlamaForCausalLM`` run under ``torch.utils.flop_counter`` and its KV cache.
"""

from __future__ import annotations

import functools
import json
import types

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ogkernels import budget
from ogkernels.budget import (
    ANYRES_GRID_PINPOINTS,
    LLM_PRESETS,
    QWEN3_VL_PARAMS,
    batch_budget,
    kv_cache_bytes,
    linear_flops,
    attention_flops,
    llm_dims,
    og_token_counts,
    prefill_flops,
    qwen_resized_size,
    select_anyres_resolution,
    visual_token_count,
)
from ogkernels.tools.budget_cli import main

from .strategies import mask_stacks, token_counts

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
sizes = st.integers(min_value=1, max_value=6000)


def _transformers():
    return pytest.importorskip("transformers")


# ---------------------------------------------------------------------------------------
# Published counts, derived by hand
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(336, 336), (480, 640), (1, 1), (4000, 30)])
def test_llava_is_576_regardless_of_input(height, width):
    # (336 / 14)² = 24² = 576; CLS kept → 577.
    assert visual_token_count("llava", height, width) == 576
    assert visual_token_count("llava", height, width, include_cls=True) == 577
    # General (S / P)²: CLIP-L/14 at 224 px → 16² = 256.
    assert visual_token_count("llava", height, width, image_size=224) == 256


def test_llava_defaults_match_transformers_llava_config():
    transformers = _transformers()
    vision = transformers.LlavaConfig().vision_config
    expected = (vision.image_size // vision.patch_size) ** 2
    assert visual_token_count("llava", 480, 640) == expected == 576


@pytest.mark.parametrize("height, width", [(896, 896), (480, 640), (3000, 200)])
def test_gemma3_is_256_regardless_of_input(height, width):
    # 896 / 14 = 64 patches per side; pooled with kernel 64 / √256 = 4 → 16² = 256.
    assert visual_token_count("gemma3", height, width) == 256
    # mm_tokens_per_image = 64 → 8 per side, kernel 8 → 8² = 64.
    assert visual_token_count("gemma3", height, width, mm_tokens_per_image=64) == 64


def test_gemma3_matches_transformers_projector():
    transformers = _transformers()
    from transformers.models.gemma3.modeling_gemma3 import Gemma3MultiModalProjector

    config = transformers.Gemma3Config(
        vision_config={"image_size": 896, "patch_size": 14, "hidden_size": 8},
        text_config={"hidden_size": 8},
    )
    projector = Gemma3MultiModalProjector(config)
    patches = (896 // 14) ** 2
    with torch.no_grad():
        out = projector(torch.zeros(1, patches, 8))
    assert out.shape[1] == config.mm_tokens_per_image == visual_token_count("gemma3", 896, 896)


@pytest.mark.parametrize(
    "height, width, expected",
    [
        # 480/28 = 17.14 → 17 → 476; 640/28 = 22.86 → 23 → 644; 476·644 = 306544 in range:
        # 17·23 = 391.
        (480, 640, 391),
        # 336/28 = 12 exactly: 12·12 = 144.
        (336, 336, 144),
        # 1080 → 1092, 1920 → 1932, 1092·1932 = 2109744 > 1003520 → β = √(1080·1920/1003520)
        # = 1.43746…; ⌊1080/β/28⌋ = ⌊26.83⌋ = 26, ⌊1920/β/28⌋ = ⌊47.70⌋ = 47: 26·47 = 1222.
        (1080, 1920, 1222),
        # 20 → 28, 28·28 = 784 < 3136 → β = √(3136/400) = 2.8; ⌈20·2.8/28⌉ = 2 → 56: 2·2 = 4.
        (20, 20, 4),
        # Ties round to even: 42/28 = 1.5 → 2 and 70/28 = 2.5 → 2, so 56×56 (in range): 4.
        (42, 70, 4),
    ],
)
def test_qwen2_hand_derived(height, width, expected):
    assert visual_token_count("qwen", height, width) == expected


@pytest.mark.parametrize(
    "height, width, expected",
    [
        # Qwen3-VL, factor 32, pixels in [65536, 16777216]:
        # 480/32 = 15, 640/32 = 20, 307200 in range: 15·20 = 300.
        (480, 640, 300),
        # 1080/32 = 33.75 → 34, 1920/32 = 60: 34·60 = 2040.
        (1080, 1920, 2040),
        # 100/32 = 3.125 → 3 → 96, 96² = 9216 < 65536 → β = √(65536/10000) = 2.56,
        # ⌈100·2.56/32⌉ = 8: 8·8 = 64.
        (100, 100, 64),
    ],
)
def test_qwen3_hand_derived(height, width, expected):
    assert visual_token_count("qwen3", height, width) == expected
    assert visual_token_count("qwen", height, width, **QWEN3_VL_PARAMS) == expected


def test_qwen_resized_size_ranges():
    # 4000×4000 → 4004² > max → β = 4000/√1003520, ⌊4000/β/28⌋ = ⌊35.78⌋ = 35 → 980.
    assert qwen_resized_size(4000, 4000) == (980, 980)
    assert visual_token_count("qwen", 4000, 4000) == 35 * 35
    with pytest.raises(ValueError, match="aspect ratio"):
        visual_token_count("qwen", 1, 201)


qwen_param_sets = st.one_of(
    st.just({}),
    st.just(dict(QWEN3_VL_PARAMS)),
    st.just({"max_pixels": 16384 * 28 * 28}),  # the Qwen2/2.5-VL hub checkpoints
    st.builds(
        lambda p, m, lo, span: {"patch_size": p, "merge_size": m, "min_pixels": lo, "max_pixels": lo + span},
        st.integers(1, 32),
        st.integers(1, 4),
        st.integers(1, 200_000),
        st.integers(0, 20_000_000),
    ),
)


@FAST
@given(height=sizes, width=sizes, params=qwen_param_sets)
def test_qwen_matches_transformers_smart_resize(height, width, params):
    _transformers()
    pytest.importorskip("torchvision")  # transformers' Qwen2-VL image processor module imports it
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    assume(max(height, width) / min(height, width) <= 200)
    full = {**budget.STRATEGY_DEFAULTS["qwen"], **params}
    factor = full["patch_size"] * full["merge_size"]
    ref_h, ref_w = smart_resize(
        height, width, factor=factor, min_pixels=full["min_pixels"], max_pixels=full["max_pixels"]
    )
    assert qwen_resized_size(
        height, width, factor=factor, min_pixels=full["min_pixels"], max_pixels=full["max_pixels"]
    ) == (ref_h, ref_w)
    assert visual_token_count("qwen", height, width, **params) == (ref_h // factor) * (ref_w // factor)


# ---------------------------------------------------------------------------------------
# AnyRes
# ---------------------------------------------------------------------------------------


def test_anyres_hand_derived():
    # 480×640 fits (672, 672) best (effective 504·672 vs 336·448 for the 1×2 canvases):
    # 2×2 tiles + overview = 5 × 576 = 2880.
    assert select_anyres_resolution(480, 640) == (672, 672)
    assert visual_token_count("anyres", 480, 640) == 5 * 576
    # 336×336: (336, 672) and (672, 336) tie on effective 336² and waste; the first wins:
    # 1×2 tiles + overview = 3 × 576 = 1728.
    assert select_anyres_resolution(336, 336) == (336, 672)
    assert visual_token_count("anyres", 336, 336) == 3 * 576
    # Unpadded, 672×672 (no padding): 576 + 48·48 + 48 newlines = 2928.
    assert visual_token_count("anyres", 672, 672, unpad=True) == 576 + 48 * 48 + 48
    # Unpadded, 336×336 on the 336×672 canvas (grid 24×48): W/H = 1 < 48/24, so columns
    # shrink to 48 − 2·⌊(48 − 24)/2⌋ = 24: 576 + 24·24 + 24 = 1176.
    assert visual_token_count("anyres", 336, 336, unpad=True) == 576 + 24 * 24 + 24


pinpoint_lists = st.one_of(
    st.just([list(p) for p in ANYRES_GRID_PINPOINTS]),
    st.lists(
        st.tuples(st.integers(1, 6), st.integers(1, 6)).map(lambda t: [336 * t[0], 336 * t[1]]),
        min_size=1,
        max_size=8,
    ),
)


@FAST
@given(height=sizes, width=sizes, pinpoints=pinpoint_lists)
def test_anyres_matches_transformers(height, width, pinpoints):
    _transformers()
    from transformers.image_processing_utils import select_best_resolution
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    assert select_anyres_resolution(height, width, pinpoints) == tuple(
        select_best_resolution((height, width), pinpoints)
    )
    tiles_plus_overview = image_size_to_num_patches((height, width), pinpoints, 336)
    assert visual_token_count(
        "anyres", height, width, image_grid_pinpoints=pinpoints
    ) == tiles_plus_overview * 576


def _llava_next_model_count(height, width, pinpoints):
    """Tokens llava-next's modeling code produces: base features, the tiled grid cropped by
    ``unpad_image``, one newline per row (``pack_image_features``)."""
    from transformers.models.llava_next.modeling_llava_next import (
        get_anyres_image_grid_shape,
        unpad_image,
    )

    side = 336 // 14
    tiles_h, tiles_w = get_anyres_image_grid_shape((height, width), pinpoints, 336)
    grid = torch.empty(1, tiles_h * side, tiles_w * side)
    rows, cols = unpad_image(grid, (height, width)).shape[1:]
    return side * side + rows * cols + rows


def _llava_next_processor_count(height, width, pinpoints):
    """Placeholder tokens ``LlavaNextProcessor`` inserts (llava-hf settings: patch 14,
    one additional CLS token, ``vision_feature_select_strategy="default"`` removes it)."""
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    stub = types.SimpleNamespace(
        image_processor=types.SimpleNamespace(image_grid_pinpoints=pinpoints),
        patch_size=14,
        num_additional_image_tokens=1,
    )
    stub._get_unpadded_features = functools.partial(LlavaNextProcessor._get_unpadded_features, stub)
    return LlavaNextProcessor._get_number_of_features(stub, height, width, 336, 336) - 1


@FAST
@given(height=sizes, width=sizes, pinpoints=pinpoint_lists)
def test_anyres_unpad_matches_llava_next(height, width, pinpoints):
    _transformers()
    ours = visual_token_count("anyres", height, width, image_grid_pinpoints=pinpoints, unpad=True)
    assert ours == _llava_next_model_count(height, width, pinpoints)
    assert ours == _llava_next_processor_count(height, width, pinpoints)


# ---------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------


def test_unknown_strategy_names_argument_and_value():
    with pytest.raises(ValueError, match=r"strategy: expected one of .*'llava'.* got 'sit'"):
        visual_token_count("sit", 10, 10)
    with pytest.raises(TypeError, match="strategy"):
        visual_token_count(3, 10, 10)


@pytest.mark.parametrize("strategy", budget.STRATEGIES)
@pytest.mark.parametrize("height, width, argument", [(0, 10, "height"), (10, -3, "width")])
def test_non_positive_sizes(strategy, height, width, argument):
    with pytest.raises(ValueError, match=rf"{argument}: expected an int >= 1, got {min(height, width)}"):
        visual_token_count(strategy, height, width)


def test_bad_params():
    with pytest.raises(TypeError, match="height: expected a positive int"):
        visual_token_count("llava", 10.0, 10)
    with pytest.raises(TypeError, match=r"merge_size: expected a parameter of strategy 'llava'"):
        visual_token_count("llava", 10, 10, merge_size=2)
    with pytest.raises(ValueError, match="patch_size: expected an int >= 1, got 0"):
        visual_token_count("qwen", 10, 10, patch_size=0)
    with pytest.raises(TypeError, match="unpad: expected a bool"):
        visual_token_count("anyres", 10, 10, unpad=1)
    with pytest.raises(ValueError, match="mm_tokens_per_image: expected a perfect square"):
        visual_token_count("gemma3", 10, 10, mm_tokens_per_image=200)
    with pytest.raises(TypeError, match=r"image_grid_pinpoints\[1\]"):
        visual_token_count("anyres", 10, 10, image_grid_pinpoints=[[336, 672], [336]])
    with pytest.raises(ValueError, match="min_pixels: expected min_pixels <= max_pixels"):
        visual_token_count("qwen", 10, 10, min_pixels=10_000, max_pixels=100)


# ---------------------------------------------------------------------------------------
# LLM dimensions and cost
# ---------------------------------------------------------------------------------------

TINY = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    vocab_size=100,
)


def test_llm_dims_sources_agree():
    transformers = _transformers()
    llama = transformers.LlamaConfig(**TINY)
    from_config = llm_dims(llama)
    from_dict = llm_dims(dict(TINY))
    from_vlm = llm_dims(transformers.LlavaConfig(text_config=llama.to_dict()))
    from_vlm_dict = llm_dims({"model_type": "llava", "text_config": dict(TINY)})
    for dims in (from_config, from_dict, from_vlm, from_vlm_dict):
        assert (dims.hidden_size, dims.num_hidden_layers, dims.num_attention_heads) == (64, 2, 4)
        assert (dims.num_key_value_heads, dims.head_dim, dims.intermediate_size, dims.vocab_size) == (2, 16, 96, 100)


def test_llm_dims_defaults_and_presets():
    minimal = {k: v for k, v in TINY.items() if k not in ("num_key_value_heads", "head_dim")}
    dims = llm_dims(minimal)
    assert dims.num_key_value_heads == 4 and dims.head_dim == 64 // 4
    assert llm_dims("llama3-8b") is LLM_PRESETS["llama3-8b"]
    # Llama-3.1-8B: 32·(4096·4096·2 + 2·4096·1024 + 3·4096·14336) + 128256·4096 (untied head)
    # + 128256·4096 (embeddings) = 8.03e9 parameters, the published 8B.
    d = LLM_PRESETS["llama3-8b"]
    assert round((d.params_per_token + 2 * d.vocab_size * d.hidden_size) / 1e9, 2) == 8.03


def test_presets_match_transformers_defaults_where_published():
    transformers = _transformers()
    # transformers' LlamaConfig defaults are the LLaMA(-2)-7B dims, i.e. vicuna-7b-v1.5's.
    vicuna = LLM_PRESETS["vicuna-7b"]
    default = llm_dims(transformers.LlamaConfig())
    assert (default.hidden_size, default.num_hidden_layers, default.num_attention_heads,
            default.num_key_value_heads, default.head_dim, default.intermediate_size,
            default.vocab_size) == (vicuna.hidden_size, vicuna.num_hidden_layers,
                                    vicuna.num_attention_heads, vicuna.num_key_value_heads,
                                    vicuna.head_dim, vicuna.intermediate_size, vicuna.vocab_size)


def test_llm_dims_errors():
    missing = {k: v for k, v in TINY.items() if k != "intermediate_size"}
    with pytest.raises(ValueError, match=r"config\.intermediate_size: expected a positive int .* got missing"):
        llm_dims(missing)
    with pytest.raises(ValueError, match=r"config\.text_config\.vocab_size: .* got missing"):
        llm_dims({"text_config": {k: v for k, v in TINY.items() if k != "vocab_size"}})
    with pytest.raises(ValueError, match="config: expected a preset name"):
        llm_dims("gpt-5")
    with pytest.raises(TypeError, match="config: expected a transformers PretrainedConfig"):
        llm_dims(42)
    with pytest.raises(ValueError, match="hidden_size divisible"):
        llm_dims({**{k: v for k, v in TINY.items() if k != "head_dim"}, "hidden_size": 66})


def test_kv_cache_formula():
    # Llama-3.1-8B, 576 tokens, bf16: 32 layers · 2 · 8 KV heads · 128 · 2 B · 576 = 72 MiB.
    assert kv_cache_bytes(576, "llama3-8b", "bf16") == 32 * 2 * 8 * 128 * 2 * 576 == 72 * 2**20
    assert kv_cache_bytes(576, "llama3-8b", torch.float32) == 144 * 2**20
    assert kv_cache_bytes(0, "llama3-8b") == 0
    with pytest.raises(ValueError, match="dtype: expected one of"):
        kv_cache_bytes(1, "llama3-8b", "fp12")
    with pytest.raises(ValueError, match="tokens: expected a non-negative int"):
        kv_cache_bytes(-1, "llama3-8b")


@pytest.fixture(scope="module")
def tiny_llama():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(**TINY, attn_implementation="eager")
    torch.manual_seed(0)
    return config, transformers.LlamaForCausalLM(config).eval()


def _module_flops(counter, prefixes):
    counts = counter.get_flop_counts()
    return sum(sum(counts[name].values()) for name in prefixes if name in counts)


@pytest.mark.parametrize("seq_len", [1, 7, 19])
def test_flops_and_kv_cache_match_a_real_llama(tiny_llama, seq_len):
    from torch.utils.flop_counter import FlopCounterMode

    config, model = tiny_llama
    ids = torch.randint(0, TINY["vocab_size"], (1, seq_len))
    layers = [f"LlamaForCausalLM.model.layers.{i}" for i in range(TINY["num_hidden_layers"])]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(ids, use_cache=True)
    # Eager attention computes the dense L² scores and masks afterwards; logits for all L.
    assert _module_flops(counter, layers) == (
        linear_flops(seq_len, config, lm_head="none") + attention_flops(seq_len, config, causal=False)
    )
    assert _module_flops(counter, ["LlamaForCausalLM.lm_head"]) == (
        linear_flops(seq_len, config, lm_head="all") - linear_flops(seq_len, config, lm_head="none")
    )
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(ids, logits_to_keep=1)
    assert _module_flops(counter, ["LlamaForCausalLM.lm_head"]) == (
        linear_flops(seq_len, config, lm_head="last") - linear_flops(seq_len, config, lm_head="none")
    )
    cache = out.past_key_values
    cached = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
    assert cached == kv_cache_bytes(seq_len, config, torch.float32)


@given(seq_len=st.integers(0, 5000))
@settings(max_examples=50, deadline=None)
def test_causal_attention_counts_lower_triangle(seq_len):
    dims = llm_dims(dict(TINY))
    full = attention_flops(seq_len, dims, causal=False)
    causal = attention_flops(seq_len, dims, causal=True)
    unit = dims.num_hidden_layers * 4 * dims.num_attention_heads * dims.head_dim
    assert full == unit * seq_len**2
    assert causal == unit * seq_len * (seq_len + 1) // 2
    assert prefill_flops(seq_len, dims).total == linear_flops(seq_len, dims) + causal


@given(
    lengths=st.lists(st.integers(0, 3000), min_size=1, max_size=8),
    text=st.integers(0, 100),
    causal=st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_batch_budget_varlen_vs_padded(lengths, text, causal):
    dims = LLM_PRESETS["llama3.2-1b"]
    result = batch_budget(lengths, dims, text_tokens=text, causal=causal)
    seqs = [n + text for n in lengths]
    assert result.lengths == tuple(seqs)
    assert result.total_tokens == sum(seqs) and result.max_length == max(seqs)
    assert result.padded_tokens == len(seqs) * max(seqs)
    assert result.kv_cache_bytes == kv_cache_bytes(sum(seqs), dims)
    assert result.kv_cache_bytes_padded == kv_cache_bytes(len(seqs) * max(seqs), dims)
    per = [prefill_flops(n, dims, causal=causal) for n in seqs]
    assert result.prefill_flops_linear == sum(f.linear for f in per)
    assert result.prefill_flops_attention == sum(f.attention for f in per)
    longest = prefill_flops(max(seqs), dims, causal=causal)
    assert result.prefill_flops_padded == len(seqs) * longest.total
    assert result.prefill_flops <= result.prefill_flops_padded
    if len(set(seqs)) == 1:
        assert result.prefill_flops == result.prefill_flops_padded
    assert result.fits and result.over_context == ()


def test_batch_budget_context_cap_and_errors():
    result = batch_budget([576, 1500, 200], "llama3-8b", text_tokens=[100, 600, 0], context_length=2048)
    assert result.lengths == (676, 2100, 200)
    assert result.over_context == (1,) and not result.fits
    with pytest.raises(ValueError, match=r"text_tokens: expected an int or 3 ints"):
        batch_budget([1, 2, 3], "llama3-8b", text_tokens=[1])
    with pytest.raises(ValueError, match=r"lengths\[1\]: expected a non-negative int"):
        batch_budget([1, -2], "llama3-8b")
    with pytest.raises(TypeError, match="lengths: expected a sequence"):
        batch_budget(5, "llama3-8b")
    with pytest.raises(ValueError, match="lm_head: expected one of"):
        batch_budget([1], "llama3-8b", lm_head="some")


# ---------------------------------------------------------------------------------------
# OG token counts (needs ogkernels.tokens, the lead's og_token_lengths)
# ---------------------------------------------------------------------------------------


def _reference_lengths(masks, num_tokens, threshold=0.5):
    from ogkernels.reference import ReferenceFlags, og_fusion_tokens

    features = torch.zeros(len(masks), num_tokens, 2)
    bom = torch.zeros(1, 2)
    flags = ReferenceFlags(threshold_count=threshold)
    return og_fusion_tokens(features, masks, bom, flags).lengths


def _random_masks(seed, count, height, width, density):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(count, height, width, generator=generator) < density


def test_og_token_counts_match_reference_edge_cases():
    pytest.importorskip("ogkernels.tokens")
    masks = [
        _random_masks(0, 5, 30, 40, 0.3),
        torch.zeros(1, 12, 9, dtype=torch.bool),  # one empty mask → replaced by all-True
        torch.cat([torch.zeros(2, 8, 8, dtype=torch.bool), _random_masks(1, 2, 8, 8, 0.5)]),
        torch.zeros(3, 7, 7, dtype=torch.bool),  # all empty → global row only
    ]
    for num_tokens in (16, 36):
        counts = og_token_counts(masks, num_tokens)
        assert isinstance(counts, list) and all(type(n) is int for n in counts)
        assert counts == _reference_lengths(masks, num_tokens)
    assert og_token_counts(masks, 36, alpha=0.3) == _reference_lengths(masks, 36, threshold=0.3)


OG_LAYOUTS = [
    ({"global_view": "full"}, {"averaging_global_view": False}),
    ({"global_view": "none"}, {"global_view": False, "averaging_global_view": False}),
    ({"global_view": "none", "no_masktoken": True},
     {"global_view": False, "averaging_global_view": False, "no_masktoken": True}),
    ({"no_masktoken": True}, {"no_masktoken": True}),
    ({"averaging": True}, {"averaging": True}),
    ({"image_filling": True}, {"image_filling": True}),
    ({"max_masks": 2}, {"mask_limiting": True, "mask_limit": 2}),
]


@pytest.mark.parametrize("options, flags", OG_LAYOUTS)
def test_og_token_counts_layout_options_match_reference(options, flags):
    pytest.importorskip("ogkernels.tokens")
    from ogkernels.reference import ReferenceFlags, og_fusion_tokens

    masks = [
        _random_masks(0, 5, 30, 40, 0.3),
        torch.zeros(1, 12, 9, dtype=torch.bool),
        torch.cat([torch.zeros(2, 8, 8, dtype=torch.bool), _random_masks(1, 2, 8, 8, 0.5)]),
        torch.zeros(3, 7, 7, dtype=torch.bool),
        _random_masks(5, 8, 20, 20, 0.1),
    ]
    features, bom = torch.zeros(len(masks), 36, 2), torch.zeros(1, 2)
    expected = og_fusion_tokens(features, masks, bom, ReferenceFlags(**flags)).lengths
    assert og_token_counts(masks, 36, **options) == expected


@settings(max_examples=25, deadline=None)
@given(
    masks=st.lists(mask_stacks(max_masks=6, max_side=24), min_size=1, max_size=3),
    num_tokens=token_counts,
)
def test_og_token_counts_match_reference_random(masks, num_tokens):
    pytest.importorskip("ogkernels.tokens")
    assert og_token_counts(masks, num_tokens) == _reference_lengths(masks, num_tokens)


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------


def _json_run(capsys, argv):
    assert main([*argv, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_cli_json_matches_library(capsys):
    data = _json_run(
        capsys,
        ["--image", "480x640", "1080x1920", "336x336", "--llm-config", "llama3.2-1b",
         "--dtype", "bf16", "--text-tokens", "32", "--context-length", "1500"],
    )
    dims = LLM_PRESETS["llama3.2-1b"]
    assert data["strategies"] == ["llava", "qwen", "anyres", "gemma3"]
    for image in data["images"]:
        h, w = image["height"], image["width"]
        for name in data["strategies"]:
            n = visual_token_count(name, h, w)
            assert image["tokens"][name] == n
            cost = image["cost"][name]
            assert cost["context_tokens"] == n + 32
            assert cost["kv_cache_bytes"] == kv_cache_bytes(n + 32, dims, "bf16")
            flops = prefill_flops(n + 32, dims)
            assert (cost["prefill_flops_linear"], cost["prefill_flops_attention"]) == (flops.linear, flops.attention)
    for name in data["strategies"]:
        lengths = [visual_token_count(name, im["height"], im["width"]) for im in data["images"]]
        expected = batch_budget(lengths, dims, text_tokens=32, context_length=1500)
        got = data["batch"][name]
        assert got["total_tokens"] == expected.total_tokens
        assert got["kv_cache_bytes_padded"] == expected.kv_cache_bytes_padded
        assert got["prefill_flops"] == expected.prefill_flops
        assert got["prefill_flops_padded"] == expected.prefill_flops_padded
        assert tuple(got["over_context"]) == expected.over_context
    assert data["batch"]["anyres"]["over_context"] == [0, 1, 2]


def test_cli_table_prints_library_numbers(capsys):
    assert main(["--image", "480x640", "--llm-config", "llama3-8b", "--dtype", "bf16"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("image ")))
    assert lines[header].split() == [
        "image", "HxW", "strategy", "visual_tokens", "context_tokens", "kv_cache_MiB",
        "prefill_TFLOPs", "source",
    ]
    rows = {line.split()[2]: line.split() for line in lines if line.startswith("0 ")}
    assert set(rows) == {"llava", "qwen", "anyres", "gemma3"}
    for name, row in rows.items():
        n = visual_token_count(name, 480, 640)
        assert row[1] == "480x640" and int(row[3]) == n == int(row[4])
        assert row[5] == f"{kv_cache_bytes(n, 'llama3-8b', 'bf16') / 2**20:.3f}"
        assert row[6] == f"{prefill_flops(n, 'llama3-8b').total / 1e12:.4f}"
    assert rows["llava"][5] == "72.000"  # 576 tokens of Llama-3.1-8B in bf16 = 72 MiB
    summary = lines.index(next(line for line in lines if line.startswith("strategy ")))
    batch = {line.split()[0]: line.split() for line in lines[summary + 1 :]}
    assert set(batch) == set(rows)
    assert batch["qwen"][1:3] == ["1", str(visual_token_count("qwen", 480, 640))]


def test_cli_config_file_and_anyres_unpad(capsys, tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "llava", "text_config": TINY}))
    data = _json_run(capsys, ["--image", "672x672", "--llm-config", str(tmp_path), "--anyres-unpad",
                              "--strategies", "anyres,qwen3", "--attention", "full", "--lm-head", "all"])
    assert data["images"][0]["tokens"] == {"anyres": 2928, "qwen3": visual_token_count("qwen3", 672, 672)}
    cost = data["images"][0]["cost"]["anyres"]
    assert cost["prefill_flops_attention"] == attention_flops(2928, dict(TINY), causal=False)
    assert cost["prefill_flops_linear"] == linear_flops(2928, dict(TINY), lm_head="all")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "480"], "expected HEIGHTxWIDTH"),
        (["--image", "10x10", "--strategies", "llava,sit"], "--strategies: expected names"),
        (["--image", "10x10", "--strategies", "og"], "'og' needs --masks"),
        (["--image", "10x10", "--llm-config", "nope"], "--llm-config: expected a preset"),
        (["--image", "10x10", "--dtype", "fp12"], "dtype: expected one of"),
        ([], "expected at least one image"),
    ],
)
def test_cli_errors(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_cli_bad_mask_file(capsys, tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, a=np.zeros((2, 4, 4), bool), b=np.zeros((4, 4), bool))
    assert main(["--masks", str(path)]) == 2
    assert "expected an array named 'masks' or a single array" in capsys.readouterr().err


def test_cli_og_with_mask_files(capsys, tmp_path):
    pytest.importorskip("ogkernels.tokens")
    first = _random_masks(3, 4, 30, 40, 0.4)
    second = _random_masks(4, 2, 20, 10, 0.6)
    np.savez(tmp_path / "a.npz", masks=first.numpy())
    np.save(tmp_path / "b.npy", second.numpy())
    data = _json_run(
        capsys,
        ["--image", "480x640", "--masks", str(tmp_path / "a.npz"), str(tmp_path / "b.npy"), "--grid", "36"],
    )
    assert data["strategies"][-1] == "og"
    assert [im["tokens"]["og"] for im in data["images"]] == [None, *_reference_lengths([first, second], 36)]
    assert [(im["height"], im["width"]) for im in data["images"]] == [(480, 640), (30, 40), (20, 10)]
    assert data["batch"]["og"]["lengths"] == _reference_lengths([first, second], 36)


def _bitmap_store(root, masks_per_image):
    from ogkernels.masks import MaskStoreWriter
    from ogkernels.masks.bitmap_store import BitmapParams
    from ogkernels.masks.downsample_job import downsample_store

    with MaskStoreWriter(root) as writer:
        for i, masks in enumerate(masks_per_image):
            writer.add(f"img/{i}.jpg", masks)
    downsample_store(root, BitmapParams.of(36))
    return root


def test_cli_store_distribution_and_caps(capsys, tmp_path):
    """`--store`: the dataset's counts equal og_token_counts of the stored masks; a cap's
    effect equals og_token_counts with max_image_tokens; --plot writes a PNG."""
    from ogkernels.masks import MaskStore

    images = [_random_masks(i, n, 30, 40, 0.5) for i, n in enumerate((1, 3, 6, 2, 0))]
    root = _bitmap_store(tmp_path / "store", images)
    plot = tmp_path / "tokens.png"
    data = _json_run(capsys, ["--store", str(root), "--grid", "36", "--cap", "40", "90", "--plot", str(plot)])
    masks = MaskStore(root).load_batch(MaskStore(root).keys())
    counts = og_token_counts(masks, 36, gate=False)
    d = data["distribution"]
    assert (d["images"], d["total"], d["min"], d["max"]) == (5, sum(counts), min(counts), max(counts))
    assert d["p50"] == float(np.percentile(counts, 50))
    assert sum(b["images"] for b in data["histogram"]) == 5
    for cap, effect in zip((40, 90), data["caps"]):
        capped = og_token_counts(masks, 36, gate=False, max_image_tokens=cap)
        assert effect["tokens_dropped"] == sum(counts) - sum(capped)
        assert effect["images_over"] == sum(c > k for c, k in zip(counts, capped)) and effect["max_after"] == max(capped)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["--store", str(root), "--grid", "36", "--cap", "40"]) == 0
    out = capsys.readouterr().out
    assert f"{len(counts)} images" in out and "cached" in out and "images_over_cap" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--store", "{tmp}/nope", "--grid", "36"], "not a mask store"),
        (["--store", "{store}", "--grid", "49"], "downsample {store} --grid 49"),
        (["--store", "{store}", "--grid", "36", "--image", "10x10"], "--store: give it alone"),
        (["--store", "{store}", "--grid", "36", "--cap", "0"], "--cap: expected ints >= 1"),
        (["--store", "{store}", "--grid", "36", "--frame", "pad"], "frame"),
    ],
)
def test_cli_store_errors(capsys, tmp_path, argv, message):
    store = _bitmap_store(tmp_path / "store", [_random_masks(1, 1, 8, 8, 0.5)])
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{store}", str(store)) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message.replace("{store}", str(store)) in err and len(err.strip().splitlines()) == 1
