"""The per-image index of a mask shard: checked on every open, before any record is read.

:func:`check_mask_index` turns a shard's ``index`` (see :mod:`ogkernels.masks.format`) into
validated ``int64`` columns, or raises :class:`MaskStoreError` naming the shard, the entry's
key and the field. What is checked, for every entry, whatever ``verify=`` says:

* the columns: all present, all of one length, nothing else;
* ``keys``: the key grammar of :mod:`ogkernels.masks.keys`, unique in the shard;
* integers: JSON integers (``1.0``, ``0.5``, ``true`` refused), in range: ``height`` and
  ``width`` in ``[1, MAX_SIDE]``, ``has_metadata`` 0/1, checksums in ``[0, 2**32)``;
* ``encoding``/``order``: one of the known names;
* shape against bytes: a ``packbits`` record holds exactly ``num_masks · ceil(H·W/8)``
  bytes, an ``rle`` record at least one byte per mask;
* layout: records lie back to back in index order and fill ``data`` exactly
  (``data_offset`` is the running sum of ``data_nbytes``), and likewise the per-mask rows
  (``mask_start`` the running sum of ``num_masks``, filling ``mask_nbytes``): so no offset
  is fractional, out of range, or shared by two records;
* version 2: each record's descriptor against ``desc_crc32``.

All of this reads only the header: a shard claiming a huge image fails here, before
anything is allocated for it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import MaskStoreError
from .format import ShardHeader
from .keys import key_problem

MAX_SIDE = 1 << 16  # pixels per side of a stored image (larger is refused by writer and reader)
ENCODINGS = ("packbits", "rle")
ORDERS = ("lexicographic", "numeric", "given")
MASK_INDEX_COLUMNS = (
    "keys", "height", "width", "num_masks", "encoding", "order",
    "data_offset", "data_nbytes", "mask_start", "has_metadata", "desc_crc32", "crc32",
)  # fmt: skip
MASK_INT_COLUMNS = ("height", "width", "num_masks", "data_offset", "data_nbytes", "mask_start", "has_metadata", "crc32")
_INT64_MAX = 2**63 - 1
_CRC_COLUMNS = ("desc_crc32", "crc32", "source_crc32")


def mask_descriptor(
    key: str, height: int, width: int, num_masks: int, encoding: str, order: str, has_metadata: int, data_nbytes: int
) -> bytes:
    """The bytes ``desc_crc32`` covers (and ``crc32`` starts with): one record's fields."""
    return f"{len(key)}:{key}|{height}|{width}|{num_masks}|{encoding}|{order}|{has_metadata}|{data_nbytes}".encode()


def descriptor_crc(descriptor: bytes) -> int:
    return zlib.crc32(descriptor)


