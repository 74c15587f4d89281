"""Reading images for the mask job and the importer (PIL, lazily imported)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import MaskFileError


def _open(path: Path, key: str):
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("reading images needs Pillow: pip install pillow") from exc
    if not path.is_file():
        raise MaskFileError(path, "image file not found", key=key)
    try:
        return Image.open(path)
    except Exception as exc:  # PIL raises several unrelated types on bad files
        raise MaskFileError(path, f"cannot decode the image ({type(exc).__name__}: {exc})", key=key) from exc


def read_image_size(path: str | os.PathLike, key: str) -> tuple[int, int]:
    """``(height, width)`` of an image, from its header only."""
    image = _open(Path(path), key)
    with image:
        width, height = image.size
    return height, width


def load_image_rgb(path: str | os.PathLike, key: str) -> np.ndarray:
    """The image as decoded from disk, converted to RGB (no EXIF rotation, like LLaVA).

    Returns:
        ``uint8 (H, W, 3)``, C-contiguous.

    Raises:
        MaskFileError: naming the file and ``key`` if it is missing, truncated or corrupt.
    """
    path = Path(path)
    image = _open(path, key)
    try:
        with image:
            array = np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
    except Exception as exc:  # truncated data surfaces only when decoding
        raise MaskFileError(path, f"cannot decode the image ({type(exc).__name__}: {exc})", key=key) from exc
    return array
