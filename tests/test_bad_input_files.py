"""Bad files, paths and command lines: each must give a named error, never a silent answer or a hang.

A table of cases, each building a bad input under ``tmp_path`` and stating the error class
and the words its message must hold (the file, the key, the field or the argument). Cases
that could hang (FIFOs, special files) run together in one subprocess, each under its own
alarm, with a timeout on the whole.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from ogkernels.checkpoints import CheckpointError, load_reference_checkpoint
from ogkernels.masks import MaskFileError, MaskStore, MaskStoreError, MaskStoreWriter, import_reference_layout, list_llava_json
from ogkernels.masks.format import MASK_SHARD, read_shard_header
from ogkernels.masks.shard_index import descriptor_crc, mask_descriptor

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation:DeprecationWarning", "ignore:Detected pickle protocol:UserWarning"
)

REPO = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- helpers


def make_store(root: Path, encoding: str = "packbits") -> Path:
    """A store with two images, ``a.jpg`` (two 8x8 masks, metadata) and ``b/c.jpg`` (one 3x5 mask)."""
    from ogkernels.masks import MaskMetadata

    rng = np.random.default_rng(0)
    with MaskStoreWriter(root, encoding=encoding) as writer:
        writer.add("a.jpg", rng.random((2, 8, 8)) < 0.5, MaskMetadata.from_arrays({
            "area": [3, 4], "bbox": np.ones((2, 4)), "predicted_iou": [0.9, 0.8], "stability_score": [1.0, 1.0],
            "point_coords": np.zeros((2, 2)), "crop_box": np.ones((2, 4)),
        }))  # fmt: skip
        writer.add("b/c.jpg", rng.random((1, 3, 5)) < 0.5)
    return MaskStore(root).shards[0]


def rewrite_header(shard: Path, mutate: Callable[[dict, dict], None], fix_desc_crc: bool = False) -> None:
    """Rewrite a shard's header: ``mutate(index, header)`` in place, data bytes unchanged.

    ``fix_desc_crc`` recomputes the descriptor checksums, as a careful forger would: then
    only the structural checks stand between the reader and the forged header.
    """
    raw = shard.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    original = header["__metadata__"]["index"]
    index = json.loads(original)
    mutate(index, header)
    if header["__metadata__"]["index"] != original:  # the mutation replaced the index itself
        index = None
    if fix_desc_crc and index is not None:
        index["desc_crc32"] = [
            descriptor_crc(mask_descriptor(*(index[c][i] for c in (
                "keys", "height", "width", "num_masks", "encoding", "order", "has_metadata", "data_nbytes"))))
            for i in range(len(index["keys"]))
        ]  # fmt: skip
    if index is not None:
        header["__metadata__"]["index"] = json.dumps(index)
    blob = json.dumps(header).encode()
    blob += b" " * (-len(blob) % 8)
    shard.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + length :])


def flip_byte(shard: Path, tensor: str, offset: int = 0) -> None:
    from ogkernels.masks.bitmap_store import BITMAP_SHARD

    span = read_shard_header(shard, BITMAP_SHARD if "bitmaps" in shard.parts else MASK_SHARD).tensors[tensor]
    raw = bytearray(shard.read_bytes())
    raw[span.begin + offset] ^= 0x10
    shard.write_bytes(bytes(raw))


def set_column(column: str, entry: int, value: object) -> Callable[[dict, dict], None]:
    def mutate(index: dict, header: dict) -> None:
        index[column][entry] = value

    return mutate


def save_torch(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def projector(llm: int = 4, vision: int = 3, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return {
        "model.mm_projector.0.weight": torch.randn(llm, vision, dtype=dtype), "model.mm_projector.0.bias": torch.randn(llm),
        "model.mm_projector.2.weight": torch.randn(llm, llm), "model.mm_projector.2.bias": torch.randn(llm),
    }  # fmt: skip


def budget_cli(*argv: str) -> Callable[[], None]:
    def run() -> None:
        from ogkernels.tools.budget_cli import main

        status = main(list(argv))
        if status != 2:
            raise AssertionError(f"expected exit status 2, got {status}")
        raise SystemExit(2)

    return run


def masks_cli(*argv: str) -> Callable[[], None]:
    def run() -> None:
        from ogkernels.masks.__main__ import main

        raise SystemExit(main(list(argv)))

    return run


@dataclass(frozen=True)
class Case:
    """``build(tmp_path)`` returns the action; it must raise ``error`` with ``words`` in its
    message (``{tmp}`` stands for ``tmp_path``, ``{shard}`` for the store's shard)."""

    name: str
    build: Callable[[Path], Callable[[], object]]
    error: type[BaseException]
    words: tuple[str, ...]


def _store_case(name, mutate, words, *, fix_desc_crc=False, read=lambda root: MaskStore(root), encoding="packbits"):
    def build(tmp: Path):
        shard = make_store(tmp / "store", encoding)
        rewrite_header(shard, mutate, fix_desc_crc)
        return lambda: read(tmp / "store")

    return Case(name, build, MaskStoreError, ("{shard}",) + words)


def _byte_case(name, tensor, words, read, offset=0, encoding="packbits", error=MaskStoreError):
    def build(tmp: Path):
        shard = make_store(tmp / "store", encoding)
        flip_byte(shard, tensor, offset)
        return lambda: read(tmp / "store")

    return Case(name, build, error, ("{shard}",) + words)


def _tensor_table(mutate):
    def apply(index: dict, header: dict) -> None:
        mutate(header)

    return apply


def _verified(root: Path):
    return MaskStore(root, verify=True).load_batch(["a.jpg", "b/c.jpg"])


def _swap(index: dict, header: dict) -> None:
    index["height"][1], index["width"][1] = index["width"][1], index["height"][1]


def _huge(index: dict, header: dict) -> None:
    index["height"][0] = index["width"][0] = 60_000
    index["num_masks"][0] = 2


def _two_tensors_alias(header: dict) -> None:
    header["area"]["data_offsets"] = list(header["mask_nbytes"]["data_offsets"])


SHARD_CASES = [
    _store_case("swapped height and width", _swap, ("'b/c.jpg'", "desc_crc32", "height", "width")),
    _store_case("fractional data_offset", set_column("data_offset", 1, 16.5), ("'b/c.jpg'", "data_offset", "16.5")),
    _store_case("aliasing data_offset", set_column("data_offset", 1, 0), ("'b/c.jpg'", "data_offset", "back to back"), fix_desc_crc=True),
    _store_case("data_offset past the data", set_column("data_offset", 1, 10**6), ("'b/c.jpg'", "data_offset")),
    _store_case("negative data_offset", set_column("data_offset", 0, -8), ("'a.jpg'", "data_offset")),
    _store_case("data_nbytes against the shape", set_column("data_nbytes", 0, 15), ("'a.jpg'", "data_nbytes", "2 masks x 8 bytes"), fix_desc_crc=True),
    _store_case("a huge image in a tiny shard", _huge, ("'a.jpg'", "data_nbytes", "60000x60000"), fix_desc_crc=True),
    _store_case("height beyond the limit", set_column("height", 0, 1 << 17), ("'a.jpg'", "height", "65536"), fix_desc_crc=True),
    _store_case("zero width", set_column("width", 0, 0), ("'a.jpg'", "width"), fix_desc_crc=True),
    _store_case("negative num_masks", set_column("num_masks", 1, -1), ("'b/c.jpg'", "num_masks")),
    _store_case("float num_masks", set_column("num_masks", 0, 2.0), ("'a.jpg'", "num_masks", "2.0")),
    _store_case("bool has_metadata", set_column("has_metadata", 0, True), ("'a.jpg'", "has_metadata", "True")),
    _store_case("has_metadata 2", set_column("has_metadata", 0, 2), ("'a.jpg'", "has_metadata"), fix_desc_crc=True),
    _store_case("unknown encoding", set_column("encoding", 0, "png"), ("'a.jpg'", "encoding", "'png'")),
    _store_case("unknown order", set_column("order", 0, "random"), ("'a.jpg'", "order", "'random'")),
    _store_case("crc32 out of range", set_column("crc32", 0, 2**40), ("'a.jpg'", "crc32")),
    _store_case("key climbing out", set_column("keys", 0, "../../x.jpg"), ("'../../x.jpg'", "keys"), fix_desc_crc=True),
    _store_case("absolute key", set_column("keys", 0, "/etc/passwd"), ("keys", "/etc/passwd"), fix_desc_crc=True),
    _store_case("key with a NUL byte", set_column("keys", 0, "a\x00.jpg"), ("keys", "NUL"), fix_desc_crc=True),
    _store_case("key with an empty part", set_column("keys", 0, "a//b.jpg"), ("keys", "'a//b.jpg'"), fix_desc_crc=True),
    _store_case("key with a backslash", set_column("keys", 0, "a\\b.jpg"), ("keys", "backslash"), fix_desc_crc=True),
    _store_case("key not a str", set_column("keys", 0, 7), ("keys", "7")),
    _store_case("key repeated in one shard", set_column("keys", 1, "a.jpg"), ("'a.jpg'", "keys", "unique"), fix_desc_crc=True),
    _store_case("column missing", lambda index, header: index.pop("mask_start"), ("index", "mask_start")),
    _store_case("column of another length", lambda index, header: index["width"].append(3), ("width", "one length")),
    _store_case("index not an object", lambda index, header: header["__metadata__"].update(index="[1]"), ("__metadata__.index",)),
    _store_case("tensors alias", _tensor_table(_two_tensors_alias), ("area", "data_offsets")),
    _store_case("tensor dtype changed", _tensor_table(lambda h: h["data"].update(dtype="I64")), ("'data'", "dtype")),
    _store_case("tensor shape against its bytes", _tensor_table(lambda h: h["bbox"].update(shape=[3, 5])), ("'bbox'", "shape")),
    _store_case("tensor missing", _tensor_table(lambda h: h.pop("crop_box")), ("tensors", "crop_box")),
    _store_case("unknown format", _tensor_table(lambda h: h["__metadata__"].update(format="x")), ("__metadata__.format",)),
    _store_case("format_version not a number", _tensor_table(lambda h: h["__metadata__"].update(format_version="two")), ("format_version",)),
    _store_case("tensor checksums missing", _tensor_table(lambda h: h["__metadata__"].update(tensor_crc32="{}")), ("tensor_crc32",)),
    _byte_case("flipped data byte (verify)", "data", ("'a.jpg'", "crc32", "checksum"), _verified),
    _byte_case("flipped data byte (python -m ogkernels.masks verify)", "data", ("FAILED", "'a.jpg'", "crc32"),
               lambda root: masks_cli("verify", str(root))(), error=SystemExit),  # fmt: skip
    _byte_case("flipped metadata byte", "bbox", ("'bbox'", "tensor_crc32"), lambda root: MaskStore(root).metadata("a.jpg"), offset=9),
    _byte_case("flipped mask_nbytes byte", "mask_nbytes", ("'mask_nbytes'", "tensor_crc32"), lambda root: MaskStore(root)["a.jpg"], encoding="rle"),
    _byte_case("RLE counts with a character out of range", "data", ("'a.jpg'", "'data'", "rle counts", "'0'..'o'"),
               lambda root: MaskStore(root)["a.jpg"], offset=1, encoding="rle"),  # fmt: skip
]


def _forged_rle(pixels: int, words: tuple[str, ...]) -> Case:
    """A writer (checksums and all) storing RLE counts of a mask larger or smaller than 8x8:
    pycocotools would write past its buffer, or leave pixels uninitialised."""

    def build(tmp: Path):
        from unittest import mock

        from ogkernels.masks.rle import encode_rle

        other = np.ones((1, 1, pixels), dtype=bool)
        with mock.patch("ogkernels.masks.writer.encode_rle", lambda masks: encode_rle(other) * masks.num_masks):
            make_store(tmp / "store", "rle")
        return lambda: MaskStore(tmp / "store", verify=True)["a.jpg"]

    return Case(f"forged RLE counts of {pixels} pixels", build, MaskStoreError, ("{shard}", "'a.jpg'", "rle counts") + words)


SHARD_CASES += [_forged_rle(81, ("64 pixels", "a run of 81")), _forged_rle(10, ("64 pixels", "adding up to 10"))]


def _header_text_case(name, old, new, words):
    """Edit the header's JSON text (keeping the header length right)."""

    def damage(raw: bytes) -> bytes:
        (length,) = struct.unpack("<Q", raw[:8])
        blob = raw[8 : 8 + length].replace(old, new, 1)
        return struct.pack("<Q", len(blob)) + blob + raw[8 + length :]

    return _raw_case(name, damage, words)


def _raw_case(name, damage, words):
    def build(tmp: Path):
        shard = make_store(tmp / "store")
        shard.write_bytes(damage(shard.read_bytes()))
        return lambda: MaskStore(tmp / "store")

    return Case(name, build, MaskStoreError, ("{shard}",) + words)


def _manifest_case(name, text, words):
    def build(tmp: Path):
        make_store(tmp / "store")
        (tmp / "store" / "store.json").write_text(text)
        return lambda: MaskStore(tmp / "store")

    return Case(name, build, MaskStoreError, ("store.json",) + words)


def _changed_on_disk(tmp: Path):
    shard = make_store(tmp / "store")
    store = MaskStore(tmp / "store")
    raw, st = shard.read_bytes(), shard.stat()
    shard.unlink()
    shard.write_bytes(raw)  # another file under the name (forced to another mtime: not the one indexed)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    return lambda: store["a.jpg"]


def _dir_named_shard(tmp: Path):
    make_store(tmp / "store")
    (tmp / "store" / "shards" / "zz.safetensors").mkdir()
    return lambda: MaskStore(tmp / "store")


FILE_CASES = [
    _raw_case("truncated shard", lambda raw: raw[:-3], ("truncated",)),
    _raw_case("shard shorter than its header length", lambda raw: raw[:5], ("truncated",)),
    _raw_case("header length beyond the file", lambda raw: struct.pack("<Q", 10**9) + raw[8:], ("header length",)),
    _raw_case("header not JSON", lambda raw: raw[:8] + b"#" + raw[9:], ("corrupt shard header",)),
    _header_text_case("header repeats a name", b'{"__metadata__"', b'{"data":1,"__metadata__"', ("'data' appears twice",)),
    _manifest_case("manifest not JSON", "{", ("corrupt manifest",)),
    _manifest_case("manifest of another format", '{"format": "x", "format_version": 1}', ("'format'", "'x'")),
    _manifest_case("manifest version not an int", '{"format": "ogkernels.mask_store", "format_version": 1.5}', ("format_version",)),
    Case("shard changed on disk after open", _changed_on_disk, MaskStoreError, ("{shard}", "changed on disk")),
    Case("directory named *.safetensors", _dir_named_shard, MaskStoreError, ("zz.safetensors", "directory")),
]


# --------------------------------------------------------------------------- keys, paths, images


def _writer_case(name, key, error, words):
    def build(tmp: Path):
        writer = MaskStoreWriter(tmp / "store")
        return lambda: writer.add(key, np.ones((1, 2, 2), dtype=bool))

    return Case(name, build, error, words)


def _llava_case(name, entries, words):
    def build(tmp: Path):
        path = tmp / "llava.json"
        path.write_text(json.dumps(entries))
        return lambda: list_llava_json(path)

    return Case(name, build, MaskFileError, ("llava.json",) + words)


def _save_png(path: Path, size: tuple[int, int] = (8, 8)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size[::-1]).save(path)


def _escaping_image(tmp: Path):
    """`verify --image-root`: a symlink inside the root to an image outside it."""
    make_store(tmp / "store")
    _save_png(tmp / "outside" / "a.jpg")
    (tmp / "root" / "b").mkdir(parents=True)
    os.symlink(tmp / "outside" / "a.jpg", tmp / "root" / "a.jpg")
    _save_png(tmp / "root" / "b" / "c.jpg", (3, 5))
    return masks_cli("verify", str(tmp / "store"), "--image-root", str(tmp / "root"))


def _job_image_outside(tmp: Path):
    from ogkernels.masks import run_mask_job

    _save_png(tmp / "secret.png")
    (tmp / "root").mkdir()
    os.symlink(tmp / "secret.png", tmp / "root" / "x.png")

    def run():
        report = run_mask_job(["x.png", "../secret.png"], tmp / "root", tmp / "store", lambda image: [], lock=None)
        raise MaskFileError(report.failures[0].path, " / ".join(str(f) for f in report.failures))

    return run


def _escaping_folder(tmp: Path):
    from ogkernels.masks import list_image_folder

    (tmp / "elsewhere").mkdir()
    _save_png(tmp / "elsewhere" / "a.png")
    (tmp / "root").mkdir()
    os.symlink(tmp / "elsewhere", tmp / "root" / "coco")
    return lambda: list_image_folder(tmp / "root")


def _import_escaping_folder(tmp: Path):
    (tmp / "outside" / "img.jpg").mkdir(parents=True)
    np.save(tmp / "outside" / "img.jpg" / "mask_0.npy", np.ones((4, 4), bool))
    (tmp / "ref" / "partition_0").mkdir(parents=True)
    os.symlink(tmp / "outside" / "img.jpg", tmp / "ref" / "partition_0" / "img.jpg")

    def run():
        report = import_reference_layout(tmp / "ref", tmp / "store")
        assert not report.ok and report.imported == 0
        raise MaskFileError(report.failures[0].path, report.failures[0].reason, key=report.failures[0].key)

    return run


KEY_CASES = [
    _writer_case("writer: key climbing out", "../../x.jpg", ValueError, ("key", "'..'")),
    _writer_case("writer: absolute key", "/abs/x.jpg", ValueError, ("key", "/abs/x.jpg")),
    _writer_case("writer: NUL in key", "x\x00.jpg", ValueError, ("key", "NUL")),
    _writer_case("writer: empty part", "a//x.jpg", ValueError, ("key", "none empty")),
    _writer_case("writer: trailing slash", "a/", ValueError, ("key",)),
    _writer_case("writer: backslash", "a\\x.jpg", ValueError, ("key", "backslash")),
    _writer_case("writer: empty key", "", ValueError, ("key", "bytes")),
    _writer_case("writer: dot part", "a/./x.jpg", ValueError, ("key",)),
    _writer_case("writer: drive prefix", "C:/x.jpg", ValueError, ("key", "drive")),
    _writer_case("writer: lone surrogate", "a\udc80.jpg", ValueError, ("key", "UTF-8")),
    _writer_case("writer: key not a str", 3, TypeError, ("key", "str")),
    _llava_case("LLaVA JSON: image climbing out", [{"image": "../x.png"}], ("entry 0", "'image'", "'../x.png'")),
    _llava_case("LLaVA JSON: absolute image", [{"id": 1}, {"image": "/etc/x.png"}], ("entry 1", "'/etc/x.png'")),
    _llava_case("LLaVA JSON: image not a string", [{"image": 3}], ("entry 0", "3")),
    _llava_case("LLaVA JSON: image list with a bad path", [{"image": ["a.png", "b/../../c.png"]}], ("entry 0", "b/../../c.png")),
    _llava_case("LLaVA JSON: not a list", {"image": "a.png"}, ("expected a JSON list",)),
    Case("verify --image-root: symlink leading out", _escaping_image, SystemExit, ("a.jpg", "outside the root")),
    Case("job: image symlink leading out of the root", _job_image_outside, MaskFileError, ("x.png", "outside the root", "'../secret.png'")),
    Case("image folder: folder symlink leading out", _escaping_folder, MaskFileError, ("coco", "outside the root")),
    Case("importer: folder symlink leading out", _import_escaping_folder, MaskFileError, ("img.jpg", "outside the root")),
]


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_case(name, make, words, error=CheckpointError):
    def build(tmp: Path):
        target = make(tmp)
        return lambda: load_reference_checkpoint(target)

    return Case(name, build, error, words)


def _malicious_pickle(tmp: Path) -> Path:
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp / "pwned"),))

    path = tmp / "mm_projector.bin"
    path.write_bytes(pickle.dumps({"mm_projector.0.weight": Boom()}))
    return path


