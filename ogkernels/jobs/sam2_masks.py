"""``ogkernels-sam2-masks``: SAM 2 masks for every image of a dataset, into a mask store.

Runs from any directory once ogkernels is installed (``pip install ogkernels[sam2]``; also
``python -m ogkernels.jobs.sam2_masks`` and, in a checkout, ``python -m
integration.sam2_mask_job``)::

    # real weights, the reference settings (SAM 2.1 Hiera-L, points_per_batch=6,
    # pred_iou_thresh=0.9, everything else SAM2's default)
    ogkernels-sam2-masks --llava-json llava_v1_5_mix665k.json \\
        --image-root data/ --store masks/ --checkpoint sam2.1_hiera_large.pt

    # several GPUs / nodes: one process per rank, same --store
    torchrun --nproc-per-node 8 -m ogkernels.jobs.sam2_masks ...   # reads RANK/WORLD_SIZE
    ogkernels-sam2-masks ... --shard 3/8                            # or explicit

    # a small random-weight model on the CPU (smoke tests; masks are meaningless)
    ogkernels-sam2-masks --images imgs/ --store out/ --random-weights \\
        --config configs/sam2.1/sam2.1_hiera_t.yaml --override ++model.image_size=256 \\
        --points-per-side 4 --pred-iou-thresh 0 --stability-score-thresh 0 --device cpu

The job is resumable (images already in the store are skipped; rerun the same command),
writes every store shard atomically (``--shard-size`` images per shard: the most a kill can
lose), keeps going past bad images and lists them at the end. One job per shard of the work
runs at a time (a lock in the store; a second one stops at once, naming the first). Bad
arguments, paths, configs or checkpoints stop the job before anything is written, with a
one-line error, and leave no store behind. Exit status: 0 all done, 1 some images failed,
2 unusable arguments, checkpoint or store, 130 interrupted (finished images kept).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..masks import (
    MaskStoreError,
    job_lock_name,
    list_image_folder,
    list_llava_json,
    resolve_shard,
    run_mask_job,
    select_shard,
)
from ..masks.bitmap_store import BitmapParams
from ..masks.files import open_regular

DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"
PROG = "ogkernels-sam2-masks"


class JobSetupError(ValueError):
    """An argument, path, config or checkpoint the job cannot start with (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="SAM2 automatic masks for every image of a dataset, into an ogkernels mask store."
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="an image folder (searched recursively); keys are paths relative to it")
    source.add_argument("--llava-json", type=Path, help="a LLaVA-format JSON list; its 'image' fields are keys relative to --image-root")
    parser.add_argument("--image-root", type=Path, help="dataset root for --llava-json keys")
    parser.add_argument("--store", type=Path, required=True, help="the mask store directory (created if absent)")
    weights = parser.add_mutually_exclusive_group(required=True)
    weights.add_argument("--checkpoint", type=Path, help="SAM2 checkpoint (.pt), e.g. sam2.1_hiera_large.pt")
    weights.add_argument("--random-weights", action="store_true", help="random weights (tests/benchmarks only)")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help=f"SAM2 config bundled with sam2 (default {DEFAULT_CONFIG})")
    parser.add_argument("--override", action="append", default=[], metavar="HYDRA_OVERRIDE", help="extra hydra override, e.g. ++model.image_size=256 (repeatable)")
    parser.add_argument("--points-per-side", type=int, default=32)
    parser.add_argument("--points-per-batch", type=int, default=6)
    parser.add_argument("--pred-iou-thresh", type=float, default=0.9)
    parser.add_argument("--stability-score-thresh", type=float, default=0.95)
    parser.add_argument("--box-nms-thresh", type=float, default=0.7)
    parser.add_argument("--device", default=None, help="default: cuda:$LOCAL_RANK when CUDA is available, else cpu")
    parser.add_argument("--bf16", action="store_true", help="run SAM2 under CUDA bf16 autocast")
    parser.add_argument("--seed", type=int, default=0, help="torch seed (fixes the random weights of --random-weights)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--shard", default=None, metavar="I/N", help="process every N-th image from the I-th (default: RANK/WORLD_SIZE, else 0/1)")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT images of this shard")
    parser.add_argument("--shard-size", type=int, default=64, help="images per store shard (default 64)")
    parser.add_argument("--encoding", choices=("packbits", "rle"), default="packbits")
    parser.add_argument("--order", choices=("lexicographic", "numeric"), default="lexicographic",
                        help="mask order in the store: the reference loader's (mask_10 before mask_2, default) or SAM2's")
    parser.add_argument("--bitmaps", action="append", default=[], metavar="GRID[,ALPHA[,MODE[,FRAME]]]",
                        help="also write the Phi bitmaps of these parameters as the job goes, e.g. 576 or "
                             "24x24,0.5,patch,pad (repeatable; see python -m ogkernels.masks downsample)")
    parser.add_argument("--failures-json", type=Path, help="also write the failures to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_sam2_state_dict(path: Path) -> dict:
    """The ``"model"`` state dict of a SAM 2 checkpoint (``torch.load(weights_only=True)``,
    a regular file only); :class:`JobSetupError` naming the file on any problem."""
    import torch

    try:
        with open_regular(path) as handle:
            checkpoint = torch.load(handle, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise JobSetupError(f"--checkpoint {path}: not found") from None
    except OSError as exc:
        raise JobSetupError(f"--checkpoint {path}: cannot be read ({exc.strerror or exc})") from exc
    except Exception as exc:  # truncated, corrupt, or pickled objects
        raise JobSetupError(f"--checkpoint {path}: not a readable SAM 2 checkpoint ({_first_line(exc)})") from exc
    state = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict):
        got = sorted(checkpoint)[:5] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise JobSetupError(f"--checkpoint {path}: expected a SAM 2 checkpoint (a dict with a 'model' state dict), got {got}")
    return state


def build_sam2_generator(args: argparse.Namespace) -> Callable[[np.ndarray], list[dict[str, Any]]]:
    """SAM2's automatic mask generator with the reference settings (and the CLI's overrides).

    Raises:
        JobSetupError: sam2 is missing, the config cannot be built, or the checkpoint is
            missing, corrupt or does not fit the config.
    """
    import contextlib

    import torch

    try:
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
        from sam2.build_sam import build_sam2
    except ImportError as exc:
        raise JobSetupError(f"the SAM 2 job needs sam2 ({_first_line(exc)}): "
                            "SAM2_BUILD_CUDA=0 pip install --no-build-isolation sam2==1.1.0") from exc  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    state = load_sam2_state_dict(args.checkpoint) if args.checkpoint is not None else None
    torch.manual_seed(args.seed)
    try:
        model = build_sam2(
            args.config, ckpt_path=None, device="cpu", hydra_overrides_extra=list(args.override),
            apply_postprocessing=False,  # as the reference: no dynamic multimask fallback
        )  # fmt: skip
    except Exception as exc:  # hydra raises its own types for unknown configs and overrides
        raise JobSetupError(f"--config {args.config}: cannot build SAM 2 ({_first_line(exc)})") from exc
    if state is not None:
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise JobSetupError(
                f"--checkpoint {args.checkpoint}: does not fit --config {args.config} ({_first_line(exc)[:300]})"
            ) from exc
    model = model.to(device).eval()
    generator = SAM2AutomaticMaskGenerator(
        model,
        points_per_side=args.points_per_side,
        points_per_batch=args.points_per_batch,
        pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        box_nms_thresh=args.box_nms_thresh,
        output_mode="binary_mask",
    )
    size = int(model.image_size)  # the predictor assumes 1024; follow ++model.image_size
    generator.predictor._bb_feat_sizes = [(size // 4, size // 4), (size // 8, size // 8), (size // 16, size // 16)]
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if args.bf16 and str(device).startswith("cuda")
        else contextlib.nullcontext()
    )

    def generate(image: np.ndarray) -> list[dict[str, Any]]:
        with torch.inference_mode(), autocast:
            return generator.generate(image)

    return generate


def check_args(args: argparse.Namespace) -> None:
    """Everything that can be checked before reading the dataset; :class:`JobSetupError`."""
    for name in ("points_per_side", "points_per_batch", "shard_size"):
        if getattr(args, name) < 1:
            raise JobSetupError(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 0:
        raise JobSetupError(f"--limit: expected an int >= 0, got {args.limit}")
    if args.llava_json is not None and args.image_root is None:
        raise JobSetupError("--llava-json: needs --image-root (the folder its 'image' paths are relative to)")
    root = args.images if args.images is not None else args.image_root
    flag = "--images" if args.images is not None else "--image-root"
    if not root.is_dir():
        raise JobSetupError(f"{flag} {root}: expected a folder of images, {'found a file' if root.exists() else 'not found'}")
    if args.store.exists() and not args.store.is_dir():
        raise JobSetupError(f"--store {args.store}: expected a mask store folder, found a file")
    if args.checkpoint is not None:
        try:
            open_regular(args.checkpoint).close()
        except FileNotFoundError:
            raise JobSetupError(f"--checkpoint {args.checkpoint}: not found") from None
        except OSError as exc:
            raise JobSetupError(f"--checkpoint {args.checkpoint}: cannot be read ({exc.strerror or exc})") from exc


def _keys_and_root(args: argparse.Namespace) -> tuple[list[str], Path]:
    if args.images is not None:
        return list_image_folder(args.images), args.images
    return list_llava_json(args.llava_json), args.image_root


def _progress_factory(args: argparse.Namespace, index: int, count: int):
    if args.no_progress:
        return None
    from tqdm import tqdm

    def factory(**kwargs: Any):
        return tqdm(desc=f"SAM2 masks [{index}/{count}]", position=index if count > 1 else None, **kwargs)

    return factory


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ogkernels-sam2-masks``; returns the exit status."""
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        check_args(args)
        index, count = resolve_shard(args.shard)
        bitmaps = [BitmapParams.parse(spec) for spec in args.bitmaps]
        keys, image_root = _keys_and_root(args)
        keys = select_shard(keys, index, count)
        if args.limit is not None:
            keys = keys[: args.limit]
        report = run_mask_job(
            keys,
            image_root,
            args.store,
            lambda: build_sam2_generator(args),
            lazy_generator=True,
            writer_id=f"rank{index}of{count}",
            lock=job_lock_name(index, count),
            shard_size=args.shard_size,
            encoding=args.encoding,
            order=args.order,
            bitmaps=bitmaps,
            progress=_progress_factory(args, index, count),
        )
    except (JobSetupError, MaskStoreError, ValueError) as exc:  # MaskFileError is a MaskStoreError
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished images are in the store; rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.summary(), file=sys.stderr if report.failures else sys.stdout)
    if args.failures_json is not None:
        args.failures_json.write_text(
            json.dumps([{"key": f.key, "path": f.path, "reason": f.reason} for f in report.failures], indent=1)
        )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
