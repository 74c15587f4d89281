"""The resumable, sharded mask-generation loop (model-agnostic; SAM2 plugs in as ``generator``).

``run_mask_job`` walks a list of image keys, skips those already in the store, runs the
generator on each remaining image and appends the result to the store through a
:class:`MaskStoreWriter`. Shards are written atomically, so a killed job loses at most its
unflushed images, and a rerun resumes where the store stops. Per-image problems (missing,
truncated or corrupt image, masks of the wrong size, a generator error) are collected as
:class:`MaskFailure` and the loop goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from .._validation import check_choice, fail
from .bitmap_store import BitmapParams, BitmapWriter
from .downsample_job import downsample_store, phi_bitmaps
from .errors import MaskFileError, MaskStoreError
from .files import NotRegularFileError, WalkProblem, open_regular, walk_inside
from .format import manifest_path
from .images import image_path, load_image_rgb
from .keys import key_problem
from .locks import StoreLock
from .order import ORDER_CHOICES
from .reader import MaskStore
from .report import MaskFailure
from .sam2_output import masks_from_sam2
from .writer import MaskStoreWriter

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class MaskGenerator(Protocol):
    """Anything that maps an RGB ``uint8 (H, W, 3)`` image to SAM2-style mask records
    (``SAM2AutomaticMaskGenerator.generate``)."""

    def __call__(self, image: np.ndarray) -> Sequence[Mapping[str, Any]]: ...


# ----------------------------------------------------------------------------- inputs


def list_image_folder(root: str | os.PathLike, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> list[str]:
    """Image keys (paths relative to ``root``, ``/``-separated) of every image file below
    ``root`` (case-insensitive suffix match; hidden names skipped), sorted.

    Symlinks inside ``root`` are followed. A symlinked folder that leads outside ``root``
    (or dangles, or loops) is an error naming it, not a silent skip; a symlinked image file
    that leads outside is listed and then fails as that image (the job reads nothing outside
    ``root``).

    Raises:
        MaskFileError: ``root`` is not a folder, or a folder symlink was not followed.
    """
    root = Path(root)
    if not root.is_dir():
        raise MaskFileError(root, "the image folder does not exist")
    wanted = tuple(s.lower() for s in suffixes)
    keys = []
    for item in walk_inside(root):
        if isinstance(item, WalkProblem):
            if item.path.name.lower().endswith(wanted):
                keys.append(item.path.relative_to(root).as_posix())
                continue
            if not item.path.name.startswith("."):
                raise MaskFileError(item.path, f"cannot list the images below it: {item.reason}")
            continue
        directory, dirnames, filenames = item
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if name.lower().endswith(wanted) and not name.startswith("."):
                keys.append((directory / name).relative_to(root).as_posix())
    return sorted(keys)


def list_llava_json(path: str | os.PathLike) -> list[str]:
    """Image keys of a LLaVA-format JSON list (entries with an ``"image"`` field, a path
    relative to the image root, or a list of them), deduplicated, sorted. Text-only entries
    (no ``"image"``) are skipped.

    Raises:
        MaskFileError: naming the file (and the entry): not a regular file, invalid JSON,
            not a list, or an ``"image"`` that is not an image key (``"../x.png"``, an
            absolute path: :mod:`ogkernels.masks.keys`).
    """
    path = Path(path)
    try:
        with open_regular(path) as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, (NotRegularFileError, FileNotFoundError)) else f"{type(exc).__name__}: {exc}"
        raise MaskFileError(path, f"cannot read the LLaVA JSON ({reason})") from exc
    if not isinstance(data, list):
        raise MaskFileError(path, f"expected a JSON list of samples, got {type(data).__name__}")
    keys: set[str] = set()
    for i, entry in enumerate(data):
        image = entry.get("image") if isinstance(entry, dict) else None
        if image is None:
            continue
        for item in image if isinstance(image, list) else [image]:
            problem = key_problem(item)
            if problem is not None:
                raise MaskFileError(path, f"entry {i}: field 'image': expected an image path relative to the image root ({problem}), got {item!r}")
            keys.add(item)
    return sorted(keys)


def resolve_shard(shard: str | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` from ``"i/n"``, else from torchrun's ``RANK``/``WORLD_SIZE``, else ``(0, 1)``."""
    environ = os.environ if environ is None else environ
    if shard is not None:
        parts = str(shard).split("/")
        try:
            index, count = int(parts[0]), int(parts[1])
            if len(parts) != 2:
                raise ValueError
        except (ValueError, IndexError):
            fail("shard", "'i/n' with integers 0 <= i < n", shard)
    elif "RANK" in environ or "WORLD_SIZE" in environ:
        try:
            index, count = int(environ.get("RANK", "0")), int(environ.get("WORLD_SIZE", "1"))
        except ValueError:
            fail("RANK/WORLD_SIZE", "integers", f"RANK={environ.get('RANK')!r} WORLD_SIZE={environ.get('WORLD_SIZE')!r}")
    else:
        return 0, 1
    if not (count >= 1 and 0 <= index < count):
        fail("shard", "0 <= i < n and n >= 1", f"i={index}, n={count}")
    return index, count


