"""Exceptions of the mask store, all ``ValueError`` subclasses naming the file involved."""

from __future__ import annotations

import os


class MaskStoreError(ValueError):
    """A mask store, shard or mask file is missing, malformed or inconsistent.

    Attributes:
        path: the file (or directory) the problem was found in.
        key: the image key concerned, or ``None``.
    """

    def __init__(self, path: str | os.PathLike, message: str, *, key: str | None = None) -> None:
        self.path = os.fspath(path)
        self.key = key
        where = f"{self.path}: image {key!r}: " if key is not None else f"{self.path}: "
        super().__init__(where + message)


class MaskStoreVersionError(MaskStoreError):
    """The store (or one of its shards) was written by a newer, unknown format version."""


class MaskFileError(MaskStoreError):
    """An input file (image, ``.npy`` mask, metadata JSON) is missing, truncated or corrupt,
    or disagrees with the image it belongs to."""
