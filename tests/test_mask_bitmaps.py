"""Phi bitmaps in the mask store, and the dataset-wide token-count table.

Real masks: the automatic masklets of SA-V video ``sav_000001`` (Segment Anything Video,
Meta, CC BY 4.0; ``tests/data``), and random masks from hypothesis. The oracle is
``downsample_masks`` / ``og_token_counts`` of the masks the store holds.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import MaskBitmaps, downsample_masks
from ogkernels.budget import og_token_counts
from ogkernels.masks import MaskStore, MaskStoreError, MaskStoreWriter, run_mask_job
from ogkernels.masks.bitmap_store import BitmapParams, bitmap_directory
from ogkernels.masks.counts import token_count_table
from ogkernels.masks.downsample_job import downsample_store

from .strategies import mask_stacks

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

PARAMS = [
    BitmapParams.of(576),
    BitmapParams.of(576, alpha=0.1),
    BitmapParams.of((24, 24), mode="patch", frame="pad"),
    BitmapParams.of((12, 20), alpha=0.3, mode="patch", frame="crop"),
]


def _grid(params: BitmapParams):
    return params.grid if params.mode == "patch" else params.num_tokens


def _phi(masks, params: BitmapParams) -> torch.Tensor:
    return downsample_masks(masks, _grid(params), alpha=params.alpha, mode=params.mode, frame=params.frame)


def _load(store: MaskStore, keys, params: BitmapParams, **kwargs) -> list[MaskBitmaps]:
    return store.load_bitmaps(keys, _grid(params), alpha=params.alpha, mode=params.mode, frame=params.frame, **kwargs)


@pytest.fixture(scope="module")
def sav_store(sav_frames, tmp_path_factory) -> tuple[Path, list[np.ndarray]]:
    """Three SA-V frames (9 masks of 848x480 each; frame 2 RLE), an empty mask and a
    zero-mask image, with every parameter set of ``PARAMS`` downsampled."""
    frames = sav_frames[0][:3]
    root = tmp_path_factory.mktemp("sav_store")
    with MaskStoreWriter(root, shard_size=2) as writer:
        for i, masks in enumerate(frames):
            writer.add(f"sav/{i:05d}.jpg", masks, encoding="rle" if i == 2 else "packbits")
        writer.add("blank.jpg", np.zeros((2, 30, 41), dtype=bool))
        writer.add("none.jpg", np.zeros((0, 7, 9), dtype=bool))
    for params in PARAMS:
        report = downsample_store(root, params, batch_size=3)
        assert report.written == len(frames) + 2 and report.up_to_date == 0
    return root, frames


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: p.name)
def test_sav_bitmaps_equal_downsample_of_the_stored_masks(sav_store, params):
    root, frames = sav_store
    store = MaskStore(root)
    keys = store.keys()[::-1] + store.keys()[:2]  # any order, repeats
    loaded = _load(store, keys, params)
    for key, bitmaps in zip(keys, loaded):
        masks = store[key]
        assert bitmaps.parameters() == (params.grid, params.alpha, params.mode, params.frame)
        assert torch.equal(bitmaps.bits, _phi(masks, params)), key
        raw = masks.unpack().flatten(1).any(dim=1) if masks.num_masks else torch.zeros(0, dtype=torch.bool)
        assert torch.equal(bitmaps.nonempty, raw), key
    for i, frame in enumerate(frames):  # and the original dense masks, not just the store's
        assert torch.equal(_load(store, [f"sav/{i:05d}.jpg"], params)[0].bits, _phi(torch.from_numpy(frame), params))
    assert not _load(store, ["blank.jpg"], params)[0].nonempty.any() and _load(store, ["none.jpg"], params)[0].num_masks == 0
    assert len({b.bits.untyped_storage().data_ptr() for b in loaded if b.num_masks}) == 1, "one buffer for the batch"


@settings(max_examples=20)
@given(
    images=st.lists(mask_stacks(max_masks=4, max_side=40), min_size=1, max_size=4),
    params=st.sampled_from([
        BitmapParams.of(1), BitmapParams.of(7), BitmapParams.of(49, alpha=1 / 3), BitmapParams.of(577),
        BitmapParams.of((3, 5), mode="patch"), BitmapParams.of((7, 7), alpha=0.1, mode="patch", frame="pad"),
        BitmapParams.of((4, 6), alpha=2.0, mode="patch", frame="crop"),
    ]),  # fmt: skip
    encoding=st.sampled_from(["packbits", "rle"]),
)
def test_random_bitmaps_equal_downsample(images, params, encoding):
    with tempfile.TemporaryDirectory() as root:
        with MaskStoreWriter(root, encoding=encoding) as writer:
            for i, masks in enumerate(images):
                writer.add(f"img/{i}.png", masks)
        downsample_store(root, params, batch_size=2, shard_size=2)
        store = MaskStore(root)
        for key, masks, bitmaps in zip(store.keys(), images, _load(store, store.keys(), params)):
            assert torch.equal(bitmaps.bits, _phi(masks, params)), key
            assert torch.equal(bitmaps.nonempty, masks.flatten(1).any(dim=1)), key
        store.close()


def _two_image_store(root: Path) -> None:
    with MaskStoreWriter(root, writer_id="first") as writer:
        writer.add("a.jpg", np.eye(16, dtype=bool)[None])
        writer.add("b.jpg", np.ones((2, 10, 12), dtype=bool))


def test_downsample_is_resumable_and_follows_the_masks(tmp_path):
    params = PARAMS[0]
    _two_image_store(tmp_path)
    assert downsample_store(tmp_path, params).written == 2
    assert downsample_store(tmp_path, params).written == 0
    with MaskStoreWriter(tmp_path, writer_id="second") as writer:
        writer.add("c.jpg", np.ones((1, 3, 3), dtype=bool))
    store = MaskStore(tmp_path)
    with pytest.raises(MaskStoreError, match=r"'c.jpg'.*downsample .* --grid 576 --alpha 0.5 --mode flat --frame none"):
        _load(store, ["a.jpg", "c.jpg"], params)
    assert downsample_store(tmp_path, params).written == 1
    assert torch.equal(_load(store, ["c.jpg"], params)[0].bits, _phi(store["c.jpg"], params)), "refreshed on a miss"
    # new masks for "a.jpg" (its shard replaced): its bitmaps are stale, never returned
    for shard in store.shards:
        if shard.name.startswith("first-"):
            shard.unlink()
    with MaskStoreWriter(tmp_path, writer_id="third") as writer:
        writer.add("a.jpg", np.zeros((3, 16, 16), dtype=bool))
        writer.add("b.jpg", np.ones((2, 10, 12), dtype=bool))  # the same record as before
    store = MaskStore(tmp_path)
    with pytest.raises(MaskStoreError, match="'a.jpg'.*no bitmaps of its current masks"):
        _load(store, ["a.jpg"], params)
    assert torch.equal(_load(store, ["b.jpg"], params)[0].bits, _phi(store["b.jpg"], params))
    report = downsample_store(tmp_path, params)
    assert (report.written, report.up_to_date) == (1, 2)
    assert _load(store, ["a.jpg"], params)[0].bits.shape == (3, 576)


def test_parameter_sets_coexist_and_are_named(tmp_path):
    _two_image_store(tmp_path)
    for params in PARAMS[:3]:
        downsample_store(tmp_path, params)
    store = MaskStore(tmp_path)
    for params in PARAMS[:3]:
        assert torch.equal(_load(store, ["b.jpg"], params)[0].bits, _phi(store["b.jpg"], params))
    assert sorted(p.name for p in (tmp_path / "bitmaps").iterdir()) == sorted(p.name for p in PARAMS[:3])
    with pytest.raises(MaskStoreError, match="patch-12x20-alpha0.3-crop"):
        _load(store, ["a.jpg"], PARAMS[3])
    with pytest.raises(ValueError, match="frame"):
        store.load_bitmaps(["a.jpg"], 576, frame="pad")
    with pytest.raises(KeyError, match="'zz.jpg'"):
        _load(store, ["zz.jpg"], PARAMS[0])
    with pytest.raises(TypeError, match="keys"):
        store.load_bitmaps("a.jpg", 576)


def test_bitmap_params_parse_and_name():
    assert BitmapParams.parse("576") == BitmapParams.of(576)
    assert BitmapParams.parse("24x24,0.5,patch,pad") == BitmapParams.of((24, 24), mode="patch", frame="pad")
    for params in PARAMS:
        assert BitmapParams.parse(params.spec) == params
    assert PARAMS[2].name == "patch-24x24-alpha0.5-pad"
    for bad in ("", "576,x", "24x24,0.5,patch,pad,1", "576,0.5,flat,pad", "-3", "576,0"):
        with pytest.raises(ValueError):
            BitmapParams.parse(bad)


def test_store_with_bitmaps_travels_to_workers(sav_store):
    root, _ = sav_store
    store = MaskStore(root)
    first = _load(store, ["sav/00000.jpg"], PARAMS[0])[0]
    clone = copy.deepcopy(store)  # what spawned DataLoader workers get
    assert torch.equal(_load(clone, ["sav/00000.jpg"], PARAMS[0])[0].bits, first.bits)
    loader = torch.utils.data.DataLoader(
        store.keys(), batch_size=3, num_workers=2, collate_fn=lambda keys: _load(store, keys, PARAMS[0]),
        multiprocessing_context="fork",
    )  # fmt: skip
    loaded = [b for batch in loader for b in batch]
    assert [b.num_masks for b in loaded] == [store.info(k).num_masks for k in store.keys()]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bitmaps_to_cuda_in_one_pinned_copy(sav_store):
    root, _ = sav_store
    store = MaskStore(root)
    loaded = _load(store, store.keys(), PARAMS[0], device="cuda")
    assert all(b.device.type == "cuda" for b in loaded)
    assert torch.equal(loaded[0].bits.cpu(), _load(store, store.keys()[:1], PARAMS[0])[0].bits)


# --------------------------------------------------------------------------- token counts


def test_token_count_table_equals_og_token_counts_of_the_masks(sav_store):
    root, _ = sav_store
    store = MaskStore(root)
    keys = store.keys()
    params = PARAMS[2]
    options = {"alpha": params.alpha, "mode": params.mode, "frame": params.frame}
    table = token_count_table(store, _grid(params), chunk_size=3, cache=False, **options)
    assert table.keys == keys and not table.cached
    singles = [og_token_counts([store[k]], _grid(params), gate=False, **options)[0] for k in keys]
    assert table.counts.tolist() == singles
    batch = og_token_counts(store.load_batch(keys), _grid(params), **options)  # a batch with set pixels
    assert table.counts.tolist() == batch
    capped = token_count_table(store, 576, max_image_tokens=700, cache=False)
    assert capped.counts.tolist() == og_token_counts(store.load_batch(keys), 576, max_image_tokens=700)
    assert (capped.counts <= 700).all() and (capped.counts <= token_count_table(store, 576, cache=False).counts).all()


def test_token_count_table_is_cached_and_invalidated(tmp_path):
    _two_image_store(tmp_path)
    downsample_store(tmp_path, PARAMS[0])
    store = MaskStore(tmp_path)
    first = token_count_table(store, 576)
    again = token_count_table(MaskStore(tmp_path), 576)
    assert not first.cached and again.cached and again.counts.tolist() == first.counts.tolist()
    assert list(bitmap_directory(tmp_path, PARAMS[0]).glob("counts-*.json"))
    assert not token_count_table(store, 576, max_image_tokens=100).cached, "other options, another table"
    with MaskStoreWriter(tmp_path, writer_id="more") as writer:
        writer.add("c.jpg", np.ones((1, 24, 24), dtype=bool))
    downsample_store(tmp_path, PARAMS[0])
    store = MaskStore(tmp_path)
    changed = token_count_table(store, 576)
    assert not changed.cached and changed.keys == ["a.jpg", "b.jpg", "c.jpg"]
    assert changed.as_dict()["c.jpg"] == og_token_counts([store["c.jpg"]], 576)[0]
    assert token_count_table(store, 576).cached


# --------------------------------------------------------------------------- the SAM 2 job and the CLI


def _records(height: int, width: int, count: int) -> list[dict]:
    out = []
    for i in range(count):
        mask = np.zeros((height, width), dtype=bool)
        mask[: i + 1, : 2 * i + 3] = True
        out.append({"segmentation": mask, "area": int(mask.sum()), "bbox": [0.0, 0.0, 1.0, 1.0], "predicted_iou": 0.9,
                    "point_coords": [[0.0, 0.0]], "stability_score": 0.95, "crop_box": [0.0, 0.0, float(width), float(height)]})  # fmt: skip
    return out


def _images(root: Path, count: int) -> list[str]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (20 + i, 16)).save(root / f"{i}.png")
    return [f"{i}.png" for i in range(count)]


def test_job_writes_bitmaps_as_it_goes_and_completes_them(tmp_path):
    keys = _images(tmp_path / "images", 5)
    params = [PARAMS[0], PARAMS[2]]
    generator = lambda image: _records(*image.shape[:2], 3)  # noqa: E731
    report = run_mask_job(keys, tmp_path / "images", tmp_path / "store", generator, shard_size=2, bitmaps=params)
    assert report.ok and report.processed == 5
    store = MaskStore(tmp_path / "store")
    for p in params:
        for key, bitmaps in zip(keys, _load(store, keys, p)):
            assert torch.equal(bitmaps.bits, _phi(store[key], p)), key
    # a job killed after its mask shards but before its bitmap shards: the rerun completes them
    for shard in bitmap_directory(tmp_path / "store", params[1]).glob("*.safetensors"):
        shard.unlink()
    again = run_mask_job(keys, tmp_path / "images", tmp_path / "store", generator, bitmaps=params)
    assert again.processed == 0 and again.skipped_existing == 5
    store = MaskStore(tmp_path / "store")
    assert torch.equal(_load(store, keys, params[1])[4].bits, _phi(store["4.png"], params[1]))


def test_downsample_command_line(tmp_path, capsys):
    from ogkernels.masks.__main__ import main

    _two_image_store(tmp_path)
    assert main(["downsample", str(tmp_path), "--grid", "24x24", "--mode", "patch", "--frame", "crop", "--no-progress"]) == 0
    assert "2 images written" in capsys.readouterr().out
    assert main(["downsample", str(tmp_path), "--grid", "24x24", "--mode", "patch", "--frame", "crop", "--no-progress"]) == 0
    assert "0 images written, 2 already up to date" in capsys.readouterr().out
    store = MaskStore(tmp_path)
    params = BitmapParams.of((24, 24), mode="patch", frame="crop")
    assert torch.equal(_load(store, ["a.jpg"], params)[0].bits, _phi(store["a.jpg"], params))
    assert main(["downsample", str(tmp_path), "--grid", "576", "--frame", "pad", "--no-progress"]) == 2
    assert "frame" in capsys.readouterr().err
    assert main(["downsample", str(tmp_path / "nope"), "--grid", "576", "--no-progress"]) == 2
    assert "not a mask store" in capsys.readouterr().err
