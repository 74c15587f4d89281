"""The reference OG-Fusion connector, faithful and deliberately plain.

Implements ``ogkernels/reference/BEHAVIOUR.md`` §2–§8 the way the reference code base runs them: a Python
loop over images, per-image device→host copies of the full-resolution masks, Φ on the CPU one
mask at a time, per-mask host→device copies, boolean-index gathers, ``torch.cat``, float32
zero padding of the batch, then the projector over every row (pad rows included).

It is the oracle of the tests and the baseline of the benchmarks; it is not meant to be fast.
Dead paths of the reference (§11 [X]) are not reproduced, except where noted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .phi import downsample_mask_to_1d_counts


@dataclass(frozen=True)
class ReferenceFlags:
    """The embedder flags of §3–§4; the defaults are the ones ``encode_images`` hard-codes."""

    global_view: bool = True
    averaging_global_view: bool = True
    no_masktoken: bool = False
    averaging: bool = False
    # The reference's mask_limiting branch raises AttributeError; this is its intended
    # behaviour (clean, then keep the first ``mask_limit`` masks).
    mask_limiting: bool = False
    mask_limit: int = 20
    use_sliding_window: bool = False
    use_dummy_masks: bool = False
    number_of_masks: int = 5
    image_filling: bool = False
    absolute_positional_encoding: bool = False
    # Position count of the sinusoid table (tower position embeddings − 1); None → V.
    positional_encoding_positions: int | None = None
    threshold_count: float = 0.5


@dataclass
class ReferenceEmbedding:
    """What the reference embedder returns for a batch.

    ``block``: ``(B, L_max, F)`` right-padded with zero rows, in the features' dtype.
    ``lengths``: each image's real length ``L_b`` (the reference does not record these; the
    oracle does, to compare with varlen output). ``group_ranges`` and ``flat_indices``: §7.
    """

    block: torch.Tensor
    lengths: list[int]
    sequences: list[torch.Tensor]
    kept_masks: list[list[torch.Tensor]]
    group_ranges: list[list[tuple[int, int]]] = field(default_factory=list)
    flat_indices: list[list[torch.Tensor]] = field(default_factory=list)


def check_resised_image_masks(masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cleaning rule of §3 (the reference's name, spelling included)."""
    if len(masks) == 1:
        if not bool(masks[0].any()):
            return [torch.ones_like(masks[0])]
        return masks
    return [m for m in masks if bool(m.any())]


def sliding_window_masks(num_tokens: int, number_of_masks: int) -> list[torch.Tensor]:
    """``use_sliding_window``: ``n`` 1-D windows of width ``V // n``, the last one to ``V``."""
    width = num_tokens // number_of_masks
    masks = []
    for i in range(number_of_masks):
        mask = torch.zeros(num_tokens, dtype=torch.bool)
        end = num_tokens if i == number_of_masks - 1 else (i + 1) * width
        mask[i * width : end] = True
        masks.append(mask)
    return masks


def dummy_masks(num_tokens: int, number_of_masks: int) -> list[torch.Tensor]:
    """``use_dummy_masks``: Bernoulli(½) masks from a generator re-seeded with 42 each time."""
    masks = []
    for _ in range(number_of_masks):
        generator = torch.Generator().manual_seed(42)
        masks.append(torch.rand(num_tokens, generator=generator) < 0.5)
    return masks


