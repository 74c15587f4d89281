"""``MaskStoreWriter``: buffer image records and write them as immutable, atomic shards."""

from __future__ import annotations

import os
import re
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._validation import check_choice, check_positive_int, fail
from ..packed_masks import PackedMasks, packed_row_bytes
from .atomic import host_name, remove_stale_temps
from .errors import MaskStoreError
from .format import MASK_SHARD, METADATA_FIELDS, SHARD_DIR, SHARD_SUFFIX, ShardKind, create_manifest, write_shard
from .keys import check_key
from .metadata import MaskMetadata
from .rle import encode_rle
from .shard_index import ENCODINGS, MAX_SIDE, ORDERS, descriptor_crc, mask_descriptor

_WRITER_ID = re.compile(r"^[A-Za-z0-9_.]+$")


@dataclass(frozen=True)
class _Record:
    key: str
    height: int
    width: int
    num_masks: int
    encoding: str
    order: str
    data: np.ndarray  # uint8 (nbytes,)
    mask_nbytes: np.ndarray  # int64 (N,)
    metadata: MaskMetadata | None
    desc_crc32: int
    crc32: int


def _as_packed(key: str, masks: object) -> PackedMasks:
    if isinstance(masks, PackedMasks):
        return masks if masks.device.type == "cpu" else masks.to("cpu")
    if isinstance(masks, (np.ndarray, torch.Tensor)):
        return PackedMasks.from_dense(masks)
    fail(f"masks of image {key!r}", "a PackedMasks or a (N, H, W) bool array/tensor", masks, error=TypeError)


def build_record(
    key: str,
    masks: PackedMasks | np.ndarray | torch.Tensor,
    metadata: MaskMetadata | None,
    encoding: str,
    order: str,
) -> _Record:
    """Validate one image and encode its masks (``packbits`` bytes or COCO RLE counts)."""
    check_key(key)
    check_choice("encoding", encoding, ENCODINGS)
    check_choice("order", order, ORDERS)
    packed = _as_packed(key, masks)
    n, h, w = packed.shape
    if max(h, w) > MAX_SIDE:
        fail(f"masks of image {key!r}", f"height and width <= {MAX_SIDE}", f"{h}x{w}")
    if metadata is not None:
        if not isinstance(metadata, MaskMetadata):
            fail(f"metadata of image {key!r}", "a MaskMetadata or None", metadata, error=TypeError)
        if metadata.num_masks != n:
            fail(f"metadata of image {key!r}", f"{n} rows (one per mask)", f"{metadata.num_masks} rows")
    if encoding == "packbits":
        data = np.ascontiguousarray(packed.bits.numpy()).reshape(-1).copy()
        mask_nbytes = np.full(n, packed_row_bytes(h, w), dtype=np.int64)
    else:
        counts = encode_rle(packed)
        data = np.frombuffer(b"".join(counts), dtype=np.uint8).copy()
        mask_nbytes = np.asarray([len(c) for c in counts], dtype=np.int64).reshape(n)
    desc = descriptor_crc(mask_descriptor(key, h, w, n, encoding, order, int(metadata is not None), data.nbytes))
    return _Record(key, h, w, n, encoding, order, data, mask_nbytes, metadata, desc, zlib.crc32(data, desc))


def check_writer_id(writer_id: object) -> str:
    if not isinstance(writer_id, str) or not _WRITER_ID.match(writer_id):
        fail("writer_id", "a str of [A-Za-z0-9_.] characters", writer_id)
    return writer_id


