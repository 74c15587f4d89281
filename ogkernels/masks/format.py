"""On-disk format of the mask store (version 2; version 1 stores stay readable).

Layout::

    <root>/store.json                    manifest: {"format": "ogkernels.mask_store",
                                                    "format_version": 2, "created_by": ...}
    <root>/shards/<name>.safetensors     mask shards: immutable, each written atomically
    <root>/bitmaps/<params>/params.json  one folder per Phi parameter set (grid, alpha, mode, frame)
    <root>/bitmaps/<params>/<name>.safetensors   bitmap shards (see ogkernels.masks.bitmap_store)
    <root>/locks/                        job locks (see ogkernels.masks.locks)
    .tmp-*                               leftovers of killed writers, ignored by readers

A shard is a `safetensors <https://github.com/huggingface/safetensors>`_ file (any
safetensors reader opens it; nothing is pickled): an 8-byte little-endian header length, a
UTF-8 JSON header, then the tensor bytes back to back. Its ``__metadata__`` holds

* ``format``: ``"ogkernels.mask_store.shard"``, ``format_version``: ``"2"`` (or ``"1"``);
* ``index``: a JSON object of per-image columns (one entry per image, ``I`` images):
  ``keys`` (str, the grammar of :mod:`ogkernels.masks.keys`), ``height``, ``width``,
  ``num_masks``, ``encoding`` (``"packbits"`` or ``"rle"``), ``order`` (``"lexicographic"``,
  ``"numeric"`` or ``"given"``), ``data_offset``/``data_nbytes`` (the image's byte range in
  ``data``), ``mask_start`` (its first row in the per-mask tensors), ``has_metadata`` (0/1),
  ``desc_crc32`` and ``crc32`` (below);
* ``tensor_crc32`` (version 2): a JSON object, the CRC-32 of each tensor but ``data``.

and the tensors (``M`` = masks in the shard, image ``i`` owns rows
``mask_start[i] : mask_start[i] + num_masks[i]``):

* ``data`` ``U8 (D,)``: the image records back to back, in index order. A ``packbits``
  record is the ``(N, ceil(H·W/8))`` bytes of :class:`ogkernels.PackedMasks` (row-major
  flattened masks, MSB first, ``numpy.packbits`` order); an ``rle`` record is the COCO
  compressed-RLE ``counts`` strings (ASCII, column-major, as pycocotools writes them) of its
  masks, back to back.
* ``mask_nbytes`` ``I64 (M,)``: bytes of each mask inside its record.
* SAM2 metadata, meaningful where ``has_metadata``: ``area`` ``I64 (M,)``, ``bbox``
  ``F64 (M, 4)`` (XYWH), ``predicted_iou`` ``F64 (M,)``, ``stability_score`` ``F64 (M,)``,
  ``point_coords`` ``F64 (M, 2)`` (x, y), ``crop_box`` ``F64 (M, 4)`` (XYWH).

Checksums (CRC-32, ``zlib.crc32``), version 2:

* ``desc_crc32`` covers the record's descriptor — key, height, width, num_masks, encoding,
  order, has_metadata, data_nbytes (:func:`ogkernels.masks.shard_index.mask_descriptor`);
  checked for every record whenever a shard is opened.
* ``crc32`` covers the descriptor and then the record's ``data`` bytes (the CRC of the
  descriptor continued over the data); checked on read with ``verify=True`` and by
  ``python -m ogkernels.masks verify``.
* ``tensor_crc32`` covers ``mask_nbytes`` and the metadata tensors; checked whenever they are read.

In version 1 ``crc32`` covers the data bytes only, and there is neither ``desc_crc32`` nor
``tensor_crc32``. Readers check every header on open whatever the version (see
:mod:`ogkernels.masks.shard_index`) and refuse a manifest or shard whose ``format_version``
is newer than :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Mapping

import numpy as np

from .atomic import atomic_create, atomic_write
from .errors import MaskStoreError, MaskStoreVersionError
from .files import open_regular, read_regular

FORMAT_VERSION = 2
STORE_FORMAT = "ogkernels.mask_store"
MANIFEST_NAME = "store.json"
SHARD_DIR = "shards"
SHARD_SUFFIX = ".safetensors"
MAX_HEADER_BYTES = 100_000_000
MAX_MANIFEST_BYTES = 1 << 20

_ST_DTYPES = {"U8": np.dtype("<u1"), "I64": np.dtype("<i8"), "F64": np.dtype("<f8")}
_ST_NAMES = {v: k for k, v in _ST_DTYPES.items()}


@dataclass(frozen=True)
class ShardKind:
    """The tensors of one kind of shard: ``name -> (dtype, trailing shape)``, in file order.

    ``record_tensors`` are covered by the per-record checksums; every other tensor by
    ``tensor_crc32``.
    """

    format: str
    tensors: Mapping[str, tuple[np.dtype, tuple[int, ...]]]
    record_tensors: tuple[str, ...]


METADATA_FIELDS = ("area", "bbox", "predicted_iou", "stability_score", "point_coords", "crop_box")
MASK_SHARD = ShardKind(
    "ogkernels.mask_store.shard",
    {
        "data": (np.dtype("<u1"), ()), "mask_nbytes": (np.dtype("<i8"), ()), "area": (np.dtype("<i8"), ()),
        "bbox": (np.dtype("<f8"), (4,)), "predicted_iou": (np.dtype("<f8"), ()),
        "stability_score": (np.dtype("<f8"), ()), "point_coords": (np.dtype("<f8"), (2,)),
        "crop_box": (np.dtype("<f8"), (4,)),
    },  # fmt: skip
    ("data",),
)
TENSOR_NAMES = tuple(MASK_SHARD.tensors)


def check_version(path: Path, found: object, what: str) -> int:
    """The integer ``format_version`` (``"2"`` or ``2``), or a :class:`MaskStoreError`."""
    if isinstance(found, str) and found.isdigit():
        found = int(found)
    if isinstance(found, bool) or not isinstance(found, int) or found < 1:
        raise MaskStoreError(path, f"{what}: field 'format_version': expected an int >= 1, got {found!r}")
    if found > FORMAT_VERSION:
        raise MaskStoreVersionError(
            path,
            f"{what} written by mask store format version {found}, but this ogkernels reads "
            f"versions <= {FORMAT_VERSION}; upgrade ogkernels to read it",
        )
    return found


def _strict_object(pairs: list[tuple[str, object]]) -> dict:
    """``json`` hook: refuse an object that repeats a name (readers would disagree on it)."""
    out: dict = {}
    for name, value in pairs:
        if name in out:
            raise ValueError(f"the name {name!r} appears twice in one object")
        out[name] = value
    return out


def parse_json(data: bytes | str) -> object:
    """JSON with repeated names refused (``ValueError``, ``UnicodeDecodeError``)."""
    text = data.decode("utf-8") if isinstance(data, bytes) else data
    return json.loads(text, object_pairs_hook=_strict_object)


# --------------------------------------------------------------------------- manifest


def manifest_path(root: str | os.PathLike) -> Path:
    return Path(root) / MANIFEST_NAME


def read_manifest(root: str | os.PathLike) -> dict:
    """Read and check ``<root>/store.json``; raises :class:`MaskStoreError` naming it."""
    path = manifest_path(root)
    if Path(root).exists() and not Path(root).is_dir():
        raise MaskStoreError(root, "not a mask store: expected a directory, found a file")
    try:
        raw = read_regular(path, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise MaskStoreError(path, "not a mask store: the manifest file is missing") from None
    except OSError as exc:
        raise MaskStoreError(path, f"cannot read the manifest: {exc.strerror or exc}") from exc
    try:
        manifest = parse_json(raw)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise MaskStoreError(path, f"corrupt manifest (invalid JSON: {exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise MaskStoreError(path, f"field 'format': expected {STORE_FORMAT!r}, got {got!r}")
    check_version(path, manifest.get("format_version"), "mask store")
    return manifest


def create_manifest(root: str | os.PathLike, created_by: str) -> dict:
    """Create ``root`` and its manifest unless present (race-free), then read it back."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise MaskStoreError(root, "expected a mask store directory, found a file")
    try:
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)
        manifest = {"format": STORE_FORMAT, "format_version": FORMAT_VERSION, "created_by": created_by}
        atomic_create(manifest_path(root), (json.dumps(manifest, indent=1) + "\n").encode())
    except OSError as exc:
        raise MaskStoreError(root, f"cannot create the mask store: {exc.strerror or exc}") from exc
    return read_manifest(root)