def _folder_with_directory(tmp: Path) -> Path:
    (tmp / "ckpt" / "mm_projector.bin").mkdir(parents=True)
    return tmp / "ckpt"


def _truncated(tmp: Path) -> Path:
    path = save_torch(tmp / "mm_projector.bin", projector())
    path.write_bytes(path.read_bytes()[:100])
    return path


def _safetensors_garbage(tmp: Path) -> Path:
    path = tmp / "model.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    return path


CHECKPOINT_CASES = [
    _checkpoint_case("checkpoint missing", lambda tmp: tmp / "nope.bin", ("nope.bin", "not found")),
    _checkpoint_case("checkpoint folder without checkpoint files", lambda tmp: tmp, ("folder", "mm_projector.bin")),
    _checkpoint_case("checkpoint path through a file (NotADirectoryError)",
                     lambda tmp: str(save_torch(tmp / "mm_projector.bin", projector())) + "/x", ("mm_projector.bin/x", "Not a directory")),  # fmt: skip
    _checkpoint_case("checkpoint: complex weights",
                     lambda tmp: save_torch(tmp / "c.bin", {"mm_projector.0.weight": torch.randn(4, 3, dtype=torch.complex64)}),
                     ("c.bin", "mm_projector.0.weight", "complex64")),  # fmt: skip
    _checkpoint_case("checkpoint: integer weights",
                     lambda tmp: save_torch(tmp / "i.bin", {"mm_projector.2.bias": torch.ones(4, dtype=torch.int64)}),
                     ("i.bin", "mm_projector.2.bias", "int64")),  # fmt: skip
    _checkpoint_case("checkpoint: a 1-D weight (an unpacking error before)",
                     lambda tmp: save_torch(tmp / "w.bin", {"model.mm_projector.0.weight": torch.randn(4)}),
                     ("w.bin", "mm_projector.0.weight", "2-D")),  # fmt: skip
    _checkpoint_case("checkpoint: a 2-D BOM expected",
                     lambda tmp: save_torch(tmp / "b.bin", {"mm_bom_mask_token": torch.randn(2, 3, 4)}), ("b.bin", "mm_bom_mask_token", "2-D")),  # fmt: skip
    _checkpoint_case("checkpoint: not a mapping", lambda tmp: save_torch(tmp / "l.bin", [torch.randn(2)]), ("l.bin", "mapping")),
    _checkpoint_case("checkpoint: nested state dict", lambda tmp: save_torch(tmp / "n.bin", {"model": projector()}), ("n.bin", "mapping")),
    _checkpoint_case("checkpoint: non-str names", lambda tmp: save_torch(tmp / "k.bin", {1: torch.randn(2)}), ("k.bin", "str parameter names")),
    _checkpoint_case("checkpoint: malicious pickle", _malicious_pickle, ("mm_projector.bin", "cannot be read safely")),
    _checkpoint_case("checkpoint: truncated", _truncated, ("mm_projector.bin", "cannot be read safely")),
    _checkpoint_case("checkpoint: corrupt safetensors", _safetensors_garbage, ("model.safetensors", "cannot be read safely")),
    _checkpoint_case("checkpoint folder: a directory named mm_projector.bin", _folder_with_directory, ("mm_projector.bin", "directory")),
    _checkpoint_case("checkpoint path None", lambda tmp: None, ("path", "None"), error=TypeError),
    _checkpoint_case("checkpoint path bytes", lambda tmp: b"mm_projector.bin", ("path", "bytes"), error=TypeError),
    _checkpoint_case("checkpoint: empty list of files", lambda tmp: [], ("path", "non-empty"), error=ValueError),
    _checkpoint_case("checkpoint: list holding None", lambda tmp: [None], ("path",), error=TypeError),
    Case("state dict not a mapping (AttributeError before)",
         lambda tmp: lambda: __import__("ogkernels").OGFusion(3, 4).load_reference_state_dict([("a", 1)]),
         TypeError, ("state_dict", "mapping")),  # fmt: skip
]


