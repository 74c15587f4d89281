"""ogkernels: fused kernels and a drop-in connector for object-guided visual tokens (OG-LLaVA).

Public API:
    downsample_masks   Phi_alpha: SAM2 masks → token-grid bitmaps (flat / patch modes)
    og_tokens          object-guided token sequences packed into one VarlenBatch
    OGTokenOptions     every option of og_tokens / OGFusion in one frozen, serialisable object
    OGFusion           the drop-in OG-Fusion connector (nn.Module), varlen or padded output
    VarlenBatch        packed variable-length sequences (values, cu_seqlens, max_seqlen)
    PackedMasks        bit-packed masks (numpy.packbits layout)
    MaskBitmaps        one image's masks already downsampled (Phi bitmaps + what they came from)
    varlen_attention   flash-attn's varlen contract, with an exact PyTorch fallback
    pack_multimodal    text + image tokens of a batch in one padding-free packed sequence
    TokenBudgetSampler batches of whole samples under a token budget (DataLoader batch_sampler)
    budget             token counts and LLM costs (visual_token_count, og_token_counts, …)
    masks              the SAM2 mask store (MaskStore, MaskStoreWriter) and its importer
    reference          the faithful, slow reference implementation (the tests' oracle)

Importing ogkernels needs neither a GPU, nor Triton, nor flash-attn.
"""

from . import masks
from .bitmaps import MaskBitmaps
from .downsample import downsample_masks
from .fusion import OGFusion, PaddedTokens
from .masks import MaskStore, MaskStoreWriter
from .options import OGTokenOptions
from .packed_masks import PackedMasks
from .packing import PackedBatch, TokenBudgetSampler, pack_multimodal
from .tokens import og_tokens
from .varlen import VarlenBatch

__all__ = [
    "MaskBitmaps",
    "MaskStore",
    "MaskStoreWriter",
    "OGFusion",
    "OGTokenOptions",
    "PackedBatch",
    "PackedMasks",
    "PaddedTokens",
    "TokenBudgetSampler",
    "VarlenBatch",
    "budget",
    "downsample_masks",
    "masks",
    "og_tokens",
    "pack_multimodal",
    "reference",
    "varlen_attention",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    # Loaded on first use: the fast path never imports the reference or the tooling.
    if name == "varlen_attention":
        from .attention import varlen_attention

        return varlen_attention
    if name in ("budget", "reference"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ogkernels' has no attribute {name!r}")
