"""The SAM2 mask job: inputs, sharding, bad input, resumability, and a kill-and-resume run.

The fast tests drive :func:`ogkernels.masks.run_mask_job` with a fake generator; the
``slow`` ones run ``ogkernels.jobs.sam2_masks`` (the ``ogkernels-sam2-masks`` console
script), from a directory outside the checkout, with a small random-weight SAM 2.1 Hiera-T
(``++model.image_size=256``, 4×4 points, thresholds at 0) on the CPU: its masks are
meaningless, but the pipeline (image decode, SAM2, packing, store, resume) is the real one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ogkernels.masks import (
    MaskFileError,
    MaskStore,
    MaskStoreError,
    MaskStoreVersionError,
    MaskStoreWriter,
    list_image_folder,
    list_llava_json,
    masks_from_sam2,
    reference_order,
    resolve_shard,
    run_mask_job,
    select_shard,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")  # inside SAM2

REPO = Path(__file__).resolve().parents[1]
TINY_SAM2 = [
    "--random-weights", "--config", "configs/sam2.1/sam2.1_hiera_t.yaml", "--override", "++model.image_size=256",
    "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    "--box-nms-thresh", "1.0", "--device", "cpu", "--threads", "1", "--no-progress",
]  # fmt: skip


def _save_image(path: Path, height: int, width: int, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[:] = rng.integers(0, 256, 3)
    top, left = rng.integers(0, height // 2), rng.integers(0, width // 2)
    image[top : top + height // 3, left : left + width // 3] = rng.integers(0, 256, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


def _records(height: int, width: int, count: int, seed: int = 0) -> list[dict]:
    """``count`` SAM2-style records; mask ``i`` is the band of rows ``i % height``."""
    records = []
    for i in range(count):
        mask = np.zeros((height, width), dtype=bool)
        mask[i % height] = True
        records.append({
            "segmentation": mask, "area": int(mask.sum()), "bbox": [0.0, float(i % height), float(width), 1.0],
            "predicted_iou": 1.0 - i / 100, "point_coords": [[float(seed), float(i)]],
            "stability_score": 0.99, "crop_box": [0.0, 0.0, float(width), float(height)],
        })  # fmt: skip
    return records


class FakeGenerator:
    """12 row-band masks per image; special behaviour keyed on the image's first pixel."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, image: np.ndarray) -> list[dict]:
        self.calls += 1
        height, width = image.shape[:2]
        marker = int(image[0, 0, 0])
        if marker == 1:  # zero masks
            return []
        if marker == 2:  # masks of the wrong size
            return _records(height // 2, width, 3)
        if marker == 3:
            raise RuntimeError("CUDA out of memory (simulated)")
        return _records(height, width, 12, seed=marker)


def _marked_image(path: Path, marker: int, height: int = 20, width: int = 30) -> None:
    from PIL import Image

    image = np.full((height, width, 3), 200, dtype=np.uint8)
    image[0, 0, 0] = marker
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


# --------------------------------------------------------------------------- inputs, sharding


def test_list_image_folder_nested(tmp_path):
    for name in ("b.jpg", "a/c.PNG", "a/d/e.jpeg", "notes.txt", ".hidden.jpg", ".cache/x.jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    assert list_image_folder(tmp_path) == ["a/c.PNG", "a/d/e.jpeg", "b.jpg"]
    with pytest.raises(MaskFileError, match="nowhere"):
        list_image_folder(tmp_path / "nowhere")


def test_list_image_folder_follows_symlinks_inside_the_root(tmp_path):
    for name in ("real/a.jpg", "real/sub/b.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    os.symlink(tmp_path / "real", tmp_path / "linked")  # a folder inside the root: followed
    os.symlink(tmp_path / "real" / "a.jpg", tmp_path / "alias.jpg")
    os.symlink(tmp_path, tmp_path / "real" / "loop")  # a loop: reported, not followed forever
    with pytest.raises(MaskFileError, match="loop"):
        list_image_folder(tmp_path)
    (tmp_path / "real" / "loop").unlink()
    assert list_image_folder(tmp_path) == ["alias.jpg", "linked/a.jpg", "linked/sub/b.png", "real/a.jpg", "real/sub/b.png"]


def test_list_llava_json(tmp_path):
    data = [
        {"id": 1, "image": "coco/train2017/1.jpg", "conversations": []},
        {"id": 2, "conversations": []},  # text-only
        {"id": 3, "image": "coco/train2017/1.jpg"},
        {"id": 4, "image": ["vg/2.jpg", "gqa/3.jpg"]},
    ]
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(data))
    assert list_llava_json(path) == ["coco/train2017/1.jpg", "gqa/3.jpg", "vg/2.jpg"]
    path.write_text("[{")
    with pytest.raises(MaskFileError, match="mix.json: cannot read"):
        list_llava_json(path)


def test_shards_partition_the_keys():
    keys = [f"{i}.jpg" for i in range(23)]
    parts = [select_shard(keys, i, 4) for i in range(4)]
    assert sorted(sum(parts, [])) == sorted(keys)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert resolve_shard("1/4", environ={}) == (1, 4)
    assert resolve_shard(None, environ={"RANK": "3", "WORLD_SIZE": "8"}) == (3, 8)
    assert resolve_shard(None, environ={}) == (0, 1)
    assert resolve_shard("0/2", environ={"RANK": "3", "WORLD_SIZE": "8"}) == (0, 2)
    for bad in ("4/4", "x/2", "1", "1/2/3", "-1/2"):
        with pytest.raises(ValueError, match="shard"):
            resolve_shard(bad, environ={})


def test_parser_defaults_are_the_reference_settings():
    from ogkernels.jobs.sam2_masks import build_parser

    args = build_parser().parse_args(["--images", "x", "--store", "y", "--checkpoint", "c.pt"])
    assert args.config == "configs/sam2.1/sam2.1_hiera_l.yaml"
    assert (args.points_per_batch, args.pred_iou_thresh) == (6, 0.9)
    assert (args.points_per_side, args.stability_score_thresh, args.box_nms_thresh) == (32, 0.95, 0.7)
    assert args.order == "lexicographic"
    with pytest.raises(SystemExit):  # neither --checkpoint nor --random-weights
        build_parser().parse_args(["--images", "x", "--store", "y"])


# --------------------------------------------------------------------------- the loop, fake model


def test_job_stores_masks_and_reports_bad_images(tmp_path):
    images = tmp_path / "images"
    for key, marker in (("ok/a.png", 10), ("ok/b.png", 11), ("zero.png", 1), ("wrong_size.png", 2), ("oom.png", 3)):
        _marked_image(images / key, marker)
    _marked_image(images / "truncated.png", 12)
    raw = (images / "truncated.png").read_bytes()
    (images / "truncated.png").write_bytes(raw[: len(raw) // 2])
    (images / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    keys = list_image_folder(images) + ["missing.jpg"]
    store = tmp_path / "store"

    generator = FakeGenerator()
    report = run_mask_job(keys, images, store, generator, shard_size=2)
    assert not report.ok and report.processed == 3 and report.zero_mask_images == 1
    failures = {f.key: f for f in report.failures}
    assert set(failures) == {"wrong_size.png", "oom.png", "truncated.png", "corrupt.jpg", "missing.jpg"}
    for key, failure in failures.items():
        assert failure.path == str(images / key)
        assert str(images / key) in str(failure) and repr(key) in str(failure)
    assert "not found" in failures["missing.jpg"].reason
    assert "records[0].segmentation: expected shape (20, 30)" in failures["wrong_size.png"].reason
    assert "got shape (10, 30)" in failures["wrong_size.png"].reason
    assert "CUDA out of memory" in failures["oom.png"].reason
    assert "cannot decode" in failures["truncated.png"].reason
    assert f"FAILED {images / 'missing.jpg'}" in report.summary()

    result = MaskStore(store)
    assert sorted(result.keys()) == ["ok/a.png", "ok/b.png", "zero.png"]
    assert result["zero.png"].shape == (0, 20, 30)
    expected, meta = masks_from_sam2(_records(20, 30, 12, seed=10), 20, 30, order="numeric")
    order = reference_order(12)
    assert torch.equal(result["ok/a.png"].unpack(), expected.unpack()[order]), "lexicographic order by default"
    assert result.metadata("ok/a.png") == meta.select(order)
    assert result.info("ok/a.png").order == "lexicographic"

    again = run_mask_job(keys, images, store, generator)  # resume: only the failed ones again
    assert again.skipped_existing == 3 and again.processed == 0 and len(again.failures) == 5


def test_numeric_order_option(tmp_path):
    _marked_image(tmp_path / "a.png", 10)
    run_mask_job(["a.png"], tmp_path, tmp_path / "store", FakeGenerator(), order="numeric")
    expected, _ = masks_from_sam2(_records(20, 30, 12, seed=10), 20, 30, order="numeric")
    assert torch.equal(MaskStore(tmp_path / "store")["a.png"].bits, expected.bits)


def test_nothing_to_do_does_not_build_the_model(tmp_path):
    _marked_image(tmp_path / "a.png", 10)
    run_mask_job(["a.png"], tmp_path, tmp_path / "store", FakeGenerator())

    def factory():
        raise AssertionError("the model must not be built when every image is done")

    report = run_mask_job(["a.png"], tmp_path, tmp_path / "store", factory, lazy_generator=True)
    assert report.ok and report.skipped_existing == 1


def test_cli_exit_codes_and_messages(tmp_path, monkeypatch, capsys):
    import ogkernels.jobs.sam2_masks as job

    images = tmp_path / "images"
    _marked_image(images / "a.png", 10)
    _marked_image(images / "oom.png", 3)
    monkeypatch.setattr(job, "build_sam2_generator", lambda args: FakeGenerator())
    argv = ["--images", str(images), "--store", str(tmp_path / "store"), "--random-weights", "--no-progress"]
    failures_json = tmp_path / "failures.json"
    assert job.main(argv + ["--failures-json", str(failures_json)]) == 1
    err = capsys.readouterr().err
    assert f"FAILED {images / 'oom.png'}: image 'oom.png'" in err
    assert json.loads(failures_json.read_text())[0]["key"] == "oom.png"
    assert MaskStore(tmp_path / "store").keys() == ["a.png"]
    assert job.main(argv + ["--shard", "0/2"]) == 0  # keys sorted: shard 0/2 is ["a.png"], done
    assert "1 already done" in capsys.readouterr().out

    manifest = tmp_path / "store" / "store.json"
    manifest.write_text(json.dumps({**json.loads(manifest.read_text()), "format_version": 99}))
    assert job.main(argv) == 2
    err = capsys.readouterr().err
    assert str(manifest) in err and "version 99" in err
    with pytest.raises(MaskStoreVersionError):
        MaskStoreWriter(tmp_path / "store")
    assert job.main(argv[:4] + ["--random-weights", "--shard", "2/2"]) == 2
    assert "shard" in capsys.readouterr().err


def test_cli_writes_bitmaps_as_it_goes(tmp_path, monkeypatch):
    import ogkernels.jobs.sam2_masks as job
    from ogkernels import downsample_masks

    for i in range(3):
        _marked_image(tmp_path / "images" / f"{i}.png", 10 + i)
    monkeypatch.setattr(job, "build_sam2_generator", lambda args: FakeGenerator())
    argv = ["--images", str(tmp_path / "images"), "--store", str(tmp_path / "s"), "--random-weights", "--no-progress",
            "--bitmaps", "36", "--bitmaps", "6x6,0.25,patch,pad", "--shard-size", "2"]  # fmt: skip
    assert job.main(argv) == 0
    store = MaskStore(tmp_path / "s")
    for grid, options in ((36, {}), ((6, 6), {"alpha": 0.25, "mode": "patch", "frame": "pad"})):
        for key, bitmaps in zip(store.keys(), store.load_bitmaps(store.keys(), grid, **options)):
            assert torch.equal(bitmaps.bits, downsample_masks(store[key], grid, **options)), key
    assert job.main(argv[:-4] + ["--bitmaps", "36,x"]) == 2


def test_cli_llava_json_input(tmp_path, monkeypatch, capsys):
    import ogkernels.jobs.sam2_masks as job

    root = tmp_path / "data"
    _marked_image(root / "coco/1.png", 10)
    llava = tmp_path / "llava.json"
    llava.write_text(json.dumps([{"image": "coco/1.png"}, {"conversations": []}, {"image": "coco/2.png"}]))
    monkeypatch.setattr(job, "build_sam2_generator", lambda args: FakeGenerator())
    argv = ["--llava-json", str(llava), "--image-root", str(root), "--store", str(tmp_path / "s"), "--random-weights", "--no-progress"]
    assert job.main(argv) == 1
    assert f"FAILED {root / 'coco/2.png'}: image 'coco/2.png': image file not found" in capsys.readouterr().err
    assert MaskStore(tmp_path / "s").keys() == ["coco/1.png"]


def test_sigterm_keeps_finished_images(tmp_path, monkeypatch, capsys):
    import ogkernels.jobs.sam2_masks as job

    for i in range(4):
        _marked_image(tmp_path / "images" / f"{i}.png", 10 + i)
    inner = FakeGenerator()

    def terminate_on_third(image):
        if inner.calls == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler raises KeyboardInterrupt here
        return inner(image)

    monkeypatch.setattr(job, "build_sam2_generator", lambda args: terminate_on_third)
    argv = ["--images", str(tmp_path / "images"), "--store", str(tmp_path / "s"), "--random-weights", "--no-progress"]
    assert job.main(argv + ["--shard-size", "100"]) == 130
    assert "rerun the same command to resume" in capsys.readouterr().err
    assert MaskStore(tmp_path / "s").keys() == ["0.png", "1.png"], "finished images are flushed on SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is not job._raise_interrupt, "the previous handler is restored"


# --------------------------------------------------------------------------- the job as a product


def test_console_script_and_module_entry_points():
    """``ogkernels-sam2-masks`` names an installed module's ``main``; the checkout's
    ``python -m integration.sam2_mask_job`` forwards to the same function."""
    import ast
    import importlib

    import integration.sam2_mask_job as shim
    import ogkernels.jobs.sam2_masks as job

    tree = ast.parse((REPO / "setup.py").read_text())
    scripts = [
        node.value for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("ogkernels-sam2-masks=")
    ]  # fmt: skip
    assert scripts == ["ogkernels-sam2-masks=ogkernels.jobs.sam2_masks:main"]
    module, function = scripts[0].split("=")[1].split(":")
    assert getattr(importlib.import_module(module), function) is job.main is shim.main


_SETUP_ERRORS = """
    import contextlib, importlib.util, io, json, sys, torch
    from pathlib import Path
    from ogkernels.jobs.sam2_masks import main
    tmp = Path.cwd()
    (tmp / "images").mkdir()
    (tmp / "corrupt.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    torch.save({"weights": {}}, tmp / "nomodel.pt")
    torch.save({"model": {"not.a.sam2.key": torch.zeros(1)}}, tmp / "unfit.pt")
    (tmp / "file").write_text("x")
    (tmp / "llava.json").write_text('[{"image": "../outside.png"}]')
    base = ["--images", "images", "--store", "store", "--no-progress"]
    cases = {
        "missing checkpoint": base + ["--checkpoint", "nope.pt"],
        "checkpoint is a folder": base + ["--checkpoint", "images"],
        "corrupt checkpoint": base + ["--checkpoint", "corrupt.pt"],
        "checkpoint without a model": base + ["--checkpoint", "nomodel.pt"],
        "checkpoint that does not fit the config": base + ["--checkpoint", "unfit.pt", "--config", "configs/sam2.1/sam2.1_hiera_t.yaml"],
        "unknown config": base + ["--random-weights", "--config", "configs/nope.yaml"],
        "missing image folder": ["--images", "nowhere", "--store", "store", "--random-weights"],
        "store is a file": ["--images", "images", "--store", "file", "--random-weights"],
        "llava json without image root": ["--llava-json", "llava.json", "--store", "store", "--random-weights"],
        "llava json leading out": ["--llava-json", "llava.json", "--image-root", "images", "--store", "store", "--random-weights"],
    }
    Path("images/a.png").write_bytes(open(sys.argv[1], "rb").read())
    results = {}
    for name, argv in cases.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = main(argv)
        results[name] = [code, err.getvalue(), Path("store").exists()]
    results["integration importable"] = importlib.util.find_spec("integration") is not None
    print("RESULTS", json.dumps(results))
"""


@pytest.mark.slow
def test_bad_setup_exits_2_with_one_line_and_no_store(tmp_path):
    """Installed-like (only the ``ogkernels`` package on the path), from a directory outside
    the checkout: bad paths, configs and checkpoints give a one-line error and exit status
    2, and leave no store behind."""
    pytest.importorskip("sam2")
    image = tmp_path / "img.png"
    _marked_image(image, 10)
    work, site = tmp_path / "elsewhere", tmp_path / "site"
    work.mkdir()
    site.mkdir()
    (site / "ogkernels").symlink_to(REPO / "ogkernels")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_SETUP_ERRORS), str(image)], cwd=work, env=env,
                          capture_output=True, text=True, timeout=240)  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, proc.stdout + proc.stderr
    results = json.loads(lines[-1][len("RESULTS ") :])
    assert results.pop("integration importable") is False, "the job must not need the checkout"
    words = {
        "missing checkpoint": "nope.pt: not found", "checkpoint is a folder": "found a directory",
        "corrupt checkpoint": "corrupt.pt: not a readable SAM 2 checkpoint", "checkpoint without a model": "'model' state dict",
        "checkpoint that does not fit the config": "does not fit --config", "unknown config": "configs/nope.yaml",
        "missing image folder": "--images nowhere", "store is a file": "--store file", "llava json without image root": "--image-root",
        "llava json leading out": "'../outside.png'",
    }  # fmt: skip
    for name, (code, err, store_exists) in results.items():
        assert code == 2, (name, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("ogkernels-sam2-masks: error: "), (name, err)
        assert words[name] in err, (name, err)
        assert not store_exists, f"{name}: left a store behind"


# --------------------------------------------------------------------------- concurrent jobs


def _job_in_child(root: Path, keys: list[str], lock: str, result: Path) -> None:
    def slow(image):
        time.sleep(0.02)
        return FakeGenerator()(image)

    try:
        report = run_mask_job(keys, root / "images", root / "store", slow, lock=lock, shard_size=1)
        result.write_text(json.dumps({"processed": report.processed, "skipped": report.skipped_existing}))
    except MaskStoreError as exc:
        result.write_text(json.dumps({"error": str(exc)}))


def _fork(target, *args):
    import multiprocessing

    proc = multiprocessing.get_context("fork").Process(target=target, args=args)
    proc.start()
    return proc


def test_two_unsharded_jobs_do_not_both_process_everything(tmp_path):
    """Two jobs started together on one store, neither with --shard: one does the work,
    the other stops at once naming it; the store stays readable without duplicates."""
    keys = [f"{i}.png" for i in range(12)]
    for i, key in enumerate(keys):
        _marked_image(tmp_path / "images" / key, 10 + i)
    (tmp_path / "store").mkdir()  # the store folder exists: both take the lock before any work
    results = [tmp_path / f"result{i}.json" for i in range(2)]
    procs = [_fork(_job_in_child, tmp_path, keys, "job-0of1", result) for result in results]
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    outcomes = sorted((json.loads(r.read_text()) for r in results), key=lambda o: "error" in o)
    assert outcomes[0] == {"processed": 12, "skipped": 0}
    assert "another job is writing this part of the store" in outcomes[1]["error"]
    assert "pid" in outcomes[1]["error"] and "job-0of1.lock" in outcomes[1]["error"]
    store = MaskStore(tmp_path / "store", verify=True)
    assert sorted(store.keys()) == sorted(keys) and not store.duplicate_keys


def test_job_locks_name_the_holder_and_check_shard_counts(tmp_path, monkeypatch, capsys):
    import ogkernels.jobs.sam2_masks as job
    from ogkernels.masks.locks import StoreLock, job_lock_name

    _marked_image(tmp_path / "images" / "a.png", 10)
    store = tmp_path / "store"
    monkeypatch.setattr(job, "build_sam2_generator", lambda args: FakeGenerator())
    argv = ["--images", str(tmp_path / "images"), "--store", str(store), "--random-weights", "--no-progress"]
    with StoreLock(store, job_lock_name(0, 1)):
        assert job.main(argv) == 2
        err = capsys.readouterr().err
        assert "another job is writing this part of the store" in err and f"pid {os.getpid()}" in err
        assert len(err.strip().splitlines()) == 1
        assert job.main(argv + ["--shard", "1/2"]) == 2
        assert "another shard count" in capsys.readouterr().err
    assert not (store / "store.json").exists(), "a refused job creates no store"
    with StoreLock(store, job_lock_name(0, 2)):
        assert job.main(argv + ["--shard", "1/2"]) == 0  # same count, another shard: fine
    assert job.main(argv) == 0 and MaskStore(store).keys() == ["a.png"]


def _hold_lock(store: Path, ready: Path) -> None:
    from ogkernels.masks.locks import StoreLock

    lock = StoreLock(store, "job-0of1").acquire()
    ready.touch()
    time.sleep(60)
    lock.release()


def test_a_killed_job_releases_its_lock(tmp_path):
    from ogkernels.masks.locks import StoreLock

    proc = _fork(_hold_lock, tmp_path / "store", tmp_path / "ready")
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(MaskStoreError, match="another job"):
        StoreLock(tmp_path / "store", "job-0of1").acquire()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    StoreLock(tmp_path / "store", "job-0of1").acquire().release()


# --------------------------------------------------------------------------- real SAM2 (tiny, random)


@pytest.fixture
def torch_state():
    """The in-process SAM2 runs set torch's thread count and seed: put them back afterwards.
    (They need SAM 2 itself, which a bare GPU image may lack.)"""
    pytest.importorskip("sam2")
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


def _dataset(root: Path, count: int) -> list[str]:
    sizes = [(97, 131), (120, 160), (64, 64), (150, 101)]
    keys = []
    for i in range(count):
        key = f"{'nested/' if i % 3 == 0 else ''}img_{i:02d}.png"
        _save_image(root / key, *sizes[i % len(sizes)], seed=i)
        keys.append(key)
    return sorted(keys)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ogkernels.jobs.sam2_masks", *args]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


def _same_store(a: Path, b: Path) -> None:
    left, right = MaskStore(a, verify=True), MaskStore(b, verify=True)
    assert sorted(left.keys()) == sorted(right.keys())
    for key in left.keys():
        assert left.info(key).num_masks > 0
        assert torch.equal(left[key].bits, right[key].bits), key
        assert left.metadata(key) == right.metadata(key), key


@pytest.mark.slow
def test_sam2_job_stores_what_sam2_returns(tmp_path, torch_state):
    import ogkernels.jobs.sam2_masks as job
    from ogkernels.masks.images import load_image_rgb

    images = tmp_path / "images"
    keys = _dataset(images, 2)
    assert job.main(["--images", str(images), "--store", str(tmp_path / "store"), *TINY_SAM2]) == 0
    store = MaskStore(tmp_path / "store")
    generate = job.build_sam2_generator(job.build_parser().parse_args(["--images", "x", "--store", "y", *TINY_SAM2]))
    for key in keys:
        image = load_image_rgb(images, key)
        records = generate(image)
        assert len(records) > 10, "thresholds at 0 and NMS off: many masks"
        dense = np.stack([r["segmentation"] for r in records])
        order = reference_order(len(records))
        assert dense.shape[1:] == image.shape[:2]
        assert torch.equal(store[key].unpack(), torch.from_numpy(dense[order])), key
        assert store.metadata(key).predicted_iou.tolist() == [records[i]["predicted_iou"] for i in order]


@pytest.mark.slow
def test_sam2_job_killed_then_resumed_equals_uninterrupted(tmp_path, torch_state):
    images = tmp_path / "images"
    keys = _dataset(images, 8)
    common = ["--images", str(images), *TINY_SAM2, "--shard-size", "1"]
    env = _env()

    killed = tmp_path / "killed"
    proc = subprocess.Popen(_cli(*common, "--store", str(killed)), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    shards = killed / "shards"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if shards.is_dir() and len([p for p in shards.iterdir() if not p.name.startswith(".")]) >= 2:
            break
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no chance to flush
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the job finished before it could be killed"
    partial = MaskStore(killed, verify=True)
    assert 2 <= len(partial) < len(keys), "killed mid-run: some, not all, images done"
    done_before = len(partial)

    resumed = subprocess.run(_cli(*common, "--store", str(killed)), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"{done_before} already done" in resumed.stdout
    assert not list(shards.glob(".tmp-*")), "the resumed writer removes temporary files of the killed one"

    import ogkernels.jobs.sam2_masks as job  # the uninterrupted run, in this process

    assert job.main([*common, "--store", str(tmp_path / "full")]) == 0
    _same_store(killed, tmp_path / "full")
    assert sorted(MaskStore(killed).keys()) == keys
