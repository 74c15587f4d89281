"""Command line: ``python -m ogkernels.masks {import,info,verify,downsample} ...``.

* ``import SRC STORE``: convert the reference layout (``SRC/partition_*/<key>/mask_<i>.npy``).
* ``info STORE``: images, masks, shards and bytes of a store, duplicate keys, leftovers.
* ``verify STORE [--image-root DIR]``: read every record with its CRC checked (and compare
  the recorded sizes with the images' when ``--image-root`` is given; images outside the
  root are refused); duplicate keys whose records differ are problems too.
* ``downsample STORE --grid 576 [--alpha 0.5 --mode flat|patch --frame none|pad|crop]``:
  write the Phi bitmaps of every image (resumable; several parameter sets coexist).

Exit status: 0 fine, 1 some images failed, 2 unusable arguments or store.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path
from typing import Sequence

from .atomic import TEMP_PREFIX
from .bitmap_store import BITMAP_DIR, BitmapParams
from .files import read_regular
from .format import parse_json
from .downsample_job import downsample_store
from .errors import MaskStoreError
from .format import SHARD_DIR
from .images import image_path, read_image_size
from .importer import import_reference_layout
from .reader import MaskStore
from .report import MaskFailure


def _import(args: argparse.Namespace) -> int:
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = lambda items: tqdm(items, unit="img", desc="import")  # noqa: E731
    report = import_reference_layout(
        args.source, args.store, order=args.order, encoding=args.encoding, image_root=args.image_root,
        use_metadata=not args.ignore_metadata, shard_size=args.shard_size, progress=progress,
    )  # fmt: skip
    print(
        f"imported {report.imported} images ({report.masks} masks, {report.zero_mask_images} with zero masks), "
        f"{report.skipped_existing} already in {report.store}, {len(report.failures)} failed"
    )
    for failure in report.failures:
        print(f"  FAILED {failure}", file=sys.stderr)
    return 0 if report.ok else 1


def _info(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():  # duplicates are summarised below
        warnings.simplefilter("ignore", UserWarning)
        store = MaskStore(args.store)
    keys = store.keys()
    infos = [store.info(k) for k in keys]
    size = sum(p.stat().st_size for p in store.shards)
    masks = sum(i.num_masks for i in infos)
    print(f"{store.root}: format version {store.manifest['format_version']}, {len(keys)} images, {masks} masks, "
          f"{len(store.shards)} shards, {size:,} bytes ({size / max(len(keys), 1):,.0f} per image)")  # fmt: skip
    for encoding in ("packbits", "rle"):
        count = sum(i.encoding == encoding for i in infos)
        if count:
            print(f"  {encoding}: {count} images")
    print(f"  zero-mask images: {sum(i.num_masks == 0 for i in infos)}; with metadata: {sum(i.has_metadata for i in infos)}")
    if store.duplicate_keys:
        print(f"  duplicate keys: {len(store.duplicate_keys)}, {len(store.conflicting_keys)} of them with differing "
              "records (the record indexed first is used; `verify` lists them)")
    bitmap_root = store.root / BITMAP_DIR
    for folder in sorted(p for p in bitmap_root.iterdir() if p.is_dir()) if bitmap_root.is_dir() else []:
        found = store.bitmap_set(BitmapParams.from_json(folder / "params.json", parse_json(read_regular(folder / "params.json", 1 << 16))))
        current = sum(found.find(k, *store.record_identity(k)) is not None for k in keys)
        print(f"  bitmaps {found.params.name}: {current} of {len(keys)} images up to date, {len(found.headers)} shards")
    leftovers = list((store.root / SHARD_DIR).glob(f"{TEMP_PREFIX}*"))
    if leftovers:
        print(f"  temporary files: {len(leftovers)} (in-flight writes, or leftovers of killed writers)")
    return 0


def _verify(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():  # differing duplicates are listed below
        warnings.simplefilter("ignore", UserWarning)
        store = MaskStore(args.store, verify=True)
    failures: list[MaskFailure] = []
    for key in store.conflicting_keys:
        kept, *others = store.duplicate_keys[key]
        failures.append(MaskFailure(key, str(kept), f"also stored, with a different record, in "
                                                    f"{', '.join(map(str, others))}; this record is used"))  # fmt: skip
    for key in store.keys():
        info = store.info(key)
        try:
            store.get(key)
            if args.image_root is not None:
                size = read_image_size(args.image_root, key)
                if size != (info.height, info.width):
                    failures.append(MaskFailure(key, str(image_path(args.image_root, key)),
                                                f"masks of (height, width) {(info.height, info.width)} in {info.shard}, the image is {size}"))  # fmt: skip
        except MaskStoreError as exc:
            failures.append(MaskFailure.from_exception(key, exc.path, exc))
    print(f"verified {len(store)} images in {len(store.shards)} shards: {len(failures)} problems")
    for failure in failures:
        print(f"  FAILED {failure}", file=sys.stderr)
    return 0 if not failures else 1


def _downsample(args: argparse.Namespace) -> int:
    params = BitmapParams.of(args.grid, alpha=args.alpha, mode=args.mode, frame=args.frame)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        progress = lambda items: tqdm(items, unit="batch", desc=params.name)  # noqa: E731
    report = downsample_store(args.store, params, batch_size=args.batch_size, device=args.device, progress=progress)
    print(report.summary())
    return 0


def _grid(text: str) -> int | tuple[int, int]:
    """``"576"`` -> 576, ``"24x24"`` -> (24, 24)."""
    parts = text.lower().replace("×", "x").split("x")
    if not all(p.strip().isdigit() for p in parts) or len(parts) > 2:
        raise argparse.ArgumentTypeError(f"expected V or GHxGW with positive ints (e.g. 576 or 24x24), got {text!r}")
    return int(parts[0]) if len(parts) == 1 else (int(parts[0]), int(parts[1]))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ogkernels.masks", description="ogkernels mask store tools")
    commands = parser.add_subparsers(dest="command", required=True)
    imp = commands.add_parser("import", help="import the reference .npy layout")
    imp.add_argument("source", type=Path, help="folder holding partition_*/")
    imp.add_argument("store", type=Path)
    imp.add_argument("--order", choices=("lexicographic", "numeric"), default="lexicographic")
    imp.add_argument("--encoding", choices=("packbits", "rle"), default="packbits")
    imp.add_argument("--image-root", type=Path, help="dataset root: check sizes, size zero-mask images")
    imp.add_argument("--ignore-metadata", action="store_true")
    imp.add_argument("--shard-size", type=int, default=1024)
    imp.add_argument("--no-progress", action="store_true")
    info = commands.add_parser("info", help="summarise a store")
    info.add_argument("store", type=Path)
    ver = commands.add_parser("verify", help="CRC-check every record")
    ver.add_argument("store", type=Path)
    ver.add_argument("--image-root", type=Path)
    down = commands.add_parser("downsample", help="write the Phi bitmaps of every image")
    down.add_argument("store", type=Path)
    down.add_argument("--grid", type=_grid, required=True, help="V (flat) or GHxGW, e.g. 576 or 24x24")
    down.add_argument("--alpha", type=float, default=0.5)
    down.add_argument("--mode", choices=("flat", "patch"), default="flat")
    down.add_argument("--frame", choices=("none", "pad", "crop"), default="none")
    down.add_argument("--batch-size", type=int, default=32)
    down.add_argument("--device", default=None, help="where Phi runs (e.g. cuda); default the CPU")
    down.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        return {"import": _import, "info": _info, "verify": _verify, "downsample": _downsample}[args.command](args)
    except (MaskStoreError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
