"""Reading byte ranges of shard files: cached descriptors, ``pread``, identity checks.

One :class:`ShardFiles` serves a reader (the mask shards of a :class:`MaskStore`, or the
bitmap shards of one parameter set): it keeps up to ``max_open`` read-only descriptors
(least recently used closed first), opens only regular files, refuses a file that is no
longer the one whose header was checked (:attr:`ShardHeader.identity`), and starts afresh
in a forked or unpickled process (descriptors are never shared between processes).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np

from .errors import MaskStoreError
from .files import open_regular_fd
from .format import ShardHeader, file_identity


class ShardFiles:
    """``pread`` access to shard files by their checked headers (thread-safe, fork-safe)."""

    def __init__(self, max_open: int) -> None:
        self.max_open = max_open
        self._lock = threading.Lock()
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._pid = os.getpid()

    def _fd(self, header: ShardHeader) -> int:
        key = str(header.path)
        with self._lock:
            if self._pid != os.getpid():  # forked: the parent's descriptors are not ours to share
                self._fds = OrderedDict()
                self._pid = os.getpid()
            fd = self._fds.get(key)
            if fd is not None:
                self._fds.move_to_end(key)
                return fd
            try:
                fd = open_regular_fd(header.path)
            except OSError as exc:
                raise MaskStoreError(header.path, f"cannot open the shard: {exc.strerror or exc}") from exc
            if file_identity(os.fstat(fd)) != header.identity:
                os.close(fd)
                raise MaskStoreError(header.path, "the shard changed on disk since it was indexed (shards are "
                                                  "immutable: another program rewrote it); open the store again")  # fmt: skip
            self._fds[key] = fd
            while len(self._fds) > self.max_open:
                _, old = self._fds.popitem(last=False)
                os.close(old)
            return fd

    def read_into(self, header: ShardHeader, offset: int, out: np.ndarray) -> None:
        """Fill the C-contiguous array ``out`` with the file's bytes from absolute ``offset``."""
        if out.nbytes == 0:
            return
        fd = self._fd(header)
        view = memoryview(out.reshape(-1)).cast("B")
        done = 0
        while done < len(view):
            if hasattr(os, "preadv"):
                got = os.preadv(fd, [view[done:]], offset + done)
            else:  # pragma: no cover - platforms without preadv
                chunk = os.pread(fd, len(view) - done, offset + done)
                view[done : done + len(chunk)] = chunk
                got = len(chunk)
            if got <= 0:
                raise MaskStoreError(header.path, f"unexpected end of file at byte {offset + done}")
            done += got

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for fd in self._fds.values():
                    os.close(fd)
            self._fds.clear()

    def __getstate__(self) -> dict:
        return {"max_open": self.max_open}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_open"])
