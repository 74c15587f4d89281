"""Mask store vs the reference layout (one ``.npy`` per mask), and the mask job's masks/s.

Run::

    .venv/bin/python -m pytest bench/bench_mask_store.py -q -p no:cacheprovider

Data: 16 generated images of 480×640 with 20–60 masks each, built from the real SAM 2
masklets of SA-V video ``sav_000001`` (Segment Anything Video dataset, Meta, CC BY 4.0;
shipped in ``tests/data`` (``OGKERNELS_SHARED_DATA`` overrides)): each mask is a transposed SA-V mask (848×480 →
480×848), randomly flipped and cropped to 640 columns around the object, so shapes are real
(smooth boundaries, holes, thin parts). Loads are timed with a warm page cache; on a cold
cache the load ratio follows the bytes-on-disk ratio.

Recorded in ``benchmark.extra_info`` and printed side by side at the end: bytes on disk per
image (apparent and allocated), write and batch-load times, store vs reference; the hot read
path, before and after the header checks (``load_batch`` of the reader at commit
``ad2f6f5``, format 1, loaded from git, against today's on the same images), and a bare
``pread`` floor with no checks at all (the least any reader can do); a
``DataLoader`` with 2 workers serving full bit-packed masks vs stored Phi bitmaps (images/s,
bytes read and handed over per image); the dataset-wide token-count table (images/s); and masks/s
of ``ogkernels-sam2-masks`` (``ogkernels.jobs.sam2_masks``) on the CPU with a **small random-weight** SAM 2.1 Hiera-T
(image size 256, 4×4 points): a smoke figure for the pipeline, not SAM2-L throughput.
"""

from __future__ import annotations

import glob
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ogkernels import downsample_masks
from ogkernels.masks import MaskStore, MaskStoreWriter, reference_order

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

REPO = Path(__file__).resolve().parents[1]
HEIGHT, WIDTH = 480, 640
NUM_IMAGES, BATCH = 16, 8
RESULTS: dict[str, dict[str, float]] = {}


def _sav_masks() -> np.ndarray:
    """All SA-V ``sav_000001`` masks (Meta, CC BY 4.0) with >= 500 pixels, ``bool (M, 848, 480)``."""
    from ogkernels.tools.synthetic import sav_file, sav_masklets

    path = sav_file()

    stack = np.concatenate(sav_masklets(path, slice(None, None, 4))[0])
    return stack[stack.sum(axis=(1, 2)) >= 500]