# --------------------------------------------------------------------------- the budget CLI


def _mask_file_case(name, make, words):
    def build(tmp: Path):
        path = make(tmp)
        return budget_cli("--masks", str(path))

    return Case(name, build, SystemExit, ("--masks",) + words)


def _write(name: str, data: bytes):
    def make(tmp: Path) -> Path:
        (tmp / name).write_bytes(data)
        return tmp / name

    return make


def _npy(name: str, array: np.ndarray, **kwargs):
    def make(tmp: Path) -> Path:
        np.save(tmp / name, array, **kwargs)
        return tmp / name

    return make


BUDGET_CASES = [
    _mask_file_case("budget CLI: a text file", _write("notes.npy", b"hello"), ("notes.npy", ".npy or .npz")),
    _mask_file_case("budget CLI: an empty file", _write("empty.npy", b""), ("empty.npy",)),
    _mask_file_case("budget CLI: a JPEG", _write("photo.npz", b"\xff\xd8\xff\xe0garbage"), ("photo.npz",)),
    _mask_file_case("budget CLI: a damaged .npz", _write("bad.npz", b"PK\x03\x04garbage"), ("bad.npz",)),
    _mask_file_case("budget CLI: pickled objects", _npy("obj.npy", np.array([[None]], dtype=object), allow_pickle=True), ("obj.npy", "pickle")),
    _mask_file_case("budget CLI: float masks", _npy("f.npy", np.zeros((1, 4, 4), np.float32)), ("f.npy", "float32")),
    _mask_file_case("budget CLI: 0/255 masks", _npy("u.npy", np.full((1, 4, 4), 255, np.uint8)), ("u.npy", "255")),
    _mask_file_case("budget CLI: a 4-D array", _npy("4d.npy", np.zeros((1, 1, 4, 4), bool)), ("4d.npy", "(N, H, W)")),
    _mask_file_case("budget CLI: a 1-D array", _npy("1d.npy", np.zeros(4, bool)), ("1d.npy", "(N, H, W)")),
    _mask_file_case("budget CLI: missing file", lambda tmp: tmp / "nope.npy", ("nope.npy", "No such file")),
    _mask_file_case("budget CLI: a directory", lambda tmp: tmp, ("cannot read", "directory")),
]

