"""COCO run-length encoding of one image's masks, to and from bit-packed masks.

COCO RLE runs over the *column-major* flattened mask, starting with a run of zeros; the
``counts`` are stored in pycocotools' compressed ASCII form (5 bits per character, runs
after the second stored as the difference to the run two before). Encoding uses
pycocotools (imported lazily). Decoding parses the counts here and checks them first:
pycocotools' decoder writes as many pixels as the runs say, without a bound, so corrupt or
hostile counts would overrun its buffer (or leave pixels uninitialised). A decoded mask is
exactly ``H·W`` pixels or a ``ValueError`` naming the source.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import fail
from ..packed_masks import PackedMasks

_MAX_CHARS_PER_COUNT = 12  # 60 bits: ample for H·W <= 2**32, and no int64 overflow


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


def rle_runs(counts: bytes | str, height: int, width: int, *, source: str = "counts") -> np.ndarray:
    """The run lengths ``int64 (R,)`` of COCO compressed-RLE ``counts`` of a ``height × width``
    mask, checked: valid characters, no truncated number, runs >= 0 adding up to ``H·W``.

    Raises:
        ValueError: naming ``source``, on any of those problems.
    """
    raw = counts.encode("ascii", "replace") if isinstance(counts, str) else bytes(counts)
    chars = np.frombuffer(raw, np.uint8).astype(np.int64) - 48
    if chars.size == 0:
        fail(source, "COCO compressed RLE counts (at least one run)", "an empty string")
    if ((chars < 0) | (chars > 63)).any():
        position = int(np.flatnonzero((chars < 0) | (chars > 63))[0])
        fail(source, "COCO compressed RLE characters '0'..'o'", f"{raw[position:position + 1]!r} at byte {position}")
    ends = (chars & 0x20) == 0
    if not ends[-1]:
        fail(source, "COCO compressed RLE counts", "a truncated last number")
    starts = np.concatenate([[0], np.flatnonzero(ends)[:-1] + 1])
    lengths = np.flatnonzero(ends) + 1 - starts
    if lengths.max() > _MAX_CHARS_PER_COUNT:
        fail(source, f"RLE numbers of at most {_MAX_CHARS_PER_COUNT} characters", f"one of {int(lengths.max())}")
    digit = np.arange(chars.size) - np.repeat(starts, lengths)
    values = np.add.reduceat((chars & 0x1F) << (5 * digit), starts)
    negative = (chars[np.flatnonzero(ends)] & 0x10) != 0
    values = values - (negative.astype(np.int64) << (5 * lengths))
    runs = values.copy()
    runs[1::2] = np.cumsum(values[1::2])  # run j > 2 is stored as run j - run (j - 2)
    if runs.size > 2:
        runs[2::2] = np.cumsum(values[2::2])
    pixels = height * width
    if (runs < 0).any() or (runs > pixels).any() or int(runs.sum()) != pixels:
        if (runs < 0).any() or (runs > pixels).any():
            got = f"a run of {int(runs[(runs < 0) | (runs > pixels)][0])} pixels"
        else:
            got = f"runs adding up to {int(runs.sum())}"
        fail(source, f"RLE runs adding up to H·W = {height}x{width} = {pixels} pixels", got)
    return runs


def runs_to_mask(runs: np.ndarray, height: int, width: int) -> np.ndarray:
    """``bool (height, width)`` C-contiguous from checked column-major run lengths."""
    values = (np.arange(runs.size) % 2).astype(np.bool_)
    return np.ascontiguousarray(np.repeat(values, runs).reshape(width, height).T)


def decode_rle(counts: Sequence[bytes | str], height: int, width: int, *, source: str = "counts") -> np.ndarray:
    """Decode COCO compressed RLE ``counts`` of ``height × width`` masks (checked first,
    see :func:`rle_runs`).

    Returns:
        ``bool (N, height, width)``, C-contiguous (row-major).
    """
    out = np.empty((len(counts), height, width), dtype=np.bool_)
    for i, mask_counts in enumerate(counts):
        out[i] = runs_to_mask(rle_runs(mask_counts, height, width, source=f"{source}[{i}]"), height, width)
    return out


def decode_coco_rle(rle: Mapping[str, Any], *, source: str = "rle") -> np.ndarray:
    """Decode one COCO RLE dict (``{"size": [H, W], "counts": str | bytes | list[int]}``)
    to a ``bool (H, W)`` array. ``source`` names the input in error messages."""
    if not isinstance(rle, Mapping) or "size" not in rle or "counts" not in rle:
        fail(source, "a COCO RLE dict with 'size' and 'counts'", rle, error=TypeError)
    size = rle["size"]
    if (
        not isinstance(size, (list, tuple)) or len(size) != 2
        or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1 for s in size)
    ):  # fmt: skip
        fail(f"{source}.size", "[height, width] with ints >= 1", repr(size))
    height, width = int(size[0]), int(size[1])
    counts = rle["counts"]
    if isinstance(counts, (list, tuple)):  # uncompressed RLE
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in counts):
            fail(f"{source}.counts", "a list of int run lengths", repr(counts)[:80])
        runs = np.asarray(counts, dtype=np.int64).reshape(-1)
        if (runs < 0).any() or int(runs.sum()) != height * width:
            fail(f"{source}.counts", f"runs >= 0 adding up to {height}x{width} = {height * width} pixels", repr(counts)[:80])
    elif isinstance(counts, (bytes, str)):
        runs = rle_runs(counts, height, width, source=f"{source}.counts")
    else:
        fail(f"{source}.counts", "a str, bytes or list of ints", counts, error=TypeError)
    return runs_to_mask(runs, height, width)