def sinusoid_table(num_positions: int, dim: int) -> torch.Tensor:
    """1-D sinusoid ``T[p, 2i] = sin(p·ω_i)``, ``T[p, 2i+1] = cos(p·ω_i)``, float32."""
    position = torch.arange(num_positions, dtype=torch.float32).unsqueeze(1)
    omega = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(num_positions, dim, dtype=torch.float32)
    table[:, 0::2] = torch.sin(position * omega)
    table[:, 1::2] = torch.cos(position * omega)[:, : dim // 2]
    return table


def mask_flat_indices(kept: list[torch.Tensor]) -> list[torch.Tensor]:
    """§7 flat indices with the reference's "1-based → 0-based" shift (−1 unless min is 0)."""
    out = []
    for mask in kept:
        idx = torch.nonzero(mask).flatten()
        if idx.numel() > 0 and int(idx.min()) == 0:
            out.append(idx)
        else:
            shifted = idx - 1
            if shifted.numel() and int(shifted.min()) < 0:
                raise ValueError("negative flat index")
            out.append(shifted)
    return out


def group_ranges(
    num_tokens: int, token_counts: list[int], flags: ReferenceFlags
) -> list[tuple[int, int]]:
    """§7 ``batch_ranges``: the global group (if ``gv and not nmt``) then one group per mask."""
    lengths = []
    if flags.global_view and not flags.no_masktoken:
        lengths.append(1 if flags.averaging_global_view else num_tokens)
    bom = 0 if flags.no_masktoken else 1
    for k in token_counts:
        lengths.append(bom + (1 if flags.averaging else k))
    ranges, end = [], 0
    for i, length in enumerate(lengths):
        start = end
        end = start + length
        if not flags.no_masktoken and i > 0:
            start = ranges[-1][1] + 2
        ranges.append((start, end))
    return ranges


def downsampled_masks_for_image(
    masks: torch.Tensor | None, num_tokens: int, flags: ReferenceFlags
) -> list[torch.Tensor]:
    """Mask source of §3 step 1 (CPU bool vectors of length ``V``), before cleaning."""
    if flags.use_sliding_window:
        return sliding_window_masks(num_tokens, flags.number_of_masks)
    if flags.use_dummy_masks:
        return dummy_masks(num_tokens, flags.number_of_masks)
    if masks is None:
        return []
    host = masks.to("cpu")  # the reference's device → host round trip
    return [
        downsample_mask_to_1d_counts(host[j], num_tokens, flags.threshold_count)
        for j in range(host.shape[0])
    ]


def clean_for_image(
    raw: list[torch.Tensor], num_tokens: int, flags: ReferenceFlags
) -> list[torch.Tensor]:
    """§3 steps 2–5: limits, image filling, cleaning (``raw``: bool vectors of length V)."""
    if flags.mask_limiting and len(raw) > flags.mask_limit:
        return check_resised_image_masks(raw)[: flags.mask_limit]
    if flags.image_filling:
        covered = torch.zeros(num_tokens, dtype=torch.bool)
        for mask in raw:
            covered |= mask
        uncovered = ~covered
        if bool(uncovered.any()):
            raw = raw + [uncovered]
    return check_resised_image_masks(raw)


def embed_image(
    features: torch.Tensor,
    kept: list[torch.Tensor],
    bom_token: torch.Tensor | None,
    flags: ReferenceFlags,
) -> torch.Tensor:
    """§4 sequence of one image: ``features (V, F)``, kept bool masks on the features' device."""
    num_tokens = features.shape[0]
    use_pe = flags.absolute_positional_encoding and not flags.image_filling
    table = None
    if use_pe:
        positions = flags.positional_encoding_positions or num_tokens
        table = sinusoid_table(positions, features.shape[1]).to(features.device)
    insert_bom = (not flags.no_masktoken) or (
        not flags.global_view and flags.averaging_global_view
    )
    if insert_bom and bom_token is None:
        raise ValueError("bom_token: expected a (1, F) tensor for a layout with BOM rows, got None")
    pieces = []
    if flags.global_view:
        if flags.averaging_global_view:
            pieces.append(features.mean(dim=0, keepdim=True))
        else:
            pieces.append(features)
    for mask in kept:
        rows = features[mask]
        if table is not None:
            rows = rows + table[:num_tokens][mask]
        if flags.averaging:
            rows = rows.mean(dim=0, keepdim=True)
        if insert_bom:
            pieces.append(bom_token)
        pieces.append(rows)
    if not pieces:
        return features.new_zeros((0, features.shape[1]))
    return torch.cat(pieces, dim=0)


def og_fusion_embed(
    features: torch.Tensor,
    masks: list[torch.Tensor | None],
    bom_token: torch.Tensor | None,
    flags: ReferenceFlags = ReferenceFlags(),
) -> ReferenceEmbedding:
    """The reference mask embedder over a batch.

    Args:
        features: ``(B, V, F)`` patch features.
        masks: per image a ``(N_b, H_b, W_b)`` mask tensor (any dtype, any device), or None.
        bom_token: ``(1, F)`` begin-of-mask row.
        flags: the embedder flags.

    Returns the right-padded ``(B, L_max, F)`` block (zero pad rows, staged in float32 and
    cast back to the features' dtype as the reference does) and the bookkeeping of §7.
    """
    batch, num_tokens, _ = features.shape
    sequences, kept_all, ranges_all, flat_all = [], [], [], []
    for b in range(batch):
        image_masks = masks[b] if b < len(masks) else None
        raw = downsampled_masks_for_image(image_masks, num_tokens, flags)
        kept = [m.to(features.device) for m in clean_for_image(raw, num_tokens, flags)]
        sequences.append(embed_image(features[b], kept, bom_token, flags))
        kept_all.append(kept)
        counts = [int(m.sum()) for m in kept]
        ranges_all.append(group_ranges(num_tokens, counts, flags))
        flat_all.append(mask_flat_indices(kept))
    lengths = [s.shape[0] for s in sequences]
    longest = max(lengths) if lengths else 0
    padded = []
    for seq in sequences:
        pad = torch.zeros(
            longest - seq.shape[0], seq.shape[1], dtype=torch.float32, device=seq.device
        )
        padded.append(torch.cat([seq, pad], dim=0))
    block = torch.stack(padded, dim=0).to(features.dtype)
    return ReferenceEmbedding(block, lengths, sequences, kept_all, ranges_all, flat_all)


def masks_gate(masks: list[torch.Tensor | None] | None, masking: bool = True) -> bool:
    """§4 gate: OG-Fusion runs iff masking is on and any image has a non-zero raw mask."""
    if not masking or masks is None:
        return False
    for image_masks in masks:
        if image_masks is not None and image_masks.numel() and bool(image_masks.any()):
            return True
    return False


def og_fusion_tokens(
    features: torch.Tensor,
    masks: list[torch.Tensor | None] | None,
    bom_token: torch.Tensor | None,
    flags: ReferenceFlags = ReferenceFlags(),
    masking: bool = True,
) -> ReferenceEmbedding:
    """The rows the reference connector projects: :func:`og_fusion_embed` when the §4 gate
    is open, else the plain path's ``X`` (``V`` rows per image, no padding)."""
    if masks_gate(masks, masking):
        return og_fusion_embed(features, masks, bom_token, flags)
    batch, num_tokens, _ = features.shape
    sequences = [features[b] for b in range(batch)]
    return ReferenceEmbedding(features, [num_tokens] * batch, sequences, [[] for _ in range(batch)])


def build_projector(vision_dim: int, llm_dim: int) -> nn.Sequential:
    """``mlp2x_gelu``: ``Linear(F → D)``, exact-erf ``GELU``, ``Linear(D → D)``."""
    return nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))