def select_shard(keys: Sequence[str], index: int, count: int) -> list[str]:
    """Every ``count``-th key from ``index`` on (a stable, balanced split of ``keys``)."""
    if not (count >= 1 and 0 <= index < count):
        fail("shard", "0 <= index < count", f"index={index}, count={count}")
    return list(keys[index::count])


# ----------------------------------------------------------------------------- the loop


@dataclass
class JobReport:
    """What :func:`run_mask_job` did (this process only)."""

    store: Path
    assigned: int = 0
    skipped_existing: int = 0
    processed: int = 0
    zero_mask_images: int = 0
    masks: int = 0
    seconds: float = 0.0
    failures: list[MaskFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def masks_per_second(self) -> float:
        return self.masks / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"mask store {self.store}: {self.processed} images processed ({self.masks} masks, "
            f"{self.zero_mask_images} with zero masks), {self.skipped_existing} already done, "
            f"{len(self.failures)} failed, of {self.assigned} assigned; "
            f"{self.masks_per_second:.2f} masks/s, {self.seconds:.1f} s"
        ]
        lines += [f"  FAILED {failure}" for failure in self.failures]
        return "\n".join(lines)


def keys_done(store: Path, keys: Sequence[str]) -> list[str]:
    """The ``keys`` that are in ``store``."""
    done = _done_keys(store)
    return [k for k in dict.fromkeys(keys) if k in done]


def _done_keys(store: Path) -> set[str]:
    """The keys already in ``store``, or none when there is no store yet."""
    if not os.path.lexists(manifest_path(store)):
        return set()
    return set(MaskStore(store).keys())