# --------------------------------------------------------------------------- shard files


@dataclass(frozen=True)
class TensorSpan:
    """Where a tensor of a shard lies: absolute byte range ``[begin, end)`` in the file."""

    dtype: np.dtype
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclass(frozen=True)
class ShardHeader:
    """The parsed header of one shard file (its container checked; see ``read_shard_header``).

    ``identity`` is ``(st_dev, st_ino, st_size, st_mtime_ns)`` when the header was read: a
    reader refuses to read record bytes from a file that no longer matches it.
    """

    path: Path
    version: int
    meta: dict  # the __metadata__ strings, "index" parsed
    index: dict  # the per-image columns
    tensors: dict[str, TensorSpan]
    file_size: int
    identity: tuple[int, int, int, int]

    @property
    def num_images(self) -> int:
        return len(self.index["keys"])


def list_shards(directory: str | os.PathLike) -> list[Path]:
    """The shard files in ``directory``, sorted by name (temporary and hidden files excluded)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith("."))


def file_identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def write_shard(
    path: str | os.PathLike,
    index: Mapping,
    tensors: Mapping[str, object],
    kind: ShardKind = MASK_SHARD,
    meta: Mapping[str, str] | None = None,
) -> Path:
    """Write one shard atomically (temp file, fsync, rename).

    ``tensors`` maps each tensor of ``kind`` to an array of its dtype (trailing shape as
    documented); ``data`` may also be a list of ``uint8`` chunks (written one by one, no
    concatenation copy). ``meta``: extra ``__metadata__`` strings.
    """
    entries: dict[str, dict] = {}
    offset = 0
    arrays = []
    crcs: dict[str, int] = {}
    for name, (dtype, _) in kind.tensors.items():
        value = tensors[name]
        if isinstance(value, (list, tuple)):  # chunks, written one by one
            chunks = [np.ascontiguousarray(c, dtype=dtype).reshape(-1) for c in value]
            shape = [sum(c.size for c in chunks)]
        else:
            chunks = [np.ascontiguousarray(value, dtype=dtype)]
            shape = list(chunks[0].shape)
        nbytes = sum(c.nbytes for c in chunks)
        entries[name] = {"dtype": _ST_NAMES[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        if name not in kind.record_tensors:
            crcs[name] = zlib.crc32(b"".join(c.tobytes() for c in chunks))
        offset += nbytes
        arrays.extend(chunks)
    header = {
        "__metadata__": {
            "format": kind.format,
            "format_version": str(FORMAT_VERSION),
            "index": json.dumps(dict(index), separators=(",", ":")),
            "tensor_crc32": json.dumps(crcs, separators=(",", ":")),
            **dict(meta or {}),
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


def _is_count(value: object) -> bool:
    return type(value) is int and value >= 0


def _tensor_spans(path: Path, header: dict, start: int, kind: ShardKind) -> dict[str, TensorSpan]:
    """The tensor table, checked: known names and dtypes, sizes that match the shapes, and
    byte ranges that tile the data region exactly in ``kind``'s order (no gap, no overlap)."""
    names = [n for n in header if n != "__metadata__"]
    if sorted(names) != sorted(kind.tensors):
        _fail(path, f"corrupt shard header: expected the tensors {', '.join(kind.tensors)}, got {', '.join(names) or 'none'}")
    spans: dict[str, TensorSpan] = {}
    offset = 0
    for name, (dtype, tail) in kind.tensors.items():
        entry = header[name]
        what = f"corrupt shard header: tensor {name!r}"
        if not isinstance(entry, dict) or _ST_DTYPES.get(entry.get("dtype")) != dtype:
            _fail(path, f"{what}: field 'dtype': expected {_ST_NAMES[dtype]!r}, got {entry.get('dtype') if isinstance(entry, dict) else entry!r}")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(_is_count(s) for s in shape) or tuple(shape[1:]) != tail or not shape:
            layout = "(n" + "".join(f", {t}" for t in tail) + ")"
            _fail(path, f"{what}: field 'shape': expected {layout} with ints >= 0, got {shape!r}")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
            _fail(path, f"{what}: field 'data_offsets': expected two ints >= 0, got {offsets!r}")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        if offsets != [offset, offset + nbytes]:
            _fail(path, f"{what}: field 'data_offsets': expected {[offset, offset + nbytes]} (tensors back to back, "
                        f"{nbytes} bytes for shape {shape}), got {offsets}")  # fmt: skip
        spans[name] = TensorSpan(dtype, tuple(shape), start + offset, start + offset + nbytes)
        offset += nbytes
    return spans