class IndexChecker:
    """Checks of one shard's index, each failing with the shard, entry, key and field named."""

    def __init__(self, header: ShardHeader, columns: Sequence[str]) -> None:
        self.path: Path = header.path
        self.index = header.index
        names = sorted(self.index)
        if names != sorted(columns):
            missing = sorted(set(columns) - set(names))
            extra = sorted(set(names) - set(columns))
            self.fail(None, "index", f"expected the columns {', '.join(columns)} (missing {missing}, unexpected {extra})")
        lengths = {c: len(self.index[c]) if isinstance(self.index[c], list) else None for c in columns}
        self.count = lengths["keys"]
        bad = [c for c, n in lengths.items() if n is None or n != self.count]
        if self.count is None or bad:
            self.fail(None, bad[0] if bad else "keys", f"expected lists of one length, got lengths {lengths}")
        self.keys: list = self.index["keys"]
        self.columns: dict[str, np.ndarray] = {}

    def fail(self, entry: int | None, field: str, message: str) -> None:
        if entry is None:
            raise MaskStoreError(self.path, f"corrupt shard index: field {field!r}: {message}")
        key = self.keys[entry]
        key = key if isinstance(key, str) else repr(key)
        raise MaskStoreError(self.path, f"corrupt shard index: entry {entry}: field {field!r}: {message}", key=key)

    def check_keys(self) -> None:
        seen: set[str] = set()
        for i, key in enumerate(self.keys):
            problem = key_problem(key)
            if problem is not None:
                self.keys = [k if isinstance(k, str) else repr(k) for k in self.keys]
                self.fail(i, "keys", f"expected an image key ({problem}), got {key!r}")
            if key in seen:
                self.fail(i, "keys", "expected keys unique in the shard, got a repeat")
            seen.add(key)

    def ints(self, name: str) -> np.ndarray:
        values = self.index[name]
        upper = 2**32 - 1 if name in _CRC_COLUMNS else _INT64_MAX
        column = None
        if set(map(type, values)) <= {int}:  # JSON integers only (no bool, no float)
            try:
                column = np.asarray(values, dtype=np.int64).reshape(self.count)
            except OverflowError:
                column = None
        if column is None or (self.count and (column.min() < 0 or column.max() > upper)):
            for i, value in enumerate(values):
                if type(value) is not int or not 0 <= value <= upper:
                    self.fail(i, name, f"expected an int in [0, {upper}], got {value!r}")
        self.columns[name] = column
        return column

    def choices(self, name: str, allowed: Sequence[str]) -> np.ndarray:
        values = self.index[name]
        codes = {value: i for i, value in enumerate(allowed)}
        try:
            known = set(values) <= codes.keys()
        except TypeError:  # an unhashable entry (a list, an object)
            known = False
        if not known:
            for i, value in enumerate(values):
                if value not in allowed:
                    self.fail(i, name, f"expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return np.fromiter((codes[v] for v in values), np.uint8, self.count)

    def check(self, name: str, bad: np.ndarray, expected: str, got: np.ndarray) -> None:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            self.fail(i, name, f"expected {expected}, got {got[i]}")

    def back_to_back(self, name: str, size_name: str, total: int, what: str) -> None:
        """Column ``name`` must be the running sum of column ``size_name``, whose sum is ``total``."""
        sizes, starts = self.columns[size_name], self.columns[name]
        self.check(size_name, sizes > total, f"at most {total} ({what})", sizes)
        expected = np.cumsum(sizes) - sizes
        wrong = starts != expected
        if wrong.any():
            i = int(np.flatnonzero(wrong)[0])
            self.fail(i, name, f"expected {int(expected[i])} (records lie back to back in index order), got {int(starts[i])}")
        used = int(sizes.sum())
        if used != total:
            self.fail(None, name, f"expected the records to fill {what} ({total}), they use {used}")


def check_mask_index(header: ShardHeader) -> dict[str, np.ndarray]:
    """The validated columns of a mask shard (``int64``; ``encoding``/``order`` as codes into
    :data:`ENCODINGS`/:data:`ORDERS`, ``crc_start`` the CRC a ``crc32`` check starts from).

    Raises:
        MaskStoreError: naming the shard, the entry's key and the field (module docstring).
    """
    columns = MASK_INDEX_COLUMNS if header.version >= 2 else tuple(c for c in MASK_INDEX_COLUMNS if c != "desc_crc32")
    checker = IndexChecker(header, columns)
    checker.check_keys()
    out = {name: checker.ints(name) for name in MASK_INT_COLUMNS}
    out["encoding"] = checker.choices("encoding", ENCODINGS)
    out["order"] = checker.choices("order", ORDERS)
    h, w, n, nbytes = out["height"], out["width"], out["num_masks"], out["data_nbytes"]
    for name in ("height", "width"):
        checker.check(name, (out[name] < 1) | (out[name] > MAX_SIDE), f"an int in [1, {MAX_SIDE}]", out[name])
    checker.check("has_metadata", out["has_metadata"] > 1, "0 or 1", out["has_metadata"])
    row_bytes = (h * w + 7) // 8
    packbits = out["encoding"] == ENCODINGS.index("packbits")
    wrong = packbits & ((nbytes % row_bytes != 0) | (nbytes // row_bytes != n))
    if wrong.any():
        i = int(np.flatnonzero(wrong)[0])
        checker.fail(i, "data_nbytes", f"expected {int(n[i])} masks x {int(row_bytes[i])} bytes = "
                                       f"{int(n[i]) * int(row_bytes[i])} for packbits masks of {int(h[i])}x{int(w[i])}, got {int(nbytes[i])}")  # fmt: skip
    checker.check("data_nbytes", ~packbits & (nbytes < n), "at least one byte per mask for an rle record", nbytes)
    checker.back_to_back("data_offset", "data_nbytes", header.tensors["data"].shape[0], "the 'data' tensor")
    checker.back_to_back("mask_start", "num_masks", header.tensors["mask_nbytes"].shape[0], "the per-mask tensors")
    if header.version >= 2:
        desc = checker.ints("desc_crc32")
        index = header.index
        columns = ("keys", "height", "width", "num_masks", "encoding", "order", "has_metadata", "data_nbytes")
        found = [descriptor_crc(mask_descriptor(*fields)) for fields in zip(*(index[c] for c in columns))]
        wrong = np.asarray(found, dtype=np.int64).reshape(checker.count) != desc
        if wrong.any():
            checker.fail(int(np.flatnonzero(wrong)[0]), "desc_crc32", "the record's fields key, height, width, num_masks, "
                         "encoding, order, has_metadata, data_nbytes do not match their checksum (tampered or corrupt index)")  # fmt: skip
        out["crc_start"] = desc
    else:
        out["crc_start"] = np.zeros(checker.count, np.int64)
    return out


BITMAP_INDEX_COLUMNS = ("keys", "num_masks", "mask_start", "source_crc32", "crc32")


def bitmap_descriptor(key: str, num_masks: int, source_crc32: int, params_name: str) -> bytes:
    """The bytes a bitmap record's ``crc32`` starts with (then its bits, then its nonempty bytes)."""
    return f"{len(key)}:{key}|{num_masks}|{source_crc32}|{params_name}".encode()


def check_bitmap_index(header: ShardHeader, row_bytes: int) -> dict[str, np.ndarray]:
    """The validated columns of a bitmap shard (see :mod:`ogkernels.masks.bitmap_store`):
    keys, integers, the records' mask rows back to back, and ``bits``/``nonempty`` sized
    for those rows at ``row_bytes`` bytes per mask."""
    checker = IndexChecker(header, BITMAP_INDEX_COLUMNS)
    checker.check_keys()
    out = {name: checker.ints(name) for name in BITMAP_INDEX_COLUMNS[1:]}
    masks = header.tensors["nonempty"].shape[0]
    checker.back_to_back("mask_start", "num_masks", masks, "the 'nonempty' tensor")
    if header.tensors["bits"].shape[0] != masks * row_bytes:
        checker.fail(None, "bits", f"expected {masks} masks x {row_bytes} bytes, got {header.tensors['bits'].shape[0]} bytes")
    return out
