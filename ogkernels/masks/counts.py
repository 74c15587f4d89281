"""Lengths up front: every image's OG token count, for a whole dataset, from stored bitmaps.

:func:`token_count_table` counts with :func:`ogkernels.budget.og_token_counts` over the
stored :class:`ogkernels.MaskBitmaps` (so it equals ``og_token_counts`` of the stored
masks) and caches the table in the store,
``<root>/bitmaps/<params>/counts-<options>.json``, keyed by a fingerprint of the store: the
names and sizes of its mask and bitmap shards (shards are immutable, so a changed store has
another fingerprint) and the options. A stale cache is recomputed, never used.

Each image is counted as in a batch where some mask has a set pixel: the reference's batch
gate (a batch without any set pixel gives every image its ``V`` plain patch tokens) depends
on the batch, not on the image, so the table counts with ``gate=False``.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass

import numpy as np

from .._validation import check_positive_int
from ..options import OGTokenOptions
from .atomic import atomic_write
from .bitmap_store import BitmapParams, bitmap_directory
from .files import read_regular
from .format import FORMAT_VERSION, parse_json
from .reader import MaskStore


@dataclass(frozen=True)
class TokenCountTable:
    """Every image's OG token count.

    Attributes:
        keys: the store's keys, in :meth:`MaskStore.keys` order.
        counts: ``int64 (len(keys),)``.
        params: the bitmaps counted from; options: the token options (``gate=False``).
        seconds: time to build (or load) the table; cached: read from the store's cache.
    """

    keys: list[str]
    counts: np.ndarray
    params: BitmapParams
    options: OGTokenOptions
    seconds: float
    cached: bool

    @property
    def images_per_second(self) -> float:
        return len(self.keys) / self.seconds if self.seconds > 0 else float("inf")

    def as_dict(self) -> dict[str, int]:
        return dict(zip(self.keys, self.counts.tolist()))


def _fingerprint(store: MaskStore, params: BitmapParams, options: OGTokenOptions) -> str:
    bitmap_set = store.bitmap_set(params)
    bitmap_set.refresh()
    state = {
        "format_version": FORMAT_VERSION,
        "mask_shards": store.shard_sizes,
        "bitmap_shards": [(h.path.name, h.file_size) for h in bitmap_set.headers],
        "options": options.to_dict(),
        "grid": list(params.grid),
    }
    return hashlib.sha256(json.dumps(state, sort_keys=True).encode()).hexdigest()


def token_count_table(
    store: MaskStore,
    grid: int | tuple[int, int],
    options: OGTokenOptions | None = None,
    *,
    chunk_size: int = 4096,
    cache: bool = True,
    **option_overrides: object,
) -> TokenCountTable:
    """Every image's OG token count from the stored bitmaps of ``grid`` and the options'
    ``alpha``/``mode``/``frame`` (written by ``python -m ogkernels.masks downsample``).

    Args:
        store: the mask store.
        grid: ``V`` or ``(gh, gw)``, as for ``og_token_counts``.
        options, option_overrides: :class:`OGTokenOptions` (caps included); ``gate`` is
            set to False (module docstring).
        chunk_size: images per ``og_token_counts`` call.
        cache: read and write the store's cache (a read-only store just recomputes).

    Raises:
        MaskStoreError: an image without up-to-date bitmaps (naming it and the command).
    """
    check_positive_int("chunk_size", chunk_size)
    options = OGTokenOptions.resolve(options, **option_overrides).replace(gate=False)
    params = BitmapParams.of(grid, alpha=options.alpha, mode=options.mode, frame=options.frame)
    start = time.perf_counter()
    keys = store.keys()
    fingerprint = _fingerprint(store, params, options)
    tag = hashlib.sha256(json.dumps(options.to_dict(), sort_keys=True).encode()).hexdigest()[:16]
    path = bitmap_directory(store.root, params) / f"counts-{tag}.json"
    if cache:
        try:
            saved = parse_json(read_regular(path, 1 << 30))
            if isinstance(saved, dict) and saved.get("fingerprint") == fingerprint and len(saved.get("counts", ())) == len(keys):
                counts = np.asarray(saved["counts"], dtype=np.int64)
                return TokenCountTable(keys, counts, params, options, time.perf_counter() - start, True)
        except (OSError, ValueError):
            pass  # no cache, or an unreadable one: count again
    from ..budget import og_token_counts

    counts = np.empty(len(keys), dtype=np.int64)
    count_grid = params.grid if params.mode == "patch" else params.num_tokens
    for begin in range(0, len(keys), chunk_size):
        bitmaps = store.load_bitmaps(keys[begin : begin + chunk_size], count_grid, alpha=params.alpha, mode=params.mode, frame=params.frame)
        counts[begin : begin + len(bitmaps)] = og_token_counts(bitmaps, count_grid, options)
    if cache:
        record = {"fingerprint": fingerprint, "options": options.to_dict(), "counts": counts.tolist()}
        try:
            atomic_write(path, lambda handle: handle.write(json.dumps(record).encode()))
        except OSError:
            pass  # a read-only store: the table is still returned
    return TokenCountTable(keys, counts, params, options, time.perf_counter() - start, False)


def distribution(counts: np.ndarray) -> dict[str, float]:
    """Images, total, mean, min, percentiles (10/50/90/99) and max of token counts."""
    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return {"images": 0, "total": 0}
    p10, p50, p90, p99 = np.percentile(counts, [10, 50, 90, 99]).tolist()
    return {
        "images": int(counts.size), "total": int(counts.sum()), "mean": float(counts.mean()), "min": int(counts.min()),
        "p10": p10, "p50": p50, "p90": p90, "p99": p99, "max": int(counts.max()),
    }  # fmt: skip


def cap_effect(table: TokenCountTable, capped: TokenCountTable, cap: int) -> dict[str, float]:
    """What the per-image cap ``cap`` drops: images it cuts, and their tokens (whole masks
    go, lowest priority first, as ``og_tokens(max_image_tokens=cap)`` drops them)."""
    dropped = table.counts - capped.counts
    total = int(table.counts.sum())
    return {
        "cap": cap, "images_over": int((dropped > 0).sum()), "images_over_fraction": float((dropped > 0).mean()) if dropped.size else 0.0,
        "tokens_dropped": int(dropped.sum()), "tokens_dropped_fraction": float(dropped.sum() / total) if total else 0.0,
        "max_after": int(capped.counts.max()) if capped.counts.size else 0,
    }  # fmt: skip
