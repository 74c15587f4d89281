"""Import the reference's mask folders into a mask store.

Reference layout (see ``ogkernels/reference/BEHAVIOUR.md``)::

    <root>/partition_<p>/<image_key>/mask_<i>.npy     bool (H, W), often Fortran-ordered
    <root>/metadata_partition_<p>.json                 optional: image_key -> SAM2 records
                                                       ("segmentation" = the mask file name)

``<image_key>`` is the image path relative to the dataset root and may contain ``/``. The
reference loader reads ``sorted(glob("mask_*.npy"))``: lexicographic file names, so
``mask_10.npy`` comes before ``mask_2.npy``. The importer keeps that order by default
(``order="lexicographic"``); ``order="numeric"`` restores SAM2's output order.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from .._validation import check_choice
from .errors import MaskFileError, MaskStoreError
from .files import NotRegularFileError, WalkProblem, list_inside, open_regular, walk_inside
from .images import read_image_size
from .keys import key_problem
from .locks import StoreLock
from .metadata import MaskMetadata
from .order import ORDER_CHOICES
from .reader import MaskStore
from .report import MaskFailure
from .writer import MaskStoreWriter

_PARTITION = re.compile(r"^partition_(.+)$")
_MASK_FILE = re.compile(r"^mask_.*\.npy$")
_NUMERIC_MASK_FILE = re.compile(r"^mask_(\d+)\.npy$")


@dataclass(frozen=True)
class ReferenceImage:
    """One image folder of the reference layout.

    Attributes:
        key: the image key (folder path relative to its partition, ``/``-separated).
        partition: the partition folder name, e.g. ``"partition_3"``.
        directory: the folder holding the image's ``mask_*.npy`` files.
        mask_files: the mask file names found (``mask_*.npy``), unsorted.
        metadata_file: the partition's ``metadata_partition_<p>.json``, if present.
    """

    key: str
    partition: str
    directory: Path
    mask_files: tuple[str, ...]
    metadata_file: Path | None


def _partition_sort_key(path: Path) -> tuple:
    suffix = _PARTITION.match(path.name).group(1)
    return (0, int(suffix), "") if suffix.isdigit() else (1, 0, suffix)


def _metadata_file(root: Path, partition: Path) -> Path | None:
    """The partition's metadata JSON if something has its name (checked when read)."""
    suffix = _PARTITION.match(partition.name).group(1)
    name = f"metadata_partition_{suffix}.json"
    for candidate in (root / name, partition / name):
        if os.path.lexists(candidate):
            return candidate
    return None


def _walk_partition(root: Path, partition: Path) -> tuple[list[ReferenceImage], list[MaskFailure]]:
    """The image folders of one partition and the symlinks not followed (as failures).

    An image folder with an entry that could not be followed is a failure, not an import
    with a mask missing.
    """
    metadata_file = _metadata_file(root, partition)
    found: dict[str, ReferenceImage] = {}
    problems: dict[str, MaskFailure] = {}
    not_empty: set[Path] = set()  # folders with an entry that was not followed: no zero-mask leaf
    for item in walk_inside(partition, root):
        if isinstance(item, WalkProblem):  # a mask file names its image folder; a folder, itself
            image = item.path.parent if _MASK_FILE.match(item.path.name) and not os.path.isdir(item.path) else item.path
            key = image.relative_to(partition).as_posix() if image != partition else item.path.name
            problems.setdefault(key, MaskFailure(key, str(item.path), item.reason))
            not_empty.add(item.path.parent)
            continue
        directory, dirnames, filenames = item
        if directory == partition:
            continue
        masks = tuple(f for f in filenames if _MASK_FILE.match(f))
        if masks or (not dirnames and not filenames and directory not in not_empty):
            key = directory.relative_to(partition).as_posix()
            found[key] = ReferenceImage(key, partition.name, directory, masks, metadata_file)
    for key, image in list(found.items()):
        problem = key_problem(key)
        if problem is not None:
            problems.setdefault(key, MaskFailure(key, str(image.directory), f"expected an image key: {problem}"))
        if key in problems:
            del found[key]
    return list(found.values()), list(problems.values())