class ShardWriter:
    """What the mask and bitmap writers share: shard names unique per host, process and run
    (``<writer_id>-<host>-<pid>-<random>-<seq>.safetensors``), atomic shard writes, the
    clean-up of dead writers' temporary files, and flushing on ``close`` / ``with`` exit."""

    def __init__(self, directory: Path, writer_id: str, kind: ShardKind) -> None:
        self.writer_id = check_writer_id(writer_id)
        self.kind = kind
        self._directory = directory
        self._run = f"{host_name()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._seq = 0
        self.shards_written: list[Path] = []
        remove_stale_temps(directory)

    def _write(self, index: dict, tensors: dict, meta: dict | None = None) -> Path:
        path = self._directory / f"{self.writer_id}-{self._run}-{self._seq:06d}{SHARD_SUFFIX}"
        self._seq += 1
        try:
            write_shard(path, index, tensors, self.kind, meta)
        except OSError as exc:
            raise MaskStoreError(path, f"cannot write the shard: {exc.strerror or exc}") from exc
        self.shards_written.append(path)
        return path

    def flush(self) -> Path | None:  # pragma: no cover - each writer defines it
        raise NotImplementedError

    def close(self) -> None:
        self.flush()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class MaskStoreWriter(ShardWriter):
    """Append images to a mask store (created if absent) as immutable shards.

    Records are buffered and written as one shard every ``shard_size`` images or
    ``max_shard_bytes`` bytes, on :meth:`flush` and on :meth:`close` (also when the ``with``
    block exits on an exception: buffered records are complete). Each shard appears
    atomically; a killed writer loses only its unflushed records and leaves no partial file
    under a shard name. Several writers (ranks, hosts) may write one store concurrently:
    shard names carry the host, the process and a random run id, so they never collide;
    on start a writer deletes the temporary files of dead writers of its own host only
    (:func:`ogkernels.masks.atomic.remove_stale_temps`). Writers do not coordinate which
    keys they write: a key written by two writers is a duplicate, which readers resolve as
    :class:`MaskStore` documents (the mask job avoids it with a lock, see
    :mod:`ogkernels.masks.locks`).

    Args:
        root: the store directory.
        writer_id: shard-name prefix, ``[A-Za-z0-9_.]+`` (e.g. ``"rank3"``).
        shard_size: images per shard (>= 1).
        max_shard_bytes: flush earlier once buffered mask bytes reach this (>= 1).
        encoding: default record encoding, ``"packbits"`` or ``"rle"``.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        writer_id: str = "w",
        shard_size: int = 256,
        max_shard_bytes: int = 256 << 20,
        encoding: str = "packbits",
    ) -> None:
        from .. import __version__

        check_writer_id(writer_id)  # before the store is created
        self.shard_size = check_positive_int("shard_size", shard_size)
        self.max_shard_bytes = check_positive_int("max_shard_bytes", max_shard_bytes)
        self.encoding = check_choice("encoding", encoding, ENCODINGS)
        self.root = Path(root)
        create_manifest(self.root, f"ogkernels {__version__}")
        self.shard_dir = self.root / SHARD_DIR
        super().__init__(self.shard_dir, writer_id, MASK_SHARD)
        self._pending: list[_Record] = []
        self._pending_bytes = 0
        self._keys: set[str] = set()

    @property
    def num_pending(self) -> int:
        return len(self._pending)

    def add(
        self,
        key: str,
        masks: PackedMasks | np.ndarray | torch.Tensor,
        metadata: MaskMetadata | None = None,
        *,
        encoding: str | None = None,
        order: str = "given",
    ) -> int:
        """Buffer the masks of image ``key``.

        Args:
            key: the image path relative to the dataset root (``/``-separated).
            masks: a :class:`PackedMasks` or a bool/0-1 ``(N, H, W)`` array or tensor
                (``N`` may be 0).
            metadata: the SAM2 fields of the ``N`` masks, or ``None``.
            encoding: ``"packbits"`` or ``"rle"``; default: the writer's.
            order: how the masks are ordered (recorded): ``"lexicographic"`` (the reference
                loader's ``mask_10`` before ``mask_2``), ``"numeric"`` (SAM2 output order) or
                ``"given"``.

        Returns:
            the record's ``crc32`` (what bitmaps made from these masks refer to).
        """
        if check_key(key) in self._keys:
            fail("key", "a key not yet written by this writer", key)
        record = build_record(key, masks, metadata, encoding or self.encoding, order)
        self._keys.add(key)
        self._pending.append(record)
        self._pending_bytes += record.data.nbytes
        if len(self._pending) >= self.shard_size or self._pending_bytes >= self.max_shard_bytes:
            self.flush()
        return record.crc32

    def flush(self) -> Path | None:
        """Write the buffered records as one shard (atomically); its path, or ``None``."""
        if not self._pending:
            return None
        records, self._pending, self._pending_bytes = self._pending, [], 0
        return self._write(*_shard_content(records))


def _shard_content(records: list[_Record]) -> tuple[dict, dict]:
    offsets = np.cumsum([0] + [r.data.nbytes for r in records])
    mask_starts = np.cumsum([0] + [r.num_masks for r in records])
    index = {
        "keys": [r.key for r in records],
        "height": [r.height for r in records],
        "width": [r.width for r in records],
        "num_masks": [r.num_masks for r in records],
        "encoding": [r.encoding for r in records],
        "order": [r.order for r in records],
        "data_offset": offsets[:-1].tolist(),
        "data_nbytes": [r.data.nbytes for r in records],
        "mask_start": mask_starts[:-1].tolist(),
        "has_metadata": [int(r.metadata is not None) for r in records],
        "desc_crc32": [r.desc_crc32 for r in records],
        "crc32": [r.crc32 for r in records],
    }
    metas = [r.metadata if r.metadata is not None else MaskMetadata.empty(r.num_masks) for r in records]
    tensors: dict[str, object] = {
        "data": [r.data for r in records],
        "mask_nbytes": np.concatenate([r.mask_nbytes for r in records]),
    }
    for field in METADATA_FIELDS:
        tensors[field] = np.concatenate([getattr(m, field) for m in metas])
    return index, tensors
