"""On-disk format of the mask store (version 1): directory layout, manifest and shard files.

Layout::

    <root>/store.json                  manifest: {"format": "ogkernels.mask_store",
                                                  "format_version": 1, "created_by": ...}
    <root>/shards/<name>.safetensors   immutable shards, each written atomically
    <root>/shards/.tmp-*               leftovers of killed writers, ignored by readers

A shard is a `safetensors <https://github.com/huggingface/safetensors>`_ file (so any
safetensors reader can open it; nothing is pickled): an 8-byte little-endian header length,
a UTF-8 JSON header, then the tensor bytes. Its ``__metadata__`` holds

* ``format``: ``"ogkernels.mask_store.shard"``, ``format_version``: ``"1"``;
* ``index``: a JSON object of per-image columns (one entry per image, ``I`` images):
  ``keys`` (str), ``height``, ``width``, ``num_masks``, ``encoding`` (``"packbits"`` or
  ``"rle"``), ``order`` (how the masks were ordered: ``"lexicographic"``, ``"numeric"`` or
  ``"given"``), ``data_offset``/``data_nbytes`` (the image's byte range in ``data``),
  ``mask_start`` (its first row in the per-mask tensors), ``has_metadata`` (0/1) and
  ``crc32`` (of its ``data`` bytes).

and the tensors (``M`` = masks in the shard, image ``i`` owns rows
``mask_start[i] : mask_start[i] + num_masks[i]``):

* ``data`` ``U8 (D,)``: the image records back to back. A ``packbits`` record is the
  ``(N, ceil(H·W/8))`` bytes of :class:`ogkernels.PackedMasks` (row-major flattened masks,
  MSB first, ``numpy.packbits`` order); an ``rle`` record is the COCO compressed-RLE
  ``counts`` strings (ASCII, column-major RLE as pycocotools writes it) of its masks, back to back.
* ``mask_nbytes`` ``I64 (M,)``: bytes of each mask inside its record.
* SAM2 metadata, meaningful where ``has_metadata``: ``area`` ``I64 (M,)``, ``bbox``
  ``F64 (M, 4)`` (XYWH), ``predicted_iou`` ``F64 (M,)``, ``stability_score`` ``F64 (M,)``,
  ``point_coords`` ``F64 (M, 2)`` (x, y), ``crop_box`` ``F64 (M, 4)`` (XYWH).

Readers refuse a manifest or shard whose ``format_version`` is newer than
:data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from .atomic import atomic_create, atomic_write
from .errors import MaskStoreError, MaskStoreVersionError

FORMAT_VERSION = 1
STORE_FORMAT = "ogkernels.mask_store"
SHARD_FORMAT = "ogkernels.mask_store.shard"
MANIFEST_NAME = "store.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"

ENCODINGS = ("packbits", "rle")
ORDERS = ("lexicographic", "numeric", "given")
INDEX_COLUMNS = (
    "keys", "height", "width", "num_masks", "encoding", "order",
    "data_offset", "data_nbytes", "mask_start", "has_metadata", "crc32",
)  # fmt: skip
_INT_COLUMNS = (
    "height", "width", "num_masks", "data_offset", "data_nbytes", "mask_start", "has_metadata", "crc32",
)  # fmt: skip
METADATA_FIELDS = ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")
TENSOR_NAMES = ("data", "mask_nbytes") + METADATA_FIELDS
TENSOR_DTYPES = {
    "data": np.dtype("<u1"), "mask_nbytes": np.dtype("<i8"), "area": np.dtype("<i8"),
    "bbox": np.dtype("<f8"), "predicted_iou": np.dtype("<f8"), "stability_score": np.dtype("<f8"),
    "point_coords": np.dtype("<f8"), "crop_box": np.dtype("<f8"),
}  # fmt: skip
TENSOR_TAIL = {"bbox": (4,), "point_coords": (2,), "crop_box": (4,)}
_ST_DTYPES = {"U8": np.dtype("<u1"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8")}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}
MAX_HEADER_BYTES = 100_000_000


def _check_version(path: Path, found: object, what: str) -> None:
    if isinstance(found, str) and found.isdigit():
        found = int(found)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise MaskStoreError(path, f"{what}: expected an int format_version >= 1, got {found!r}")
    if found > FORMAT_VERSION:
        raise MaskStoreVersionError(
            path,
            f"{what} written by mask store format version {found}, but this ogkernels reads "
            f"versions <= {FORMAT_VERSION}; upgrade ogkernels to read it",
        )


# --------------------------------------------------------------------------- manifest


def manifest_path(root: str | os.PathLike) -> Path:
    return Path(root) / MANIFEST_NAME


def read_manifest(root: str | os.PathLike) -> dict:
    """Read and check ``<root>/store.json``; raises :class:`MaskStoreError` naming it."""
    path = manifest_path(root)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MaskStoreError(path, "not a mask store: the manifest file is missing") from None
    except OSError as exc:
        raise MaskStoreError(path, f"cannot read the manifest: {exc}") from exc
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise MaskStoreError(path, f"corrupt manifest (invalid JSON: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise MaskStoreError(path, f"expected format {STORE_FORMAT!r}, got {got!r}")
    _check_version(path, manifest.get("format_version"), "mask store")
    return manifest


def create_manifest(root: str | os.PathLike, created_by: str) -> dict:
    """Create ``root`` and its manifest unless present (race-free), then read it back."""
    root = Path(root)
    (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    manifest = {"format": STORE_FORMAT, "format_version": FORMAT_VERSION, "created_by": created_by}
    atomic_create(manifest_path(root), (json.dumps(manifest, indent=1) + "\n").encode())
    return read_manifest(root)


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class TensorSpan:
    """Where a tensor of a shard lies: absolute byte range ``[begin, end)`` in the file."""

    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one shard file."""

    path: Path
    index: dict  # the per-image columns, see the module docstring
    tensors: dict[str, TensorSpan]
    file_size: int

    @property
    def num_images(self) -> int:
        return len(self.index["keys"])


