"""``MaskStore``: read a mask store: per-image ``PackedMasks``, batches, SAM2 metadata."""

from __future__ import annotations

import dataclasses
import os
import threading
import zlib
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from .._validation import check_choice, check_positive_int, fail
from ..packed_masks import PackedMasks, packed_row_bytes
from .errors import MaskStoreError
from .format import (
    ENCODINGS,
    METADATA_FIELDS,
    ORDERS,
    SHARD_DIR,
    SHARD_SUFFIX,
    ShardHeader,
    read_manifest,
    read_shard_header,
)
from .metadata import MaskMetadata
from .rle import decode_rle


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


_INT_COLUMNS = ("height", "width", "num_masks", "data_offset", "data_nbytes", "mask_start", "has_metadata", "crc32")


def list_shards(root: str | os.PathLike) -> list[Path]:
    """The shard files of a store, sorted by name (temporary files excluded)."""
    directory = Path(root) / SHARD_DIR
    if not directory.is_dir():
        return []
    return sorted(
        p for p in directory.iterdir() if p.name.endswith(SHARD_SUFFIX) and not p.name.startswith(".")
    )


class MaskStore:
    """Read-only view of a mask store (see :mod:`ogkernels.masks.format`).

    Opening reads the manifest and every shard header (not the mask bytes) and builds the
    key index; :meth:`refresh` picks up shards written since. Reads use ``pread`` on cached
    file descriptors, so one store object may be shared by threads and by forked
    ``DataLoader`` workers.

    Args:
        root: the store directory.
        verify: check each record's CRC-32 on read (costs about one extra pass over the bytes).
        max_open_files: file descriptors kept open (least recently used are closed).
        duplicates: a key stored in two shards (e.g. two ranks given overlapping shards):
            ``"error"`` (default) raises naming both shards; ``"first"`` keeps the record of
            the first shard in name order.

    Raises:
        MaskStoreError: a missing/corrupt manifest or shard, or a key present in two shards.
        MaskStoreVersionError: the store or a shard was written by a newer format version.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        verify: bool = False,
        max_open_files: int = 64,
        duplicates: str = "error",
    ) -> None:
        self.root = Path(root)
        self.verify = bool(verify)
        self.duplicates = check_choice("duplicates", duplicates, ("error", "first"))
        self.max_open_files = check_positive_int("max_open_files", max_open_files)
        self.manifest = read_manifest(self.root)
        self._lock = threading.Lock()
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._fd_pid = os.getpid()
        self._shard_arrays: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self._shards: list[ShardHeader] = []
        self._row_keys: list[str] = []  # the key of every row (rows of ignored duplicates too)
        self._lookup: dict[str, int] = {}
        self._columns: dict[str, np.ndarray] = {c: np.zeros(0, np.int64) for c in _INT_COLUMNS}
        self._columns.update(shard=np.zeros(0, np.int64), encoding=np.zeros(0, np.uint8), order=np.zeros(0, np.uint8))
        self.refresh()

    # ------------------------------------------------------------------ index

    def refresh(self) -> int:
        """Index shards that appeared since the last scan; returns how many were added."""
        known = {header.path.name for header in self._shards}
        new = [read_shard_header(p) for p in list_shards(self.root) if p.name not in known]
        if not new:
            return 0
        parts: dict[str, list[np.ndarray]] = {name: [self._columns[name]] for name in self._columns}
        keys = list(self._row_keys)
        lookup = dict(self._lookup)
        shards = list(self._shards)
        new_row_shard: list[int] = []  # shard of each row this refresh adds
        for header in new:
            shard_id = len(shards)
            index = header.index
            for key in index["keys"]:
                if key in lookup and self.duplicates == "first":
                    keys.append(key)  # a row nobody looks up: the first shard's record wins
                    new_row_shard.append(shard_id)
                    continue
                if key in lookup:
                    row = lookup[key]
                    owner = int(self._columns["shard"][row]) if row < len(self._row_keys) else new_row_shard[row - len(self._row_keys)]
                    raise MaskStoreError(
                        header.path, f"is also stored in {shards[owner].path if owner < len(shards) else header.path}; "
                        "remove one of the two shards", key=key,
                    )  # fmt: skip
                lookup[key] = len(keys)
                keys.append(key)
                new_row_shard.append(shard_id)
            count = len(index["keys"])
            for name in _INT_COLUMNS:
                column = np.asarray(index[name], dtype=np.int64).reshape(count)
                parts[name].append(column + header.tensors["data"].begin if name == "data_offset" else column)
            parts["shard"].append(np.full(count, shard_id, np.int64))
            parts["encoding"].append(np.asarray([ENCODINGS.index(e) for e in index["encoding"]], np.uint8).reshape(count))
            parts["order"].append(np.asarray([ORDERS.index(o) for o in index["order"]], np.uint8).reshape(count))
            shards.append(dataclasses.replace(header, index={}))  # the columns now live in self._columns
        self._columns = {name: np.concatenate(chunks) for name, chunks in parts.items()}
        self._row_keys, self._lookup, self._shards = keys, lookup, shards
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

    def _fd(self, shard_id: int) -> int:
        with self._lock:
            if self._fd_pid != os.getpid():  # forked: do not share the parent's LRU state
                self._fds = OrderedDict()
                self._fd_pid = os.getpid()
            fd = self._fds.get(shard_id)
            if fd is not None:
                self._fds.move_to_end(shard_id)
                return fd
            path = self._shards[shard_id].path
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError as exc:
                raise MaskStoreError(path, f"cannot open the shard: {exc}") from exc
            self._fds[shard_id] = fd
            while len(self._fds) > self.max_open_files:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def _read_into(self, shard_id: int, offset: int, out: np.ndarray) -> None:
        """Fill the uint8 array ``out`` with the shard bytes at absolute ``offset``."""
        if out.nbytes == 0:
            return
        fd = self._fd(shard_id)
        view = memoryview(out.reshape(-1)).cast("B")
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, len(view) - done, offset + done)
                view[done : done + len(chunk)] = chunk
                got = len(chunk)
            if got <= 0:
                raise MaskStoreError(self._shards[shard_id].path, f"unexpected end of file at byte {offset + done}")
            done += got

    def _shard_array(self, shard_id: int, name: str) -> np.ndarray:
        with self._lock:
            cached = self._shard_arrays.get(shard_id)
            if cached is not None and name in cached:
                self._shard_arrays.move_to_end(shard_id)
                return cached[name]
        span = self._shards[shard_id].tensors[name]
        array = np.empty(span.shape, dtype=span.dtype)
        self._read_into(shard_id, span.begin, array)
        with self._lock:
            self._shard_arrays.setdefault(shard_id, {})[name] = array
            self._shard_arrays.move_to_end(shard_id)
            while len(self._shard_arrays) > 16:
                self._shard_arrays.popitem(last=False)
        return array

    def _record_bytes(self, row: int, out: np.ndarray | None = None) -> np.ndarray:
        c = self._columns
        shard_id = int(c["shard"][row])
        nbytes = int(c["data_nbytes"][row])
        out = np.empty(nbytes, np.uint8) if out is None else out
        self._read_into(shard_id, int(c["data_offset"][row]), out)
        if self.verify and zlib.crc32(out) != int(c["crc32"][row]):
            raise MaskStoreError(
                self._shards[shard_id].path, "checksum mismatch: the record is corrupt", key=self._row_keys[row]
            )
        return out

    def _decode_rle(self, row: int) -> np.ndarray:
        """The ``bool (N, H, W)`` masks of an RLE record."""
        c = self._columns
        shard_id, start, n = int(c["shard"][row]), int(c["mask_start"][row]), int(c["num_masks"][row])
        lengths = self._shard_array(shard_id, "mask_nbytes")[start : start + n]
        blob = self._record_bytes(row).tobytes()
        bounds = np.concatenate([[0], np.cumsum(lengths)])
        if bounds[-1] != len(blob):
            raise MaskStoreError(self._shards[shard_id].path, "corrupt RLE record lengths", key=self._row_keys[row])
        counts = [blob[bounds[i] : bounds[i + 1]] for i in range(n)]
        try:
            return decode_rle(counts, int(c["height"][row]), int(c["width"][row]))
        except Exception as exc:  # pycocotools raises bare Exceptions on garbage
            raise MaskStoreError(self._shards[shard_id].path, f"corrupt RLE record ({exc})", key=self._row_keys[row]) from exc

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
        of that buffer.

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
        sizes = [n * packed_row_bytes(h, w) for n, h, w in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).tolist()
        host = torch.empty(offsets[-1], dtype=torch.uint8, pin_memory=bool(pin_memory))
        flat = host.numpy()
        for row, begin, end in zip(rows, offsets[:-1], offsets[1:]):
            if end == begin:
                continue
            if c["encoding"][row] == ENCODINGS.index("packbits"):
                if end - begin != int(c["data_nbytes"][row]):
                    path = self._shards[int(c["shard"][row])].path
                    raise MaskStoreError(path, "corrupt record: size disagrees with its shape", key=self._row_keys[row])
                self._record_bytes(row, flat[begin:end])
            else:
                masks = self._decode_rle(row)
                flat[begin:end] = PackedMasks.from_dense(masks).bits.numpy().reshape(-1)
        moved = host if target.type == "cpu" else host.to(target, non_blocking=non_blocking)
        return [
            PackedMasks(moved[begin:end].view(n, packed_row_bytes(h, w)), h, w)
            for (n, h, w), begin, end in zip(shapes, offsets[:-1], offsets[1:])
        ]

    # ------------------------------------------------------------------ lifetime

    def __getstate__(self) -> dict:
        """For spawned ``DataLoader`` workers: the index travels, file handles do not."""
        state = self.__dict__.copy()
        for name in ("_lock", "_fds", "_shard_arrays"):
            del state[name]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        self._fds = OrderedDict()
        self._fd_pid = os.getpid()
        self._shard_arrays = OrderedDict()

    def close(self) -> None:
        with self._lock:
            if self._fd_pid == os.getpid():
                for fd in self._fds.values():
                    os.close(fd)
            self._fds.clear()
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