def scan_reference_layout(root: str | os.PathLike) -> tuple[list[ReferenceImage], list[MaskFailure]]:
    """Find every image folder under ``root/partition_*``.

    An image folder is a folder holding ``mask_*.npy`` files, or an empty leaf folder (an
    image with zero masks). Keys listed with no records in a partition's metadata JSON and no
    folder are zero-mask images too. A key found in two partitions is kept from the first
    (partitions in numeric order) and reported as a failure naming the second folder.

    Symlinks (to partitions, image folders or mask files) are followed when they lead to a
    place inside ``root``; one that leads outside ``root``, dangles or loops is reported as a
    failure naming it (its image, if any, is not imported), never skipped silently.

    Returns:
        ``(images in partition then key order, failures)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise MaskFileError(root, "the reference mask folder does not exist")
    images: list[ReferenceImage] = []
    failures: list[MaskFailure] = []
    names, _, problems = list_inside(root, root)
    partitions = [root / name for name in names if _PARTITION.match(name)]
    for problem in problems:
        if _PARTITION.match(problem.path.name):
            failures.append(MaskFailure(problem.path.name, str(problem.path), problem.reason))
    seen: dict[str, Path] = {}
    for partition in sorted(partitions, key=_partition_sort_key):
        found, problems = _walk_partition(root, partition)
        failures.extend(problems)
        metadata_file = _metadata_file(root, partition)
        if metadata_file is not None:
            listed = {image.key for image in found} | {f.key for f in problems}
            for key, records in _load_metadata_json(metadata_file).items():
                if key not in listed and isinstance(records, list) and not records and key_problem(key) is None:
                    found.append(ReferenceImage(key, partition.name, partition / key, (), metadata_file))
        for image in sorted(found, key=lambda im: im.key):
            if image.key in seen:
                failures.append(
                    MaskFailure(image.key, str(image.directory), f"duplicate of {seen[image.key]}; kept the first")
                )
                continue
            seen[image.key] = image.directory
            images.append(image)
    return images, failures


def _sorted_mask_files(image: ReferenceImage, order: str) -> list[str]:
    if order == "lexicographic":
        return sorted(image.mask_files)
    numbered = []
    for name in image.mask_files:
        match = _NUMERIC_MASK_FILE.match(name)
        if match is None:
            raise MaskFileError(
                image.directory / name, "expected a name mask_<integer>.npy for order='numeric'", key=image.key
            )
        numbered.append((int(match.group(1)), name))
    return [name for _, name in sorted(numbered)]


def _load_mask(path: Path, key: str) -> np.ndarray:
    try:
        with open_regular(path) as handle:
            array = np.load(handle, allow_pickle=False)
    except FileNotFoundError:
        raise MaskFileError(path, "mask file not found", key=key) from None
    except NotRegularFileError as exc:
        raise MaskFileError(path, f"refused: {exc.strerror}", key=key) from None
    except Exception as exc:  # truncated/corrupt .npy: ValueError, EOFError, OSError...
        raise MaskFileError(path, f"cannot load the mask ({type(exc).__name__}: {exc})", key=key) from exc
    if not isinstance(array, np.ndarray) or array.ndim != 2:
        shape = getattr(array, "shape", None)
        raise MaskFileError(path, f"expected a 2-D (H, W) mask, got shape {shape}", key=key)
    if array.dtype != np.bool_:
        if array.dtype.kind not in "biuf" or (array.size and not np.isin(array, (0, 1)).all()):
            raise MaskFileError(path, f"expected a bool (or 0/1) mask, got dtype {array.dtype} with other values", key=key)
        array = array != 0
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise MaskFileError(path, f"expected a mask with H >= 1 and W >= 1, got shape {array.shape}", key=key)
    return array


def read_reference_masks(image: ReferenceImage, order: str = "lexicographic") -> tuple[np.ndarray | None, list[str]]:
    """Load one reference image folder like the reference loader (``allow_pickle=False``).

    Returns:
        ``(bool (N, H, W) C-contiguous, or None when N == 0; the file names in order)``.

    Raises:
        MaskFileError: naming the mask file, on a missing, truncated or corrupt file, a
            non-2-D or non-0/1 array, or a mask whose size differs from the first mask's.
    """
    check_choice("order", order, ORDER_CHOICES)
    names = _sorted_mask_files(image, order)
    if not names:
        return None, []
    first = _load_mask(image.directory / names[0], image.key)
    stack = np.empty((len(names),) + first.shape, dtype=np.bool_)
    stack[0] = first
    for i, name in enumerate(names[1:], start=1):
        mask = _load_mask(image.directory / name, image.key)
        if mask.shape != first.shape:
            raise MaskFileError(
                image.directory / name,
                f"expected shape {first.shape} (as {names[0]}), got shape {mask.shape}",
                key=image.key,
            )
        stack[i] = mask
    return stack, names


def _load_metadata_json(path: Path) -> dict[str, Any]:
    try:
        with open_regular(path) as handle:
            data = json.load(handle)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, NotRegularFileError) else f"{type(exc).__name__}: {exc}"
        raise MaskFileError(path, f"cannot read the metadata JSON ({reason})") from exc
    if not isinstance(data, dict):
        raise MaskFileError(path, f"expected a JSON object image_key -> records, got {type(data).__name__}")
    return data


def _metadata_for(image: ReferenceImage, names: list[str], table: dict[str, Any]) -> MaskMetadata | None:
    path = image.metadata_file
    if image.key not in table:
        return None
    records = table[image.key]
    if not isinstance(records, list):
        raise MaskFileError(path, f"expected a list of mask records, got {type(records).__name__}", key=image.key)
    by_name: dict[str, Any] = {}
    for i, record in enumerate(records):
        name = os.path.basename(str(record.get("segmentation", ""))) if isinstance(record, dict) else ""
        if not name:
            raise MaskFileError(path, f"record {i} has no 'segmentation' file name", key=image.key)
        by_name[name] = record
    if sorted(by_name) != sorted(names):
        missing = sorted(set(names) - set(by_name))[:3]
        extra = sorted(set(by_name) - set(names))[:3]
        raise MaskFileError(
            path,
            f"records for {len(by_name)} mask files, the folder has {len(names)} "
            f"(no record for {missing}, no file for {extra})",
            key=image.key,
        )
    try:
        return MaskMetadata.from_records([by_name[n] for n in names], source="records")
    except (TypeError, ValueError) as exc:
        raise MaskFileError(path, str(exc), key=image.key) from exc


@dataclass
class ImportReport:
    """What :func:`import_reference_layout` did."""

    store: Path
    imported: int = 0
    skipped_existing: int = 0
    zero_mask_images: int = 0
    masks: int = 0
    failures: list[MaskFailure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def import_reference_layout(
    source: str | os.PathLike,
    store: str | os.PathLike,
    *,
    order: str = "lexicographic",
    encoding: str = "packbits",
    image_root: str | os.PathLike | None = None,
    use_metadata: bool = True,
    skip_existing: bool = True,
    on_error: str = "skip",
    shard_size: int = 1024,
    max_shard_bytes: int = 256 << 20,
    writer_id: str = "import",
    lock: str | None = "import",
    progress: Callable[[Iterable], Iterable] | None = None,
) -> ImportReport:
    """Convert a reference mask folder tree into a mask store.

    Args:
        source: the reference root holding ``partition_*`` folders.
        store: the mask store directory (created if absent; appended to otherwise).
        order: ``"lexicographic"`` (default, the reference loader's order: ``mask_10``
            before ``mask_2``) or ``"numeric"`` (SAM2 output order).
        encoding: ``"packbits"`` or ``"rle"``.
        image_root: the dataset root; when given, each image's size is read from its header
            and must match its masks, and zero-mask images get their size from it.
            Without it, zero-mask images are reported as failures (their size is unknown).
        use_metadata: import ``metadata_partition_<p>.json`` records when present.
        skip_existing: skip images already in the store (makes the import resumable).
        on_error: ``"skip"`` (record the failure, go on) or ``"raise"``.
        shard_size, max_shard_bytes, writer_id: see :class:`MaskStoreWriter`.
        lock: the store lock held while importing (:class:`ogkernels.masks.locks.StoreLock`):
            a second import into the same store fails at once; ``None``: no lock.
        progress: optional wrapper of the image iterable, e.g. ``tqdm.tqdm``.

    Returns:
        an :class:`ImportReport`; its ``failures`` name the file and image of each problem.
    """
    check_choice("order", order, ORDER_CHOICES)
    check_choice("on_error", on_error, ("skip", "raise"))
    images, failures = scan_reference_layout(source)
    if failures and on_error == "raise":
        raise MaskFileError(failures[0].path, failures[0].reason, key=failures[0].key)
    report = ImportReport(Path(store), failures=failures)
    writer = MaskStoreWriter(store, writer_id=writer_id, shard_size=shard_size, max_shard_bytes=max_shard_bytes, encoding=encoding)
    tables: dict[Path, dict[str, Any]] = {}
    with StoreLock(store, lock) if lock is not None else contextlib.nullcontext(), writer:
        existing = set(MaskStore(store).keys()) if skip_existing else set()
        for image in progress(images) if progress is not None else images:
            if image.key in existing:
                report.skipped_existing += 1
                continue
            try:
                masks, names, metadata = _read_image(image, order, image_root, use_metadata, tables)
                shape = masks.shape
                writer.add(image.key, masks, metadata, order=order)
            except (MaskStoreError, ValueError, TypeError) as exc:
                if on_error == "raise":
                    raise
                path = exc.path if isinstance(exc, MaskStoreError) else str(image.directory)
                report.failures.append(MaskFailure.from_exception(image.key, path, exc))
                continue
            report.imported += 1
            report.masks += shape[0]
            report.zero_mask_images += shape[0] == 0
    return report


def _read_image(
    image: ReferenceImage,
    order: str,
    image_root: str | os.PathLike | None,
    use_metadata: bool,
    tables: dict[Path, dict[str, Any]],
) -> tuple[np.ndarray, list[str], MaskMetadata | None]:
    masks, names = read_reference_masks(image, order)
    size = None
    if image_root is not None:
        image_path = Path(image_root) / image.key
        size = read_image_size(image_root, image.key)
        if masks is not None and masks.shape[1:] != size:
            raise MaskFileError(
                image.directory / names[0],
                f"mask shape {masks.shape[1:]} disagrees with the image {image_path} of (height, width) {size}",
                key=image.key,
            )
    if masks is None:
        if size is None:
            raise MaskFileError(
                image.directory, "zero masks and no image_root to read the image size from", key=image.key
            )
        masks = np.zeros((0,) + size, dtype=np.bool_)
    metadata = None
    if use_metadata and image.metadata_file is not None:
        if image.metadata_file not in tables:
            tables.clear()  # one partition's table at a time
            tables[image.metadata_file] = _load_metadata_json(image.metadata_file)
        metadata = _metadata_for(image, names, tables[image.metadata_file])
    return masks, names, metadata
