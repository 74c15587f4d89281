"""The mask store: bit-exact round trips, batches, metadata, versions, corruption, atomicity.

Real masks: ``sav_000001_auto.json``, the automatic masklets of SA-V video ``sav_000001``
(Segment Anything Video dataset, Meta, CC BY 4.0), shipped in ``tests/data`` (``OGKERNELS_SHARED_DATA`` overrides).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import PackedMasks, downsample_masks
from ogkernels.masks import (
    FORMAT_VERSION,
    MaskMetadata,
    MaskStore,
    MaskStoreError,
    MaskStoreVersionError,
    MaskStoreWriter,
    encode_rle,
)
from ogkernels.masks.format import SHARD_DIR, read_shard_header

from .strategies import mask_stacks


pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

@pytest.fixture(scope="module")
def sav(sav_frames) -> tuple[list[np.ndarray], list[list[dict]]]:
    """SA-V ``sav_000001`` frames (Meta, CC BY 4.0): dense masks and their COCO RLEs."""
    return sav_frames


def _metadata(n: int, seed: int) -> MaskMetadata:
    rng = np.random.default_rng(seed)
    return MaskMetadata(
        area=rng.integers(0, 10**6, n).astype(np.int64),
        bbox=rng.random((n, 4)) * 640,
        predicted_iou=rng.random(n),
        stability_score=rng.random(n),
        point_coords=rng.random((n, 2)) * 480,
        crop_box=np.tile([0.0, 0.0, 640.0, 480.0], (n, 1)),
    )


def _packbits(masks: np.ndarray) -> np.ndarray:
    n, h, w = masks.shape
    return np.packbits(masks.reshape(n, h * w), axis=1)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("encoding", ["packbits", "rle"])
def test_sav_masks_round_trip_bit_exact(tmp_path, sav, encoding):
    frames, _ = sav
    with MaskStoreWriter(tmp_path, shard_size=4, encoding=encoding) as writer:
        for i, masks in enumerate(frames):
            writer.add(f"sav_000001/{i:05d}.jpg", masks, _metadata(9, i))
    store = MaskStore(tmp_path, verify=True)
    assert len(store.shards) == 2 and len(store) == len(frames)
    for i, masks in enumerate(frames):
        key = f"sav_000001/{i:05d}.jpg"
        packed = store[key]
        assert isinstance(packed, PackedMasks) and packed.shape == (9, 848, 480)
        np.testing.assert_array_equal(packed.bits.numpy(), _packbits(masks))
        assert torch.equal(packed.unpack(), torch.from_numpy(masks))
        assert store.metadata(key) == _metadata(9, i)
        info = store.info(key)
        assert (info.height, info.width, info.num_masks, info.encoding) == (848, 480, 9, encoding)
    keys = [f"sav_000001/{i:05d}.jpg" for i in (5, 0, 3, 0)]
    batch = store.load_batch(keys)
    for key, packed in zip(keys, batch):
        assert torch.equal(packed.bits, store[key].bits)
    dense = [torch.from_numpy(frames[int(k[-9:-4])]) for k in keys]
    for mode, grid in (("flat", 576), ("patch", (24, 24))):
        assert torch.equal(downsample_masks(batch, grid, mode=mode), downsample_masks(dense, grid, mode=mode))


def test_rle_records_are_pycocotools_counts(tmp_path, sav):
    frames, rles = sav
    for masks, rle in zip(frames[:2], rles[:2]):
        assert encode_rle(masks) == [r["counts"].encode("ascii") for r in rle]
    with MaskStoreWriter(tmp_path, encoding="rle") as writer:
        writer.add("f0", frames[0])
    header = read_shard_header(MaskStore(tmp_path).shards[0])
    span = header.tensors["data"]
    blob = header.path.read_bytes()[span.begin : span.end]
    assert blob == b"".join(r["counts"].encode("ascii") for r in rles[0])
    packed_bytes = _packbits(frames[0]).nbytes
    assert len(blob) < packed_bytes / 20, "RLE should be far smaller than bit-packing on SA-V masks"


@settings(max_examples=25)
@given(
    images=st.lists(mask_stacks(max_masks=4, max_side=23), min_size=1, max_size=4),
    encodings=st.lists(st.sampled_from(["packbits", "rle"]), min_size=4, max_size=4),
    with_metadata=st.lists(st.booleans(), min_size=4, max_size=4),
    shard_size=st.integers(1, 3),
)
def test_round_trip_property(images, encodings, with_metadata, shard_size):
    """Random shapes (odd sizes, H·W not a multiple of 8), zero, empty and full masks."""
    with tempfile.TemporaryDirectory() as root:
        with MaskStoreWriter(root, shard_size=shard_size) as writer:
            for i, masks in enumerate(images):
                meta = _metadata(masks.shape[0], i) if with_metadata[i] else None
                writer.add(f"img/{i}.png", masks, meta, encoding=encodings[i])
        store = MaskStore(root, verify=True)
        assert store.keys() == [f"img/{i}.png" for i in range(len(images))]
        batch = store.load_batch(store.keys()[::-1])[::-1]
        for i, masks in enumerate(images):
            key = f"img/{i}.png"
            for packed in (store[key], batch[i]):
                assert packed.shape == tuple(masks.shape)
                np.testing.assert_array_equal(packed.bits.numpy(), _packbits(masks.numpy()))
                if masks.shape[0]:  # PackedMasks.unpack() cannot reshape zero masks (reported)
                    assert torch.equal(packed.unpack(), masks)
            meta = store.metadata(key)
            assert (meta == _metadata(masks.shape[0], i)) if with_metadata[i] else meta is None
        store.close()


def test_zero_masks_image(tmp_path):
    with MaskStoreWriter(tmp_path) as writer:
        writer.add("empty.jpg", np.zeros((0, 5, 7), dtype=bool), MaskMetadata.empty(0))
        writer.add("one.jpg", np.ones((1, 5, 7), dtype=bool))
        writer.add("packed_empty.jpg", PackedMasks.from_dense(np.zeros((0, 3, 3), dtype=bool)))
    store = MaskStore(tmp_path)
    empty = store["empty.jpg"]
    assert empty.shape == (0, 5, 7) and tuple(empty.bits.shape) == (0, 5)
    assert store.metadata("empty.jpg").num_masks == 0
    assert store["packed_empty.jpg"].shape == (0, 3, 3)
    batch = store.load_batch(["empty.jpg", "one.jpg", "packed_empty.jpg"])
    assert [p.num_masks for p in batch] == [0, 1, 0]
    assert downsample_masks(batch, 16).shape == (1, 16)
    assert downsample_masks(empty, 16).shape == (0, 16)


def test_full_and_single_pixel_masks(tmp_path):
    full = np.ones((2, 1, 1), dtype=bool)
    odd = np.zeros((3, 3, 5), dtype=bool)
    odd[0, 2, 4] = True  # the last pixel: lands in the padded last byte
    odd[2] = True
    with MaskStoreWriter(tmp_path) as writer:
        writer.add("full", full)
        writer.add("odd", odd, encoding="rle")
    store = MaskStore(tmp_path)
    assert torch.equal(store["full"].unpack(), torch.from_numpy(full))
    assert store["full"].bits.tolist() == [[0x80], [0x80]]
    assert torch.equal(store["odd"].unpack(), torch.from_numpy(odd))


def test_metadata_records_round_trip(tmp_path):
    records = [
        {"area": 12, "bbox": [1.0, 2.0, 3.0, 4.0], "predicted_iou": 0.9123456789012345,
         "point_coords": [[10.5, 20.25]], "stability_score": 0.97, "crop_box": [0, 0, 64, 48]},
        {"area": 7, "bbox": [0, 0, 1, 7], "predicted_iou": 0.95,
         "point_coords": [[1.0, 2.0]], "stability_score": 1.0, "crop_box": [0, 0, 64, 48]},
    ]  # fmt: skip
    meta = MaskMetadata.from_records(records)
    with MaskStoreWriter(tmp_path) as writer:
        writer.add("a", np.zeros((2, 48, 64), dtype=bool), meta)
    loaded = MaskStore(tmp_path).metadata("a")
    assert loaded == meta
    assert loaded.to_records() == [{k: (list(map(float, v)) if k in ("bbox", "crop_box") else v) for k, v in r.items()} for r in records]
    assert loaded.area.dtype == np.int64 and loaded.bbox.shape == (2, 4) and loaded.point_coords.shape == (2, 2)


def test_batch_is_one_buffer_and_keeps_order(tmp_path):
    rng = np.random.default_rng(0)
    images = {f"k{i}": rng.random((i % 3 + 1, 9, 11)) < 0.5 for i in range(6)}
    with MaskStoreWriter(tmp_path, shard_size=2) as writer:
        for key, masks in images.items():
            writer.add(key, masks)
    store = MaskStore(tmp_path)
    keys = ["k4", "k1", "k4", "k0", "k5"]
    batch = store.load_batch(keys, device="cpu")
    storages = {p.bits.untyped_storage().data_ptr() for p in batch}
    assert len(storages) == 1, "a batch must be read into one host buffer (one device copy)"
    for key, packed in zip(keys, batch):
        assert torch.equal(packed.unpack(), torch.from_numpy(images[key]))
    with pytest.raises(KeyError, match="'missing'"):
        store.load_batch(["k0", "missing"])
    with pytest.raises(TypeError, match="keys"):
        store.load_batch("k0")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_batch_to_cuda_from_pinned_memory(tmp_path):
    masks = np.random.default_rng(1).random((3, 30, 17)) < 0.3
    with MaskStoreWriter(tmp_path) as writer:
        writer.add("a", masks)
        writer.add("b", masks[:0])
    batch = MaskStore(tmp_path).load_batch(["a", "b", "a"], device="cuda", non_blocking=True)
    assert all(p.device.type == "cuda" for p in batch)
    assert torch.equal(batch[2].unpack().cpu(), torch.from_numpy(masks))
    assert downsample_masks(batch, 576).shape == (6, 576)


# --------------------------------------------------------------------------- store life cycle


def test_refresh_and_concurrent_writers(tmp_path):
    first = MaskStoreWriter(tmp_path, writer_id="rank0", shard_size=1)
    second = MaskStoreWriter(tmp_path, writer_id="rank1", shard_size=1)
    first.add("a", np.ones((1, 2, 2), dtype=bool))
    store = MaskStore(tmp_path)
    assert store.keys() == ["a"]
    second.add("b", np.zeros((1, 2, 2), dtype=bool))
    assert "b" not in store
    assert store.refresh() == 1 and "b" in store and len(store) == 2


def test_temporary_files_are_ignored_and_failed_writes_leave_nothing(tmp_path, monkeypatch):
    with MaskStoreWriter(tmp_path) as writer:
        writer.add("a", np.ones((1, 4, 4), dtype=bool))
    shards = tmp_path / SHARD_DIR
    (shards / ".tmp-rank9-x-000000.safetensors.99999999.abcd").write_bytes(b"partial")
    assert MaskStore(tmp_path).keys() == ["a"]

    import ogkernels.masks.format as fmt

    def boom(path, index, tensors, *rest):
        def write(handle):
            handle.write(b"half a shard")
            raise OSError("disk full")

        return fmt.atomic_write(path, write)

    monkeypatch.setattr("ogkernels.masks.writer.write_shard", boom)
    writer = MaskStoreWriter(tmp_path, writer_id="crash")
    writer.add("b", np.ones((1, 4, 4), dtype=bool))
    with pytest.raises(MaskStoreError, match="disk full") as info:
        writer.flush()
    assert "crash-" in str(info.value)
    assert not list(shards.glob(".tmp-crash-*")), "a failed write must remove its temporary file"
    assert MaskStore(tmp_path).keys() == ["a"]


def test_writer_rejects_bad_input(tmp_path):
    writer = MaskStoreWriter(tmp_path)
    with pytest.raises(TypeError, match="key"):
        writer.add(3, np.ones((1, 2, 2), dtype=bool))
    with pytest.raises(TypeError, match="masks of image 'a'"):
        writer.add("a", [[1]])
    with pytest.raises(ValueError, match=r"metadata of image 'a': expected 1 rows .* got 2 rows"):
        writer.add("a", np.ones((1, 2, 2), dtype=bool), MaskMetadata.empty(2))
    with pytest.raises(ValueError, match="values in"):
        writer.add("a", np.full((1, 2, 2), 3, dtype=np.uint8))
    writer.add("a", np.ones((1, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="key: expected a key not yet written"):
        writer.add("a", np.ones((1, 2, 2), dtype=bool))
    with pytest.raises(ValueError, match="encoding"):
        MaskStoreWriter(tmp_path, encoding="png")
    with pytest.raises(ValueError, match="writer_id"):
        MaskStoreWriter(tmp_path, writer_id="../x")


# --------------------------------------------------------------------------- concurrent writers

def _fork(target, *args) -> "multiprocessing.Process":
    """Run ``target(*args)`` in a forked process (torch is imported already: no start-up cost)."""
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=target, args=args)
    proc.start()
    return proc


def _wait_for(path: Path, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if not proc.is_alive() or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared (exit code {proc.exitcode})")
        time.sleep(0.01)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temps_only_of_dead_writers_of_this_host_are_removed(tmp_path, monkeypatch):
    from ogkernels.masks import atomic

    monkeypatch.setattr(atomic.socket, "gethostname", lambda: "node.a")
    shards = tmp_path / SHARD_DIR
    shards.mkdir(parents=True)
    dead, alive = _dead_pid(), os.getpid()
    names = {
        "this host, dead writer": (f".tmp-w-x-000000.safetensors.node_a.{dead}.abcd1234", False),
        "this host, live writer": (f".tmp-w-x-000001.safetensors.node_a.{alive}.abcd1234", True),
        "other host, a pid dead here": (f".tmp-w-x-000002.safetensors.node_b.{dead}.abcd1234", True),
        "other host, a pid alive here": (f".tmp-w-x-000003.safetensors.node_b.{alive}.abcd1234", True),
        "unknown form": (".tmp-whatever", True),
    }
    for name, _ in names.values():
        (shards / name).write_bytes(b"partial")
    MaskStoreWriter(tmp_path, writer_id="other")  # any writer cleans up dead writers of its host
    for what, (name, kept) in names.items():
        assert (shards / name).exists() == kept, what


def _far_writer(root: Path, dead_pid: int) -> None:
    """A writer on another host: another host name, and a pid that means nothing here
    (dead here); it stops half-way through its shard until told to go on."""
    import ogkernels.masks.format as fmt
    from ogkernels.masks import atomic

    atomic.socket.gethostname = lambda: "far-away"
    atomic.os.getpid = lambda: dead_pid
    real = fmt.atomic_write

    def slow(path, write):
        def halting(handle):
            handle.write(b"x")
            handle.flush()
            (root / "started").touch()
            while not (root / "go").exists():
                time.sleep(0.01)
            handle.seek(0)
            write(handle)

        return real(path, halting)

    fmt.atomic_write = slow
    with MaskStoreWriter(root / "store", writer_id="rank0") as writer:  # the same id as the writer here
        writer.add("far.jpg", np.ones((1, 3, 3), dtype=bool))


def test_writer_on_another_host_keeps_its_temp_file(tmp_path):
    """While a writer of another host is mid-write, a writer starts here: the other's
    temporary file must survive (a pid-only check would see a dead pid and delete it)."""
    proc = _fork(_far_writer, tmp_path, _dead_pid())
    try:
        _wait_for(tmp_path / "started", proc)
        temps = list((tmp_path / "store" / SHARD_DIR).glob(".tmp-*"))
        assert len(temps) == 1 and ".far-away." in temps[0].name
        with MaskStoreWriter(tmp_path / "store", writer_id="rank0") as writer:
            writer.add("here.jpg", np.zeros((1, 3, 3), dtype=bool))
        assert temps[0].exists(), "a writer deleted the in-flight temporary file of another host"
    finally:
        (tmp_path / "go").touch()
        proc.join(60)
    assert proc.exitcode == 0
    store = MaskStore(tmp_path / "store", verify=True)
    assert sorted(store.keys()) == ["far.jpg", "here.jpg"] and store["far.jpg"].unpack().all()


def _part_writer(root: Path, part: int) -> None:
    with MaskStoreWriter(root, writer_id=f"rank{part}", shard_size=1) as writer:
        for i in range(40):
            writer.add(f"p{part}/{i}.jpg", np.full((2, 5, 7), (i + part) % 2, dtype=bool))


def test_concurrent_writer_processes_leave_a_readable_store(tmp_path):
    """Two processes write disjoint keys into one store, one shard per image, while this
    process keeps refreshing a reader: every shard it sees is complete."""
    MaskStoreWriter(tmp_path)  # the manifest, before the race
    procs = [_fork(_part_writer, tmp_path, part) for part in (0, 1)]
    store = MaskStore(tmp_path, verify=True)
    seen = 0
    while any(p.is_alive() for p in procs):
        store.refresh()
        assert len(store) >= seen
        seen = len(store)
        store.load_batch(store.keys())  # every indexed record reads back, checksums and all
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    store.refresh()
    assert len(store) == 80 and not store.duplicate_keys and len(store.shards) == 80
    for key in store.keys():
        part, i = int(key[1]), int(key.split("/")[1][:-4])
        assert bool(store[key].unpack().all()) == bool((i + part) % 2)


# --------------------------------------------------------------------------- bad stores


def _store_with_one_image(root: Path) -> Path:
    with MaskStoreWriter(root) as writer:
        writer.add("a.jpg", np.eye(8, dtype=bool)[None])
    return MaskStore(root).shards[0]


def test_newer_store_version_is_refused(tmp_path):
    _store_with_one_image(tmp_path)
    manifest = tmp_path / "store.json"
    data = json.loads(manifest.read_text())
    data["format_version"] = FORMAT_VERSION + 1
    manifest.write_text(json.dumps(data))
    for attempt in (lambda: MaskStore(tmp_path), lambda: MaskStoreWriter(tmp_path)):
        with pytest.raises(MaskStoreVersionError, match=f"version {FORMAT_VERSION + 1}") as info:
            attempt()
        assert str(manifest) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_newer_shard_version_is_refused(tmp_path):
    shard = _store_with_one_image(tmp_path)
    raw = shard.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = raw[8 : 8 + length].replace(f'"format_version":"{FORMAT_VERSION}"'.encode(), b'"format_version":"7"')
    shard.write_bytes(raw[:8] + header + raw[8 + length :])
    with pytest.raises(MaskStoreVersionError, match="version 7") as info:
        MaskStore(tmp_path)
    assert str(shard) in str(info.value)


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(MaskStoreError, match="store.json: not a mask store"):
        MaskStore(tmp_path / "nowhere")


@pytest.mark.parametrize("damage", ["truncate", "header", "short"])
def test_corrupt_shard_is_named(tmp_path, damage):
    shard = _store_with_one_image(tmp_path)
    raw = shard.read_bytes()
    if damage == "truncate":
        shard.write_bytes(raw[:-3])
    elif damage == "header":
        shard.write_bytes(raw[:8] + b"#" + raw[9:])
    else:
        shard.write_bytes(raw[:5])
    with pytest.raises(MaskStoreError, match="corrupt|truncated") as info:
        MaskStore(tmp_path)
    assert str(shard) in str(info.value)


def test_checksum_catches_flipped_bits(tmp_path):
    shard = _store_with_one_image(tmp_path)
    header = read_shard_header(shard)
    raw = bytearray(shard.read_bytes())
    raw[header.tensors["data"].begin] ^= 0xFF
    shard.write_bytes(bytes(raw))
    assert not torch.equal(MaskStore(tmp_path)["a.jpg"].unpack()[0], torch.eye(8, dtype=torch.bool))
    with pytest.raises(MaskStoreError, match="checksum") as info:
        MaskStore(tmp_path, verify=True)["a.jpg"]
    assert str(shard) in str(info.value) and "'a.jpg'" in str(info.value)


def test_duplicate_keys_are_a_documented_outcome(tmp_path):
    """Same record twice: harmless; different records: the first is used, with a warning;
    duplicates='error' refuses; `verify` fails on the differing ones only."""
    from ogkernels.masks.__main__ import main

    for writer_id in ("rank0", "rank1"):
        with MaskStoreWriter(tmp_path, writer_id=writer_id) as writer:
            writer.add("same.jpg", np.ones((1, 2, 2), dtype=bool))
    store = MaskStore(tmp_path)
    assert store.keys() == ["same.jpg"] and store.conflicting_keys == []
    assert [p.name[:6] for p in store.duplicate_keys["same.jpg"]] == ["rank0-", "rank1-"]
    assert main(["verify", str(tmp_path)]) == 0
    with MaskStoreWriter(tmp_path, writer_id="rank2") as writer:
        writer.add("same.jpg", np.zeros((2, 2, 2), dtype=bool))
        writer.add("other.jpg", np.zeros((2, 2, 2), dtype=bool))
    with pytest.warns(UserWarning, match="different records.*'same.jpg'"):
        first = MaskStore(tmp_path)
    assert first.keys() == ["same.jpg", "other.jpg"] and len(first) == 2
    assert first.info("same.jpg").shard.name.startswith("rank0-") and first["same.jpg"].shape == (1, 2, 2)
    assert first.conflicting_keys == ["same.jpg"] and len(first.duplicate_keys["same.jpg"]) == 3
    assert first["other.jpg"].shape == (2, 2, 2)
    with pytest.raises(MaskStoreError, match="'same.jpg'.*also stored in") as info:
        MaskStore(tmp_path, duplicates="error")
    assert str(info.value).count("rank0-") == 1 and str(info.value).count("rank1-") == 1
    assert main(["verify", str(tmp_path)]) == 1


def test_shards_are_plain_safetensors(tmp_path):
    from safetensors.numpy import load_file

    shard = _store_with_one_image(tmp_path)
    tensors = load_file(str(shard))
    np.testing.assert_array_equal(tensors["data"], np.packbits(np.eye(8, dtype=bool).reshape(-1)))
    assert tensors["bbox"].shape == (1, 4) and tensors["mask_nbytes"].tolist() == [8]
    assert b"\x80\x04" not in shard.read_bytes()[:2], "no pickle protocol header"


def test_store_copies_for_dataloader_workers(tmp_path):
    import copy

    _store_with_one_image(tmp_path)
    store = MaskStore(tmp_path)
    store["a.jpg"]
    clone = copy.deepcopy(store)  # the __getstate__/__setstate__ path spawned workers use
    assert clone.keys() == ["a.jpg"] and torch.equal(clone["a.jpg"].bits, store["a.jpg"].bits)


def test_command_line_info_and_verify(tmp_path, capsys):
    from ogkernels.masks.__main__ import main

    shard = _store_with_one_image(tmp_path)
    assert main(["info", str(tmp_path)]) == 0
    assert "1 images, 1 masks, 1 shards" in capsys.readouterr().out
    assert main(["verify", str(tmp_path)]) == 0
    header = read_shard_header(shard)
    raw = bytearray(shard.read_bytes())
    raw[header.tensors["data"].begin + 3] ^= 0x01
    shard.write_bytes(bytes(raw))
    assert main(["verify", str(tmp_path)]) == 1
    assert f"FAILED {shard}: image 'a.jpg': field 'crc32': checksum mismatch" in capsys.readouterr().err
    assert main(["info", str(tmp_path / "nope")]) == 2


def test_verify_compares_sizes_with_images(tmp_path, capsys):
    from PIL import Image

    from ogkernels.masks.__main__ import main

    _store_with_one_image(tmp_path / "store")  # "a.jpg": masks of 8x8
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.jpg")
    assert main(["verify", str(tmp_path / "store"), "--image-root", str(tmp_path / "images")]) == 0
    Image.new("RGB", (9, 8)).save(tmp_path / "images" / "a.jpg")
    assert main(["verify", str(tmp_path / "store"), "--image-root", str(tmp_path / "images")]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {tmp_path / 'images' / 'a.jpg'}: image 'a.jpg': masks of (height, width) (8, 8)" in err
    assert "the image is (8, 9)" in err
