"""Bad input to the public API: each case must raise a named error, never answer silently.

A table of cases. Each builds a bad call of a public entry point and states the error class
and a regex its message must match: the argument's name, at the start of the message, as the
user spelled it (``masks[1]``, ``cu_seq_lens_q``), never an internal one. The tensor ops'
cases run on both backends (the PyTorch path and the Triton kernels, under the interpreter on
the CPU: every input here is tiny). Nothing here can block, so no subprocess is needed: the
cases that could hang (special files) live in ``tests/test_bad_input_files.py``.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import pytest
import torch

import ogkernels
from ogkernels import MaskBitmaps, OGFusion, OGTokenOptions, PackedMasks, VarlenBatch, downsample_masks, og_tokens
from ogkernels.attention import varlen_attention
from ogkernels.budget import (
    LLMDims,
    attention_flops,
    batch_budget,
    dtype_bytes,
    kv_cache_bytes,
    linear_flops,
    llm_dims,
    og_token_counts,
    visual_token_count,
)
from ogkernels.checkpoints import CheckpointError, connector_state_dict, load_reference_checkpoint
from ogkernels.packing import embed_packed, pack_multimodal, plan_packing

from .backends import using


@dataclass(frozen=True)
class Case:
    """``call()`` must raise ``error`` with a message matching ``pattern`` (``re.search``)."""

    id: str
    call: Callable[[], Any]
    error: type[BaseException]
    pattern: str


def table(prefix: str, cases: list[Case]) -> list[Case]:
    """``cases`` with ids prefixed by the entry point they call."""
    return [Case(f"{prefix}: {case.id}", case.call, case.error, case.pattern) for case in cases]


def named(argument: str) -> str:
    """The message starts with ``argument`` followed by ``:`` (the ``fail`` convention)."""
    return "^" + re.escape(argument) + ":"


# --------------------------------------------------------------------------- inputs

V, F = 16, 8


def masks(n: int = 2, h: int = 5, w: int = 7, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, h, w, generator=g) < 0.5


def features(b: int = 2, v: int = V, f: int = F, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(b, v, f, generator=g).to(dtype)


def bitmaps(**changes) -> MaskBitmaps:
    fields = dict(bits=torch.zeros(2, V, dtype=torch.bool), nonempty=torch.ones(2, dtype=torch.bool), grid=(1, V),
                  alpha=0.5, mode="flat", frame="none")  # fmt: skip
    fields.update(changes)
    return MaskBitmaps(**fields)


def varlen(**changes) -> VarlenBatch:
    fields = dict(values=torch.zeros(5, 3), cu_seqlens=torch.tensor([0, 2, 5], dtype=torch.int32), max_seqlen=3)
    fields.update(changes)
    return VarlenBatch(**fields)


def capped(**changes) -> dict:
    """og_tokens keywords with a cap that ranks masks by score."""
    out = dict(max_image_tokens=40, drop_priority="score")
    out.update(changes)
    return out


def fusion(**changes) -> OGFusion:
    torch.manual_seed(0)
    return OGFusion(F, 12, **changes)


def qkv(total: int = 5, heads: int = 2, kv_heads: int = 2, dim: int = 4, dtype=torch.float32):
    g = torch.Generator().manual_seed(2)
    q = torch.randn(total, heads, dim, generator=g).to(dtype)
    k = torch.randn(total, kv_heads, dim, generator=g).to(dtype)
    return q, k, k.clone()


CU = torch.tensor([0, 2, 5], dtype=torch.int32)


def attend(**changes):
    q, k, v = qkv()
    args = dict(q=q, k=k, v=v, cu_seqlens_q=CU, cu_seqlens_k=CU, max_seqlen_q=3, max_seqlen_k=3)
    args.update(changes)
    return varlen_attention(**args)


def hf_attend(position_ids=None, attention_mask=None, batch: int = 1, length: int = 6, dropout: float = 0.0, **kwargs):
    from ogkernels.integrations.hf_attention import varlen_attention_forward

    g = torch.Generator().manual_seed(3)
    query = torch.randn(batch, 2, length, 4, generator=g)
    module = torch.nn.Module()
    module.is_causal = True
    if position_ids is not None:
        kwargs["position_ids"] = position_ids
    return varlen_attention_forward(module, query, query.clone(), query.clone(), attention_mask, dropout, **kwargs)


CU6 = torch.tensor([0, 2, 6], dtype=torch.int32)
POS_2_4 = torch.tensor([[0, 1, 0, 1, 2, 3]])
POS_3_3 = torch.tensor([[0, 1, 2, 0, 1, 2]])


def pack(**changes):
    ids = [torch.tensor([1, 2, -200, 3]), torch.tensor([4, 5])]
    image = VarlenBatch(torch.zeros(3, 4), torch.tensor([0, 3], dtype=torch.int32), 3)
    args = dict(input_ids=ids, image_tokens=image, embed_tokens=lambda t: torch.zeros(t.numel(), 4))
    args.update(changes)
    return pack_multimodal(**args)


def plan(**changes):
    args = dict(input_ids=[torch.tensor([1, 2, -200, 3]), torch.tensor([4, 5])], image_lengths=[3, 0])
    args.update(changes)
    return plan_packing(**args)


def checkpoint_file(tmp: str, tensors: dict[str, torch.Tensor]) -> str:
    path = f"{tmp}/mm_projector.bin"
    torch.save(tensors, path)
    return path


def projector_tensors(vision: int = F, llm: int = 12, bom: bool = True, dtype=torch.float32) -> dict:
    out = {
        "model.mm_projector.0.weight": torch.zeros(llm, vision, dtype=dtype),
        "model.mm_projector.0.bias": torch.zeros(llm, dtype=dtype),
        "model.mm_projector.2.weight": torch.zeros(llm, llm, dtype=dtype),
        "model.mm_projector.2.bias": torch.zeros(llm, dtype=dtype),
    }
    if bom:
        out["model.mm_bom_mask_token.mm_bom_mask_token"] = torch.zeros(1, vision, dtype=dtype)
    return out


def only_first_layer(bom: bool) -> dict:
    return {k: v for k, v in projector_tensors(bom=bom).items() if ".2." not in k}


META = torch.device("meta")
NUMPY_MASKS = np.zeros((2, 5, 7), dtype=bool)


# --------------------------------------------------------------------------- tensor ops (both backends)

DOWNSAMPLE = [
    Case("numpy masks", lambda: downsample_masks(NUMPY_MASKS, V), TypeError, named("masks") + ".*torch.from_numpy"),
    Case("numpy masks in a list", lambda: downsample_masks([masks(), NUMPY_MASKS], V), TypeError, named("masks[1]") + ".*torch.from_numpy"),
    Case("masks None", lambda: downsample_masks(None, V), TypeError, named("masks")),
    Case("masks a str", lambda: downsample_masks("masks.npy", V), TypeError, named("masks")),
    Case("masks a dict", lambda: downsample_masks({"a": masks()}, V), TypeError, named("masks")),
    Case("masks list holding an int", lambda: downsample_masks([masks(), 3], V), TypeError, named("masks[1]")),
    Case("2-D masks", lambda: downsample_masks(masks()[0], V), ValueError, named("masks") + ".*\\(N, H, W\\)"),
    Case("4-D masks", lambda: downsample_masks(masks()[None], V), ValueError, named("masks")),
    Case("H = 0", lambda: downsample_masks(torch.zeros(2, 0, 4, dtype=torch.bool), V), ValueError, named("masks") + ".*H >= 1"),
    Case("W = 0", lambda: downsample_masks(torch.zeros(2, 4, 0, dtype=torch.bool), V), ValueError, named("masks")),
    Case("complex masks", lambda: downsample_masks(masks().to(torch.complex64), V), TypeError, named("masks")),
    Case("soft float masks", lambda: downsample_masks(torch.full((1, 4, 4), 0.5), V), ValueError, named("masks") + ".*0, 1"),
    Case("NaN float masks", lambda: downsample_masks(torch.full((1, 4, 4), math.nan), V), ValueError, named("masks")),
    Case("meta masks", lambda: downsample_masks(masks().to(META), V), ValueError, named("masks") + ".*meta"),
    Case("meta packed masks", lambda: downsample_masks(PackedMasks(torch.zeros(1, 2, dtype=torch.uint8, device=META), 3, 5), V), ValueError, named("masks") + ".*meta"),
    Case("masks on two devices", lambda: downsample_masks([masks(), masks().to(META)], V), ValueError, named("masks[1]")),
    Case("grid 0", lambda: downsample_masks(masks(), 0), ValueError, named("grid")),
    Case("grid negative", lambda: downsample_masks(masks(), -4), ValueError, named("grid")),
    Case("grid past int32", lambda: downsample_masks(masks(), 2**31), ValueError, named("grid") + ".*2147483647"),
    Case("grid pair past int32", lambda: downsample_masks(masks(), (2**20, 2**20)), ValueError, named("grid")),
    Case("grid float", lambda: downsample_masks(masks(), 16.0), TypeError, named("grid")),
    Case("grid bool", lambda: downsample_masks(masks(), True), TypeError, named("grid")),
    Case("grid str", lambda: downsample_masks(masks(), "16"), TypeError, named("grid")),
    Case("grid one entry", lambda: downsample_masks(masks(), (4,)), TypeError, named("grid")),
    Case("grid three entries", lambda: downsample_masks(masks(), (2, 2, 4)), TypeError, named("grid")),
    Case("grid zero side", lambda: downsample_masks(masks(), (0, 4)), ValueError, named("grid")),
    Case("grid float sides", lambda: downsample_masks(masks(), (4.0, 4.0)), TypeError, named("grid")),
    Case("patch grid not square", lambda: downsample_masks(masks(), 15, mode="patch"), ValueError, named("grid") + ".*square"),
    Case("alpha 0", lambda: downsample_masks(masks(), V, alpha=0), ValueError, named("alpha")),
    Case("alpha negative", lambda: downsample_masks(masks(), V, alpha=-0.5), ValueError, named("alpha")),
    Case("alpha NaN", lambda: downsample_masks(masks(), V, alpha=math.nan), ValueError, named("alpha")),
    Case("alpha inf", lambda: downsample_masks(masks(), V, alpha=math.inf), ValueError, named("alpha")),
    Case("alpha str", lambda: downsample_masks(masks(), V, alpha="0.5"), TypeError, named("alpha")),
    Case("alpha bool", lambda: downsample_masks(masks(), V, alpha=True), TypeError, named("alpha")),
    Case("alpha tensor", lambda: downsample_masks(masks(), V, alpha=torch.tensor(0.5)), TypeError, named("alpha")),
    Case("mode unknown", lambda: downsample_masks(masks(), V, mode="2d"), ValueError, named("mode")),
    Case("frame with flat", lambda: downsample_masks(masks(), V, frame="pad"), ValueError, named("frame")),
    Case("frame unknown", lambda: downsample_masks(masks(), V, mode="patch", frame="letterbox"), ValueError, named("frame")),
]

OG_TOKENS = [
    Case("numpy features", lambda: og_tokens(features().numpy(), [masks(), masks()]), TypeError, named("features")),
    Case("2-D features", lambda: og_tokens(features()[0], [masks(), masks()]), ValueError, named("features")),
    Case("integer features", lambda: og_tokens(features().long(), [masks(), masks()]), TypeError, named("features")),
    Case("complex features", lambda: og_tokens(features().to(torch.complex64), [masks(), masks()]), TypeError, named("features")),
    Case("V = 0 features", lambda: og_tokens(features(v=0), [masks(), masks()]), ValueError, named("features")),
    Case("meta features", lambda: og_tokens(features().to(META), [masks(), masks()]), ValueError, named("features") + ".*meta"),
    Case("one mask entry for two images", lambda: og_tokens(features(), [masks()]), ValueError, named("masks") + ".*2 entries"),
    Case("masks an int", lambda: og_tokens(features(), 3), TypeError, named("masks")),
    Case("masks one (N, H, W) tensor", lambda: og_tokens(features(), masks()), TypeError, named("masks")),
    Case("numpy masks", lambda: og_tokens(features(), NUMPY_MASKS), TypeError, named("masks") + "(?!.*PackedMasks)"),
    Case("numpy mask entry", lambda: og_tokens(features(), [masks(), NUMPY_MASKS]), TypeError, named("masks[1]") + ".*torch.from_numpy"),
    Case("str mask entry", lambda: og_tokens(features(), [masks(), "x.png"]), TypeError, named("masks[1]")),
    Case("1-D mask entry", lambda: og_tokens(features(), [masks(), torch.ones(V, dtype=torch.bool)]), ValueError, named("masks[1]")),
    Case("bitmaps of another V", lambda: og_tokens(features(), [masks(), torch.ones(2, V + 1, dtype=torch.bool)]), ValueError, named("masks[1]") + ".*V = 16"),
    Case("bitmaps holding 2", lambda: og_tokens(features(), [masks(), torch.full((2, V), 2)]), ValueError, named("masks[1]") + ".*0, 1"),
    Case("bitmaps holding -1", lambda: og_tokens(features(), [masks(), torch.full((2, V), -1)]), ValueError, named("masks[1]") + ".*0, 1"),
    Case("meta mask entry", lambda: og_tokens(features(), [masks(), masks().to(META)]), ValueError, named("masks[1]")),
    Case("soft mask entry", lambda: og_tokens(features(), [masks(), torch.full((1, 3, 3), 0.3)]), ValueError, named("masks[1]")),
    Case("bitmaps of other options", lambda: og_tokens(features(), [masks(), bitmaps(alpha=0.25)]), ValueError, named("masks[1]") + ".*alpha"),
    Case("bitmaps of a larger alpha", lambda: og_tokens(features(), [masks(), bitmaps(alpha=0.75)]), ValueError, named("masks[1]") + ".*alpha"),
    Case("bitmaps of patch mode", lambda: og_tokens(features(), [masks(), bitmaps(grid=(4, 4), mode="patch")]), ValueError, named("masks[1]") + ".*mode"),
    Case("bitmaps of another grid", lambda: og_tokens(features(), [masks(), bitmaps(bits=torch.zeros(2, 9, dtype=torch.bool), grid=(3, 3))]), ValueError, named("masks[1]")),
    Case("(B, N, H, W) of another B", lambda: og_tokens(features(), masks()[None].expand(3, -1, -1, -1)), ValueError, named("masks")),
    Case("bom_token shape", lambda: og_tokens(features(), [masks(), masks()], torch.zeros(1, F + 1)), ValueError, named("bom_token")),
    Case("bom_token dtype", lambda: og_tokens(features(), [masks(), masks()], torch.zeros(1, F, dtype=torch.float64)), TypeError, named("bom_token")),
    Case("bom_token numpy", lambda: og_tokens(features(), [masks(), masks()], np.zeros((1, F), np.float32)), TypeError, named("bom_token")),
    Case("bom_token on meta", lambda: og_tokens(features(), [masks(), masks()], torch.zeros(1, F, device=META)), ValueError, named("bom_token")),
    Case("options a dict", lambda: og_tokens(features(), [masks(), masks()], options={"alpha": 0.5}), TypeError, named("options")),
    Case("options a str", lambda: og_tokens(features(), [masks(), masks()], options="reference"), TypeError, named("options")),
    Case("unknown option", lambda: og_tokens(features(), [masks(), masks()], mask_limit=3), TypeError, named("mask_limit")),
    Case("global_view unknown", lambda: og_tokens(features(), [masks(), masks()], global_view="sum"), ValueError, named("global_view")),
    Case("max_masks 0", lambda: og_tokens(features(), [masks(), masks()], max_masks=0), ValueError, named("max_masks")),
    Case("max_masks float", lambda: og_tokens(features(), [masks(), masks()], max_masks=1.5), TypeError, named("max_masks")),
    Case("max_tokens 0", lambda: og_tokens(features(), [masks(), masks()], max_tokens=0), ValueError, named("max_tokens")),
    Case("max_tokens negative", lambda: og_tokens(features(), [masks(), masks()], max_tokens=-8), ValueError, named("max_tokens")),
    Case("max_tokens float", lambda: og_tokens(features(), [masks(), masks()], max_tokens=64.0), TypeError, named("max_tokens")),
    Case("max_tokens bool", lambda: og_tokens(features(), [masks(), masks()], max_tokens=True), TypeError, named("max_tokens")),
    Case("max_tokens too small", lambda: og_tokens(features(), [masks(), masks()], max_tokens=3), ValueError, named("max_tokens") + ".*tokens"),
    Case("max_tokens past int32", lambda: og_tokens(features(), [masks(), masks()], max_tokens=2**31), ValueError, named("max_tokens")),
    Case("max_image_tokens below the global rows", lambda: og_tokens(features(), [masks(), masks()], global_view="full", max_image_tokens=V - 1), ValueError, named("max_image_tokens") + ".*>= 16"),
    Case("max_batch_tokens below the global rows", lambda: og_tokens(features(), [masks(), masks()], global_view="full", max_batch_tokens=V), ValueError, named("max_batch_tokens") + ".*>= 32"),
    Case("mask_scores missing", lambda: og_tokens(features(), [masks(), masks()], **capped()), ValueError, named("mask_scores")),
    Case("mask_scores too few", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[torch.ones(2)], **capped()), ValueError, named("mask_scores")),
    Case("mask_scores wrong length", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[torch.ones(2), torch.ones(3)], **capped()), ValueError, named("mask_scores[1]")),
    Case("mask_scores integer", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[torch.ones(2), torch.ones(2, dtype=torch.int64)], **capped()), TypeError, named("mask_scores[1]")),
    Case("mask_scores NaN", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[torch.ones(2), torch.tensor([0.5, math.nan])], **capped()), ValueError, named("mask_scores[1]") + ".*finite"),
    Case("mask_scores inf", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[torch.tensor([math.inf, 0.5]), torch.ones(2)], **capped()), ValueError, named("mask_scores[0]") + ".*finite"),
    Case("mask_scores numpy", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[np.ones(2), np.ones(2)], **capped()), TypeError, named("mask_scores[0]")),
    Case("mask_scores complex", lambda: og_tokens(features(), [masks(), masks()], mask_scores=[torch.ones(2, dtype=torch.complex64), torch.ones(2)], **capped()), TypeError, named("mask_scores[0]")),
    Case("grid option of another V", lambda: og_tokens(features(), [masks(), masks()], mode="patch", grid=(3, 3)), ValueError, named("grid")),
    Case("og_token_counts numpy masks", lambda: og_token_counts(NUMPY_MASKS, V), TypeError, named("masks")),
    Case("og_token_counts numpy entry", lambda: og_token_counts([NUMPY_MASKS], V), TypeError, named("masks[0]") + ".*torch.from_numpy"),
    Case("og_token_counts grid 0", lambda: og_token_counts([masks()], 0), ValueError, named("grid")),
    Case("og_token_counts grid float", lambda: og_token_counts([masks()], 16.0), TypeError, named("grid")),
    Case("og_token_counts grid against options", lambda: og_token_counts([masks()], (2, 8), OGTokenOptions(mode="patch", grid=(4, 4))), ValueError, named("grid")),
    Case("og_token_counts bad option", lambda: og_token_counts([masks()], V, alpha=-1), ValueError, named("alpha")),
]

FUSION_FORWARD = [
    Case("features of another width", lambda: fusion()(features(f=F + 1), [masks(), masks()]), ValueError, named("image_features") + ".*vision_dim"),
    Case("features of another dtype", lambda: fusion()(features(dtype=torch.float64), [masks(), masks()]), TypeError, named("image_features") + ".*dtype"),
    Case("integer features", lambda: fusion()(features().long(), [masks(), masks()]), TypeError, named("image_features")),
    Case("2-D features", lambda: fusion()(features()[0], [masks(), masks()]), ValueError, named("image_features")),
    Case("numpy features", lambda: fusion()(features().numpy(), [masks(), masks()]), TypeError, named("image_features")),
    Case("meta features", lambda: fusion()(features().to(META), [masks(), masks()]), ValueError, named("image_features")),
    Case("plain path numpy features", lambda: fusion()(features().numpy(), None), TypeError, named("image_features")),
    Case("output unknown", lambda: fusion()(features(), [masks(), masks()], output="dense"), ValueError, named("output")),
    Case("numpy masks", lambda: fusion()(features(), NUMPY_MASKS), TypeError, named("masks") + "(?!.*PackedMasks)"),
    Case("numpy mask entry", lambda: fusion()(features(), [NUMPY_MASKS, None]), TypeError, named("masks[0]") + ".*torch.from_numpy"),
    Case("too many mask entries", lambda: fusion()(features(), [masks(), masks(), None]), ValueError, named("masks")),
    Case("max_tokens negative", lambda: fusion()(features(), [masks(), masks()], max_tokens=-1), ValueError, named("max_tokens")),
    Case("max_tokens str", lambda: fusion()(features(), [masks(), masks()], max_tokens="64"), TypeError, named("max_tokens")),
    Case("mask_scores NaN", lambda: fusion(**capped())(features(), [masks(), masks()], mask_scores=[torch.tensor([math.nan, 1.0]), torch.ones(2)]), ValueError, named("mask_scores[0]")),
]

TENSOR_CASES = table("downsample_masks", DOWNSAMPLE) + table("og_tokens", OG_TOKENS) + table("OGFusion.forward", FUSION_FORWARD)


@pytest.mark.parametrize("case", TENSOR_CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_tensor_op_bad_input(case: Case, path: str) -> None:
    with using(path), pytest.raises(case.error, match=case.pattern):
        case.call()


# --------------------------------------------------------------------------- objects and options

OPTIONS = [
    Case("global_view int", lambda: OGTokenOptions(global_view=1), ValueError, named("global_view")),
    Case("no_masktoken str", lambda: OGTokenOptions(no_masktoken="yes"), TypeError, named("no_masktoken")),
    Case("image_filling int", lambda: OGTokenOptions(image_filling=1), TypeError, named("image_filling")),
    Case("averaging None", lambda: OGTokenOptions(averaging=None), TypeError, named("averaging")),
    Case("gate numpy bool", lambda: OGTokenOptions(gate=np.bool_(True)), TypeError, named("gate")),
    Case("max_masks negative", lambda: OGTokenOptions(max_masks=-1), ValueError, named("max_masks")),
    Case("max_masks bool", lambda: OGTokenOptions(max_masks=True), TypeError, named("max_masks")),
    Case("maskless unknown", lambda: OGTokenOptions(maskless="drop"), ValueError, named("maskless")),
    Case("alpha None", lambda: OGTokenOptions(alpha=None), TypeError, named("alpha")),
    Case("alpha -inf", lambda: OGTokenOptions(alpha=-math.inf), ValueError, named("alpha")),
    Case("mode None", lambda: OGTokenOptions(mode=None), ValueError, named("mode")),
    Case("frame crop with flat", lambda: OGTokenOptions(frame="crop"), ValueError, named("frame")),
    Case("grid (4, 0)", lambda: OGTokenOptions(mode="patch", grid=(4, 0)), ValueError, named("grid")),
    Case("grid of floats", lambda: OGTokenOptions(mode="patch", grid=(4.0, 4.0)), TypeError, named("grid")),
    Case("grid a str", lambda: OGTokenOptions(grid="4x4"), TypeError, named("grid")),
    Case("max_image_tokens 0", lambda: OGTokenOptions(max_image_tokens=0), ValueError, named("max_image_tokens")),
    Case("max_image_tokens past int32", lambda: OGTokenOptions(max_image_tokens=2**31), ValueError, named("max_image_tokens")),
    Case("max_batch_tokens float", lambda: OGTokenOptions(max_batch_tokens=100.0), TypeError, named("max_batch_tokens")),
    Case("drop_priority unknown", lambda: OGTokenOptions(drop_priority="iou"), ValueError, named("drop_priority")),
    Case("resolve a dict", lambda: OGTokenOptions.resolve({"alpha": 0.5}), TypeError, named("options")),
    Case("resolve an unknown field", lambda: OGTokenOptions.resolve(None, mask_limit=2), TypeError, named("mask_limit")),
    Case("replace an unknown field", lambda: OGTokenOptions().replace(budget=3), TypeError, named("budget")),
    Case("replace a bad value", lambda: OGTokenOptions().replace(alpha=0), ValueError, named("alpha")),
    Case("from_dict a list", lambda: OGTokenOptions.from_dict([("alpha", 0.5)]), TypeError, named("values")),
    Case("from_dict an unknown key", lambda: OGTokenOptions.from_dict({"alpha": 0.5, "beta": 1}), TypeError, named("beta")),
    Case("from_dict a bad grid", lambda: OGTokenOptions.from_dict({"mode": "patch", "grid": [4, -4]}), ValueError, named("grid")),
]

MASK_BITMAPS = [
    Case("bits numpy", lambda: bitmaps(bits=np.zeros((2, V), bool)), TypeError, named("MaskBitmaps.bits")),
    Case("bits uint8", lambda: bitmaps(bits=torch.zeros(2, V, dtype=torch.uint8)), TypeError, named("MaskBitmaps.bits")),
    Case("bits 1-D", lambda: bitmaps(bits=torch.zeros(V, dtype=torch.bool)), ValueError, named("MaskBitmaps.bits")),
    Case("bits of another V", lambda: bitmaps(bits=torch.zeros(2, V + 1, dtype=torch.bool)), ValueError, named("MaskBitmaps.bits")),
    Case("nonempty numpy", lambda: bitmaps(nonempty=np.ones(2, bool)), TypeError, named("MaskBitmaps.nonempty")),
    Case("nonempty of another N", lambda: bitmaps(nonempty=torch.ones(3, dtype=torch.bool)), ValueError, named("MaskBitmaps.nonempty")),
    Case("nonempty uint8", lambda: bitmaps(nonempty=torch.ones(2, dtype=torch.uint8)), TypeError, named("MaskBitmaps.nonempty")),
    Case("nonempty on meta", lambda: bitmaps(nonempty=torch.ones(2, dtype=torch.bool, device=META)), ValueError, named("MaskBitmaps.nonempty")),
    Case("grid an int", lambda: bitmaps(grid=V), TypeError, named("MaskBitmaps.grid")),
    Case("grid of three", lambda: bitmaps(grid=(1, 4, 4)), ValueError, named("MaskBitmaps.grid")),
    Case("grid zero", lambda: bitmaps(grid=(0, V)), ValueError, named("MaskBitmaps.grid")),
    Case("alpha 0", lambda: bitmaps(alpha=0.0), ValueError, named("MaskBitmaps.alpha")),
    Case("alpha str", lambda: bitmaps(alpha="0.5"), TypeError, named("MaskBitmaps.alpha")),
    Case("mode unknown", lambda: bitmaps(mode="2d"), ValueError, named("MaskBitmaps.mode")),
    Case("frame unknown", lambda: bitmaps(frame="letterbox"), ValueError, named("MaskBitmaps.frame")),
    Case("frame with flat", lambda: bitmaps(frame="pad"), ValueError, named("MaskBitmaps.frame")),
    Case("PackedMasks bits numpy", lambda: PackedMasks(np.zeros((1, 2), np.uint8), 3, 5), TypeError, named("PackedMasks.bits")),
    Case("PackedMasks bits bool", lambda: PackedMasks(torch.zeros(1, 2, dtype=torch.bool), 3, 5), TypeError, named("PackedMasks.bits")),
    Case("PackedMasks bytes per mask", lambda: PackedMasks(torch.zeros(1, 3, dtype=torch.uint8), 3, 5), ValueError, named("PackedMasks.bits")),
    Case("PackedMasks height 0", lambda: PackedMasks(torch.zeros(1, 0, dtype=torch.uint8), 0, 5), ValueError, named("PackedMasks.height")),
    Case("PackedMasks width float", lambda: PackedMasks(torch.zeros(1, 2, dtype=torch.uint8), 3, 5.0), TypeError, named("PackedMasks.width")),
]

VARLEN = [
    Case("values numpy", lambda: varlen(values=np.zeros((5, 3))), TypeError, named("values")),
    Case("values 0-d", lambda: varlen(values=torch.tensor(1.0)), ValueError, named("values")),
    Case("cu_seqlens numpy", lambda: varlen(cu_seqlens=np.array([0, 2, 5], np.int32)), TypeError, named("cu_seqlens")),
    Case("cu_seqlens int64", lambda: varlen(cu_seqlens=torch.tensor([0, 2, 5])), TypeError, named("cu_seqlens")),
    Case("cu_seqlens float", lambda: varlen(cu_seqlens=torch.tensor([0.0, 2.0, 5.0])), TypeError, named("cu_seqlens")),
    Case("cu_seqlens 2-D", lambda: varlen(cu_seqlens=CU[None]), TypeError, named("cu_seqlens")),
    Case("cu_seqlens empty", lambda: varlen(cu_seqlens=torch.zeros(0, dtype=torch.int32)), ValueError, named("cu_seqlens")),
    Case("cu_seqlens not from 0", lambda: varlen(cu_seqlens=torch.tensor([1, 2, 5], dtype=torch.int32)), ValueError, named("cu_seqlens") + ".*start"),
    Case("cu_seqlens decreasing", lambda: varlen(cu_seqlens=torch.tensor([0, 4, 3], dtype=torch.int32)), ValueError, named("cu_seqlens") + ".*non-decreasing.*cu_seqlens\\[2\\] = 3 < cu_seqlens\\[1\\] = 4"),
    Case("cu_seqlens past the rows", lambda: varlen(cu_seqlens=torch.tensor([0, 2, 6], dtype=torch.int32)), ValueError, named("cu_seqlens") + ".*<= 5.*cu_seqlens\\[-1\\] = 6"),
    Case("cu_seqlens on meta", lambda: varlen(cu_seqlens=CU.to(META)), ValueError, named("cu_seqlens")),
    Case("max_seqlen too small", lambda: varlen(max_seqlen=2), ValueError, named("max_seqlen")),
    Case("max_seqlen negative", lambda: varlen(cu_seqlens=torch.zeros(1, dtype=torch.int32), max_seqlen=-1), ValueError, named("max_seqlen")),
    Case("max_seqlen float", lambda: varlen(max_seqlen=3.0), TypeError, named("max_seqlen")),
    Case("max_seqlen tensor", lambda: varlen(max_seqlen=torch.tensor(3)), TypeError, named("max_seqlen")),
    Case("source_index float", lambda: varlen(source_index=torch.zeros(5)), TypeError, named("source_index")),
    Case("source_index wrong length", lambda: varlen(source_index=torch.zeros(4, dtype=torch.int64)), ValueError, named("source_index")),
    Case("source_index numpy", lambda: varlen(source_index=np.zeros(5, np.int64)), TypeError, named("source_index")),
    Case("validate a str", lambda: varlen(validate="yes"), TypeError, named("validate")),
    Case("validate an int", lambda: varlen(validate=1), TypeError, named("validate")),
    Case("to_padded width too small", lambda: varlen().to_padded(width=2), ValueError, named("width")),
    Case("to_padded width negative", lambda: varlen().to_padded(width=-1), ValueError, named("width")),
    Case("to_padded width float", lambda: varlen().to_padded(width=4.0), TypeError, named("width")),
    Case("to_padded pad_value str", lambda: varlen().to_padded(pad_value="0"), TypeError, named("pad_value")),
    Case("to_padded pad_value row of another width", lambda: varlen().to_padded(pad_value=torch.zeros(4)), ValueError, named("pad_value")),
    Case("map_values numpy", lambda: varlen().map_values(np.zeros((5, 3))), TypeError, named("values")),
    Case("map_values other rows", lambda: varlen().map_values(torch.zeros(4, 3)), ValueError, named("values")),
]

FUSION_MODULE = [
    Case("vision_dim 0", lambda: OGFusion(0, 12), ValueError, named("vision_dim")),
    Case("vision_dim float", lambda: OGFusion(8.0, 12), TypeError, named("vision_dim")),
    Case("llm_dim bool", lambda: OGFusion(8, True), TypeError, named("llm_dim")),
    Case("llm_dim str", lambda: OGFusion(8, "12"), TypeError, named("llm_dim")),
    Case("projection unknown", lambda: OGFusion(8, 12, projection="fused"), ValueError, named("projection")),
    Case("options a dict", lambda: OGFusion(8, 12, {"alpha": 0.5}), TypeError, named("options")),
    Case("unknown option", lambda: OGFusion(8, 12, mask_limit=3), TypeError, named("mask_limit")),
    Case("state dict a list", lambda: fusion().load_reference_state_dict([1, 2]), TypeError, named("state_dict")),
    Case("state dict complex weights", lambda: fusion().load_reference_state_dict(projector_tensors(dtype=torch.complex64)), CheckpointError, "mm_projector.*floating"),
    Case("state dict integer weights", lambda: fusion().load_reference_state_dict(projector_tensors(dtype=torch.int64)), CheckpointError, "mm_projector.*floating"),
    Case("state dict only mm_projector.0 with BOM", lambda: fusion().load_reference_state_dict(only_first_layer(bom=True)), CheckpointError, "missing keys.*mm_projector.2.weight"),
    Case("state dict only mm_projector.0 without BOM", lambda: fusion().load_reference_state_dict(only_first_layer(bom=False)), CheckpointError, "missing keys.*mm_bom_mask_token.*mm_projector.2.weight"),
    Case("state dict of another width", lambda: fusion().load_reference_state_dict(projector_tensors(vision=F + 1)), CheckpointError, "shape mismatches.*mm_projector.0.weight"),
    Case("state dict non-tensor value", lambda: fusion().load_reference_state_dict({"mm_projector.0.weight": [[0.0]]}), CheckpointError, "mm_projector.0.weight"),
    Case("state dict non-str key", lambda: connector_state_dict({0: torch.zeros(1)}), CheckpointError, "str parameter names"),
    Case("state dict two spellings of the BOM", lambda: connector_state_dict({"mm_bom_mask_token": torch.zeros(1, 2), "model.mm_bom_mask_token.mm_bom_mask_token": torch.zeros(1, 2)}), CheckpointError, "two keys.*mm_bom_mask_token"),
    Case("state dict 1-D weight", lambda: connector_state_dict({"mm_projector.0.weight": torch.zeros(4)}), CheckpointError, "mm_projector.0.weight.*2-D"),
    Case("from_modules BOM shape", lambda: OGFusion.from_modules(fusion().mm_projector, torch.nn.Parameter(torch.zeros(1, F + 1))), ValueError, named("bom")),
    Case("from_modules projector a Linear", lambda: OGFusion.from_modules(torch.nn.Linear(F, 12), torch.nn.Parameter(torch.zeros(1, F))), TypeError, named("mm_projector")),
    Case("from_modules BOM a tensor list", lambda: OGFusion.from_modules(fusion().mm_projector, [0.0] * F), TypeError, named("bom")),
]


def checkpoint_case(name: str, tensors: dict, pattern: str, *, strict: bool = True) -> Case:
    def call():
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            OGFusion.from_reference_checkpoint(checkpoint_file(tmp, tensors), strict=strict)

    return Case(name, call, CheckpointError, pattern)


CHECKPOINTS = [
    checkpoint_case("file of complex weights", projector_tensors(dtype=torch.complex64), "mm_projector.0.weight.*floating"),
    checkpoint_case("file of bool weights", projector_tensors(dtype=torch.bool), "floating"),
    checkpoint_case("file with only mm_projector.0 and the BOM", only_first_layer(bom=True), "missing keys.*mm_projector.2"),
    checkpoint_case("file with only mm_projector.0", only_first_layer(bom=False), "missing keys.*mm_projector.2"),
    checkpoint_case("file without mm_projector.0", {"model.mm_projector.2.weight": torch.zeros(2, 2)}, "mm_projector.0.weight"),
    Case("path an int", lambda: load_reference_checkpoint(3), TypeError, named("path")),
    Case("path bytes", lambda: load_reference_checkpoint(b"mm_projector.bin"), TypeError, named("path")),
    Case("path an empty list", lambda: load_reference_checkpoint([]), ValueError, named("path")),
    Case("path list of ints", lambda: load_reference_checkpoint([1]), TypeError, named("path")),
    Case("path missing", lambda: load_reference_checkpoint("/nonexistent/mm_projector.bin"), CheckpointError, "file not found"),
]

# --------------------------------------------------------------------------- attention

ATTENTION = [
    Case("causal a str", lambda: attend(causal="no"), TypeError, named("causal") + ".*bool"),
    Case("causal an int", lambda: attend(causal=1), TypeError, named("causal")),
    Case("causal None", lambda: attend(causal=None), TypeError, named("causal")),
    Case("q numpy", lambda: attend(q=np.zeros((5, 2, 4), np.float32)), TypeError, named("q")),
    Case("q 2-D", lambda: attend(q=torch.zeros(5, 8)), ValueError, named("q")),
    Case("q integer", lambda: attend(q=torch.zeros(5, 2, 4, dtype=torch.int64)), TypeError, named("q")),
    Case("q on meta", lambda: attend(q=torch.zeros(5, 2, 4, device=META)), ValueError, named("q") + ".*meta"),
    Case("k on meta", lambda: attend(k=torch.zeros(5, 2, 4, device=META)), ValueError, named("k")),
    Case("k of another dtype", lambda: attend(k=torch.zeros(5, 2, 4, dtype=torch.float64)), TypeError, named("k")),
    Case("v of another shape", lambda: attend(v=torch.zeros(5, 2, 3)), ValueError, named("v")),
    Case("k of another headdim", lambda: attend(k=torch.zeros(5, 2, 3), v=torch.zeros(5, 2, 3)), ValueError, named("k") + ".*headdim"),
    Case("heads not divisible", lambda: attend(q=torch.zeros(5, 3, 4)), ValueError, named("k") + ".*heads"),
    Case("cu_seqlens_q int64", lambda: attend(cu_seqlens_q=CU.long()), TypeError, named("cu_seqlens_q")),
    Case("cu_seqlens_k numpy", lambda: attend(cu_seqlens_k=CU.numpy()), TypeError, named("cu_seqlens_k")),
    Case("cu_seqlens_q 2-D", lambda: attend(cu_seqlens_q=CU[None]), ValueError, named("cu_seqlens_q")),
    Case("cu_seqlens_q not from 0", lambda: attend(cu_seqlens_q=torch.tensor([1, 2, 5], dtype=torch.int32)), ValueError, named("cu_seqlens_q")),
    Case("cu_seqlens_q short of the rows", lambda: attend(cu_seqlens_q=torch.tensor([0, 2, 4], dtype=torch.int32)), ValueError, named("cu_seqlens_q")),
    Case("cu_seqlens_k decreasing", lambda: attend(cu_seqlens_k=torch.tensor([0, 6, 5], dtype=torch.int32)), ValueError, named("cu_seqlens_k")),
    Case("cu_seqlens_k another batch", lambda: attend(cu_seqlens_k=torch.tensor([0, 5], dtype=torch.int32)), ValueError, named("cu_seqlens_k")),
    Case("max_seqlen_q too small", lambda: attend(max_seqlen_q=2), ValueError, named("max_seqlen_q")),
    Case("max_seqlen_k float", lambda: attend(max_seqlen_k=3.0), TypeError, named("max_seqlen_k")),
    Case("max_seqlen_q negative", lambda: attend(max_seqlen_q=-1), ValueError, named("max_seqlen_q")),
    Case("softmax_scale str", lambda: attend(softmax_scale="0.5"), TypeError, named("softmax_scale")),
    Case("softmax_scale NaN", lambda: attend(softmax_scale=math.nan), ValueError, named("softmax_scale")),
    Case("backend unknown", lambda: attend(backend="cudnn"), ValueError, named("backend")),
    Case("backend flash_attn on the CPU", lambda: attend(backend="flash_attn"), ValueError, named("backend")),
    Case("ogkernels.varlen_attention causal str", lambda: ogkernels.varlen_attention(*qkv(), CU, CU, 3, 3, causal="yes"), TypeError, named("causal")),
]

HF_ATTENTION = [
    Case("cu_seq_lens and position_ids disagree", lambda: hf_attend(POS_3_3, cu_seq_lens_q=CU6, max_length_q=4), ValueError, "cu_seq_lens_q.*position_ids|position_ids.*cu_seq_lens_q"),
    Case("cu_seq_lens_k and position_ids disagree", lambda: hf_attend(POS_2_4, cu_seq_lens_q=CU6, cu_seq_lens_k=torch.tensor([0, 3, 6], dtype=torch.int32), max_length_q=4, max_length_k=3), ValueError, "cu_seq_lens_k.*position_ids|position_ids.*cu_seq_lens_k"),
    Case("cu_seq_lens and position_ids of other counts", lambda: hf_attend(torch.arange(6)[None], cu_seq_lens_q=CU6, max_length_q=4), ValueError, "cu_seq_lens_q.*position_ids|position_ids.*cu_seq_lens_q"),
    Case("cu_seq_lens_q short of the rows", lambda: hf_attend(cu_seq_lens_q=torch.tensor([0, 2, 5], dtype=torch.int32), max_length_q=3), ValueError, named("cu_seq_lens_q")),
    Case("cu_seq_lens_q int64 not from 0", lambda: hf_attend(cu_seq_lens_q=torch.tensor([1, 2, 6]), max_length_q=4), ValueError, named("cu_seq_lens_q")),
    Case("cu_seq_lens_q a list", lambda: hf_attend(cu_seq_lens_q=[0, 2, 6], max_length_q=4), TypeError, named("cu_seq_lens_q")),
    Case("max_length_q too small", lambda: hf_attend(cu_seq_lens_q=CU6, max_length_q=3), ValueError, named("max_length_q")),
    Case("max_length_q missing", lambda: hf_attend(cu_seq_lens_q=CU6), ValueError, named("max_length_q")),
    Case("cu_seq_lens_q with two rows", lambda: hf_attend(batch=2, cu_seq_lens_q=CU6, max_length_q=4), ValueError, named("query")),
    Case("cu_seq_lens_q with a padding mask", lambda: hf_attend(attention_mask=torch.ones(1, 6), cu_seq_lens_q=CU6, max_length_q=4), ValueError, named("attention_mask")),
    Case("padding mask 3-D", lambda: hf_attend(attention_mask=torch.ones(1, 1, 6)), ValueError, named("attention_mask")),
    Case("padding mask of another length", lambda: hf_attend(attention_mask=torch.ones(1, 5)), ValueError, named("attention_mask")),
    Case("position_ids of another length", lambda: hf_attend(torch.arange(7)[None]), ValueError, named("position_ids")),
    Case("position_ids float", lambda: hf_attend(torch.arange(6.0)[None]), TypeError, named("position_ids")),
    Case("position_ids numpy", lambda: hf_attend(np.arange(6)[None]), TypeError, named("position_ids")),
    Case("dropout", lambda: hf_attend(dropout=0.1), ValueError, named("dropout")),
]

# --------------------------------------------------------------------------- packing

PACKING = [
    Case("input_ids a tensor", lambda: plan(input_ids=torch.tensor([1, 2, 3])), TypeError, named("input_ids")),
    Case("input_ids 2-D entry", lambda: plan(input_ids=[torch.tensor([[1, -200]]), torch.tensor([4, 5])]), ValueError, named("input_ids[0]")),
    Case("input_ids float entry", lambda: plan(input_ids=[torch.tensor([1.0, -200.0]), torch.tensor([4, 5])]), TypeError, named("input_ids[0]")),
    Case("input_ids numpy entry", lambda: plan(input_ids=[np.array([1, -200]), torch.tensor([4, 5])]), TypeError, named("input_ids[0]")),
    Case("image_lengths too few", lambda: plan(image_lengths=[3]), ValueError, named("image_lengths")),
    Case("image_lengths negative", lambda: plan(image_lengths=[-3, 0]), ValueError, named("image_lengths")),
    Case("image_lengths floats", lambda: plan(image_lengths=[3.0, 0.0]), TypeError, named("image_lengths")),
    Case("image_lengths float tensor", lambda: plan(image_lengths=torch.tensor([3.0, 0.0])), TypeError, named("image_lengths")),
    Case("image_lengths for a sample without a placeholder", lambda: plan(image_lengths=[3, 2]), ValueError, named("image_lengths[1]")),
    Case("two placeholders", lambda: plan(input_ids=[torch.tensor([-200, 1, -200]), torch.tensor([4, 5])]), ValueError, named("input_ids[0]")),
    Case("labels too few", lambda: plan(labels=[torch.tensor([1, 2, 3, 4])]), ValueError, named("labels")),
    Case("labels of another length", lambda: plan(labels=[torch.tensor([1, 2, 3]), torch.tensor([4, 5])]), ValueError, named("labels[0]")),
    Case("max_length 0", lambda: plan(max_length=0), ValueError, named("max_length")),
    Case("max_length float", lambda: plan(max_length=8.0), TypeError, named("max_length")),
    Case("max_length exceeded", lambda: plan(max_length=4), ValueError, named("input_ids[0]") + ".*max_length=4"),
    Case("truncation unknown", lambda: plan(max_length=4, truncation="drop_image"), ValueError, named("truncation")),
    Case("image_token_id str", lambda: plan(image_token_id="<image>"), TypeError, named("image_token_id")),
    Case("embed_tokens not callable", lambda: pack(embed_tokens="embed"), TypeError, named("embed_tokens")),
    Case("embed_tokens of another count", lambda: pack(embed_tokens=lambda t: torch.zeros(1, 4)), ValueError, named("embed_tokens")),
    Case("image_tokens a tensor list", lambda: pack(image_tokens=[torch.zeros(3, 4)]), TypeError, named("image_tokens")),
    Case("image_tokens of another width", lambda: pack(image_tokens=VarlenBatch(torch.zeros(3, 5), torch.tensor([0, 3], dtype=torch.int32), 3)), ValueError, named("image_tokens")),
    Case("image_tokens of another count", lambda: pack(image_tokens=VarlenBatch(torch.zeros(3, 4), torch.tensor([0, 1, 3], dtype=torch.int32), 2)), ValueError, "^image_tokens \\(sequence 1\\):"),
    Case("image_tokens None with a placeholder", lambda: pack(image_tokens=None), ValueError, named("image_tokens")),
    Case("more rows than int32 offsets hold", lambda: plan(image_lengths=[2**31, 0]), ValueError, named("image_lengths") + ".*2147483647"),
    Case("image_lengths int64 overflow in a tensor", lambda: plan(image_lengths=torch.tensor([2**40, 0])), ValueError, named("image_lengths")),
    Case("input_ids on meta", lambda: plan(input_ids=[torch.tensor([1, -200], device=META), torch.tensor([4, 5], device=META)]), ValueError, named("input_ids[0]") + ".*meta"),
    Case("pack input_ids None", lambda: pack(input_ids=None), TypeError, named("input_ids")),
    Case("embed_tokens returning 3-D rows", lambda: pack(embed_tokens=lambda t: torch.zeros(t.numel(), 1, 4)), ValueError, named("embed_tokens")),
    Case("embed_packed image_tokens None with image rows", lambda: embed_packed(plan(), None, lambda t: torch.zeros(t.numel(), 4)), ValueError, named("image_tokens") + ".*3 image rows"),
    Case("embed_packed image rows short", lambda: embed_packed(plan(), torch.zeros(2, 4), lambda t: torch.zeros(t.numel(), 4)), ValueError, named("image_tokens")),
]

# --------------------------------------------------------------------------- budget

BUDGET = [
    Case("strategy unknown", lambda: visual_token_count("clip", 336, 336), ValueError, named("strategy")),
    Case("strategy int", lambda: visual_token_count(1, 336, 336), TypeError, named("strategy")),
    Case("height 0", lambda: visual_token_count("llava", 0, 336), ValueError, named("height")),
    Case("width float", lambda: visual_token_count("llava", 336, 336.0), TypeError, named("width")),
    Case("unknown strategy parameter", lambda: visual_token_count("llava", 336, 336, tile=2), TypeError, "tile"),
    Case("patch larger than the image", lambda: visual_token_count("llava", 336, 336, image_size=14, patch_size=28), ValueError, named("patch_size")),
    Case("kv heads not dividing heads", lambda: llm_dims({**LLAMA, "num_key_value_heads": 5}), ValueError, named("config.num_key_value_heads") + ".*32"),
    Case("more kv heads than heads", lambda: llm_dims({**LLAMA, "num_key_value_heads": 64}), ValueError, named("config.num_key_value_heads")),
    Case("kv heads 0", lambda: llm_dims({**LLAMA, "num_key_value_heads": 0}), ValueError, named("config.num_key_value_heads")),
    Case("hidden not divisible, no head_dim", lambda: llm_dims({**LLAMA, "hidden_size": 4097}), ValueError, named("config.head_dim")),
    Case("heads missing", lambda: llm_dims({k: v for k, v in LLAMA.items() if k != "num_attention_heads"}), ValueError, named("config.num_attention_heads")),
    Case("nested text_config bad", lambda: llm_dims({"text_config": {**LLAMA, "num_key_value_heads": 3}}), ValueError, named("config.text_config.num_key_value_heads")),
    Case("LLMDims impossible heads", lambda: LLMDims(4096, 32, 32, 5, 128, 14336, 128256), ValueError, named("num_key_value_heads")),
    Case("LLMDims zero layers", lambda: LLMDims(4096, 0, 32, 8, 128, 14336, 128256), ValueError, named("num_hidden_layers")),
    Case("LLMDims float hidden", lambda: LLMDims(4096.0, 32, 32, 8, 128, 14336, 128256), TypeError, named("hidden_size")),
    Case("config None", lambda: llm_dims(None), TypeError, named("config")),
    Case("config unknown preset", lambda: llm_dims("gpt-2"), ValueError, named("config")),
    Case("kv_cache tokens negative", lambda: kv_cache_bytes(-1, "llama3-8b"), ValueError, named("tokens")),
    Case("kv_cache tokens float", lambda: kv_cache_bytes(1.5, "llama3-8b"), TypeError, named("tokens")),
    Case("dtype unknown", lambda: kv_cache_bytes(10, "llama3-8b", "fp4"), ValueError, named("dtype")),
    Case("dtype complex", lambda: dtype_bytes(torch.complex64), ValueError, named("dtype")),
    Case("dtype an int", lambda: dtype_bytes(2), TypeError, named("dtype")),
    Case("causal a str", lambda: attention_flops(10, "llama3-8b", causal="yes"), TypeError, named("causal")),
    Case("lm_head unknown", lambda: linear_flops(10, "llama3-8b", lm_head="first"), ValueError, named("lm_head")),
    Case("batch lengths a tensor", lambda: batch_budget(torch.tensor([1, 2]), "llama3-8b"), TypeError, named("lengths")),
    Case("batch lengths negative", lambda: batch_budget([1, -2], "llama3-8b"), ValueError, named("lengths[1]")),
    Case("batch text_tokens count", lambda: batch_budget([1, 2], "llama3-8b", text_tokens=[1]), ValueError, named("text_tokens")),
    Case("batch context_length 0", lambda: batch_budget([1, 2], "llama3-8b", context_length=0), ValueError, named("context_length")),
]

LLAMA = {"hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
         "intermediate_size": 14336, "vocab_size": 128256}  # fmt: skip

# --------------------------------------------------------------------------- Hugging Face entry points


@functools.lru_cache(maxsize=1)
def processor():
    from .hf_tiny import IMAGE_TOKEN_ID, PATCHES, char_tokenizer, image_processor  # noqa: F401
    from ogkernels.integrations.hf_processor import OGLlavaProcessor

    return OGLlavaProcessor(image_processor(), char_tokenizer(), grid=PATCHES)


def process(**kwargs):
    image = np.zeros((40, 30, 3), dtype=np.uint8)
    args = dict(images=[image], text=["<image> hi"], masks=None, return_tensors="pt")
    args.update(kwargs)
    return processor()(**args)


def collator(**fields):
    from ogkernels.integrations.llava_collator import OGLlavaCollator

    args = dict(image_token_id=127, grid=16)
    args.update(fields)
    return OGLlavaCollator(**args)


def collate(*samples):
    return collator()(list(samples))


def processor_with(**kwargs):
    from .hf_tiny import char_tokenizer, image_processor
    from ogkernels.integrations.hf_processor import OGLlavaProcessor

    return OGLlavaProcessor(image_processor(), char_tokenizer(), **kwargs)


def apply(model, **kwargs):
    from ogkernels.integrations.hf_llava import apply_ogfusion_to_llava

    return apply_ogfusion_to_llava(model, **kwargs)


def og_config(**kwargs):
    from ogkernels.integrations.hf_llava import OGLlavaConfig

    return OGLlavaConfig(**kwargs)


PIXELS = torch.zeros(3, 56, 56)

INTEGRATIONS = [
    Case("processor masks of another count", lambda: process(masks=[masks(), masks()]), ValueError, named("masks") + ".*1 entries"),
    Case("processor masks without images", lambda: process(images=None, text=["hi"], masks=[masks()]), ValueError, named("masks")),
    Case("processor numpy mask entry", lambda: process(masks=[NUMPY_MASKS]), TypeError, named("masks[0]") + ".*torch.from_numpy"),
    Case("processor soft mask entry", lambda: process(masks=[torch.full((1, 4, 4), 0.5)]), ValueError, named("masks[0]")),
    Case("processor og_options bad alpha", lambda: processor_with(og_options={"alpha": 0}), ValueError, named("alpha")),
    Case("processor og_options unknown", lambda: processor_with(og_options={"beta": 1}), TypeError, named("beta")),
    Case("processor og_options a list", lambda: processor_with(og_options=[1]), TypeError, named("values")),
    Case("processor grid not square for patch", lambda: processor_with(og_options={"mode": "patch"}, grid=15), ValueError, named("grid")),
    Case("processor grid float", lambda: processor_with(grid=16.0), TypeError, named("grid")),
    Case("collator image_token_id str", lambda: collator(image_token_id="<image>"), TypeError, named("image_token_id")),
    Case("collator grid missing", lambda: collator(grid=None), TypeError, named("grid")),
    Case("collator grid 0", lambda: collator(grid=0), ValueError, named("grid")),
    Case("collator truncation unknown", lambda: collator(truncation="left"), ValueError, named("truncation")),
    Case("collator og_options unknown", lambda: collator(og_options={"beta": 1}), TypeError, named("beta")),
    Case("collator processor of another type", lambda: collator(image_token_id=None, grid=None, processor=object()), TypeError, named("processor")),
    Case("collator no samples", lambda: collate(), TypeError, named("samples")),
    Case("collator sample a list", lambda: collate([1, 2, 3]), TypeError, named("samples[0]")),
    Case("collator sample without text", lambda: collate({"pixel_values": PIXELS}), ValueError, named("samples[0]")),
    Case("collator float input_ids", lambda: collate({"input_ids": [1.5, 127.0]}), TypeError, named("samples[0]['input_ids']")),
    Case("collator str input_ids", lambda: collate({"input_ids": "hello"}), TypeError, named("samples[0]['input_ids']")),
    Case("collator 2-D input_ids", lambda: collate({"input_ids": [[1, 127]], "pixel_values": PIXELS}), ValueError, named("samples[0]['input_ids']")),
    Case("collator labels of another length", lambda: collate({"input_ids": [1, 2], "labels": [1]}), ValueError, named("samples[0]['labels']")),
    Case("collator image without placeholder", lambda: collate({"input_ids": [1, 2], "pixel_values": PIXELS}), ValueError, named("samples[0]") + ".*placeholder"),
    Case("collator placeholder without image", lambda: collate({"input_ids": [1, 127]}), ValueError, named("samples[0]") + ".*placeholder"),
    Case("collator numpy masks", lambda: collate({"input_ids": [1, 127], "pixel_values": PIXELS, "masks": NUMPY_MASKS}), TypeError, named("masks[0]") + ".*torch.from_numpy"),
    Case("collator max_length exceeded", lambda: collator(max_length=3)([{"input_ids": [1, 127], "pixel_values": PIXELS}]), ValueError, "max_length=3"),
    Case("apply to a Linear", lambda: apply(torch.nn.Linear(2, 2)), TypeError, named("model")),
    Case("config projection unknown", lambda: og_config(og_projection="sideways"), ValueError, named("og_projection")),
    Case("config og_options bad", lambda: og_config(og_options={"max_masks": 0}), ValueError, named("max_masks")),
]

OTHER_CASES = (
    table("OGTokenOptions", OPTIONS)
    + table("MaskBitmaps", MASK_BITMAPS)
    + table("VarlenBatch", VARLEN)
    + table("OGFusion", FUSION_MODULE)
    + table("checkpoint", CHECKPOINTS)
    + table("varlen_attention", ATTENTION)
    + table("hf varlen attention", HF_ATTENTION)
    + table("packing", PACKING)
    + table("budget", BUDGET)
    + table("integrations", INTEGRATIONS)
)


@pytest.mark.parametrize("case", OTHER_CASES, ids=lambda c: c.id)
def test_bad_input(case: Case) -> None:
    with pytest.raises(case.error, match=case.pattern):
        case.call()


def test_case_ids_unique_and_enough() -> None:
    for table in (TENSOR_CASES, OTHER_CASES):
        ids = [case.id for case in table]
        assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert len(TENSOR_CASES) + len(OTHER_CASES) >= 150


def test_edges_that_are_valid() -> None:
    # the limits themselves are accepted: a bad-input check must not refuse good input
    from ogkernels.options import parse_grid

    INT32_MAX = 2**31 - 1  # spelled out: the library's own constant is under test

    assert parse_grid(16, "patch") == (4, 4) and parse_grid(1, "patch") == (1, 1)
    assert parse_grid(INT32_MAX, "flat") == (1, INT32_MAX)
    assert OGTokenOptions(mode="patch").grid_shape(16) == (4, 4)
    assert OGTokenOptions(max_image_tokens=INT32_MAX, max_batch_tokens=INT32_MAX).max_image_tokens == INT32_MAX
    assert varlen(validate=True).max_seqlen == 3 and varlen(validate=False).max_seqlen == 3
    out = og_tokens(features(), [masks(), None], max_tokens=INT32_MAX // 2**20)
    assert out.values.shape[0] == INT32_MAX // 2**20
