"""Importing the reference layout ``partition_<p>/<image_key>/mask_<i>.npy`` into the store.

Real masks: ``sav_000001_auto.json``, the automatic masklets of SA-V video ``sav_000001``
(Segment Anything Video dataset, Meta, CC BY 4.0), shipped in ``tests/data`` (``OGKERNELS_SHARED_DATA`` overrides).
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import downsample_masks
from ogkernels.masks import (
    MaskFileError,
    MaskStore,
    import_reference_layout,
    reference_order,
    scan_reference_layout,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # pycocotools + numpy 2

NESTED_KEY = "coco/train2017/000000000009.jpg"
VG_KEY = "vg/VG_100K/1.jpg"
H, W = 848, 480


@pytest.fixture(scope="module")
def sav_masks(sav_frames) -> np.ndarray:
    """15 real masks ``bool (15, 848, 480)``: frames 0 and 1 of SA-V ``sav_000001`` (Meta,
    CC BY 4.0), all distinct."""
    dense, _ = sav_frames
    return np.ascontiguousarray(np.concatenate(dense[:2])[:15])


def _record(i: int) -> dict:
    return {
        "area": 100 + i, "bbox": [i, 2 * i, 10, 20], "predicted_iou": 0.9 + i / 1000,
        "point_coords": [[i + 0.5, 1.5]], "stability_score": 0.95 + i / 1000,
        "crop_box": [0, 0, W, H], "segmentation": f"mask_{i}.npy",
    }  # fmt: skip


def _write_image_dir(directory: Path, masks: np.ndarray) -> None:
    directory.mkdir(parents=True)
    for i, mask in enumerate(masks):  # Fortran order, as SAM's RLE decode leaves them
        np.save(directory / f"mask_{i}.npy", np.asfortranarray(mask))


def _write_image(path: Path, height: int, width: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height)).save(path)


@pytest.fixture
def layout(tmp_path, sav_masks) -> tuple[Path, Path, np.ndarray]:
    """A reference tree: 12 masks for a nested COCO key (with metadata), 3 for a VG key."""
    root, images = tmp_path / "ref", tmp_path / "images"
    _write_image_dir(root / "partition_0" / NESTED_KEY, sav_masks[:12])
    _write_image_dir(root / "partition_1" / VG_KEY, sav_masks[12:15])
    (root / "metadata_partition_0.json").write_text(json.dumps({NESTED_KEY: [_record(i) for i in range(12)]}))
    _write_image(images / NESTED_KEY, H, W)
    _write_image(images / VG_KEY, H, W)
    return root, images, sav_masks


def _reference_loader(directory: Path) -> torch.Tensor:
    """What the reference dataset does: sorted(glob("mask_*.npy")), load, stack."""
    files = sorted(glob.glob(os.path.join(directory, "mask_*.npy")))
    return torch.stack([torch.from_numpy(np.load(f)) for f in files])


def test_import_keeps_reference_order(tmp_path, layout):
    root, images, masks = layout
    report = import_reference_layout(root, tmp_path / "store", image_root=images)
    assert report.ok, report.failures
    assert (report.imported, report.masks) == (2, 15)
    store = MaskStore(tmp_path / "store", verify=True)
    assert sorted(store.keys()) == sorted([NESTED_KEY, VG_KEY])
    stored = store[NESTED_KEY].unpack()
    assert torch.equal(stored, _reference_loader(root / "partition_0" / NESTED_KEY))
    assert reference_order(12) == [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]
    assert torch.equal(stored[2], torch.from_numpy(masks[10])), "mask_10 must come before mask_2"
    assert torch.equal(stored[4], torch.from_numpy(masks[2]))
    info = store.info(NESTED_KEY)
    assert (info.order, info.num_masks, info.height, info.width) == ("lexicographic", 12, H, W)
    meta = store.metadata(NESTED_KEY)
    assert meta.area.tolist() == [100 + i for i in reference_order(12)]
    assert meta.point_coords[2].tolist() == [10.5, 1.5]
    assert store.metadata(VG_KEY) is None  # partition_1 has no metadata file
    assert torch.equal(store[VG_KEY].unpack(), torch.from_numpy(masks[12:15]))
    batch = store.load_batch([NESTED_KEY, VG_KEY])
    expected = [_reference_loader(root / "partition_0" / NESTED_KEY), _reference_loader(root / "partition_1" / VG_KEY)]
    assert torch.equal(downsample_masks(batch, 576), downsample_masks(expected, 576))


def test_numeric_order_and_rle(tmp_path, layout):
    root, _, masks = layout
    report = import_reference_layout(root, tmp_path / "store", order="numeric", encoding="rle")
    assert report.ok, report.failures
    store = MaskStore(tmp_path / "store")
    assert torch.equal(store[NESTED_KEY].unpack(), torch.from_numpy(masks[:12]))
    assert store.info(NESTED_KEY).encoding == "rle"
    assert store.metadata(NESTED_KEY).area.tolist() == [100 + i for i in range(12)]


def test_import_is_resumable(tmp_path, layout):
    root, _, _ = layout
    first = import_reference_layout(root, tmp_path / "store")
    second = import_reference_layout(root, tmp_path / "store")
    assert (first.imported, second.imported, second.skipped_existing) == (2, 0, 2)
    assert len(MaskStore(tmp_path / "store")) == 2


def test_bad_mask_files_are_reported_by_name(tmp_path, layout):
    root, images, masks = layout
    part = root / "partition_1"
    truncated = part / "bad/truncated.jpg" / "mask_1.npy"
    _write_image_dir(truncated.parent, masks[:2])
    truncated.write_bytes(truncated.read_bytes()[:200])
    pickled = part / "bad/pickled.jpg" / "mask_0.npy"
    pickled.parent.mkdir(parents=True)
    np.save(pickled, np.array([[None]], dtype=object), allow_pickle=True)
    mixed = part / "bad/mixed.jpg"
    _write_image_dir(mixed, masks[:2])
    np.save(mixed / "mask_1.npy", masks[0, :100])
    resized = part / "bad/resized.jpg"
    _write_image_dir(resized, masks[:1, ::2, ::2])
    for key in ("bad/truncated.jpg", "bad/pickled.jpg", "bad/mixed.jpg", "bad/resized.jpg"):
        _write_image(images / key, H, W)
    empty_leaf = part / "bad/no_image.jpg"
    empty_leaf.mkdir(parents=True)

    report = import_reference_layout(root, tmp_path / "store", image_root=images)
    assert report.imported == 2, "good images are still imported"
    failures = {f.key: f for f in report.failures}
    assert set(failures) == {"bad/truncated.jpg", "bad/pickled.jpg", "bad/mixed.jpg", "bad/resized.jpg", "bad/no_image.jpg"}
    assert failures["bad/truncated.jpg"].path == str(truncated)
    assert failures["bad/pickled.jpg"].path == str(pickled) and "pickle" in failures["bad/pickled.jpg"].reason.lower()
    assert failures["bad/mixed.jpg"].path == str(mixed / "mask_1.npy")
    assert "expected shape (848, 480)" in failures["bad/mixed.jpg"].reason
    assert failures["bad/resized.jpg"].path == str(resized / "mask_0.npy")
    assert "(424, 240) disagrees with the image" in failures["bad/resized.jpg"].reason
    assert str(images / "bad/resized.jpg") in failures["bad/resized.jpg"].reason
    assert failures["bad/no_image.jpg"].path == str(images / "bad/no_image.jpg")
    assert "not found" in failures["bad/no_image.jpg"].reason
    assert str(truncated) in str(failures["bad/truncated.jpg"]) and "'bad/truncated.jpg'" in str(failures["bad/truncated.jpg"])
    store = MaskStore(tmp_path / "store")
    assert sorted(store.keys()) == sorted([NESTED_KEY, VG_KEY])

    with pytest.raises(MaskFileError, match=r"mixed\.jpg/mask_1\.npy: image 'bad/mixed\.jpg'") as info:
        import_reference_layout(root, tmp_path / "strict", on_error="raise", image_root=images)
    assert isinstance(info.value, ValueError)


def test_zero_mask_images(tmp_path, layout):
    root, images, _ = layout
    (root / "partition_1" / "empty/a.jpg").mkdir(parents=True)
    _write_image(images / "empty/a.jpg", 30, 41)
    with_size = import_reference_layout(root, tmp_path / "with", image_root=images)
    assert with_size.ok and with_size.zero_mask_images == 1
    packed = MaskStore(tmp_path / "with")["empty/a.jpg"]
    assert packed.shape == (0, 30, 41)
    assert downsample_masks(packed, 576).shape == (0, 576)

    without = import_reference_layout(root, tmp_path / "without")
    assert [f.key for f in without.failures] == ["empty/a.jpg"]
    assert "no image_root" in without.failures[0].reason
    assert without.failures[0].path == str(root / "partition_1" / "empty/a.jpg")


def test_inconsistent_metadata_is_reported(tmp_path, layout):
    root, _, _ = layout
    meta_file = root / "metadata_partition_0.json"
    meta_file.write_text(json.dumps({NESTED_KEY: [_record(i) for i in range(11)]}))
    report = import_reference_layout(root, tmp_path / "store")
    assert [f.key for f in report.failures] == [NESTED_KEY]
    assert report.failures[0].path == str(meta_file)
    assert "records for 11 mask files, the folder has 12" in report.failures[0].reason
    ignored = import_reference_layout(root, tmp_path / "ignored", use_metadata=False)
    assert ignored.ok and MaskStore(tmp_path / "ignored").metadata(NESTED_KEY) is None


def test_numeric_order_needs_numbered_files(tmp_path, layout):
    root, _, masks = layout
    odd = root / "partition_1" / "odd.jpg"
    odd.mkdir()
    np.save(odd / "mask_a.npy", masks[0])
    report = import_reference_layout(root, tmp_path / "store", order="numeric")
    assert [f.path for f in report.failures] == [str(odd / "mask_a.npy")]
    assert "mask_<integer>.npy" in report.failures[0].reason


def test_duplicate_key_across_partitions(tmp_path, layout):
    root, _, masks = layout
    _write_image_dir(root / "partition_2" / VG_KEY, masks[:1])
    images, failures = scan_reference_layout(root)
    assert [im.partition for im in images if im.key == VG_KEY] == ["partition_1"]
    assert [(f.key, f.path) for f in failures] == [(VG_KEY, str(root / "partition_2" / VG_KEY))]


@settings(max_examples=10)
@given(count=st.integers(1, 25), order=st.sampled_from(["lexicographic", "numeric"]))
def test_order_property(count, order):
    """Mask i carries its index in its pixels; the store must hold sorted(glob) order."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ref"
        directory = root / "partition_0" / "a/b.jpg"
        masks = np.zeros((count, 3, 11), dtype=bool)
        for i in range(count):  # the bits of i in row 0: every mask is distinct
            masks[i, 0, :5] = [bool(i >> b & 1) for b in range(5)]
        _write_image_dir(directory, masks)
        report = import_reference_layout(root, Path(tmp) / "store", order=order)
        assert report.ok
        stored = MaskStore(Path(tmp) / "store")["a/b.jpg"].unpack()
        expected = _reference_loader(directory) if order == "lexicographic" else torch.from_numpy(masks)
        assert torch.equal(stored, expected)
        if order == "lexicographic" and count > 10:
            assert torch.equal(stored[2], torch.from_numpy(masks[10]))


