"""Crash-safe file writes: write a temporary file, ``fsync`` it, then ``os.replace`` it.

A reader never sees a half-written file: the final name appears only once its content is
complete and on disk. Temporary files start with ``.tmp-`` and are ignored by readers; a
process killed mid-write leaves at most such a temporary file behind.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_PREFIX = ".tmp-"


def temp_path_for(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same directory, so the rename is atomic)."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def fsync_directory(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    tmp = temp_path_for(path)
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Create or replace ``path`` atomically with what ``write(handle)`` writes."""
    path = Path(path)
    tmp = _write_temp(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)
    return path


def atomic_create(path: str | os.PathLike, data: bytes) -> bool:
    """Create ``path`` with ``data`` atomically unless it exists; ``True`` if this call created it.

    Safe against concurrent creators: exactly one of them wins (``os.link`` fails on an
    existing name), the others get ``False`` and find a complete file.
    """
    path = Path(path)
    tmp = _write_temp(path, lambda handle: handle.write(data))
    try:
        os.link(tmp, path)
        created = True
    except FileExistsError:
        created = False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            created = False
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            created = True
    finally:
        tmp.unlink(missing_ok=True)
    if created:
        fsync_directory(path.parent)
    return created