def _image_masks(source: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """20–60 masks ``bool (N, 480, 640)`` from SA-V shapes (transposed, flipped, cropped)."""
    count = int(rng.integers(20, 61))
    out = np.zeros((count, HEIGHT, WIDTH), dtype=bool)
    for i in range(count):
        mask = source[rng.integers(len(source))].T  # (480, 848)
        if rng.random() < 0.5:
            mask = mask[:, ::-1]
        if rng.random() < 0.5:
            mask = mask[::-1]
        cols = np.flatnonzero(mask.any(axis=0))
        centre = int(cols.mean()) if cols.size else mask.shape[1] // 2
        left = int(np.clip(centre - rng.integers(WIDTH // 4, 3 * WIDTH // 4), 0, mask.shape[1] - WIDTH))
        out[i] = mask[:, left : left + WIDTH]
    return out


def _disk_bytes(paths: list[Path]) -> tuple[int, int]:
    """(apparent bytes, allocated bytes) of files."""
    stats = [p.stat() for p in paths]
    return sum(s.st_size for s in stats), sum(s.st_blocks * 512 for s in stats)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict:
    rng = np.random.default_rng(0)
    source = _sav_masks()
    images = {f"coco/train2017/{i:012d}.jpg": _image_masks(source, rng) for i in range(NUM_IMAGES)}
    root = tmp_path_factory.mktemp("mask_bench")
    return {"images": images, "root": root, "keys": list(images)[:BATCH]}


def _write_reference(root: Path, images: dict[str, np.ndarray]) -> list[Path]:
    paths = []
    for key, masks in images.items():
        directory = root / "partition_0" / key
        directory.mkdir(parents=True, exist_ok=True)
        for i, mask in enumerate(masks):
            path = directory / f"mask_{i}.npy"
            np.save(path, np.asfortranarray(mask))  # what the reference writes
            paths.append(path)
    return paths


def _write_store(root: Path, images: dict[str, np.ndarray], encoding: str) -> list[Path]:
    with MaskStoreWriter(root, encoding=encoding, shard_size=len(images)) as writer:
        for key, masks in images.items():
            writer.add(key, masks)
    return MaskStore(root).shards


def _load_reference(root: Path, keys: list[str]) -> list[torch.Tensor]:
    """The reference loader: sorted(glob(mask_*.npy)), np.load each, stack."""
    out = []
    for key in keys:
        files = sorted(glob.glob(os.path.join(root, "partition_0", key, "mask_*.npy")))
        out.append(torch.stack([torch.from_numpy(np.load(f)) for f in files]))
    return out


def _median(benchmark) -> float | None:
    stats = getattr(benchmark, "stats", None)
    return float(stats.stats.median) if stats is not None else None


def _record(benchmark, name: str, **values: float) -> None:
    median = _median(benchmark)
    if median is not None:
        values["median_s"] = median
    RESULTS.setdefault(name, {}).update(values)
    benchmark.extra_info.update(values)


@pytest.fixture(scope="module", autouse=True)
def _print_summary(request):
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if not RESULTS:
        return
    lines: list[str] = []
    write = lines.append
    write(f"mask store vs reference layout ({NUM_IMAGES} images, 480x640, 20-60 SA-V-shaped masks; batch {BATCH})")
    ref = RESULTS.get("reference", {})
    for name in ("packbits", "rle"):
        row = RESULTS.get(name)
        if not row or not ref:
            continue
        write(
            f"  bytes/image   reference {ref['bytes_per_image']:>12,.0f} (alloc {ref['allocated_per_image']:>12,.0f})"
            f" | store[{name}] {row['bytes_per_image']:>10,.0f} (alloc {row['allocated_per_image']:>10,.0f})"
            f" | ratio {ref['bytes_per_image'] / row['bytes_per_image']:6.1f}x"
        )
    for name in ("load/packbits", "load/rle", "load+phi/packbits"):
        value = RESULTS.get(name, {}).get("median_s")
        base = RESULTS.get("load+phi/reference" if name.startswith("load+phi") else "load/reference", {}).get("median_s")
        if value and base:
            write(f"  {name:<18} reference {base * 1e3:9.2f} ms/batch | store {value * 1e3:9.2f} ms/batch | speedup {base / value:6.1f}x")
    hot = {name: RESULTS.get(f"hot/{name}", {}).get("median_s") for name in ("before", "after", "pread_floor")}
    if all(hot.values()):
        write(f"  hot read path (median ms/batch): before {hot['before'] * 1e3:7.2f} | after {hot['after'] * 1e3:7.2f} "
              f"(after/before {hot['after'] / hot['before']:4.2f}x) | bare pread floor {hot['pread_floor'] * 1e3:7.2f}")
    paired = RESULTS.get("hot/paired")
    if paired:
        write(f"  hot read path, 200 interleaved pairs: after/before median {paired['ratio_median']:.2f}x "
              f"(quartiles {paired['ratio_p25']:.2f}-{paired['ratio_p75']:.2f})")
    for name in ("masks", "bitmaps"):
        row = RESULTS.get(f"loader/{name}")
        if row and row.get("median_s"):
            write(f"  DataLoader (2 workers) {name:<8}: {row['images'] / row['median_s']:8.1f} images/s, "
                  f"{row['disk_bytes_per_image']:>10,.0f} B/image read, {row['handed_bytes_per_image']:>10,.0f} B/image handed over")
    counts = RESULTS.get("counts")
    if counts:
        write(f"  token-count table from stored bitmaps: {counts['images_per_second']:,.0f} images/s ({counts['images']} images)")
    job = RESULTS.get("job")
    if job:
        write(f"  mask job (CPU, random-weight SAM 2.1 Hiera-T @256, 4x4 points): {job['masks_per_second']:.1f} masks/s, {job['images_per_second']:.2f} images/s")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            print("\n" + "\n".join(lines), flush=True)
    else:
        print("\n".join(lines))


# --------------------------------------------------------------------------- bytes + write


def test_write_reference_layout(benchmark, dataset):
    benchmark.group = "write 16 images"
    root = dataset["root"] / "reference"

    def write():
        shutil.rmtree(root, ignore_errors=True)
        return _write_reference(root, dataset["images"])

    paths = benchmark.pedantic(write, rounds=2, iterations=1)
    apparent, allocated = _disk_bytes(paths)
    masks = sum(len(m) for m in dataset["images"].values())
    _record(benchmark, "reference", bytes_per_image=apparent / NUM_IMAGES, allocated_per_image=allocated / NUM_IMAGES,
            files_per_image=len(paths) / NUM_IMAGES, masks_per_image=masks / NUM_IMAGES)  # fmt: skip


@pytest.mark.parametrize("encoding", ["packbits", "rle"])
def test_write_store(benchmark, dataset, encoding):
    benchmark.group = "write 16 images"
    root = dataset["root"] / f"store_{encoding}"

    def write():
        shutil.rmtree(root, ignore_errors=True)
        return _write_store(root, dataset["images"], encoding)

    paths = benchmark.pedantic(write, rounds=2, iterations=1)
    apparent, allocated = _disk_bytes(paths + [root / "store.json"])
    values = {"bytes_per_image": apparent / NUM_IMAGES, "allocated_per_image": allocated / NUM_IMAGES}
    ref = RESULTS.get("reference")
    if ref:
        values["size_ratio_vs_reference"] = ref["bytes_per_image"] / values["bytes_per_image"]
    _record(benchmark, encoding, **values)


# --------------------------------------------------------------------------- load a batch


def test_load_batch_reference(benchmark, dataset):
    benchmark.group = f"load batch of {BATCH}"
    root = dataset["root"] / "reference"
    if not root.is_dir():
        _write_reference(root, dataset["images"])
    out = benchmark(_load_reference, root, dataset["keys"])
    source = dataset["images"][dataset["keys"][0]]
    assert torch.equal(out[0], torch.from_numpy(source[reference_order(len(source))]))  # mask_10 < mask_2
    _record(benchmark, "load/reference")


@pytest.mark.parametrize("encoding", ["packbits", "rle"])
def test_load_batch_store(benchmark, dataset, encoding):
    benchmark.group = f"load batch of {BATCH}"
    root = dataset["root"] / f"store_{encoding}"
    if not root.is_dir():
        _write_store(root, dataset["images"], encoding)
    store = MaskStore(root)
    out = benchmark(store.load_batch, dataset["keys"])
    assert torch.equal(out[0].unpack(), torch.from_numpy(dataset["images"][dataset["keys"][0]]))
    values = {}
    ref = RESULTS.get("load/reference", {}).get("median_s")
    if ref and _median(benchmark):
        values["speedup_vs_reference"] = ref / _median(benchmark)
    _record(benchmark, f"load/{encoding}", **values)


@pytest.mark.parametrize("layout", ["reference", "packbits"])
def test_load_and_downsample(benchmark, dataset, layout):
    """Disk to the (M, 576) kept-mask bitmaps: dense bool masks vs bit-packed, same Φ."""
    benchmark.group = f"load + downsample_masks(576), batch of {BATCH}"
    if layout == "reference":
        root = dataset["root"] / "reference"
        run = lambda: downsample_masks(_load_reference(root, dataset["keys"]), 576)  # noqa: E731
    else:
        store = MaskStore(dataset["root"] / "store_packbits")
        run = lambda: downsample_masks(store.load_batch(dataset["keys"]), 576)  # noqa: E731
    out = benchmark.pedantic(run, rounds=3, iterations=1, warmup_rounds=1)
    assert out.shape == (sum(len(dataset["images"][k]) for k in dataset["keys"]), 576)
    _record(benchmark, f"load+phi/{layout}")


# --------------------------------------------------------------------------- hot read path


def _pread_floor(store: MaskStore, keys: list[str]) -> list[np.ndarray]:
    """The least a reader can do for a batch: one buffer, one ``pread`` per record, no checks."""
    infos = [store.info(k) for k in keys]
    spans = []
    for key in keys:  # the record ranges, taken from the store's own index
        row = store._row(key)
        spans.append((store._shards[int(store._columns["shard"][row])].path, int(store._columns["data_offset"][row]),
                      int(store._columns["data_nbytes"][row])))  # fmt: skip
    buffer = np.empty(sum(n for _, _, n in spans), np.uint8)
    out, start = [], 0
    for (path, offset, nbytes), info in zip(spans, infos):
        fd = _FDS.get(path)
        if fd is None:
            fd = _FDS[path] = os.open(path, os.O_RDONLY)
        os.preadv(fd, [memoryview(buffer[start : start + nbytes])], offset)
        out.append(buffer[start : start + nbytes])
        start += nbytes
    return out


_FDS: dict[Path, int] = {}


BEFORE = "ad2f6f5"  # the mask store before the header checks (format version 1)


def _store_before():
    """``(MaskStore, MaskStoreWriter)`` of the mask store at commit BEFORE, from git."""
    import importlib
    import importlib.util
    import subprocess
    import sys
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="masks_before_"))
    for name in ("atomic", "errors", "format", "metadata", "reader", "rle", "writer"):
        source = subprocess.run(["git", "show", f"{BEFORE}:ogkernels/masks/{name}.py"], cwd=REPO, capture_output=True, text=True)
        if source.returncode != 0:
            pytest.skip(f"the reader at {BEFORE} is not in this checkout's git history")
        (folder / f"{name}.py").write_text(source.stdout)
    (folder / "__init__.py").write_text("")
    spec = importlib.util.spec_from_file_location("ogkernels._masks_before", folder / "__init__.py", submodule_search_locations=[str(folder)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = package
    spec.loader.exec_module(package)
    reader, writer = (importlib.import_module(f"ogkernels._masks_before.{m}") for m in ("reader", "writer"))
    return reader.MaskStore, writer.MaskStoreWriter


@pytest.mark.parametrize("reader", ["before", "after", "pread_floor"])
def test_hot_read_path(benchmark, dataset, reader):
    """Validation lives at open: per batch, load_batch costs what it did before the checks."""
    benchmark.group = f"hot read path: batch of {BATCH}, warm cache"
    if reader == "before":
        store_class, writer_class = _store_before()
        root = dataset["root"] / "store_before"
        if not root.is_dir():
            with writer_class(root, shard_size=NUM_IMAGES) as writer:
                for key, masks in dataset["images"].items():
                    writer.add(key, masks)
        store = store_class(root)
    else:
        root = dataset["root"] / "store_packbits"
        if not root.is_dir():
            _write_store(root, dataset["images"], "packbits")
        store = MaskStore(root)
    run = (lambda: _pread_floor(store, dataset["keys"])) if reader == "pread_floor" else (lambda: store.load_batch(dataset["keys"]))
    out = benchmark(run)
    first = out[0] if reader == "pread_floor" else out[0].bits.numpy().reshape(-1)
    np.testing.assert_array_equal(first, np.packbits(dataset["images"][dataset["keys"][0]].reshape(-1, HEIGHT * WIDTH), axis=1).reshape(-1))
    _record(benchmark, f"hot/{reader}")


def test_hot_read_path_interleaved(benchmark, dataset):
    """Before and after alternately, 200 pairs: on a shared, noisy machine a paired ratio is
    the fair comparison (each pair sees the same load)."""
    import time

    benchmark.group = f"hot read path: batch of {BATCH}, warm cache"
    store_class, writer_class = _store_before()
    before_root, after_root = dataset["root"] / "store_before", dataset["root"] / "store_packbits"
    if not before_root.is_dir():
        with writer_class(before_root, shard_size=NUM_IMAGES) as writer:
            for key, masks in dataset["images"].items():
                writer.add(key, masks)
    if not after_root.is_dir():
        _write_store(after_root, dataset["images"], "packbits")
    before, after = store_class(before_root), MaskStore(after_root)
    keys = dataset["keys"]
    ratios: list[float] = []

    def pair():
        start = time.perf_counter()
        before.load_batch(keys)
        middle = time.perf_counter()
        after.load_batch(keys)
        ratios.append((time.perf_counter() - middle) / (middle - start))

    benchmark.pedantic(pair, rounds=200, iterations=1, warmup_rounds=5)
    _record(benchmark, "hot/paired", ratio_median=float(np.median(ratios)), ratio_p25=float(np.percentile(ratios, 25)),
            ratio_p75=float(np.percentile(ratios, 75)))  # fmt: skip


# --------------------------------------------------------------------------- loader: masks vs bitmaps


class _StoreDataset(torch.utils.data.Dataset):
    """One image's full bit-packed masks, or its stored Phi bitmaps (576, flat)."""

    def __init__(self, root: Path, keys: list[str], kind: str) -> None:
        self.store, self.keys, self.kind = MaskStore(root), keys, kind

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        key = self.keys[index]
        if self.kind == "masks":
            return self.store.get(key).bits
        bitmaps = self.store.load_bitmaps([key], 576)[0]
        return bitmaps.bits, bitmaps.nonempty


@pytest.mark.parametrize("kind", ["masks", "bitmaps"])
def test_loader_masks_vs_bitmaps(benchmark, dataset, kind):
    """A DataLoader with 2 workers over the 16 images (batch 4, persistent workers), one epoch a round."""
    from ogkernels.masks.bitmap_store import BitmapParams
    from ogkernels.masks.downsample_job import downsample_store

    benchmark.group = "DataLoader, 2 workers: full masks vs stored bitmaps"
    root = dataset["root"] / "store_packbits"
    if not root.is_dir():
        _write_store(root, dataset["images"], "packbits")
    downsample_store(root, BitmapParams.of(576))
    keys = list(dataset["images"])
    loader = torch.utils.data.DataLoader(_StoreDataset(root, keys, kind), batch_size=4, num_workers=2,
                                         persistent_workers=True, collate_fn=list)  # fmt: skip
    list(loader)  # start the workers outside the timing

    def epoch():
        return [item for batch in loader for item in batch]

    items = benchmark.pedantic(epoch, rounds=5, iterations=1)
    masks = sum(len(m) for m in dataset["images"].values())
    if kind == "masks":
        handed = sum(t.nbytes for t in items)
        disk = handed
    else:
        handed = sum(bits.nbytes + nonempty.nbytes for bits, nonempty in items)
        disk = masks * (BitmapParams.of(576).row_bytes + 1)
    _record(benchmark, f"loader/{kind}", images=len(keys), disk_bytes_per_image=disk / len(keys), handed_bytes_per_image=handed / len(keys))


TABLE_IMAGES = 2000


def test_token_count_table(benchmark, tmp_path):
    """Lengths up front: every image's OG token count from stored bitmaps (no cache), for
    2,000 images of 5-40 masks with random 576-bin bitmaps (written directly: the table's
    cost does not depend on where the bitmaps came from)."""
    from ogkernels.masks.bitmap_store import BitmapParams, BitmapWriter
    from ogkernels.masks.counts import token_count_table

    benchmark.group = f"token-count table, {TABLE_IMAGES} images"
    rng = np.random.default_rng(0)
    params = BitmapParams.of(576)
    with MaskStoreWriter(tmp_path, shard_size=1000) as writer, BitmapWriter(tmp_path, params) as bitmaps:
        for i in range(TABLE_IMAGES):
            n = int(rng.integers(5, 41))
            crc = writer.add(f"img/{i}.jpg", np.zeros((n, 2, 2), dtype=bool))
            bitmaps.add(f"img/{i}.jpg", torch.from_numpy(rng.random((n, 576)) < 0.05), torch.ones(n, dtype=torch.bool), crc)
    store = MaskStore(tmp_path)
    token_count_table(store, 576, cache=False)  # warm-up: the ops' first call
    table = benchmark.pedantic(lambda: token_count_table(store, 576, cache=False), rounds=3, iterations=1)
    assert len(table.keys) == TABLE_IMAGES
    median = _median(benchmark)
    _record(benchmark, "counts", images=TABLE_IMAGES, images_per_second=TABLE_IMAGES / median if median else table.images_per_second)


# --------------------------------------------------------------------------- the mask job


def test_mask_job_cpu_random_weights(benchmark, tmp_path):
    """masks/s of ogkernels.jobs.sam2_masks on the CPU, small RANDOM-WEIGHT SAM 2.1 Hiera-T
    (256 px, 4×4 points, thresholds 0, NMS off): a pipeline smoke figure, not SAM2-L speed."""
    pytest.importorskip("sam2")
    from PIL import Image

    import ogkernels.jobs.sam2_masks as job

    benchmark.group = "mask job (CPU, random-weight SAM2 Hiera-T)"
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)).save(images / f"{i}.png")
    args = [
        "--images", str(images), "--random-weights", "--config", "configs/sam2.1/sam2.1_hiera_t.yaml",
        "--override", "++model.image_size=256", "--points-per-side", "4", "--pred-iou-thresh", "0",
        "--stability-score-thresh", "0", "--box-nms-thresh", "1.0", "--device", "cpu", "--no-progress",
    ]  # fmt: skip
    generate = job.build_sam2_generator(job.build_parser().parse_args([*args, "--store", "x"]))
    generate(np.zeros((64, 64, 3), np.uint8))  # warm-up outside the timing
    counter = {"round": 0}

    def run():
        counter["round"] += 1
        from ogkernels.masks import list_image_folder, run_mask_job

        return run_mask_job(list_image_folder(images), images, tmp_path / f"store{counter['round']}", generate)

    report = benchmark.pedantic(run, rounds=2, iterations=1)
    assert report.ok and report.masks > 0
    _record(benchmark, "job", masks_per_second=report.masks / report.seconds,
            images_per_second=report.processed / report.seconds, masks_per_image=report.masks / report.processed,
            model="random-weight SAM 2.1 Hiera-T, image_size 256, 4x4 points, CPU")  # fmt: skip
