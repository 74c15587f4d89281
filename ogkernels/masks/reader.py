"""``MaskStore``: read a mask store: per-image ``PackedMasks``, batches, SAM2 metadata."""

from __future__ import annotations

import dataclasses
import os
import threading
import warnings
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .._validation import check_choice, check_positive_int, fail
from ..bitmaps import MaskBitmaps
from ..packed_masks import PackedMasks, packed_row_bytes
from .bitmap_store import BitmapParams, BitmapSet, load_bitmaps
from .errors import MaskStoreError
from .format import METADATA_FIELDS, SHARD_DIR, ShardHeader, list_shards, read_manifest, read_shard_header
from .metadata import MaskMetadata
from .rle import decode_rle
from .shard_files import ShardFiles
from .shard_index import ENCODINGS, MASK_INT_COLUMNS, ORDERS, check_mask_index


@dataclass(frozen=True)
class ImageInfo:
    """What the index knows about one image (no mask bytes are read)."""

    key: str
    height: int
    width: int
    num_masks: int
    encoding: str  # "packbits" or "rle"
    order: str  # "lexicographic", "numeric" or "given"
    has_metadata: bool
    shard: Path


_COLUMNS = MASK_INT_COLUMNS + ("crc_start",)


class MaskStore:
    """Read-only view of a mask store (see :mod:`ogkernels.masks.format`).

    Opening reads the manifest and every shard header (not the mask bytes), checks every
    header field of every record (:mod:`ogkernels.masks.shard_index`: shapes against byte
    counts, offsets, keys, the descriptor checksums) and builds the key index;
    :meth:`refresh` picks up shards written since. Only regular files are opened (a FIFO
    named ``*.safetensors`` is an error, not a hang). Reads use ``pread`` on cached file
    descriptors, so one store object may be shared by threads and by ``DataLoader`` workers;
    a shard that changed on disk since it was indexed is refused.

    Args:
        root: the store directory.
        verify: also check each record's ``crc32`` (its descriptor and data bytes) on read:
            catches flipped data bits, at about four times the cost of the read itself.
        max_open_files: file descriptors kept open (least recently used are closed).
        duplicates: a key stored in two shards (e.g. two jobs given overlapping shards):
            ``"first"`` (default) keeps the record indexed first (shard-name order at open,
            then discovery order on refresh); ``"error"`` raises naming both shards.

    Attributes:
        duplicate_keys: each key stored more than once -> its shards, the one used first.
        conflicting_keys: those of them whose records differ (a warning names them on open;
            ``python -m ogkernels.masks verify`` fails on them). Identical copies (the same
            checksums and shape) are harmless.

    Raises:
        MaskStoreError: a missing/corrupt manifest or shard (naming the file, the key and
            the field), or a duplicate key with ``duplicates="error"``.
        MaskStoreVersionError: the store or a shard was written by a newer format version.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        verify: bool = False,
        max_open_files: int = 64,
        duplicates: str = "first",
    ) -> None:
        self.root = Path(root)
        self.verify = bool(verify)
        self.duplicates = check_choice("duplicates", duplicates, ("first", "error"))
        self.max_open_files = check_positive_int("max_open_files", max_open_files)
        self.manifest = read_manifest(self.root)
        self._lock = threading.Lock()
        self._files = ShardFiles(self.max_open_files)
        self._shard_arrays: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._shards: list[ShardHeader] = []
        self._row_keys: list[str] = []  # the key of every row (rows of ignored duplicates too)
        self._lookup: dict[str, int] = {}
        self._columns: dict[str, np.ndarray] = {c: np.zeros(0, np.int64) for c in _COLUMNS}
        self._columns.update(shard=np.zeros(0, np.int64), encoding=np.zeros(0, np.uint8), order=np.zeros(0, np.uint8))
        self.duplicate_keys: dict[str, list[Path]] = {}
        self.conflicting_keys: list[str] = []
        self._bitmap_sets: dict[BitmapParams, BitmapSet] = {}
        self.refresh()

    # ------------------------------------------------------------------ index

    def refresh(self) -> int:
        """Index shards that appeared since the last scan; returns how many were added."""
        known = {header.path.name for header in self._shards}
        new = [read_shard_header(p) for p in list_shards(self.root / SHARD_DIR) if p.name not in known]
        if not new:
            return 0
        checked = [check_mask_index(header) for header in new]
        first_shard, first_row = len(self._shards), len(self._row_keys)
        columns = {
            name: np.concatenate([self._columns[name]] + [
                c[name] + h.tensors["data"].begin if name == "data_offset" else c[name] for h, c in zip(new, checked)
            ])
            for name in _COLUMNS + ("encoding", "order")
        }  # fmt: skip
        columns["shard"] = np.concatenate(
            [self._columns["shard"]] + [np.full(h.num_images, first_shard + i, np.int64) for i, h in enumerate(new)]
        )
        keys = self._row_keys + [key for header in new for key in header.index["keys"]]
        # the columns now live in ``columns``; a header keeps what reads need
        shards = self._shards + [dataclasses.replace(h, index={}, meta={"tensor_crc32": h.meta.get("tensor_crc32")}) for h in new]
        lookup = dict(self._lookup)
        duplicates = {key: list(paths) for key, paths in self.duplicate_keys.items()}
        differing: list[str] = []
        for row in range(first_row, len(keys)):
            key = keys[row]
            first = lookup.setdefault(key, row)
            if first == row:
                continue
            same = all(columns[c][first] == columns[c][row] for c in ("crc32", "crc_start", "num_masks", "height", "width"))
            owner, other = shards[columns["shard"][first]].path, shards[columns["shard"][row]].path
            if self.duplicates == "error":
                raise MaskStoreError(
                    other, f"is also stored in {owner} ({'the same record' if same else 'a different record'}); "
                    "remove one of the two shards, or open with duplicates='first'", key=key,
                )  # fmt: skip
            duplicates.setdefault(key, [owner]).append(other)
            if not same:
                differing.append(key)
        self._columns, self._row_keys, self._lookup, self._shards = columns, keys, lookup, shards
        self.duplicate_keys = duplicates
        self.conflicting_keys = self.conflicting_keys + differing
        if differing:
            warnings.warn(
                f"mask store {self.root}: {len(differing)} image keys are stored in two shards with different "
                f"records (e.g. {differing[0]!r} in {', '.join(map(str, duplicates[differing[0]]))}); the record "
                "indexed first is used; see MaskStore.duplicate_keys",
                stacklevel=2,
            )
        return len(new)

    def _row(self, key: str) -> int:
        try:
            return self._lookup[key]
        except KeyError:
            raise KeyError(f"image {key!r} is not in the mask store {self.root}") from None
        except TypeError:
            fail("key", "a str image key", key, error=TypeError)

    def __len__(self) -> int:
        return len(self._lookup)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self._lookup

    def __iter__(self) -> Iterator[str]:
        return iter(self._lookup)

    def keys(self) -> list[str]:
        """All image keys, in shard-name order, then write order."""
        return list(self._lookup)

    @property
    def shards(self) -> list[Path]:
        return [header.path for header in self._shards]

    @property
    def shard_sizes(self) -> list[tuple[str, int]]:
        """``(name, bytes)`` of every indexed shard: with immutable shards, the store's identity."""
        return [(header.path.name, header.file_size) for header in self._shards]

    def info(self, key: str) -> ImageInfo:
        """Size, mask count, encoding, order and shard of image ``key``."""
        row = self._row(key)
        c = self._columns
        return ImageInfo(
            key=key,
            height=int(c["height"][row]),
            width=int(c["width"][row]),
            num_masks=int(c["num_masks"][row]),
            encoding=ENCODINGS[int(c["encoding"][row])],
            order=ORDERS[int(c["order"][row])],
            has_metadata=bool(c["has_metadata"][row]),
            shard=self._shards[int(c["shard"][row])].path,
        )

    # ------------------------------------------------------------------ file access

    def _error(self, row: int, message: str) -> MaskStoreError:
        return MaskStoreError(self._shards[int(self._columns["shard"][row])].path, message, key=self._row_keys[row])

    def _read_into(self, shard_id: int, offset: int, out: np.ndarray) -> None:
        """Fill ``out`` with the shard's bytes from absolute ``offset``."""
        self._files.read_into(self._shards[shard_id], offset, out)

    def _shard_array(self, shard_id: int, name: str) -> np.ndarray:
        """A whole per-mask tensor of a shard (cached), checked against ``tensor_crc32``."""
        with self._lock:
            cached = self._shard_arrays.get(shard_id)
            if cached is not None and name in cached:
                self._shard_arrays.move_to_end(shard_id)
                return cached[name]
        header = self._shards[shard_id]
        span = header.tensors[name]
        array = np.empty(span.shape, dtype=span.dtype)
        self._read_into(shard_id, span.begin, array.view(np.uint8))
        crcs = header.meta.get("tensor_crc32")
        if crcs is not None and zlib.crc32(array) != crcs[name]:
            raise MaskStoreError(header.path, f"tensor {name!r}: checksum mismatch (field '__metadata__.tensor_crc32'): the tensor is corrupt")
        with self._lock:
            self._shard_arrays.setdefault(shard_id, {})[name] = array
            self._shard_arrays.move_to_end(shard_id)
            while len(self._shard_arrays) > 16:
                self._shard_arrays.popitem(last=False)
        return array

    def _record_bytes(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """The ``data`` bytes of one record (``crc32`` checked with ``verify``)."""
        c = self._columns
        out = np.empty(int(c["data_nbytes"][row]), np.uint8) if out is None else out
        self._read_into(int(c["shard"][row]), int(c["data_offset"][row]), out)
        if self.verify and zlib.crc32(out, int(c["crc_start"][row])) != int(c["crc32"][row]):
            raise self._error(row, "field 'crc32': checksum mismatch: the record's data bytes (or its descriptor) are corrupt")
        return out

    def _decode_rle(self, row: int) -> np.ndarray:
        """The ``bool (N, H, W)`` masks of an RLE record, every mask's runs checked first."""
        c = self._columns
        shard_id, start, n = int(c["shard"][row]), int(c["mask_start"][row]), int(c["num_masks"][row])
        lengths = self._shard_array(shard_id, "mask_nbytes")[start : start + n]
        blob = self._record_bytes(row).tobytes()
        if (lengths < 1).any() or int(lengths.sum()) != len(blob):
            raise self._error(row, f"field 'mask_nbytes': expected {n} lengths >= 1 adding up to the record's "
                                   f"{len(blob)} bytes, got {lengths.tolist()[:8]}")  # fmt: skip
        bounds = np.concatenate([[0], np.cumsum(lengths)]).tolist()
        counts = [blob[bounds[i] : bounds[i + 1]] for i in range(n)]
        try:
            return decode_rle(counts, int(c["height"][row]), int(c["width"][row]), source="field 'data': rle counts")
        except ValueError as exc:
            raise self._error(row, str(exc)) from exc

    # ------------------------------------------------------------------ public reads

    def get(self, key: str) -> PackedMasks:
        """The masks of image ``key`` as a CPU :class:`PackedMasks` ``bits (N, ceil(H·W/8))``."""
        return self.load_batch([key])[0]

    __getitem__ = get

    def metadata(self, key: str) -> MaskMetadata | None:
        """The SAM2 metadata of image ``key`` (rows in mask order), or ``None`` if not stored."""
        row = self._row(key)
        c = self._columns
        if not c["has_metadata"][row]:
            return None
        shard_id, start, n = int(c["shard"][row]), int(c["mask_start"][row]), int(c["num_masks"][row])
        return MaskMetadata.from_arrays(
            {f: self._shard_array(shard_id, f)[start : start + n].copy() for f in METADATA_FIELDS}
        )

    def load_batch(
        self,
        keys: Sequence[str],
        device: torch.device | str | None = None,
        *,
        non_blocking: bool = True,
        pin_memory: bool | None = None,
    ) -> list[PackedMasks]:
        """The masks of several images, ready for :func:`ogkernels.downsample_masks`.

        All records are read into one host ``uint8`` buffer (page-locked when
        ``pin_memory``), which is moved to ``device`` in a single copy (asynchronous with
        ``non_blocking`` from pinned memory); each returned :class:`PackedMasks` is a view
        of that buffer. RLE records are decoded (and their runs checked) before the buffer
        is allocated.

        Args:
            keys: image keys, any order, repeats allowed.
            device: target device; ``None`` keeps the masks on the CPU.
            non_blocking: asynchronous host-to-device copy (only matters for a pinned buffer).
            pin_memory: page-lock the host buffer; default: when ``device`` is CUDA.

        Returns:
            one :class:`PackedMasks` per key, in order.
        """
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            fail("keys", "a sequence of str image keys", keys, error=TypeError)
        target = torch.device(device) if device is not None else torch.device("cpu")
        if pin_memory is None:
            pin_memory = target.type == "cuda" and torch.cuda.is_available()
        rows = [self._row(k) for k in keys]
        c = self._columns
        shapes = [(int(c["num_masks"][r]), int(c["height"][r]), int(c["width"][r])) for r in rows]
        packbits = ENCODINGS.index("packbits")
        decoded = {r: PackedMasks.from_dense(self._decode_rle(r)).bits.numpy() for r in set(rows) if c["encoding"][r] != packbits}
        sizes = [n * packed_row_bytes(h, w) for n, h, w in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
        host = torch.empty(offsets[-1], dtype=torch.uint8, pin_memory=bool(pin_memory))
        flat = host.numpy()
        for row, begin, end in zip(rows, offsets[:-1], offsets[1:]):
            if row in decoded:
                flat[begin:end] = decoded[row].reshape(-1)
            elif end > begin:  # the header check guarantees end - begin == data_nbytes
                self._record_bytes(row, flat[begin:end])
        moved = host if target.type == "cpu" else host.to(target, non_blocking=non_blocking)
        return [
            PackedMasks(moved[begin:end].view(n, packed_row_bytes(h, w)), h, w)
            for (n, h, w), begin, end in zip(shapes, offsets[:-1], offsets[1:])
        ]

    # ------------------------------------------------------------------ bitmaps

    def record_identity(self, key: str) -> tuple[int, int]:
        """``(crc32, num_masks)`` of the record of ``key``: what its bitmaps must come from."""
        row = self._row(key)
        return int(self._columns["crc32"][row]), int(self._columns["num_masks"][row])

    def bitmap_set(self, params: BitmapParams) -> BitmapSet:
        """The (cached) bitmap shards of one parameter set."""
        with self._lock:
            found = self._bitmap_sets.get(params)
        if found is None:
            found = BitmapSet(self.root, params, self.max_open_files)
            with self._lock:
                found = self._bitmap_sets.setdefault(params, found)
        return found

    def load_bitmaps(
        self,
        keys: Sequence[str],
        grid: int | tuple[int, int],
        *,
        alpha: float = 0.5,
        mode: str = "flat",
        frame: str = "none",
        device: torch.device | str | None = None,
        non_blocking: bool = True,
        pin_memory: bool | None = None,
    ) -> list[MaskBitmaps]:
        """The stored Phi bitmaps of several images, ready for ``og_tokens`` / ``OGFusion``.

        Written by ``python -m ogkernels.masks downsample`` (or the SAM 2 job's ``--bitmaps``)
        for these parameters. Each record's checksum is checked; a record made from other
        masks than the image's current ones is never returned. All records go into one host
        buffer (page-locked when ``pin_memory``), moved to ``device`` in a single copy and
        unpacked there.

        Args:
            keys: image keys, any order, repeats allowed.
            grid, alpha, mode, frame: the parameters, as :func:`ogkernels.downsample_masks`
                takes them.
            device, non_blocking, pin_memory: as :meth:`load_batch`.

        Returns:
            one :class:`ogkernels.MaskBitmaps` per key: ``bits (N, V)`` bool equal to
            ``downsample_masks`` of the stored masks, ``nonempty (N,)`` bool.

        Raises:
            KeyError: a key not in the store.
            MaskStoreError: no up-to-date bitmaps for a key (naming it and the command to
                write them), or a corrupt bitmap shard.
        """
        if isinstance(keys, str) or not isinstance(keys, Sequence):
            fail("keys", "a sequence of str image keys", keys, error=TypeError)
        params = BitmapParams.of(grid, alpha=alpha, mode=mode, frame=frame)
        return load_bitmaps(self, keys, params, device, non_blocking, pin_memory)

    # ------------------------------------------------------------------ lifetime

    def __getstate__(self) -> dict:
        """For spawned ``DataLoader`` workers: the index travels, file handles do not."""
        state = self.__dict__.copy()
        for name in ("_lock", "_shard_arrays"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._shard_arrays = OrderedDict()

    def close(self) -> None:
        self._files.close()
        for bitmap_set in self._bitmap_sets.values():
            bitmap_set.close()
        with self._lock:
            self._shard_arrays.clear()

    def __enter__(self) -> "MaskStore":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"MaskStore({str(self.root)!r}, images={len(self)}, shards={len(self._shards)})"
