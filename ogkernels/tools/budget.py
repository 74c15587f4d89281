"""Visual-token budget: count, cost and cap visual tokens before they reach the LLM.

Three questions, answered without running a model:

1. **How many visual tokens does an image become?** :func:`visual_token_count` for the common
   schemes (fixed resize, Qwen dynamic resolution, LLaVA-NeXT AnyRes, Gemma 3 pooling) and
   :func:`og_token_counts` for OG-Fusion (per image ``L_b = 1 + n_b + Σ_j k_j`` in the
   default layout: one global row, then per kept mask a BOM row and its ``k_j`` patch rows).
2. **What do they cost in the LLM?** :func:`kv_cache_bytes` and :func:`prefill_flops` for a
   LLaMA-style decoder described by a transformers config (or a dict, or a preset name).
3. **What does padding cost?** :func:`batch_budget` compares a packed (varlen) batch, where
   sequence ``i`` costs exactly ``L_i``, with a right-padded batch where every sample costs
   ``L_max`` (what the reference's zero padding of OG tokens does, see
   ``reference/BEHAVIOUR.md``), and flags samples longer than a context window.

Counts are *visual placeholder tokens*: the rows the vision connector hands to the LLM. The
few text-side markers some chat templates wrap around them (Qwen's ``<|vision_start|>`` /
``<|vision_end|>``, Gemma 3's ``<start_of_image>`` / ``<end_of_image>``) are not included;
add them to ``text_tokens`` when they matter.

Units: tokens are counts; memory is bytes (``MiB = 2**20`` bytes where printed); compute is
floating-point operations (FLOPs), one multiply–add counted as 2 FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

import torch

from .._validation import check_positive_int, fail

__all__ = [
    "ANYRES_GRID_PINPOINTS",
    "BatchBudget",
    "LLMDims",
    "LLM_PRESETS",
    "PrefillFlops",
    "QWEN3_VL_PARAMS",
    "STRATEGIES",
    "STRATEGY_DEFAULTS",
    "attention_flops",
    "batch_budget",
    "dtype_bytes",
    "kv_cache_bytes",
    "linear_flops",
    "llm_dims",
    "og_token_counts",
    "prefill_flops",
    "qwen_resized_size",
    "select_anyres_resolution",
    "visual_token_count",
]

# ----------------------------------------------------------------------------------------
# Visual token counts
# ----------------------------------------------------------------------------------------

#: The published ``image_grid_pinpoints`` of the llava-v1.6 (LLaVA-NeXT) checkpoints,
#: ``(height, width)`` pairs in pixels; also transformers' ``LlavaNextImageProcessor`` default.
ANYRES_GRID_PINPOINTS: tuple[tuple[int, int], ...] = (
    (336, 672),
    (672, 336),
    (672, 672),
    (1008, 336),
    (336, 1008),
)

#: Qwen3-VL's published image-processor settings (``preprocessor_config.json`` of the
#: Qwen3-VL checkpoints: ``patch_size`` 16, ``merge_size`` 2, ``size`` =
#: ``{"shortest_edge": 65536, "longest_edge": 16777216}``), i.e. factor 32 and a pixel
#: budget of ``[256², 4096²]``. Use as ``visual_token_count("qwen", h, w, **QWEN3_VL_PARAMS)``
#: or the ``"qwen3"`` strategy.
QWEN3_VL_PARAMS: dict[str, int] = {
    "patch_size": 16,
    "merge_size": 2,
    "min_pixels": 256 * 256,
    "max_pixels": 4096 * 4096,
}

#: Every strategy's parameters and their defaults (the published values).
STRATEGY_DEFAULTS: dict[str, dict[str, Any]] = {
    # LLaVA-1.5: CLIP ViT-L/14 at 336 px, CLS dropped (``mm_vision_select_feature="patch"``).
    "llava": {"image_size": 336, "patch_size": 14, "include_cls": False},
    # Qwen2-VL / Qwen2.5-VL: transformers' ``Qwen2VLImageProcessor`` defaults
    # (``size = {"shortest_edge": 56·56, "longest_edge": 28·28·1280}``).
    "qwen": {
        "patch_size": 14, "merge_size": 2, "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280
    },
    # Qwen3-VL: the same resize rule with QWEN3_VL_PARAMS.
    "qwen3": dict(QWEN3_VL_PARAMS),
    # LLaVA-NeXT (llava-v1.6) AnyRes: 336 px tiles of CLIP ViT-L/14-336.
    "anyres": {
        "image_size": 336,
        "patch_size": 14,
        "image_grid_pinpoints": ANYRES_GRID_PINPOINTS,
        "unpad": False,
    },
    # Gemma 3: SigLIP at 896 px, 14 px patches (64×64), average-pooled to 16×16.
    "gemma3": {"image_size": 896, "patch_size": 14, "mm_tokens_per_image": 256},
}

#: The strategies :func:`visual_token_count` knows.
STRATEGIES: tuple[str, ...] = tuple(STRATEGY_DEFAULTS)

_INT_PARAMS = {
    "image_size", "patch_size", "merge_size", "min_pixels", "max_pixels", "mm_tokens_per_image"
}
_BOOL_PARAMS = {"include_cls", "unpad"}

# The published Qwen resize rejects aspect ratios above this.
_QWEN_MAX_ASPECT_RATIO = 200


def _check_choice(argument: str, value: Any, choices: Sequence[str]) -> str:
    names = ", ".join(repr(c) for c in choices)
    if not isinstance(value, str):
        fail(argument, f"a str, one of {names}", value, error=TypeError)
    if value not in choices:
        fail(argument, f"one of {names}", repr(value))
    return value


def _check_bool(argument: str, value: Any) -> bool:
    if not isinstance(value, bool):
        fail(argument, "a bool", value, error=TypeError)
    return value


def _check_pinpoints(argument: str, value: Any) -> tuple[tuple[int, int], ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) == 0:
        expected = "a non-empty list of (height, width) pairs of positive ints"
        fail(argument, expected, value, error=TypeError)
    pairs = []
    for i, pair in enumerate(value):
        if (
            isinstance(pair, (str, bytes))
            or not isinstance(pair, Sequence)
            or len(pair) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in pair)
        ):
            fail(f"{argument}[{i}]", "a (height, width) pair of ints", pair, error=TypeError)
        if pair[0] < 1 or pair[1] < 1:
            fail(f"{argument}[{i}]", "height >= 1 and width >= 1", tuple(pair))
        pairs.append((int(pair[0]), int(pair[1])))
    return tuple(pairs)


def _strategy_params(strategy: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of ``strategy`` overridden by ``params``, validated."""
    defaults = STRATEGY_DEFAULTS[strategy]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        fail(
            unknown[0],
            f"a parameter of strategy {strategy!r} (one of {', '.join(sorted(defaults))})",
            f"unexpected keyword {unknown[0]!r}",
            error=TypeError,
        )
    merged = {**defaults, **params}
    for name, value in merged.items():
        if name in _INT_PARAMS:
            check_positive_int(name, value)
        elif name in _BOOL_PARAMS:
            _check_bool(name, value)
        elif name == "image_grid_pinpoints":
            merged[name] = _check_pinpoints(name, value)
    return merged


