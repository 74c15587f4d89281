"""Reading dataset images for the mask job, the importer and ``verify`` (PIL, lazily imported).

Images are addressed as ``(image_root, key)``: the key must follow the key grammar
(:mod:`ogkernels.masks.keys`) and the file, with every symlink resolved, must lie inside
``image_root`` and be a regular file. Anything else is a :class:`MaskFileError` naming the
path and the key — never a read outside the root, never a hang on a FIFO.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import MaskFileError
from .files import NotRegularFileError, OutsideRootError, open_regular, resolve_inside
from .keys import key_problem


def image_path(image_root: str | os.PathLike, key: str) -> Path:
    """The path of image ``key`` under ``image_root``, as given (not resolved), for messages."""
    return Path(image_root) / key


@contextlib.contextmanager
def _open(image_root: str | os.PathLike, key: str) -> Iterator:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("reading images needs Pillow: pip install pillow") from exc
    path = image_path(image_root, key)
    problem = key_problem(key)
    if problem is not None:
        raise MaskFileError(path, f"expected an image key ({problem})", key=key)
    try:
        handle = open_regular(resolve_inside(image_root, key))
    except FileNotFoundError:
        raise MaskFileError(path, "image file not found", key=key) from None
    except (OutsideRootError, NotRegularFileError) as exc:
        raise MaskFileError(path, f"refused: {exc.strerror}", key=key) from None
    except OSError as exc:
        raise MaskFileError(path, f"cannot open the image: {exc.strerror or exc}", key=key) from exc
    with handle:
        try:
            image = Image.open(handle)
        except Exception as exc:  # PIL raises several unrelated types on bad files
            raise MaskFileError(path, f"cannot decode the image ({type(exc).__name__}: {exc})", key=key) from exc
        with image:
            yield image


def read_image_size(image_root: str | os.PathLike, key: str) -> tuple[int, int]:
    """``(height, width)`` of image ``key``, from its header only."""
    with _open(image_root, key) as image:
        width, height = image.size
    return height, width


def load_image_rgb(image_root: str | os.PathLike, key: str) -> np.ndarray:
    """Image ``key`` as decoded from disk, converted to RGB (no EXIF rotation, like LLaVA).

    Returns:
        ``uint8 (H, W, 3)``, C-contiguous.

    Raises:
        MaskFileError: naming the file and ``key`` if it is missing, outside the root, not a
            regular file, truncated or corrupt.
    """
    with _open(image_root, key) as image:
        try:
            return np.array(image.convert("RGB"), dtype=np.uint8)  # a writable copy
        except Exception as exc:  # truncated data surfaces only when decoding
            path = image_path(image_root, key)
            raise MaskFileError(path, f"cannot decode the image ({type(exc).__name__}: {exc})", key=key) from exc