def read_shard_header(path: str | os.PathLike, kind: ShardKind = MASK_SHARD) -> ShardHeader:
    """Parse and check a shard's container (reads only the header bytes).

    Checked: a regular file; the header length within the file; valid JSON without repeated
    names; ``format`` and ``format_version``; exactly ``kind``'s tensors with their dtypes,
    shapes matching byte counts, tiling the data region up to the end of the file; ``index``
    a JSON object. The per-image columns are checked by :mod:`ogkernels.masks.shard_index`.

    Raises:
        MaskStoreError: naming the shard and the field, if it is not a regular file, is
            truncated or malformed.
        MaskStoreVersionError: written by a newer format version.
    """
    path = Path(path)
    try:
        with open_regular(path) as handle:
            st = os.fstat(handle.fileno())
            size = st.st_size
            raw = handle.read(8)
            if len(raw) < 8:
                _fail(path, f"truncated shard: {size} bytes, shorter than the 8-byte header length")
            (length,) = struct.unpack("<Q", raw)
            if length > min(MAX_HEADER_BYTES, size - 8):
                _fail(path, f"truncated or corrupt shard: header length {length}, file size {size}")
            blob = handle.read(length)
    except OSError as exc:
        raise MaskStoreError(path, f"cannot read the shard: {exc.strerror or exc}") from exc
    try:
        header = parse_json(blob)
        meta = header.get("__metadata__") if isinstance(header, dict) else None
    except ValueError as exc:
        raise MaskStoreError(path, f"corrupt shard header ({type(exc).__name__}: {exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != kind.format:
        got = meta.get("format") if isinstance(meta, dict) else meta
        _fail(path, f"field '__metadata__.format': expected a shard of format {kind.format!r}, got {got!r}")
    version = check_version(path, meta.get("format_version"), "shard")
    meta = dict(meta)
    for name in ("index", "tensor_crc32") if version >= 2 else ("index",):
        try:
            meta[name] = parse_json(meta[name])
        except (KeyError, TypeError, ValueError) as exc:
            raise MaskStoreError(path, f"field '__metadata__.{name}': corrupt ({type(exc).__name__}: {exc})") from exc
        if not isinstance(meta[name], dict):
            _fail(path, f"field '__metadata__.{name}': expected a JSON object, got {type(meta[name]).__name__}")
    tensors = _tensor_spans(path, header, 8 + length, kind)
    end = max((span.end for span in tensors.values()), default=8 + length)
    if end != size:
        _fail(path, f"truncated or corrupt shard: expected {end} bytes, the file has {size}")
    if version >= 2:
        crcs = meta["tensor_crc32"]
        expected = [n for n in kind.tensors if n not in kind.record_tensors]
        if sorted(crcs) != sorted(expected) or not all(type(c) is int for c in crcs.values()):
            _fail(path, f"field '__metadata__.tensor_crc32': expected int checksums of {', '.join(expected)}, got {crcs!r}")
    return ShardHeader(path, version, meta, meta["index"], tensors, size, file_identity(st))
