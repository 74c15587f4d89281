"""Turn SAM2 automatic-mask-generator output into bit-packed masks and metadata."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import fail
from ..packed_masks import PackedMasks
from .metadata import MaskMetadata
from .order import order_permutation
from .rle import decode_coco_rle


def masks_from_sam2(
    records: Sequence[Mapping[str, Any]],
    height: int,
    width: int,
    *,
    order: str = "lexicographic",
    source: str = "records",
) -> tuple[PackedMasks, MaskMetadata]:
    """Pack the masks of one image as SAM2's ``SAM2AutomaticMaskGenerator.generate`` returns them.

    Args:
        records: one dict per mask, in SAM2 output order, with ``segmentation`` (a bool
            ``(H, W)`` array, or a COCO RLE dict with ``output_mode="coco_rle"``) and the
            metadata fields (see :meth:`MaskMetadata.from_records`).
        height, width: the image size; every mask must have it.
        order: ``"lexicographic"`` (default: the order the reference loader reads the
            reference's ``mask_<i>.npy`` files, ``mask_10`` before ``mask_2``) or
            ``"numeric"`` (SAM2 output order).
        source: names the image in error messages.

    Returns:
        ``(PackedMasks (N, ceil(H·W/8)) uint8 on the CPU, MaskMetadata)``, both in ``order``.

    Raises:
        ValueError: a mask whose size disagrees with the image, or non-0/1 values.
        TypeError: a record that is not a dict or a segmentation of the wrong kind.
    """
    dense = np.zeros((len(records), height, width), dtype=np.bool_)
    for i, record in enumerate(records):
        name = f"{source}: records[{i}].segmentation"
        if not isinstance(record, Mapping) or "segmentation" not in record:
            fail(f"{source}: records[{i}]", "a dict with a 'segmentation'", record, error=TypeError)
        segmentation = record["segmentation"]
        if isinstance(segmentation, Mapping):
            mask = decode_coco_rle(segmentation, source=name)
        else:
            mask = np.asarray(segmentation)
        if mask.shape != (height, width):
            fail(name, f"shape {(height, width)} (the image's height, width)", f"shape {mask.shape}")
        if mask.dtype != np.bool_:
            if mask.dtype.kind not in "biuf" or (mask.size and not np.isin(mask, (0, 1)).all()):
                fail(name, "a bool or 0/1 mask", f"dtype {mask.dtype} with other values")
        dense[i] = mask
    metadata = MaskMetadata.from_records(records, source=f"{source}: records")
    permutation = order_permutation(len(records), order)
    return PackedMasks.from_dense(dense[permutation]), metadata.select(permutation)
