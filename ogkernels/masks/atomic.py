"""Crash-safe file writes: write a temporary file, ``fsync`` it, then ``os.replace`` it.

A reader never sees a half-written file: the final name appears only once its content is
complete and on disk. Temporary files are named ``.tmp-<name>.<host>.<pid>.<random>`` and
ignored by readers; a process killed mid-write leaves at most such a file behind.
:func:`remove_stale_temps` deletes the leftovers of dead writers, and only those: a
temporary file whose host is this host and whose process is gone. A temporary file of
another host (a shared filesystem) is never deleted, whatever its pid: that pid means
nothing here. Hosts are told apart by their host name.
"""

from __future__ import annotations

import os
import re
import socket
import uuid
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_PREFIX = ".tmp-"
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def host_name() -> str:
    """This host's name, reduced to ``[A-Za-z0-9_-]`` (dots become ``_``) for file names."""
    return _UNSAFE.sub("_", socket.gethostname()) or "localhost"


def temp_path_for(path: Path) -> Path:
    """A unique temporary name next to ``path`` (same directory, so the rename is atomic),
    recording this host and process: ``.tmp-<name>.<host>.<pid>.<random>``."""
    return path.with_name(f"{TEMP_PREFIX}{path.name}.{host_name()}.{os.getpid()}.{uuid.uuid4().hex[:8]}")


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a process of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_owner(name: str) -> tuple[str, int] | None:
    """``(host, pid)`` of a temporary file name written by :func:`temp_path_for`, else None."""
    parts = name.rsplit(".", 3)
    if not name.startswith(TEMP_PREFIX) or len(parts) != 4 or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


def remove_stale_temps(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files in ``directory`` whose writer was on this host and is dead.

    Temporary files of live processes, of other hosts, and of unknown form are kept.
    Returns the paths removed.
    """
    removed = []
    here = host_name()
    for path in Path(directory).glob(f"{TEMP_PREFIX}*"):
        owner = temp_owner(path.name)
        if owner is None or owner[0] != here or process_alive(owner[1]):
            continue
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


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