def _bitmap_case(name, damage, words):
    """A store with bitmaps of grid 16; ``damage(bitmap_shard, folder)``, then load them."""

    def build(tmp: Path):
        from ogkernels.masks.bitmap_store import BitmapParams
        from ogkernels.masks.downsample_job import downsample_store

        make_store(tmp / "store")
        params = BitmapParams.of(16)
        downsample_store(tmp / "store", params)
        folder = tmp / "store" / "bitmaps" / params.name
        damage(next(folder.glob("*.safetensors")), folder)
        return lambda: MaskStore(tmp / "store").load_bitmaps(["a.jpg", "b/c.jpg"], 16)

    return Case(name, build, MaskStoreError, words)


def _lying_params(shard: Path, folder: Path) -> None:
    (folder / "params.json").write_text('{"grid": [1, 16], "alpha": 0.25, "mode": "flat", "frame": "none"}')


def _forged_bitmap_start(shard: Path, folder: Path) -> None:
    rewrite_header(shard, set_column("mask_start", 1, 0))


def _other_params_meta(shard: Path, folder: Path) -> None:
    rewrite_header(shard, _tensor_table(lambda h: h["__metadata__"].update(params='{"grid": [1, 9], "alpha": 0.5, "mode": "flat", "frame": "none"}')))


