"""Phi bitmaps in the mask store: kilobytes per image for training instead of megabytes.

For each parameter set (grid, alpha, mode, frame) the store keeps, beside the masks::

    <root>/bitmaps/<params.name>/params.json          the parameters, written once
    <root>/bitmaps/<params.name>/<name>.safetensors   bitmap shards, immutable, atomic

A bitmap shard is a safetensors file like a mask shard (format ``"ogkernels.mask_store.bitmaps"``,
``__metadata__["params"]`` its parameters) with the tensors

* ``bits`` ``U8 (M · ceil(V/8),)``: each mask's ``downsample_masks`` bitmap, ``V`` bits
  packed MSB first (``numpy.packbits`` of the ``(N, V)`` rows), masks back to back;
* ``nonempty`` ``U8 (M,)``: 1 where the raw mask has a set pixel (the reference's gate
  reads it: a non-empty mask can downsample to an empty bitmap);

and the per-image columns ``keys``, ``num_masks``, ``mask_start`` (its first row),
``source_crc32`` (the ``crc32`` of the mask record it was computed from: a bitmap whose
masks changed, or were replaced by a duplicate, is stale and never returned) and
``crc32`` (of :func:`~ogkernels.masks.shard_index.bitmap_descriptor`, then the record's
``bits`` bytes, then its ``nonempty`` bytes; checked on every read — bitmaps are small).
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .._validation import check_positive_int, fail
from ..options import OGTokenOptions, parse_grid
from .atomic import atomic_create
from .errors import MaskStoreError
from .files import read_regular
from .format import ShardHeader, ShardKind, list_shards, parse_json, read_shard_header
from .keys import check_key
from .shard_files import ShardFiles
from .shard_index import bitmap_descriptor, check_bitmap_index
from .writer import ShardWriter

BITMAP_DIR = "bitmaps"
PARAMS_NAME = "params.json"
BITMAP_SHARD = ShardKind(
    "ogkernels.mask_store.bitmaps", {"bits": (np.dtype("<u1"), ()), "nonempty": (np.dtype("<u1"), ())}, ("bits", "nonempty")
)


@dataclass(frozen=True)
class BitmapParams:
    """The Phi parameters a set of bitmaps is made with (validated like :class:`OGTokenOptions`).

    Attributes:
        grid: ``(gh, gw)``; ``(1, V)`` for ``mode="flat"``.
        alpha, mode, frame: as :func:`ogkernels.downsample_masks` takes them.
    """

    grid: tuple[int, int]
    alpha: float
    mode: str
    frame: str

    @classmethod
    def of(cls, grid: object, *, alpha: float = 0.5, mode: str = "flat", frame: str = "none") -> "BitmapParams":
        """From ``downsample_masks``-style arguments (``grid``: ``V`` or ``(gh, gw)``)."""
        options = OGTokenOptions(alpha=alpha, mode=mode, frame=frame)
        return cls(parse_grid(grid, mode), options.alpha, mode, frame)

    @classmethod
    def parse(cls, spec: str) -> "BitmapParams":
        """``"576"``, ``"576,0.5"``, ``"24x24,0.5,patch,pad"``: grid[,alpha[,mode[,frame]]]."""
        parts = [p.strip() for p in str(spec).split(",")]
        if not 1 <= len(parts) <= 4 or not all(parts):
            fail("bitmaps", "GRID[,ALPHA[,MODE[,FRAME]]], e.g. 576 or 24x24,0.5,patch,pad", repr(spec))
        grid_text = parts[0].lower().replace("×", "x")
        try:
            grid = tuple(int(g) for g in grid_text.split("x")) if "x" in grid_text else int(grid_text)
            alpha = float(parts[1]) if len(parts) > 1 else 0.5
        except ValueError:
            fail("bitmaps", "GRID[,ALPHA[,MODE[,FRAME]]] with GRID V or GHxGW and ALPHA a number", repr(spec))
        return cls.of(grid, alpha=alpha, mode=parts[2] if len(parts) > 2 else "flat", frame=parts[3] if len(parts) > 3 else "none")

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def row_bytes(self) -> int:
        return (self.num_tokens + 7) // 8

    @property
    def name(self) -> str:
        """The folder name, e.g. ``flat-1x576-alpha0.5-none``."""
        return f"{self.mode}-{self.grid[0]}x{self.grid[1]}-alpha{self.alpha!r}-{self.frame}"

    @property
    def grid_text(self) -> str:
        """``"576"`` (flat) or ``"24x24"`` (patch): the command lines' ``--grid``."""
        return str(self.num_tokens) if self.mode == "flat" else f"{self.grid[0]}x{self.grid[1]}"

    @property
    def spec(self) -> str:
        """What :meth:`parse` reads back (the SAM 2 job's ``--bitmaps``)."""
        return f"{self.grid_text},{self.alpha!r},{self.mode},{self.frame}"

    @property
    def cli_args(self) -> str:
        """The arguments of ``python -m ogkernels.masks downsample`` for these parameters."""
        return f"--grid {self.grid_text} --alpha {self.alpha!r} --mode {self.mode} --frame {self.frame}"

    def to_json(self) -> dict:
        return {"grid": list(self.grid), "alpha": self.alpha, "mode": self.mode, "frame": self.frame}

    @classmethod
    def from_json(cls, path: Path, data: object) -> "BitmapParams":
        try:
            return cls.of(tuple(data["grid"]), alpha=data["alpha"], mode=data["mode"], frame=data["frame"])
        except (KeyError, TypeError, ValueError) as exc:
            raise MaskStoreError(path, f"corrupt bitmap parameters ({type(exc).__name__}: {exc})") from exc