def test_symlinks_inside_the_root_are_followed_outside_reported(tmp_path, sav_masks):
    """A symlinked partition or image folder inside the source root is imported; one leading
    outside (a folder, or one mask file) is a failure naming it, and that image is not
    imported with a mask missing."""
    root = tmp_path / "ref"
    _write_image_dir(root / "storage" / "a.jpg", sav_masks[:2])
    (root / "partition_0").mkdir(parents=True)
    os.symlink(root / "storage" / "a.jpg", root / "partition_0" / "a.jpg")  # image folder, inside
    os.symlink(root / "storage", root / "partition_1")  # a whole partition, inside
    _write_image_dir(tmp_path / "outside" / "b.jpg", sav_masks[:1])
    (root / "partition_0" / "coco").mkdir()
    os.symlink(tmp_path / "outside" / "b.jpg", root / "partition_0" / "coco" / "b.jpg")  # folder, outside
    _write_image_dir(root / "partition_0" / "c.jpg", sav_masks[:2])
    os.symlink(tmp_path / "outside" / "b.jpg" / "mask_0.npy", root / "partition_0" / "c.jpg" / "mask_2.npy")  # file, outside
    report = import_reference_layout(root, tmp_path / "store")
    failures = {f.key: f for f in report.failures}
    assert set(failures) == {"coco/b.jpg", "c.jpg", "a.jpg"}, failures  # a.jpg again via partition_1: a duplicate
    assert "outside the root" in failures["coco/b.jpg"].reason and failures["coco/b.jpg"].path.endswith("coco/b.jpg")
    assert "outside the root" in failures["c.jpg"].reason and failures["c.jpg"].path.endswith("mask_2.npy")
    assert "duplicate" in failures["a.jpg"].reason
    store = MaskStore(tmp_path / "store")
    assert store.keys() == ["a.jpg"] and not report.ok
    assert torch.equal(store["a.jpg"].unpack(), torch.from_numpy(sav_masks[:2]))
