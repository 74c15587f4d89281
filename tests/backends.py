"""Backends of the op tests: which path runs, how many examples each can afford."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch

SCALE = float(os.environ.get("OGKERNELS_TEST_SCALE", "1"))


def on_gpu() -> bool:
    return os.environ.get("OGKERNELS_TEST_DEVICE", "cpu").startswith("cuda")


def examples(backend: str, pytorch: int, interpreter: int) -> int:
    """Hypothesis examples for a backend: the Triton interpreter runs ~1,000 programs/s, so
    its cases are few on the CPU (``interpreter``); on a GPU the kernels take ``pytorch``'s
    count; ``OGKERNELS_TEST_SCALE`` scales both (the GPU check raises it)."""
    count = interpreter if backend == "triton" and not on_gpu() else pytorch
    return max(1, int(count * SCALE))


def interpreted(backend: str, device: torch.device) -> bool:
    """The Triton interpreter on the CPU: keep its cases small."""
    return backend == "triton" and device.type == "cpu"


@contextlib.contextmanager
def using(backend: str) -> Iterator[None]:
    """Run the ops through ``backend`` inside the block (``OGKERNELS_BACKEND``)."""
    previous = os.environ.get("OGKERNELS_BACKEND")
    os.environ["OGKERNELS_BACKEND"] = backend
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("OGKERNELS_BACKEND", None)
        else:
            os.environ["OGKERNELS_BACKEND"] = previous
