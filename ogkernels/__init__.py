"""ogkernels: fused kernels for object-guided visual tokens (OG-LLaVA)."""

from .downsample import downsample_masks
from .packed_masks import PackedMasks

__all__ = ["PackedMasks", "downsample_masks"]
__version__ = "0.1.0"
