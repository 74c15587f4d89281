"""Job locks of a mask store: one live job per shard of the work, consistent shard counts.

The SAM 2 mask job and the importer each hold a lock file under ``<store>/locks/`` while
they write (``job-<i>of<n>.lock`` for shard ``i`` of ``n``, ``import.lock``), through
`filelock <https://py-filelock.readthedocs.io>`_ (``flock``: released by the kernel when the
process dies, even by SIGKILL, so a rerun after a crash just works; held across hosts on
NFS). A second job for the same work fails at once with a :class:`MaskStoreError` naming the
holder (host, pid, start time, command) instead of processing everything again, and a job
whose shard count disagrees with a live job's (``--shard 0/1`` beside ``--shard 1/2``) is
refused too: their key sets would overlap. Writers that bypass the locks (two
:class:`MaskStoreWriter` objects given the same keys) produce duplicate keys, which
:class:`MaskStore` resolves as it documents.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from .atomic import atomic_write, host_name
from .errors import MaskStoreError
from .files import read_regular

LOCK_DIR = "locks"
_JOB_LOCK = re.compile(r"^job-(\d+)of(\d+)\.lock$")


def job_lock_name(index: int, count: int) -> str:
    """The lock of shard ``index`` of ``count`` of the mask job."""
    return f"job-{index}of{count}"


class StoreLock:
    """An exclusive, non-blocking lock ``<store>/locks/<name>.lock``.

    Args:
        root: the store directory (created with the locks folder on :meth:`acquire`).
        name: the lock's name, e.g. :func:`job_lock_name` or ``"import"``.

    Use as a context manager, or :meth:`acquire` / :meth:`release` (idempotent).
    """

    def __init__(self, root: str | os.PathLike, name: str) -> None:
        self.root = Path(root)
        self.name = name
        self.path = self.root / LOCK_DIR / f"{name}.lock"
        self._owner = self.path.with_suffix(".owner")
        self._lock = None

    @property
    def held(self) -> bool:
        return self._lock is not None

    def _holder(self, path: Path) -> str:
        try:
            owner = json.loads(read_regular(path.with_suffix(".owner"), 1 << 16))
            return (f"host {owner['host']}, pid {owner['pid']}, since "
                    f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(owner['since']))}: {owner['command']}")  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError):
            return "holder unknown"

    def _try(self, path: Path):
        from filelock import FileLock, Timeout

        lock = FileLock(str(path), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            return None
        return lock

    def acquire(self) -> "StoreLock":
        """Take the lock, or raise :class:`MaskStoreError` naming whoever holds it."""
        if self._lock is not None:
            return self
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            lock = self._try(self.path)
        except OSError as exc:
            raise MaskStoreError(self.path, f"cannot take the job lock: {exc.strerror or exc}") from exc
        if lock is None:
            raise MaskStoreError(
                self.path, f"another job is writing this part of the store ({self._holder(self.path)}); "
                "wait for it to finish, or give each job its own --shard i/n",
            )  # fmt: skip
        self._lock = lock
        conflict = self._conflicting_job()
        if conflict is not None:
            self.release()
            raise MaskStoreError(
                conflict, f"a job with another shard count is writing this store ({self._holder(conflict)}); "
                "all jobs on one store must use the same --shard i/N count N",
            )  # fmt: skip
        owner = {"host": host_name(), "pid": os.getpid(), "since": time.time(), "command": " ".join(sys.argv)}
        atomic_write(self._owner, lambda handle: handle.write(json.dumps(owner).encode()))
        return self

    def _conflicting_job(self) -> Path | None:
        """A held job lock whose shard count differs from this one's, if any."""
        mine = _JOB_LOCK.match(self.path.name)
        if mine is None:
            return None
        for path in sorted(self.path.parent.glob("job-*of*.lock")):
            other = _JOB_LOCK.match(path.name)
            if other is None or other.group(2) == mine.group(2):
                continue
            probe = self._try(path)
            if probe is None:
                return path
            probe.release()
        return None

    def release(self) -> None:
        if self._lock is None:
            return
        self._owner.unlink(missing_ok=True)
        self._lock.release()
        self._lock = None

    def __enter__(self) -> "StoreLock":
        return self.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self.release()
