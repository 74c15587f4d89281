"""Which implementation an op runs: its Triton kernels or its PyTorch path.

Default: CUDA tensors take the Triton kernels, everything else the PyTorch path. The
environment variable ``OGKERNELS_BACKEND`` overrides it: ``torch`` runs the PyTorch path on
every device; ``triton`` runs the kernels on every device (on the CPU that needs
``TRITON_INTERPRET=1`` set before Triton is imported — the tests do this).
``OGKERNELS_FORCE_TRITON=1`` is the older spelling of ``OGKERNELS_BACKEND=triton``.
"""

from __future__ import annotations

import functools
import os

import torch

BACKENDS = ("auto", "torch", "triton")


@functools.lru_cache(maxsize=1)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the installation
        return False
    return True


def backend() -> str:
    """The backend the environment asks for: ``auto``, ``torch`` or ``triton``."""
    name = os.environ.get("OGKERNELS_BACKEND", "").strip().lower()
    if not name:
        return "triton" if os.environ.get("OGKERNELS_FORCE_TRITON", "0") == "1" else "auto"
    if name not in BACKENDS:
        raise ValueError(f"OGKERNELS_BACKEND: expected one of {', '.join(BACKENDS)}, got {name!r}")
    return name


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(device: torch.device) -> bool:
    """True when the Triton kernels should run for tensors on ``device``."""
    chosen = backend()
    if chosen == "torch" or not triton_available():
        return False
    if chosen == "triton":
        return device.type == "cuda" or interpreting()
    return device.type == "cuda"