BITMAP_CASES = [
    _bitmap_case("bitmaps: flipped bit", lambda shard, folder: flip_byte(shard, "bits", 1), ("'a.jpg'", "crc32", "bitmap record")),
    _bitmap_case("bitmaps: flipped nonempty byte", lambda shard, folder: flip_byte(shard, "nonempty", 2), ("'b/c.jpg'", "crc32")),
    _bitmap_case("bitmaps: params.json that lies", _lying_params, ("params.json", "a folder name that lies")),
    _bitmap_case("bitmaps: forged mask_start", _forged_bitmap_start, ("'b/c.jpg'", "mask_start", "back to back")),
    _bitmap_case("bitmaps: shard of other parameters", _other_params_meta, ("__metadata__.params", "1, 9")),
    Case("budget CLI: --store names a file", lambda tmp: budget_cli("--store", str(save_torch(tmp / "x.pt", {}))),
         SystemExit, ("x.pt", "not a mask store")),  # fmt: skip
]

CASES = SHARD_CASES + FILE_CASES + KEY_CASES + CHECKPOINT_CASES + BUDGET_CASES + BITMAP_CASES


def _message(info: pytest.ExceptionInfo, capsys) -> str:
    if isinstance(info.value, SystemExit):
        captured = capsys.readouterr()
        return captured.out + captured.err
    return str(info.value)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_is_named(case, tmp_path, capsys):
    action = case.build(tmp_path)
    with pytest.raises(case.error) as info:
        action()
    if isinstance(info.value, SystemExit):
        assert info.value.code in (1, 2), info.value.code
    message = _message(info, capsys)
    shards = sorted((tmp_path / "store" / "shards").glob("*.safetensors")) if (tmp_path / "store").is_dir() else []
    for word in case.words:
        word = word.replace("{tmp}", str(tmp_path)).replace("{shard}", str(shards[0]) if shards else "{shard}")
        assert word in message, f"{word!r} not in {message!r}"
    assert not (tmp_path / "pwned").exists(), "a pickle ran code"


