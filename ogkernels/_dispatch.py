"""Which implementation runs: the Triton kernels or the PyTorch path.

CUDA tensors take the Triton kernels; everything else takes the PyTorch path. Setting
``OGKERNELS_FORCE_TRITON=1`` (with ``TRITON_INTERPRET=1`` for CPU tensors) runs the Triton
kernels on any device, which is how the tests exercise them without a GPU.
"""

from __future__ import annotations

import functools
import os

import torch


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def force_triton() -> bool:
    return os.environ.get("OGKERNELS_FORCE_TRITON", "0") == "1"


def use_triton(device: torch.device) -> bool:
    """True when the Triton kernels should run for tensors on ``device``."""
    if not triton_available():
        return False
    if force_triton():
        return device.type == "cuda" or os.environ.get("TRITON_INTERPRET", "0") == "1"
    return device.type == "cuda"