def qwen_resized_size(
    height: int,
    width: int,
    *,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 28 * 28 * 1280,
) -> tuple[int, int]:
    """The size ``(H', W')`` Qwen2-VL / Qwen2.5-VL / Qwen3-VL resize an image to.

    The published rule (transformers ``models/qwen2_vl/image_processing_qwen2_vl.py``,
    ``smart_resize``), re-implemented:

    1. reject ``max(H, W) / min(H, W) > 200``;
    2. round each side to the nearest multiple of ``factor`` (Python ``round``: ties to even);
    3. if ``H'·W' > max_pixels``: ``β = sqrt(H·W / max_pixels)`` and each side becomes
       ``max(factor, floor(side / β / factor)·factor)``;
       elif ``H'·W' < min_pixels``: ``β = sqrt(min_pixels / (H·W))`` and each side becomes
       ``ceil(side·β / factor)·factor``.

    The floating-point operations are done in the published order so that results agree
    bit for bit with it (checked against transformers on random sizes in the tests).
    ``factor = patch_size·merge_size`` (28 for Qwen2/2.5-VL, 32 for Qwen3-VL).
    """
    height = check_positive_int("height", height)
    width = check_positive_int("width", width)
    factor = check_positive_int("factor", factor)
    min_pixels = check_positive_int("min_pixels", min_pixels)
    max_pixels = check_positive_int("max_pixels", max_pixels)
    if min_pixels > max_pixels:
        fail("min_pixels", f"min_pixels <= max_pixels ({max_pixels})", min_pixels)
    ratio = max(height, width) / min(height, width)
    if ratio > _QWEN_MAX_ASPECT_RATIO:
        fail(
            "height, width",
            f"an aspect ratio max(H, W) / min(H, W) <= {_QWEN_MAX_ASPECT_RATIO} (Qwen's limit)",
            f"{height}x{width} (ratio {ratio:.6g})",
        )

    def nearest(side: int) -> int:
        return round(side / factor) * factor

    new_h, new_w = nearest(height), nearest(width)
    if new_h * new_w > max_pixels:
        shrink = math.sqrt((height * width) / max_pixels)
        new_h = max(factor, math.floor(height / shrink / factor) * factor)
        new_w = max(factor, math.floor(width / shrink / factor) * factor)
    elif new_h * new_w < min_pixels:
        grow = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * grow / factor) * factor
        new_w = math.ceil(width * grow / factor) * factor
    return new_h, new_w