def bitmap_directory(root: str | os.PathLike, params: BitmapParams) -> Path:
    return Path(root) / BITMAP_DIR / params.name


def _check_params_file(directory: Path, params: BitmapParams) -> None:
    path = directory / PARAMS_NAME
    try:
        found = BitmapParams.from_json(path, parse_json(read_regular(path, 1 << 16)))
    except OSError as exc:
        raise MaskStoreError(path, f"cannot read the bitmap parameters: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise MaskStoreError(path, f"corrupt bitmap parameters ({exc})") from exc
    if found != params:
        raise MaskStoreError(path, f"holds bitmaps of {found}, expected {params} (a folder name that lies)")


def pack_bitmaps(bits: torch.Tensor) -> np.ndarray:
    """``(N, V)`` bool -> ``(N, ceil(V/8))`` uint8, MSB first."""
    return np.packbits(bits.detach().cpu().numpy().astype(np.bool_, copy=False), axis=1)


class BitmapWriter(ShardWriter):
    """Append bitmap records for one parameter set, as immutable atomic shards.

    Args:
        root: the mask store (must exist).
        params: the parameters the bitmaps were made with.
        writer_id: shard-name prefix (``[A-Za-z0-9_.]``).
        shard_size: records per shard.
    """

    def __init__(self, root: str | os.PathLike, params: BitmapParams, *, writer_id: str = "bitmaps", shard_size: int = 1024) -> None:
        self.params = params
        self.directory = bitmap_directory(root, params)
        self.shard_size = check_positive_int("shard_size", shard_size)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            atomic_create(self.directory / PARAMS_NAME, (json.dumps(params.to_json()) + "\n").encode())
        except OSError as exc:
            raise MaskStoreError(self.directory, f"cannot create the bitmap folder: {exc.strerror or exc}") from exc
        _check_params_file(self.directory, params)
        super().__init__(self.directory, writer_id, BITMAP_SHARD)
        self._pending: list[tuple[str, np.ndarray, np.ndarray, int, int]] = []

    def add(self, key: str, bits: torch.Tensor, nonempty: torch.Tensor, source_crc32: int) -> None:
        """Buffer the bitmaps of image ``key``: ``bits`` ``(N, V)`` bool, ``nonempty`` ``(N,)``
        bool, ``source_crc32`` the ``crc32`` of the mask record they come from."""
        check_key(key)
        n = bits.shape[0]
        if bits.dim() != 2 or bits.shape[1] != self.params.num_tokens or tuple(nonempty.shape) != (n,):
            fail(f"bitmaps of image {key!r}", f"(N, {self.params.num_tokens}) bits and (N,) nonempty", f"{tuple(bits.shape)} and {tuple(nonempty.shape)}")
        packed = pack_bitmaps(bits).reshape(-1)
        flags = nonempty.detach().cpu().numpy().astype(np.uint8)
        crc = zlib.crc32(flags, zlib.crc32(packed, zlib.crc32(bitmap_descriptor(key, n, source_crc32, self.params.name))))
        self._pending.append((key, packed, flags, source_crc32, crc))
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> Path | None:
        if not self._pending:
            return None
        records, self._pending = self._pending, []
        counts = [r[2].size for r in records]
        index = {
            "keys": [r[0] for r in records], "num_masks": counts,
            "mask_start": np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist() if counts else [],
            "source_crc32": [r[3] for r in records], "crc32": [r[4] for r in records],
        }  # fmt: skip
        tensors = {"bits": [r[1] for r in records], "nonempty": [r[2] for r in records]}
        return self._write(index, tensors, {"params": json.dumps(self.params.to_json())})


class BitmapSet:
    """The bitmap shards of one parameter set (headers checked on :meth:`refresh`)."""

    def __init__(self, root: str | os.PathLike, params: BitmapParams, max_open_files: int = 64) -> None:
        self.params = params
        self.directory = bitmap_directory(root, params)
        self.files = ShardFiles(max_open_files)
        self.headers: list[ShardHeader] = []
        self.rows: dict[str, list[tuple[int, int]]] = {}  # key -> [(shard, entry)]
        self.columns: list[dict[str, np.ndarray]] = []
        self.refresh()

    def refresh(self) -> int:
        """Index bitmap shards written since; returns how many were added."""
        known = {h.path.name for h in self.headers}
        new = [p for p in list_shards(self.directory) if p.name not in known]
        if new:
            _check_params_file(self.directory, self.params)
        for path in new:
            header = read_shard_header(path, BITMAP_SHARD)
            found = BitmapParams.from_json(path, parse_json(header.meta.get("params", "null")))
            if found != self.params:
                raise MaskStoreError(path, f"field '__metadata__.params': expected {self.params}, got {found}")
            columns = check_bitmap_index(header, self.params.row_bytes)
            shard = len(self.headers)
            for entry, key in enumerate(header.index["keys"]):
                self.rows.setdefault(key, []).append((shard, entry))
            self.headers.append(header)
            self.columns.append(columns)
        return len(new)

    def find(self, key: str, source_crc32: int, num_masks: int) -> tuple[int, int] | None:
        """The record of ``key`` made from the mask record with ``source_crc32``, if any."""
        for shard, entry in self.rows.get(key, ()):
            c = self.columns[shard]
            if c["source_crc32"][entry] == source_crc32 and c["num_masks"][entry] == num_masks:
                return shard, entry
        return None

    def read(self, records: list[tuple[int, int]], bits: np.ndarray, nonempty: np.ndarray) -> None:
        """Read ``records``, in order, into ``bits`` (their packed rows back to back) and
        ``nonempty``; each record's checksum is checked. Records that follow each other in
        one shard are read together (one ``pread`` for their rows, one for their flags)."""
        row_bytes, out, i = self.params.row_bytes, 0, 0
        while i < len(records):
            shard, entry = records[i]
            j = i + 1
            while j < len(records) and records[j] == (shard, records[j - 1][1] + 1):
                j += 1
            header, c = self.headers[shard], self.columns[shard]
            first, last = int(c["mask_start"][entry]), records[j - 1][1]
            n = int(c["mask_start"][last] + c["num_masks"][last]) - first
            run_bits, run_flags = bits[out * row_bytes : (out + n) * row_bytes], nonempty[out : out + n]
            self.files.read_into(header, header.tensors["bits"].begin + first * row_bytes, run_bits)
            self.files.read_into(header, header.tensors["nonempty"].begin + first, run_flags)
            for _, e in records[i:j]:
                begin, count = int(c["mask_start"][e]) - first, int(c["num_masks"][e])
                key = header.index["keys"][e]
                crc = zlib.crc32(bitmap_descriptor(key, count, int(c["source_crc32"][e]), self.params.name))
                crc = zlib.crc32(run_bits[begin * row_bytes : (begin + count) * row_bytes], crc)
                if zlib.crc32(run_flags[begin : begin + count], crc) != int(c["crc32"][e]):
                    raise MaskStoreError(header.path, "field 'crc32': checksum mismatch: the bitmap record is corrupt", key=key)
            out, i = out + n, j

    def close(self) -> None:
        self.files.close()


def load_bitmaps(
    store, keys, params: BitmapParams, device: torch.device | str | None, non_blocking: bool, pin_memory: bool | None
) -> list:
    """:meth:`MaskStore.load_bitmaps` (see there)."""
    from ..bitmaps import MaskBitmaps
    from ..packed_masks import PackedMasks

    bitmap_set = store.bitmap_set(params)
    records, counts = [], []
    for key in keys:
        source_crc32, num_masks = store.record_identity(key)
        record = bitmap_set.find(key, source_crc32, num_masks)
        if record is None and bitmap_set.refresh():
            record = bitmap_set.find(key, source_crc32, num_masks)
        if record is None:
            raise MaskStoreError(
                bitmap_set.directory, f"no bitmaps of its current masks for {params.name}; run "
                f"`python -m ogkernels.masks downsample {store.root} {params.cli_args}`", key=key,
            )  # fmt: skip
        records.append(record)
        counts.append(num_masks)
    target = torch.device(device) if device is not None else torch.device("cpu")
    if pin_memory is None:
        pin_memory = target.type == "cuda" and torch.cuda.is_available()
    total, row_bytes = sum(counts), params.row_bytes
    host = torch.empty(total * (row_bytes + 1), dtype=torch.uint8, pin_memory=bool(pin_memory))
    flat = host.numpy()
    bitmap_set.read(records, flat[: total * row_bytes], flat[total * row_bytes :])
    moved = host if target.type == "cpu" else host.to(target, non_blocking=non_blocking)  # the one copy
    rows = moved[: total * row_bytes].view(total, row_bytes)
    bits = PackedMasks(rows, 1, params.num_tokens).unpack().view(total, params.num_tokens) if total else rows.new_zeros(0, params.num_tokens, dtype=torch.bool)
    nonempty = moved[total * row_bytes :] != 0
    out, start = [], 0
    for n in counts:
        out.append(MaskBitmaps(bits[start : start + n], nonempty[start : start + n], params.grid, params.alpha, params.mode, params.frame))
        start += n
    return out
