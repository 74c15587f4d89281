"""Opening untrusted files and paths: regular files only, paths that stay inside a root.

* :func:`open_regular` opens with ``O_NONBLOCK`` and checks ``fstat`` before anything is
  read, so a FIFO, socket, device or directory under a file's name is refused at once
  instead of blocking a reader forever (or reading ``/dev/zero`` without end).
* :func:`resolve_inside` resolves ``root/relative`` with every symlink followed and refuses
  a result outside ``root`` (``..`` parts, absolute paths, symlinks that lead out).
* :func:`walk_inside` walks a tree following the symlinks that stay inside its root and
  reports those that lead out (or loop) instead of skipping them silently.

Problems surface as ``OSError`` subclasses naming what was found; callers wrap them in
their own error type naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

_KINDS = (
    (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
)  # fmt: skip


class NotRegularFileError(OSError):
    """The path names something other than a regular file (FIFO, device, directory, ...)."""


class OutsideRootError(OSError):
    """The path resolves (``..``, an absolute path, a symlink) to a place outside its root."""


def file_kind(mode: int) -> str:
    """``"a FIFO (named pipe)"``, ``"a directory"``, ... for an ``st_mode``."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def check_regular(path: str | os.PathLike, mode: int) -> None:
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(errno.EINVAL, f"expected a regular file, found {file_kind(mode)}", os.fspath(path))


def open_regular_fd(path: str | os.PathLike) -> int:
    """A read-only descriptor of the regular file ``path`` (never blocks on a FIFO)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        check_regular(path, os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """The regular file ``path`` opened for binary reading.

    Raises:
        FileNotFoundError, PermissionError, ...: as ``open`` does.
        NotRegularFileError: ``path`` is a FIFO, socket, device or directory.
    """
    return os.fdopen(open_regular_fd(path), "rb")


def read_regular(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The whole content of a regular file of at most ``max_bytes`` bytes."""
    with open_regular(path) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise OSError(errno.EFBIG, f"expected at most {max_bytes} bytes, the file has {size}", os.fspath(path))
        return handle.read(max_bytes + 1)[:max_bytes]


def resolve_inside(root: str | os.PathLike, relative: str) -> Path:
    """``root/relative`` with every symlink resolved; it must lie inside ``root`` (resolved too).

    Raises:
        OutsideRootError: naming the path and where it leads.
    """
    base = os.path.realpath(root)
    joined = os.path.join(base, relative)
    target = os.path.realpath(joined)
    if os.path.commonpath([base, target]) != base:
        raise OutsideRootError(errno.EACCES, f"leads outside the root {base} (to {target})", joined)
    return Path(target)


@dataclass(frozen=True)
class WalkProblem:
    """A symlink :func:`walk_inside` did not follow: it leads outside the root, or loops."""

    path: Path
    reason: str


def _inside(base: str, path: Path) -> str | None:
    """Why the symlink ``path`` is not followed, or None when it leads inside ``base``."""
    real = os.path.realpath(path)
    if os.path.commonpath([base, real]) != base:
        return f"a symlink leading outside the root {base} (to {real}); not followed"
    if not os.path.exists(real):
        return f"a dangling symlink (to {real})"
    return None


def list_inside(directory: str | os.PathLike, root: str | os.PathLike) -> tuple[list[str], list[str], list[WalkProblem]]:
    """One folder's ``(subfolder names, other names, problems)``, sorted by name.

    Symlinks that lead inside ``root`` count as what they lead to; the others (outside
    ``root``, dangling) are :class:`WalkProblem` entries.
    """
    directory = Path(directory)
    base = os.path.realpath(root)
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError as exc:
        return [], [], [WalkProblem(directory, f"cannot list the folder ({exc.strerror or exc})")]
    dirs, files, problems = [], [], []
    for entry in entries:
        if entry.is_symlink():
            problem = _inside(base, directory / entry.name)
            if problem is not None:
                problems.append(WalkProblem(directory / entry.name, problem))
                continue
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        (dirs if is_dir else files).append(entry.name)
    return dirs, files, problems


def walk_inside(
    top: str | os.PathLike, root: str | os.PathLike | None = None
) -> Iterator[tuple[Path, list[str], list[str]] | WalkProblem]:
    """``os.walk(top)`` that follows symlinks to folders and files inside ``root`` (default ``top``).

    Yields ``(directory, subfolder names, file names)`` top-down like ``os.walk`` (paths
    under ``top`` as given, not resolved; removing names from the subfolder list prunes
    them), and a :class:`WalkProblem` for each symlink that leads outside ``root``, is
    dangling, or leads back into a folder being walked (a loop). Names starting with ``.``
    are included; callers filter them.
    """
    top = Path(top)
    root = top if root is None else Path(root)

    def walk(directory: Path, ancestors: frozenset) -> Iterator:
        dirs, files, problems = list_inside(directory, root)
        yield from problems
        followed = []
        for name in dirs:
            real = os.path.realpath(directory / name)
            if real in ancestors:
                yield WalkProblem(directory / name, f"a symlink loop (back to {real}); not followed")
            else:
                followed.append(name)
        yield directory, followed, files
        for name in followed:
            yield from walk(directory / name, ancestors | {os.path.realpath(directory / name)})

    yield from walk(top, frozenset({os.path.realpath(root), os.path.realpath(top)}))