def write_shard(path: str | os.PathLike, index: Mapping, tensors: Mapping[str, object]) -> Path:
    """Write one shard atomically (temp file, fsync, rename).

    ``tensors`` maps each of :data:`TENSOR_NAMES` to an array of the documented dtype/shape;
    ``data`` may also be a list of ``uint8`` chunks (concatenated on the fly, no extra copy).
    """
    entries: dict[str, dict] = {}
    offset = 0
    arrays = []
    for name in TENSOR_NAMES:
        value = tensors[name]
        if name == "data" and isinstance(value, (list, tuple)):  # chunks, written one by one
            chunks = [np.ascontiguousarray(c, dtype=np.uint8).reshape(-1) for c in value]
            shape = [sum(c.size for c in chunks)]
        else:
            chunks = [np.ascontiguousarray(value, dtype=TENSOR_DTYPES[name])]
            shape = list(chunks[0].shape)
        nbytes = sum(c.nbytes for c in chunks)
        entries[name] = {
            "dtype": _ST_NAMES[TENSOR_DTYPES[name]],
            "shape": shape,
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
        arrays.extend(chunks)
    header = {
        "__metadata__": {
            "format": SHARD_FORMAT,
            "format_version": str(FORMAT_VERSION),
            "index": json.dumps(dict(index), separators=(",", ":")),
        },
        **entries,
    }
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)

    def write(handle: BinaryIO) -> None:
        handle.write(struct.pack("<Q", len(blob)))
        handle.write(blob)
        for array in arrays:
            if array.nbytes:
                handle.write(memoryview(array).cast("B"))

    return atomic_write(path, write)


def _fail(path: Path, message: str) -> None:
    raise MaskStoreError(path, message)


