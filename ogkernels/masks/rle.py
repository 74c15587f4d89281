"""COCO run-length encoding (pycocotools) of one image's masks, to and from bit-packed masks.

COCO RLE runs over the *column-major* flattened mask, starting with a run of zeros; the
``counts`` are stored in pycocotools' compressed ASCII form. pycocotools is imported lazily
(it is only needed for RLE records).
"""

from __future__ import annotations

import warnings
from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import fail
from ..packed_masks import PackedMasks


def _mask_utils():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "COCO RLE needs pycocotools: pip install 'ogkernels[masks]' (or pycocotools)"
        ) from exc
    return mask_utils


def encode_rle(masks: PackedMasks | np.ndarray) -> list[bytes]:
    """COCO compressed RLE ``counts`` (ASCII bytes) of each mask.

    Args:
        masks: a :class:`PackedMasks` or a bool/0-1 ``(N, H, W)`` array.

    Returns:
        ``N`` byte strings.
    """
    if isinstance(masks, PackedMasks):
        if masks.num_masks == 0:
            return []
        dense = masks.unpack().cpu().numpy()
    else:
        dense = np.asarray(masks)
    if dense.ndim != 3:
        fail("masks", "a (N, H, W) mask stack", f"array of shape {dense.shape}")
    if dense.shape[0] == 0:
        return []
    fortran = np.asfortranarray(dense.transpose(1, 2, 0).astype(np.uint8, copy=False))
    return [rle["counts"] for rle in _mask_utils().encode(fortran)]


def decode_rle(counts: Sequence[bytes | str], height: int, width: int) -> np.ndarray:
    """Decode COCO compressed RLE ``counts`` of ``height × width`` masks.

    Returns:
        ``bool (N, height, width)``, C-contiguous (row-major).
    """
    if len(counts) == 0:
        return np.zeros((0, height, width), dtype=np.bool_)
    rles = [{"size": [height, width], "counts": c if isinstance(c, bytes) else c.encode("ascii")} for c in counts]
    with warnings.catch_warnings():  # pycocotools' numpy-2 copy= deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = _mask_utils().decode(rles)  # (H, W, N) uint8, Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1), dtype=np.bool_)


def decode_coco_rle(rle: Mapping[str, Any], *, source: str = "rle") -> np.ndarray:
    """Decode one COCO RLE dict (``{"size": [H, W], "counts": str | bytes | list[int]}``)
    to a ``bool (H, W)`` array. ``source`` names the input in error messages."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        fail(source, "a COCO RLE dict with 'size' and 'counts'", rle, error=TypeError)
    height, width = (int(s) for s in rle["size"])
    counts = rle["counts"]
    mask_utils = _mask_utils()
    if isinstance(counts, list):  # uncompressed RLE
        rle = mask_utils.frPyObjects({"size": [height, width], "counts": counts}, height, width)
    else:
        rle = {"size": [height, width], "counts": counts if isinstance(counts, bytes) else counts.encode("ascii")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return np.ascontiguousarray(mask_utils.decode(rle), dtype=np.bool_)
