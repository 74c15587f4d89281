"""Host → device uploads of small index tables without a stream sync.

``torch.tensor(list, device="cuda")`` copies from pageable memory and synchronises the stream.
Tables built on the host (mask counts, offsets) are instead staged in pinned memory and copied
with ``non_blocking=True``: the host never waits, and the pinned buffer is kept alive by
PyTorch's caching host allocator until the copy has run.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def upload(values: Sequence | np.ndarray, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``values`` as a ``dtype`` tensor on ``device`` (no host sync on CUDA)."""
    host = torch.from_numpy(values).to(dtype) if isinstance(values, np.ndarray) else torch.tensor(values, dtype=dtype)
    device = torch.device(device)
    if device.type == "cuda":
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)