def read_shard_header(path: str | os.PathLike) -> ShardHeader:
    """Parse and check a shard's header (reads only the header bytes).

    Raises :class:`MaskStoreError` naming the shard if it is truncated or malformed, and
    :class:`MaskStoreVersionError` if it was written by a newer format version.
    """
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            raw = handle.read(8)
            if len(raw) < 8:
                _fail(path, f"truncated shard: {size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > min(MAX_HEADER_BYTES, size - 8):
                _fail(path, f"truncated or corrupt shard: header length {length}, file size {size}")
            blob = handle.read(length)
    except OSError as exc:
        raise MaskStoreError(path, f"cannot read the shard: {exc}") from exc
    try:
        header = json.loads(blob.decode("utf-8"))
        meta = header.pop("__metadata__")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as exc:
        raise MaskStoreError(path, f"corrupt shard header ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != SHARD_FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        _fail(path, f"expected a shard of format {SHARD_FORMAT!r}, got {got!r}")
    _check_version(path, meta.get("format_version"), "shard")
    try:
        index = json.loads(meta["index"])
    except (KeyError, TypeError, json.JSONDecodeError) as exc:
        raise MaskStoreError(path, f"corrupt shard index ({type(exc).__name__}: {exc})") from exc
    start = 8 + length
    tensors: dict[str, TensorSpan] = {}
    for name in TENSOR_NAMES:
        entry = header.get(name)
        try:
            dtype = _ST_DTYPES[entry["dtype"]]
            shape = tuple(int(s) for s in entry["shape"])
            begin, end = (int(x) for x in entry["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MaskStoreError(path, f"corrupt shard header: bad or missing tensor {name!r}") from exc
        if dtype != TENSOR_DTYPES[name] or end - begin != int(np.prod(shape)) * dtype.itemsize:
            _fail(path, f"corrupt shard header: tensor {name!r} has dtype/shape/size mismatch")
        tensors[name] = TensorSpan(dtype, shape, start + begin, start + end)
    end = max((span.end for span in tensors.values()), default=start)
    if end != size:
        _fail(path, f"truncated or corrupt shard: expected {end} bytes, the file has {size}")
    _check_index(path, index, tensors)
    return ShardHeader(path, index, tensors, size)


def _check_index(path: Path, index: object, tensors: dict[str, TensorSpan]) -> None:
    if not isinstance(index, dict) or any(not isinstance(index.get(c), list) for c in INDEX_COLUMNS):
        _fail(path, f"corrupt shard index: expected the columns {', '.join(INDEX_COLUMNS)}")
    count = len(index["keys"])
    if any(len(index[c]) != count for c in INDEX_COLUMNS):
        _fail(path, "corrupt shard index: columns of different lengths")
    total_masks = tensors["mask_nbytes"].shape[0]
    data_size = tensors["data"].shape[0]
    for name in METADATA_FIELDS:
        if tensors[name].shape != (total_masks,) + TENSOR_TAIL.get(name, ()):
            _fail(path, f"corrupt shard: tensor {name!r} has shape {tensors[name].shape}")
    try:
        columns = {c: np.asarray(index[c], dtype=np.int64).reshape(count) for c in _INT_COLUMNS}
    except (TypeError, ValueError, OverflowError) as exc:
        raise MaskStoreError(path, f"corrupt shard index: non-integer entries ({exc})") from exc
    bad = (
        (np.minimum(columns["height"], columns["width"]) < 1)
        | (columns["num_masks"] < 0) | (columns["mask_start"] < 0)
        | (columns["mask_start"] + columns["num_masks"] > total_masks)
        | (columns["data_offset"] < 0) | (columns["data_nbytes"] < 0)
        | (columns["data_offset"] + columns["data_nbytes"] > data_size)
    )  # fmt: skip
    bad |= np.fromiter((e not in ENCODINGS for e in index["encoding"]), bool, count)
    bad |= np.fromiter((o not in ORDERS for o in index["order"]), bool, count)
    bad |= np.fromiter((not isinstance(k, str) for k in index["keys"]), bool, count)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        _fail(path, f"corrupt shard index: entry {i} (key {index['keys'][i]!r}) is out of range")
