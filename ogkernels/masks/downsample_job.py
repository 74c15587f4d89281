"""Write the Phi bitmaps of a mask store (``python -m ogkernels.masks downsample``).

:func:`downsample_store` computes, for one parameter set, the bitmaps of every image that
has none made from its current masks, and appends them as bitmap shards: resumable (a rerun
does only what is missing or stale) and atomic like the rest of the store. Masks are read
with ``verify=True``: a bitmap is never made from a corrupt record.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch

from .._validation import check_positive_int
from ..downsample import downsample_masks
from ..packed_masks import PackedMasks
from .bitmap_store import BitmapParams, BitmapWriter
from .locks import StoreLock
from .reader import MaskStore


@dataclass
class DownsampleReport:
    """What :func:`downsample_store` did for one parameter set."""

    params: BitmapParams
    written: int = 0
    up_to_date: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (f"bitmaps {self.params.name}: {self.written} images written, {self.up_to_date} already up to date; "
                f"{self.seconds:.1f} s ({self.images_per_second:.0f} images/s)")  # fmt: skip


def phi_bitmaps(masks: Sequence[PackedMasks], params: BitmapParams) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per image ``(bits (N, V) bool, nonempty (N,) bool)``: Phi of its masks, and which raw
    masks have a set pixel. One ``downsample_masks`` call for the whole list."""
    grid = params.grid if params.mode == "patch" else params.num_tokens
    flat = downsample_masks(list(masks), grid, alpha=params.alpha, mode=params.mode, frame=params.frame)
    out, start = [], 0
    for packed in masks:
        n = packed.num_masks
        out.append((flat[start : start + n], packed.bits.ne(0).any(dim=1)))
        start += n
    return out


def downsample_store(
    store: MaskStore | str | os.PathLike,
    params: BitmapParams,
    *,
    keys: Sequence[str] | None = None,
    batch_size: int = 32,
    device: torch.device | str | None = None,
    writer_id: str = "bitmaps",
    shard_size: int = 1024,
    lock: bool = True,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> DownsampleReport:
    """Write the bitmaps of ``params`` for every image of ``keys`` (default: all) lacking them.

    Args:
        store: a :class:`MaskStore` or its directory (opened with ``verify=True``).
        params: the Phi parameters (:meth:`BitmapParams.of`).
        keys: the images to cover; default every key of the store.
        batch_size: images per ``downsample_masks`` call.
        device: where Phi runs (``"cuda"`` for the Triton kernel); default the CPU.
        writer_id, shard_size: bitmap shard names and size (see :class:`BitmapWriter`).
        lock: hold the store lock ``bitmaps-<params.name>`` (two runs do not repeat each
            other's work); ``False`` when the caller coordinates (the mask job's ranks).
        progress: optional wrapper of the batch iterable, e.g. ``tqdm.tqdm``.

    Returns:
        a :class:`DownsampleReport` (images written, up to date, images/s).
    """
    check_positive_int("batch_size", batch_size)
    store = store if isinstance(store, MaskStore) else MaskStore(store, verify=True)
    report = DownsampleReport(params)
    start = time.perf_counter()
    guard = StoreLock(store.root, f"bitmaps-{params.name}") if lock else contextlib.nullcontext()
    with guard:
        bitmap_set = store.bitmap_set(params)
        bitmap_set.refresh()
        keys = list(dict.fromkeys(store.keys() if keys is None else keys))
        todo = [k for k in keys if bitmap_set.find(k, *store.record_identity(k)) is None]
        report.up_to_date = len(keys) - len(todo)
        batches = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
        with BitmapWriter(store.root, params, writer_id=writer_id, shard_size=shard_size) as writer:
            for batch in progress(batches) if progress is not None else batches:
                masks = store.load_batch(batch, device=device)
                for key, (bits, nonempty) in zip(batch, phi_bitmaps(masks, params)):
                    writer.add(key, bits, nonempty, store.record_identity(key)[0])
                report.written += len(batch)
        bitmap_set.refresh()
    report.seconds = time.perf_counter() - start
    return report


__all__ = ["DownsampleReport", "downsample_store", "phi_bitmaps"]