def test_table_size():
    assert len(CASES) + len(HANG_CASES) >= 60


# --------------------------------------------------------------------------- cases that could hang

HANG_CASES = {
    # name: (python code run with `tmp` a fresh folder, words the printed error must hold)
    "FIFO named *.safetensors in a store": (
        "make_store(tmp / 's'); os.mkfifo(tmp / 's/shards/zz.safetensors'); MaskStore(tmp / 's')",
        ("MaskStoreError", "zz.safetensors", "FIFO"),
    ),
    "FIFO as the manifest": (
        "make_store(tmp / 's'); os.unlink(tmp / 's/store.json'); os.mkfifo(tmp / 's/store.json'); MaskStore(tmp / 's')",
        ("MaskStoreError", "store.json", "FIFO"),
    ),
    "masks info on a store with a FIFO shard": (
        "make_store(tmp / 's'); os.mkfifo(tmp / 's/shards/zz.safetensors'); "
        "code = masks_main(['info', str(tmp / 's')]); raise SystemExit(code)",
        ("SystemExit: 2", "zz.safetensors", "FIFO"),
    ),
    "importer: FIFO named mask_0.npy": (
        "(tmp / 'ref/partition_0/a.jpg').mkdir(parents=True); os.mkfifo(tmp / 'ref/partition_0/a.jpg/mask_0.npy'); "
        "r = import_reference_layout(tmp / 'ref', tmp / 's'); print('failures:', [str(f) for f in r.failures]); "
        "raise MaskFileError(r.failures[0].path, r.failures[0].reason)",
        ("MaskFileError", "mask_0.npy", "FIFO"),
    ),
    "importer: FIFO as the metadata JSON": (
        "(tmp / 'ref/partition_0/a.jpg').mkdir(parents=True); os.mkfifo(tmp / 'ref/metadata_partition_0.json'); "
        "import_reference_layout(tmp / 'ref', tmp / 's')",
        ("MaskFileError", "metadata_partition_0.json", "FIFO"),
    ),
    "mask job: FIFO named x.png": (
        "(tmp / 'img').mkdir(); os.mkfifo(tmp / 'img/x.png'); "
        "r = run_mask_job(['x.png'], tmp / 'img', tmp / 's', lambda image: []); "
        "raise MaskFileError(r.failures[0].path, r.failures[0].reason)",
        ("MaskFileError", "x.png", "FIFO"),
    ),
    "LLaVA JSON that is a FIFO": (
        "os.mkfifo(tmp / 'llava.json'); list_llava_json(tmp / 'llava.json')",
        ("MaskFileError", "llava.json", "FIFO"),
    ),
    "FIFO named *.safetensors among the bitmaps": (
        "import torch\nfrom ogkernels.masks.bitmap_store import BitmapParams, BitmapWriter\n"
        "make_store(tmp / 's')\n"
        "with BitmapWriter(tmp / 's', BitmapParams.of(16)) as w: w.add('a.jpg', torch.zeros(2, 16, dtype=torch.bool), torch.ones(2, dtype=torch.bool), 0)\n"
        "os.mkfifo(tmp / 's/bitmaps/flat-1x16-alpha0.5-none/zz.safetensors'); MaskStore(tmp / 's').load_bitmaps(['a.jpg'], 16)",
        ("MaskStoreError", "zz.safetensors", "FIFO"),
    ),
    "checkpoint that is a FIFO": (
        "os.mkfifo(tmp / 'mm_projector.bin'); load_reference_checkpoint(tmp / 'mm_projector.bin')",
        ("CheckpointError", "mm_projector.bin", "FIFO"),
    ),
    "checkpoint folder holding a FIFO": (
        "os.mkfifo(tmp / 'model.safetensors'); load_reference_checkpoint(tmp)",
        ("CheckpointError", "model.safetensors", "FIFO"),
    ),
    "budget CLI: --masks names a FIFO": (
        "os.mkfifo(tmp / 'm.npy'); raise SystemExit(budget_main(['--masks', str(tmp / 'm.npy')]))",
        ("SystemExit: 2", "--masks", "FIFO"),
    ),
    "budget CLI: --masks /dev/zero": (
        "raise SystemExit(budget_main(['--masks', '/dev/zero']))",
        ("SystemExit: 2", "--masks", "character device"),
    ),
}