def select_anyres_resolution(
    height: int, width: int, pinpoints: Sequence[Sequence[int]] = ANYRES_GRID_PINPOINTS
) -> tuple[int, int]:
    """LLaVA-NeXT's choice of canvas ``(height, width)`` among ``pinpoints``.

    The published ``select_best_resolution`` rule (transformers
    ``image_processing_utils.py``), re-implemented: for each candidate ``(h_c, w_c)``,
    ``s = min(w_c / W, h_c / H)``, effective resolution ``min(int(W·s)·int(H·s), W·H)``,
    wasted resolution ``h_c·w_c − effective``; keep the candidate with the largest effective
    resolution, ties broken by the smallest waste, then by list order.
    """
    height = check_positive_int("height", height)
    width = check_positive_int("width", width)
    candidates = _check_pinpoints("image_grid_pinpoints", pinpoints)
    best, best_effective, best_waste = candidates[0], -1, math.inf
    for cand_h, cand_w in candidates:
        scale = min(cand_w / width, cand_h / height)
        fitted = int(width * scale) * int(height * scale)
        effective = min(fitted, width * height)
        waste = cand_h * cand_w - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (cand_h, cand_w), effective, waste
    return best


def _anyres_unpadded_rows(
    height: int, width: int, grid_h: int, grid_w: int
) -> tuple[int, int]:
    """Feature-grid ``(rows, cols)`` left after LLaVA-NeXT removes the letterbox padding.

    ``grid_h × grid_w`` is the tiled feature grid (tiles × patches per tile side). The image
    was fitted into the canvas preserving its aspect ratio and centred, so the padded band
    is cropped from the feature grid: if ``W/H > grid_w/grid_h`` the rows shrink to
    ``grid_h − 2·⌊(grid_h − round(H·grid_w/W))/2⌋``, else the columns likewise (transformers
    ``unpad_image`` and ``LlavaNextProcessor._get_unpadded_features``).
    """
    if width / height > grid_w / grid_h:
        kept = int(round(height * (grid_w / width), 7))
        grid_h -= 2 * ((grid_h - kept) // 2)
    else:
        kept = int(round(width * (grid_h / height), 7))
        grid_w -= 2 * ((grid_w - kept) // 2)
    return grid_h, grid_w


def _count_llava(height: int, width: int, p: dict[str, Any]) -> int:
    side = p["image_size"] // p["patch_size"]
    if side < 1:
        fail("patch_size", f"a patch size <= image_size ({p['image_size']})", p["patch_size"])
    return side * side + (1 if p["include_cls"] else 0)


def _count_qwen(height: int, width: int, p: dict[str, Any]) -> int:
    factor = p["patch_size"] * p["merge_size"]
    new_h, new_w = qwen_resized_size(
        height, width, factor=factor, min_pixels=p["min_pixels"], max_pixels=p["max_pixels"]
    )
    return (new_h // factor) * (new_w // factor)


def _count_anyres(height: int, width: int, p: dict[str, Any]) -> int:
    tile, patch = p["image_size"], p["patch_size"]
    side = tile // patch
    if side < 1:
        fail("patch_size", f"a patch size <= image_size ({tile})", patch)
    per_tile = side * side
    canvas_h, canvas_w = select_anyres_resolution(height, width, p["image_grid_pinpoints"])
    if not p["unpad"]:
        tiles = math.ceil(canvas_h / tile) * math.ceil(canvas_w / tile)
        return (tiles + 1) * per_tile
    rows, cols = _anyres_unpadded_rows(
        height, width, (canvas_h // tile) * side, (canvas_w // tile) * side
    )
    return per_tile + rows * cols + rows


def _count_gemma3(height: int, width: int, p: dict[str, Any]) -> int:
    patches_per_side = p["image_size"] // p["patch_size"]
    tokens_per_side = math.isqrt(p["mm_tokens_per_image"])
    if tokens_per_side * tokens_per_side != p["mm_tokens_per_image"]:
        fail("mm_tokens_per_image", "a perfect square (tokens_per_side²)", p["mm_tokens_per_image"])
    if patches_per_side < tokens_per_side:
        fail(
            "mm_tokens_per_image",
            f"at most (image_size // patch_size)² = {patches_per_side ** 2}",
            p["mm_tokens_per_image"],
        )
    kernel = patches_per_side // tokens_per_side
    pooled_side = patches_per_side // kernel
    return pooled_side * pooled_side


_COUNTERS = {
    "llava": _count_llava,
    "qwen": _count_qwen,
    "qwen3": _count_qwen,
    "anyres": _count_anyres,
    "gemma3": _count_gemma3,
}


def visual_token_count(strategy: str, height: int, width: int, **params: Any) -> int:
    """Visual tokens one ``height × width`` image (pixels) becomes under ``strategy``.

    Strategies and their parameters (defaults are the published values, see
    :data:`STRATEGY_DEFAULTS`):

    - ``"llava"`` — fixed resize (LLaVA-1.5): ``(S // P)²`` (``+1`` with ``include_cls``),
      independent of the input size. ``image_size`` S = 336, ``patch_size`` P = 14 → 576.
    - ``"qwen"`` — Qwen2-VL / Qwen2.5-VL dynamic resolution: the image is resized to
      ``(H', W') =`` :func:`qwen_resized_size` with ``factor = P·m``, then
      ``tokens = (H' / (P·m))·(W' / (P·m))`` (``P×P`` patches, ``m×m`` merged into one
      token). ``patch_size`` P = 14, ``merge_size`` m = 2, ``min_pixels`` = 56·56 = 3136,
      ``max_pixels`` = 28·28·1280 = 1003520 (transformers' processor defaults; the hub
      checkpoints of Qwen2/2.5-VL ship ``max_pixels`` = 12845056, pass it to reproduce them).
    - ``"qwen3"`` — the same rule with Qwen3-VL's settings :data:`QWEN3_VL_PARAMS`
      (P = 16, m = 2, pixels in ``[65536, 16777216]``).
    - ``"anyres"`` — LLaVA-NeXT AnyRes: canvas ``(h_c, w_c) =``
      :func:`select_anyres_resolution` over ``image_grid_pinpoints``; with ``unpad=False``
      (default) ``tokens = (⌈h_c/S⌉·⌈w_c/S⌉ + 1)·(S//P)²`` (tiles plus the overview image,
      = transformers ``image_size_to_num_patches`` × 576). With ``unpad=True`` the count
      llava-next actually feeds the LLM: ``(S//P)²`` overview tokens, plus the tiled feature
      grid ``(h_c/S·S//P) × (w_c/S·S//P)`` cropped of its letterbox padding to ``r × c``,
      plus one newline token per row: ``(S//P)² + r·c + r``.
    - ``"gemma3"`` — Gemma 3 pooled fixed downsampling (pan-and-scan off): SigLIP at
      ``image_size`` 896 with ``patch_size`` 14 gives 64×64 patches, average-pooled with
      kernel ``64 // √mm_tokens_per_image`` to 16×16 = ``mm_tokens_per_image`` = 256 tokens,
      independent of the input size.

    Raises:
        ValueError: unknown ``strategy``, non-positive sizes or parameters, aspect ratio
            beyond Qwen's 200 limit.
        TypeError: a parameter of the wrong type, or one ``strategy`` does not take.
    """
    _check_choice("strategy", strategy, STRATEGIES)
    height = check_positive_int("height", height)
    width = check_positive_int("width", width)
    return _COUNTERS[strategy](height, width, _strategy_params(strategy, params))


def og_token_counts(masks: Any, grid: Any, options: Any = None, **option_overrides: Any) -> list[int]:
    """Each image's OG token count, equal to ``og_tokens(...).lengths``, without features.

    ``masks``: per image ``(N, H, W)`` masks, :class:`~ogkernels.PackedMasks`, ``(N, V)``
    bitmaps or None; ``grid``: ``V`` or ``(gh, gw)``; ``options``: an
    :class:`~ogkernels.OGTokenOptions`, ``option_overrides`` its fields as keywords.
    A thin call of :func:`ogkernels.tokens.og_token_lengths` (the one place the layout is
    counted).
    """
    from ..tokens import og_token_lengths  # lazy: keeps ``import ogkernels.budget`` light

    return og_token_lengths(masks, grid, options, **option_overrides).tolist()


@dataclass(frozen=True)
class LLMDims:
    """The dimensions of a LLaMA-style decoder that its cost depends on.

    ``head_dim`` defaults to ``hidden_size // num_attention_heads``; ``num_key_value_heads``
    to ``num_attention_heads`` (no GQA). ``context_length`` is ``max_position_embeddings``
    when known (informational: :func:`batch_budget` takes the cap explicitly).
    """

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    name: str = "custom"
    context_length: int | None = None

    def __post_init__(self) -> None:
        for field in ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                      "head_dim", "intermediate_size", "vocab_size"):  # fmt: skip
            check_positive_int(field, getattr(self, field))
        if self.context_length is not None:
            check_positive_int("context_length", self.context_length)
        check_heads("num_key_value_heads", self.num_key_value_heads, self.num_attention_heads)

    @property
    def params_per_layer(self) -> int:
        """Matmul weights of one decoder layer: q, k, v, o projections and the gated MLP.

        ``d·(h·d_h) + 2·d·(h_kv·d_h) + (h·d_h)·d + 3·d·d_ff`` (biases and norms ignored).
        """
        d = self.hidden_size
        q_width = self.num_attention_heads * self.head_dim
        kv_width = self.num_key_value_heads * self.head_dim
        return d * q_width + 2 * d * kv_width + q_width * d + 3 * d * self.intermediate_size

    @property
    def params_per_token(self) -> int:
        """Matmul weights every token passes through: ``layers · params_per_layer``."""
        return self.num_hidden_layers * self.params_per_layer


def check_heads(argument: str, kv_heads: int, heads: int) -> None:
    """Grouped-query attention: the key/value heads divide the query heads."""
    if heads % kv_heads:
        fail(argument, f"a divisor of num_attention_heads ({heads}) (grouped-query attention)", kv_heads)


def _preset(name, hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, context):
    return LLMDims(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, name, context)


#: Named LLMs with their published ``config.json`` dimensions:
#: ``llama3-8b`` — meta-llama/Llama-3.1-8B(-Instruct), the LLM of OG-LLaVA
#: (4096 hidden, 32 layers, 32 heads, 8 KV heads, head_dim 128, 14336 MLP, 128256 vocab,
#: 131072 positions); ``llama3.2-1b`` — meta-llama/Llama-3.2-1B(-Instruct) (2048, 16, 32, 8,
#: 64, 8192, 128256, 131072); ``llama3.2-3b`` — meta-llama/Llama-3.2-3B(-Instruct)
#: (3072, 28, 24, 8, 128, 8192, 128256, 131072); ``vicuna-7b`` — lmsys/vicuna-7b-v1.5, the
#: LLM of LLaVA-1.5 (Llama-2-7B dims: 4096, 32, 32, 32, 128, 11008, 32000, 4096).
LLM_PRESETS: dict[str, LLMDims] = {
    "llama3-8b": _preset("llama3-8b", 4096, 32, 32, 8, 128, 14336, 128256, 131072),
    "llama3.2-1b": _preset("llama3.2-1b", 2048, 16, 32, 8, 64, 8192, 128256, 131072),
    "llama3.2-3b": _preset("llama3.2-3b", 3072, 28, 24, 8, 128, 8192, 128256, 131072),
    "vicuna-7b": _preset("vicuna-7b", 4096, 32, 32, 32, 128, 11008, 32000, 4096),
}

ConfigLike = Union[LLMDims, Mapping[str, Any], str, Any]


def _config_get(config: Any, key: str) -> Any:
    if isinstance(config, Mapping):
        return config.get(key)
    return getattr(config, key, None)


def llm_dims(config: ConfigLike) -> LLMDims:
    """:class:`LLMDims` from a transformers ``PretrainedConfig``, a ``config.json`` dict, a
    preset name of :data:`LLM_PRESETS`, or an :class:`LLMDims` (returned as is).

    VLM configs (``LlavaConfig``, ``Qwen2VLConfig``, …) are read through their nested
    ``text_config`` when they have one. Required fields: ``hidden_size``,
    ``num_hidden_layers``, ``num_attention_heads``, ``intermediate_size``, ``vocab_size``;
    optional: ``num_key_value_heads`` (default: ``num_attention_heads``), ``head_dim``
    (default: ``hidden_size // num_attention_heads``), ``max_position_embeddings``.
    """
    if isinstance(config, LLMDims):
        return config
    if isinstance(config, str):
        if config not in LLM_PRESETS:
            names = ", ".join(repr(k) for k in LLM_PRESETS)
            fail("config", f"a preset name, one of {names}", repr(config))
        return LLM_PRESETS[config]
    if config is None or isinstance(config, (bool, int, float, bytes, Sequence)):
        fail(
            "config",
            "a transformers PretrainedConfig, a config dict, a preset name or LLMDims",
            config,
            error=TypeError,
        )
    prefix = "config"
    text_config = _config_get(config, "text_config")
    if text_config is not None:
        config, prefix = text_config, "config.text_config"

    def required(key: str) -> int:
        value = _config_get(config, key)
        if value is None:
            fail(f"{prefix}.{key}", "a positive int (LLaMA-style config field)", "missing")
        return check_positive_int(f"{prefix}.{key}", value)

    hidden = required("hidden_size")
    layers = required("num_hidden_layers")
    heads = required("num_attention_heads")
    intermediate = required("intermediate_size")
    vocab = required("vocab_size")
    kv_heads = _config_get(config, "num_key_value_heads")
    if kv_heads is None:
        kv_heads = heads
    kv_heads = check_positive_int(f"{prefix}.num_key_value_heads", kv_heads)
    check_heads(f"{prefix}.num_key_value_heads", kv_heads, heads)
    head_dim = _config_get(config, "head_dim")
    if head_dim is None:
        if hidden % heads:
            fail(
                f"{prefix}.head_dim",
                f"a head_dim field, or hidden_size divisible by num_attention_heads ({heads})",
                f"hidden_size {hidden} and no head_dim",
            )
        head_dim = hidden // heads
    head_dim = check_positive_int(f"{prefix}.head_dim", head_dim)
    context = _config_get(config, "max_position_embeddings")
    if context is not None:
        context = check_positive_int(f"{prefix}.max_position_embeddings", context)
    name = _config_get(config, "_name_or_path") or _config_get(config, "model_type") or "custom"
    return LLMDims(hidden, layers, heads, kv_heads, head_dim, intermediate, vocab, str(name), context)


# ----------------------------------------------------------------------------------------
# Costs
# ----------------------------------------------------------------------------------------

_DTYPE_BYTES = {
    "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2, "half": 2,
    "fp32": 4, "float32": 4, "float": 4,
    "fp8": 1, "float8": 1, "int8": 1,
}


def dtype_bytes(dtype: Union[str, torch.dtype]) -> int:
    """Bytes per element of ``dtype``: a ``torch.dtype`` or ``"bf16"``, ``"fp16"``,
    ``"fp32"``, ``"fp8"``, ``"int8"`` (and their long spellings)."""
    if isinstance(dtype, torch.dtype):
        if dtype.is_complex or dtype == torch.bool:
            fail("dtype", "a real floating or integer dtype", dtype)
        return dtype.itemsize
    if not isinstance(dtype, str):
        fail("dtype", "a torch.dtype or a dtype name such as 'bf16'", dtype, error=TypeError)
    key = dtype.lower().removeprefix("torch.")
    if key not in _DTYPE_BYTES:
        names = ", ".join(repr(k) for k in _DTYPE_BYTES)
        fail("dtype", f"one of {names} or a torch.dtype", repr(dtype))
    return _DTYPE_BYTES[key]


def _check_tokens(argument: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(argument, "a non-negative int (tokens)", value, error=TypeError)
    if value < 0:
        fail(argument, "a non-negative int (tokens)", value)
    return value


def kv_cache_bytes(tokens: int, config: ConfigLike, dtype: Union[str, torch.dtype] = "bf16") -> int:
    """KV-cache bytes of ``tokens`` cached positions:
    ``layers × 2 (K and V) × kv_heads × head_dim × dtype_bytes × tokens``."""
    tokens = _check_tokens("tokens", tokens)
    dims = llm_dims(config)
    per_token = dims.num_hidden_layers * 2 * dims.num_key_value_heads * dims.head_dim
    return per_token * dtype_bytes(dtype) * tokens


_LM_HEAD_MODES = ("last", "all", "none")


def linear_flops(seq_len: int, config: ConfigLike, *, lm_head: str = "last") -> int:
    """FLOPs of the weight matmuls for one sequence of ``seq_len`` tokens:
    ``2·params_per_token·L`` (q/k/v/o and gated MLP gate/up/down of every layer, see
    :attr:`LLMDims.params_per_layer`) plus the LM head ``2·hidden·vocab·n``, with ``n`` = 1
    (``lm_head="last"``: generation prefill computes only the last position's logits),
    ``L`` (``"all"``: a training forward) or 0 (``"none"``). Norms, RoPE, activations and
    the softmax are not counted."""
    seq_len = _check_tokens("seq_len", seq_len)
    _check_choice("lm_head", lm_head, _LM_HEAD_MODES)
    dims = llm_dims(config)
    logits = {"last": min(seq_len, 1), "all": seq_len, "none": 0}[lm_head]
    return 2 * dims.params_per_token * seq_len + 2 * dims.hidden_size * dims.vocab_size * logits


def attention_flops(seq_len: int, config: ConfigLike, *, causal: bool = True) -> int:
    """FLOPs of the attention score and value products for one sequence of ``seq_len``:
    ``layers · 4 · heads · head_dim · pairs`` (``2·heads·head_dim`` for ``QKᵀ`` and as many
    for ``AV`` per query–key pair). ``causal=True`` (default) counts only the pairs a causal
    mask keeps, exactly ``L(L+1)/2`` (≈ half of the dense ``L²``); ``causal=False`` counts
    ``L²``."""
    seq_len = _check_tokens("seq_len", seq_len)
    _check_bool("causal", causal)
    dims = llm_dims(config)
    pairs = seq_len * (seq_len + 1) // 2 if causal else seq_len * seq_len
    return dims.num_hidden_layers * 4 * dims.num_attention_heads * dims.head_dim * pairs


@dataclass(frozen=True)
class PrefillFlops:
    """Prefill FLOPs of one sequence, split into weight matmuls and attention."""

    linear: int
    attention: int

    @property
    def total(self) -> int:
        return self.linear + self.attention


def prefill_flops(
    seq_len: int, config: ConfigLike, *, causal: bool = True, lm_head: str = "last"
) -> PrefillFlops:
    """Prefill FLOPs of one sequence of ``seq_len`` tokens: :func:`linear_flops` +
    :func:`attention_flops`."""
    return PrefillFlops(
        linear_flops(seq_len, config, lm_head=lm_head),
        attention_flops(seq_len, config, causal=causal),
    )


@dataclass(frozen=True)
class BatchBudget:
    """The LLM cost of a batch, packed (varlen) versus right-padded to ``max_length``.

    Attributes:
        lengths: context tokens per sample (visual + text).
        max_length: ``L_max``.
        total_tokens: ``Σ L_i`` (the packed batch).
        padded_tokens: ``B · L_max`` (the padded batch).
        kv_cache_bytes, kv_cache_bytes_padded: :func:`kv_cache_bytes` of those token counts.
        prefill_flops_linear, prefill_flops_attention: ``Σ_i`` of :func:`prefill_flops` over
            the sequences (varlen attention: each sequence attends only to itself).
        prefill_flops_linear_padded, prefill_flops_attention_padded: ``B ×`` the cost of one
            ``L_max`` sequence (dense attention over pad rows, as in the reference).
        dtype_bytes: bytes per KV-cache element.
        context_length: the cap checked, or None.
        over_context: indices of the samples longer than ``context_length``.
    """

    lengths: tuple[int, ...]
    max_length: int
    total_tokens: int
    padded_tokens: int
    kv_cache_bytes: int
    kv_cache_bytes_padded: int
    prefill_flops_linear: int
    prefill_flops_attention: int
    prefill_flops_linear_padded: int
    prefill_flops_attention_padded: int
    dtype_bytes: int
    context_length: int | None = None
    over_context: tuple[int, ...] = ()

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    @property
    def prefill_flops(self) -> int:
        """Total prefill FLOPs of the packed batch."""
        return self.prefill_flops_linear + self.prefill_flops_attention

    @property
    def prefill_flops_padded(self) -> int:
        """Total prefill FLOPs of the padded batch."""
        return self.prefill_flops_linear_padded + self.prefill_flops_attention_padded

    @property
    def fits(self) -> bool:
        """True when no sample exceeds ``context_length`` (always True without a cap)."""
        return not self.over_context


def batch_budget(
    lengths: Sequence[int],
    config: ConfigLike,
    *,
    text_tokens: Union[int, Sequence[int]] = 0,
    dtype: Union[str, torch.dtype] = "bf16",
    causal: bool = True,
    lm_head: str = "last",
    context_length: int | None = None,
) -> BatchBudget:
    """Cost of a batch whose sample ``i`` carries ``lengths[i]`` visual tokens plus
    ``text_tokens`` (one int for all samples, or one per sample) text tokens.

    ``context_length`` caps the context: samples with ``L_i > context_length`` are listed in
    :attr:`BatchBudget.over_context` (pass ``llm_dims(config).context_length`` for the
    model's own window, or a training truncation length such as 2048).
    """
    if isinstance(lengths, (str, bytes, torch.Tensor)) or not isinstance(lengths, Sequence):
        expected = "a sequence of non-negative ints (tokens per sample)"
        fail("lengths", expected, lengths, error=TypeError)
    visual = [_check_tokens(f"lengths[{i}]", n) for i, n in enumerate(lengths)]
    if isinstance(text_tokens, int) and not isinstance(text_tokens, bool):
        text = [_check_tokens("text_tokens", text_tokens)] * len(visual)
    elif isinstance(text_tokens, Sequence) and not isinstance(text_tokens, (str, bytes)):
        if len(text_tokens) != len(visual):
            fail("text_tokens", f"an int or {len(visual)} ints (one per sample)", text_tokens)
        text = [_check_tokens(f"text_tokens[{i}]", n) for i, n in enumerate(text_tokens)]
    else:
        fail("text_tokens", "an int or a sequence of ints", text_tokens, error=TypeError)
    if context_length is not None:
        check_positive_int("context_length", context_length)
    dims = llm_dims(config)
    per_elem = dtype_bytes(dtype)
    seqs = tuple(v + t for v, t in zip(visual, text))
    longest = max(seqs, default=0)
    per_seq = [prefill_flops(n, dims, causal=causal, lm_head=lm_head) for n in seqs]
    padded_one = prefill_flops(longest, dims, causal=causal, lm_head=lm_head)
    batch = len(seqs)
    over = tuple(i for i, n in enumerate(seqs) if context_length is not None and n > context_length)
    return BatchBudget(
        lengths=seqs,
        max_length=longest,
        total_tokens=sum(seqs),
        padded_tokens=batch * longest,
        kv_cache_bytes=kv_cache_bytes(sum(seqs), dims, dtype),
        kv_cache_bytes_padded=kv_cache_bytes(batch * longest, dims, dtype),
        prefill_flops_linear=sum(f.linear for f in per_seq),
        prefill_flops_attention=sum(f.attention for f in per_seq),
        prefill_flops_linear_padded=batch * padded_one.linear,
        prefill_flops_attention_padded=batch * padded_one.attention,
        dtype_bytes=per_elem,
        context_length=context_length,
        over_context=over,
    )
