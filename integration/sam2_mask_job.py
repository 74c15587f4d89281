"""Generate SAM2 masks for a dataset and write them into an ogkernels mask store.

Run from the repository root::

    # real weights, the reference settings (SAM 2.1 Hiera-L, points_per_batch=6,
    # pred_iou_thresh=0.9, everything else SAM2's default)
    python -m integration.sam2_mask_job --llava-json llava_v1_5_mix665k.json \\
        --image-root data/ --store masks/ --checkpoint sam2.1_hiera_large.pt

    # several GPUs / nodes: one process per rank, same --store
    torchrun --nproc-per-node 8 -m integration.sam2_mask_job ...   # reads RANK/WORLD_SIZE
    python -m integration.sam2_mask_job ... --shard 3/8           # or explicit

    # a small random-weight model on the CPU (smoke tests; masks are meaningless)
    python -m integration.sam2_mask_job --images imgs/ --store out/ --random-weights \\
        --config configs/sam2.1/sam2.1_hiera_t.yaml --override ++model.image_size=256 \\
        --points-per-side 4 --pred-iou-thresh 0 --stability-score-thresh 0 --device cpu

The job is resumable (images already in the store are skipped; rerun the same command),
writes every store shard atomically (``--shard-size`` images per shard: the most a kill can
lose), keeps going past bad images and lists them at the end. Exit status: 0 all done,
1 some images failed, 2 unusable arguments or store, 130 interrupted (finished images kept).
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

from ogkernels.masks import (
    MaskStoreError,
    list_image_folder,
    list_llava_json,
    resolve_shard,
    run_mask_job,
    select_shard,
)

DEFAULT_CONFIG = "configs/sam2.1/sam2.1_hiera_l.yaml"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m integration.sam2_mask_job",
        description="SAM2 automatic masks for every image of a dataset, into an ogkernels mask store.",
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
    parser.add_argument("--failures-json", type=Path, help="also write the failures to this JSON file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def build_sam2_generator(args: argparse.Namespace) -> Callable[[np.ndarray], list[dict[str, Any]]]:
    """SAM2's automatic mask generator with the reference settings (and the CLI's overrides)."""
    import contextlib

    import torch
    from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator
    from sam2.build_sam import build_sam2

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    if device is None:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(args.seed)
    model = build_sam2(
        args.config,
        ckpt_path=str(args.checkpoint) if args.checkpoint is not None else None,
        device=device,
        hydra_overrides_extra=list(args.override),
        apply_postprocessing=False,  # as the reference: no dynamic multimask fallback
    )
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


def _keys_and_root(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[list[str], Path]:
    if args.images is not None:
        return list_image_folder(args.images), args.images
    if args.image_root is None:
        parser.error("--llava-json needs --image-root")
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
    parser = build_parser()
    args = parser.parse_args(argv)
    for name in ("points_per_side", "points_per_batch", "shard_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.limit is not None and args.limit < 0:
        parser.error(f"--limit: expected an int >= 0, got {args.limit}")
    try:
        index, count = resolve_shard(args.shard)
        keys, image_root = _keys_and_root(args, parser)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    keys = select_shard(keys, index, count)
    if args.limit is not None:
        keys = keys[: args.limit]
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = run_mask_job(
            keys,
            image_root,
            args.store,
            lambda: build_sam2_generator(args),
            lazy_generator=True,
            writer_id=f"rank{index}of{count}",
            shard_size=args.shard_size,
            encoding=args.encoding,
            order=args.order,
            progress=_progress_factory(args, index, count),
        )
    except MaskStoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
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