_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, os, signal, sys, tempfile, warnings
    from pathlib import Path
    warnings.simplefilter("ignore")
    from ogkernels.checkpoints import load_reference_checkpoint
    from ogkernels.masks import MaskFileError, MaskStore, import_reference_layout, list_llava_json, run_mask_job
    from ogkernels.masks.__main__ import main as masks_main
    from ogkernels.tools.budget_cli import main as budget_main
    from tests.test_bad_input_files import make_store

    def alarm(signum, frame):
        raise TimeoutError("HANG")

    signal.signal(signal.SIGALRM, alarm)
    results = {}
    for name, code in json.loads(sys.argv[1]).items():
        tmp = Path(tempfile.mkdtemp())
        out = io.StringIO()
        signal.alarm(10)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                exec(code, dict(globals(), tmp=tmp))
            results[name] = "returned"
        except BaseException as exc:
            results[name] = f"{type(exc).__name__}: {exc}"
        finally:
            signal.alarm(0)
        results[name] += " | output: " + out.getvalue()
    print("RESULTS", json.dumps(results))
    """
)


@pytest.fixture(scope="module")
def hang_results(tmp_path_factory) -> dict[str, str]:
    """Run every hang-prone case in one subprocess (each under a 10 s alarm, 120 s in all)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    codes = {name: code for name, (code, _) in HANG_CASES.items()}
    proc = subprocess.run(
        [sys.executable, "-c", _RUNNER, json.dumps(codes)], cwd=tmp_path_factory.mktemp("hang"), env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULTS ")]
    assert lines, proc.stdout + proc.stderr
    return json.loads(lines[-1][len("RESULTS ") :])


@pytest.mark.parametrize("name", list(HANG_CASES))
def test_special_files_do_not_hang(name, hang_results, capfd):
    result = hang_results[name]
    assert "HANG" not in result, f"{name}: blocked (a FIFO or device was read)"
    for word in HANG_CASES[name][1]:
        if word.startswith("SystemExit"):
            assert result.startswith(word), result
        else:
            assert word in result or word == result.split(":")[0], f"{word!r} not in {result!r}"


def test_partial_checkpoint_does_not_load(tmp_path):
    """Strictness must not depend on a BOM key being present: half a projector is refused
    (it would leave the rest of the connector random)."""
    from ogkernels import OGFusion

    half = {k: v for k, v in projector().items() if ".0." in k}
    path = save_torch(tmp_path / "mm_projector.bin", half)
    with pytest.raises(CheckpointError, match="mm_projector.2"):
        OGFusion.from_reference_checkpoint(path)
