"""The faithful, slow reference implementation of OG-Fusion (``ogkernels/reference/BEHAVIOUR.md``).

The oracle of the tests and the baseline of the benchmarks. Nothing here is optimised.
"""

from .og_fusion import (
    BOMMaskToken,
    ReferenceEmbedding,
    ReferenceFlags,
    ReferenceOGFusion,
    build_projector,
    check_resised_image_masks,
    clean_for_image,
    downsampled_masks_for_image,
    dummy_masks,
    embed_image,
    group_ranges,
    mask_flat_indices,
    masks_gate,
    og_fusion_embed,
    og_fusion_tokens,
    sinusoid_table,
    sliding_window_masks,
)
from .merge import prepare_inputs_labels_for_multimodal
from .phi import (
    adaptive_bin,
    downsample_mask_2d_counts,
    downsample_mask_to_1d_counts,
    frame_window,
)

__all__ = [
    "BOMMaskToken",
    "ReferenceEmbedding",
    "ReferenceFlags",
    "ReferenceOGFusion",
    "adaptive_bin",
    "build_projector",
    "check_resised_image_masks",
    "clean_for_image",
    "downsample_mask_2d_counts",
    "downsample_mask_to_1d_counts",
    "downsampled_masks_for_image",
    "dummy_masks",
    "embed_image",
    "frame_window",
    "group_ranges",
    "mask_flat_indices",
    "masks_gate",
    "og_fusion_embed",
    "og_fusion_tokens",
    "prepare_inputs_labels_for_multimodal",
    "sinusoid_table",
    "sliding_window_masks",
]