def run_mask_job(
    keys: Sequence[str],
    image_root: str | os.PathLike,
    store: str | os.PathLike,
    generator: MaskGenerator | Callable[[], MaskGenerator],
    *,
    writer_id: str = "w",
    lock: str | None = "job-0of1",
    shard_size: int = 64,
    max_shard_bytes: int = 256 << 20,
    encoding: str = "packbits",
    order: str = "lexicographic",
    lazy_generator: bool = False,
    bitmaps: Sequence[BitmapParams] = (),
    progress: Callable[..., Any] | None = None,
) -> JobReport:
    """Generate and store the masks of ``keys`` (those not in the store yet).

    Nothing is created until there is work to do and the generator is built: a missing
    or corrupt model leaves no empty store behind.

    Args:
        keys: image keys (paths relative to ``image_root``) assigned to this process.
        image_root: the dataset root; images outside it (``..``, symlinks leading out) are
            refused as failures.
        store: the mask store directory (created if absent).
        generator: image ``uint8 (H, W, 3)`` -> SAM2 records; with ``lazy_generator``, a
            zero-argument factory called only if some image remains to be done.
        writer_id: shard-name prefix (e.g. ``"rank3of8"``).
        lock: the job lock held while writing (:class:`ogkernels.masks.locks.StoreLock`,
            e.g. ``job_lock_name(3, 8)``); a second job with the same lock fails at once.
            ``None``: no lock (the caller coordinates).
        shard_size, max_shard_bytes, encoding: see :class:`MaskStoreWriter`. Smaller shards
            lose less work when the job is killed.
        order: mask order in the store, ``"lexicographic"`` (default: what the reference
            loader would feed the model) or ``"numeric"`` (SAM2 output order).
        bitmaps: Phi parameter sets whose bitmaps are written too, image by image (then
            for images of ``keys`` already in the store without them: a rerun completes
            what a kill left undone).
        progress: ``tqdm.tqdm``-like factory ``progress(total=..., unit=...)`` with
            ``update(n)``, ``set_postfix_str(s)`` and ``close()``; ``None`` for silence.

    Returns:
        a :class:`JobReport`. Images already in the store are skipped; failed images are
        listed in ``failures`` (naming the file and image) and not written.

    Raises:
        MaskStoreError: the store itself is unusable (e.g. ``MaskStoreVersionError``), or
            another job holds ``lock``.
    """
    check_choice("order", order, ORDER_CHOICES)
    store = Path(store)
    report = JobReport(store, assigned=len(keys))
    job_lock = StoreLock(store, lock) if lock is not None else None
    try:
        if job_lock is not None and manifest_path(store).is_file():
            job_lock.acquire()  # fail fast on a busy store, before building the model
        todo = list(dict.fromkeys(k for k in keys if k not in _done_keys(store)))
        if todo and lazy_generator:
            generator = generator()
        if job_lock is not None:
            job_lock.acquire()
        writer = MaskStoreWriter(
            store, writer_id=writer_id, shard_size=shard_size, max_shard_bytes=max_shard_bytes, encoding=encoding
        ) if todo else None  # fmt: skip
        done = _done_keys(store)  # again, under the lock: another job may have finished some
        todo = [k for k in todo if k not in done]
        report.skipped_existing = len(keys) - len(todo)
        if todo:
            _run(todo, Path(image_root), generator, writer, bitmaps, order, report, progress)
        if bitmaps and manifest_path(store).is_file():  # images done before (or killed before their bitmaps)
            for params in bitmaps:
                downsample_store(store, params, keys=keys_done(store, keys), writer_id=writer_id, lock=False)
    finally:
        if job_lock is not None:
            job_lock.release()
    return report


def _run(todo: list[str], image_root: Path, generator: MaskGenerator, writer: MaskStoreWriter, bitmaps: Sequence[BitmapParams],
         order: str, report: JobReport, progress: Callable[..., Any] | None) -> None:  # fmt: skip
    bar = progress(total=len(todo), unit="img", dynamic_ncols=True) if progress is not None else None
    start = time.perf_counter()
    bitmap_writers = [BitmapWriter(writer.root, p, writer_id=writer.writer_id, shard_size=writer.shard_size) for p in bitmaps]
    try:
        with contextlib.ExitStack() as stack, writer:  # the masks flush first: a bitmap never precedes its record
            for bitmap_writer in bitmap_writers:
                stack.enter_context(bitmap_writer)
            for key in todo:
                failure = _process_one(key, image_root, generator, writer, bitmap_writers, order, report)
                if failure is not None:
                    report.failures.append(failure)
                report.seconds = time.perf_counter() - start
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix_str(f"{report.masks_per_second:.1f} masks/s, {len(report.failures)} failed")
    finally:
        report.seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()


def _process_one(
    key: str, image_root: Path, generator: MaskGenerator, writer: MaskStoreWriter, bitmap_writers: list[BitmapWriter],
    order: str, report: JobReport,
) -> MaskFailure | None:  # fmt: skip
    path = image_path(image_root, key)
    try:
        image = load_image_rgb(image_root, key)
        height, width = image.shape[:2]
        try:
            records = generator(image)
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # a model error on one image must not stop the job
            raise MaskFileError(path, f"mask generator failed ({type(exc).__name__}: {exc})", key=key) from exc
        try:
            masks, metadata = masks_from_sam2(records, height, width, order=order, source="generator output")
        except (TypeError, ValueError) as exc:
            raise MaskFileError(path, str(exc), key=key) from exc
        crc32 = writer.add(key, masks, metadata, order=order)
        for bitmap_writer in bitmap_writers:
            bits, nonempty = phi_bitmaps([masks], bitmap_writer.params)[0]
            bitmap_writer.add(key, bits, nonempty, crc32)
    except MaskStoreError as exc:
        if exc.path != str(path):  # the store itself (e.g. a failed shard write): fatal
            raise
        return MaskFailure.from_exception(key, str(path), exc)
    report.processed += 1
    report.masks += masks.num_masks
    report.zero_mask_images += masks.num_masks == 0
    return None