class BOMMaskToken(nn.Module):
    """The reference's BOM module: one parameter ``mm_bom_mask_token (1, F)``, randn init."""

    def __init__(self, vision_dim: int):
        super().__init__()
        self.mm_bom_mask_token = nn.Parameter(torch.randn(1, vision_dim))


class ReferenceOGFusion(nn.Module):
    """Reference connector: embedder + ``mm_projector``, with the batch gate of §4.

    Parameter names follow the reference model: ``mm_projector.{0,2}.{weight,bias}`` and
    ``mm_bom_mask_token.mm_bom_mask_token``.
    """

    def __init__(self, vision_dim: int, llm_dim: int, flags: ReferenceFlags = ReferenceFlags()):
        super().__init__()
        self.flags = flags
        self.mm_projector = build_projector(vision_dim, llm_dim)
        self.mm_bom_mask_token = BOMMaskToken(vision_dim)

    def forward(
        self,
        image_features: torch.Tensor,
        masks: list[torch.Tensor | None] | None,
        masking: bool = True,
    ) -> tuple[torch.Tensor, ReferenceEmbedding | None]:
        """``image_features (B, V, F)`` → ``(Z, embedding)``: ``Z (B, L_max, D)`` or, through
        the gate's plain path, ``MLP(X) (B, V, D)`` with ``embedding`` None."""
        if not masks_gate(masks, masking):
            return self.mm_projector(image_features), None
        embedding = og_fusion_embed(
            image_features, masks, self.mm_bom_mask_token.mm_bom_mask_token, self.flags
        )
        return self.mm_projector(embedding.block), embedding
