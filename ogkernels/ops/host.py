"""Host → device index tables: uploaded without a stream sync, and kept resident.

The launchers describe small index tables on the host (per-image geometry, mask counts,
offsets). :func:`upload` stages a table in pinned memory and copies it with
``non_blocking=True``: the host never waits (``torch.tensor(list, device="cuda")`` would copy
from pageable memory and synchronise the stream). :func:`resident` does the same once per
distinct table and keeps the device copy in a small LRU cache keyed by the table's content, so
a repeated call reuses the device tensor: no copy at all, which is what a CUDA graph needs —
warm up once, then capture; a table missing from the cache during capture is an error rather
than a copy from host memory that a replay would read again. Resident tables are shared:
never write into them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Hashable, Sequence

import numpy as np
import torch

RESIDENT_TABLES = 1024  # distinct tables kept per process (they are small)

_cache: OrderedDict[tuple, torch.Tensor] = OrderedDict()
_lock = threading.Lock()


def upload(values: Sequence | np.ndarray, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``values`` as a ``dtype`` tensor on ``device`` (no host sync on CUDA)."""
    host = torch.from_numpy(np.ascontiguousarray(values)).to(dtype) if isinstance(values, np.ndarray) else torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def _capturing(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_current_stream_capturing()


def resident(
    values: Sequence | np.ndarray,
    dtype: torch.dtype,
    device: torch.device | str,
    key: Hashable | None = None,
) -> torch.Tensor:
    """``values`` as a read-only ``dtype`` tensor on ``device``, uploaded once per content.

    ``key``: what identifies the content when hashing ``values`` would cost more than
    describing them (e.g. the parameters a table is computed from); default: the values."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if key is None:
        key = values.tobytes() if isinstance(values, np.ndarray) else tuple(values)
    entry = (key, dtype, device)
    with _lock:
        table = _cache.get(entry)
        if table is not None:
            _cache.move_to_end(entry)
            return table
    if _capturing(device):
        raise RuntimeError(
            "ogkernels: an index table is not resident on the device during CUDA graph capture; "
            "run the same call once before capturing (a warm-up), then capture"
        )
    table = upload(values, dtype, device)
    with _lock:
        _cache[entry] = table
        while len(_cache) > RESIDENT_TABLES:
            _cache.popitem(last=False)
    return table
