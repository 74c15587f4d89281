"""``ogkernels-budget``: print the visual-token budget of images under several strategies.

Example::

    ogkernels-budget --image 480x640 1080x1920 --masks img0.npz --llm-config llama3-8b --dtype bf16
    ogkernels-budget --store masks/ --grid 576 --cap 1024 2048 --plot tokens.png

With ``--store``, the whole dataset instead: every image's OG token count from the store's
stored bitmaps (``python -m ogkernels.masks downsample``; the table is cached in the store),
their distribution, a histogram (``--plot`` writes it as a PNG), and for each ``--cap`` what
that per-image cap would drop.

For every image (``--image HxW``, height × width in pixels, and one image per ``--masks``
file, whose size is the masks' ``H × W``) and every strategy (``llava``, ``qwen``,
``anyres``, ``gemma3`` by default; ``og`` when masks are given), one row with the visual
tokens, the KV-cache MiB and the prefill TFLOPs of that sample in the LLM; then one row per
strategy for the whole batch, packed (varlen) versus padded to the longest sample.
Numbers come from :mod:`ogkernels.budget`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any, Sequence

from . import budget

DEFAULT_STRATEGIES = ("llava", "qwen", "anyres", "gemma3")
MIB = 2**20
TERA = 10**12


def parse_size(text: str) -> tuple[int, int]:
    """``"480x640"`` → ``(480, 640)`` (height, width)."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        height, width = int(parts[0]), int(parts[1])
        if height >= 1 and width >= 1:
            return height, width
    raise argparse.ArgumentTypeError(
        f"expected HEIGHTxWIDTH with positive ints (e.g. 480x640), got {text!r}"
    )


def parse_grid(text: str) -> int | tuple[int, int]:
    """``"576"`` → 576; ``"24x24"`` → ``(24, 24)``."""
    if text.strip().isdigit() and int(text) >= 1:
        return int(text)
    try:
        return parse_size(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected V or GHxGW with positive ints (e.g. 576 or 24x24), got {text!r}"
        ) from None


def load_masks(path: str):
    """One image's masks from a ``.npz`` (its array ``masks``, or its only array) or a
    ``.npy`` file, loaded with ``allow_pickle=False`` from a regular file only: an
    ``(N, H, W)`` (or ``(H, W)``) bool or 0/1 uint8 array, returned as a CPU tensor.

    Raises:
        ValueError/TypeError: starting ``--masks PATH:``, for anything else (a missing,
            special, non-NumPy or pickled file, an archive of several arrays, a bad shape,
            dtype or value).
    """
    import numpy as np
    import torch

    from ..masks.files import open_regular

    where = f"--masks {path}"
    try:
        with open_regular(path) as handle:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.lib.npyio.NpzFile):
                with loaded:
                    keys = list(loaded.keys())
                    if "masks" not in keys and len(keys) != 1:
                        raise ValueError(f"{where}: expected an array named 'masks' or a single array, got arrays {keys}")
                    array = loaded["masks" if "masks" in keys else keys[0]]
            else:
                array = loaded
    except OSError as exc:
        raise ValueError(f"{where}: cannot read the file ({exc.strerror or exc})") from exc
    except ValueError as exc:
        if str(exc).startswith(where):
            raise
        raise ValueError(f"{where}: expected a .npy or .npz file of masks ({exc})") from exc
    except Exception as exc:  # zipfile.BadZipFile, EOFError, ... from a damaged file
        raise ValueError(f"{where}: expected a .npy or .npz file of masks ({type(exc).__name__}: {exc})") from exc
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or min(array.shape[1:], default=0) < 1:
        raise ValueError(f"{where}: expected an (N, H, W) array with H, W >= 1, got shape {array.shape}")
    if array.dtype not in (np.bool_, np.uint8):
        raise TypeError(f"{where}: expected a bool (or 0/1 uint8) array, got dtype {array.dtype}")
    if array.dtype == np.uint8 and array.size and int(array.max()) > 1:
        raise ValueError(f"{where}: expected 0/1 values in a uint8 array, got values up to {int(array.max())}")
    return torch.from_numpy(np.ascontiguousarray(array))


def load_llm_config(spec: str) -> Any:
    """A preset name of :data:`ogkernels.budget.LLM_PRESETS`, a ``config.json`` path, or a
    directory holding one."""
    if spec in budget.LLM_PRESETS:
        return spec
    path = os.path.join(spec, "config.json") if os.path.isdir(spec) else spec
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    raise ValueError(
        f"--llm-config: expected a preset ({', '.join(budget.LLM_PRESETS)}) or a path to a "
        f"config.json, got {spec!r}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ogkernels-budget",
        description="Visual-token budget: tokens, KV cache and prefill FLOPs per strategy.",
    )
    parser.add_argument("--image", nargs="+", type=parse_size, default=[], metavar="HxW",
                        help="image sizes, height x width in pixels (e.g. 480x640)")
    parser.add_argument("--masks", nargs="+", default=[], metavar="PATH",
                        help="one image's SAM masks per file: .npz (array 'masks' or a single "
                             "array) or .npy, (N, H, W) bool; adds the 'og' strategy")
    parser.add_argument("--llm-config", default="llama3-8b", metavar="PRESET|PATH",
                        help="LLM preset (" + ", ".join(budget.LLM_PRESETS) + ") or config.json "
                             "path (default: llama3-8b)")
    parser.add_argument("--dtype", default="bf16", help="KV-cache dtype (default: bf16)")
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES),
                        help="comma-separated, from " + ", ".join(budget.STRATEGIES)
                             + " (default: %(default)s; 'og' is added when --masks is given)")
    parser.add_argument("--anyres-unpad", action="store_true",
                        help="anyres: count LLaVA-NeXT's unpadded features and newline tokens")
    parser.add_argument("--grid", type=parse_grid, default=576, metavar="V|GHxGW",
                        help="og: vision token grid (default: 576)")
    parser.add_argument("--alpha", type=float, default=0.5, help="og: keep threshold (default: 0.5)")
    parser.add_argument("--mode", default="flat", choices=("flat", "patch"),
                        help="og: downsampling mode (default: flat)")
    parser.add_argument("--text-tokens", type=int, default=0, metavar="N",
                        help="text tokens added to every sample's context (default: 0)")
    parser.add_argument("--attention", default="causal", choices=("causal", "full"),
                        help="attention FLOPs: causal L(L+1)/2 pairs or full L^2 (default: causal)")
    parser.add_argument("--lm-head", default="last", choices=("last", "all", "none"),
                        help="LM-head FLOPs for the last position, all positions or none "
                             "(default: last)")
    parser.add_argument("--context-length", type=int, default=None, metavar="N",
                        help="flag samples longer than N context tokens")
    parser.add_argument("--frame", default="none", choices=("none", "pad", "crop"),
                        help="og: frame for mode patch (default: none)")
    parser.add_argument("--store", metavar="DIR", help="a mask store: the token distribution of the whole dataset")
    parser.add_argument("--cap", nargs="+", type=int, default=[], metavar="N",
                        help="--store: per-image token caps to show the effect of")
    parser.add_argument("--plot", metavar="FILE.png", help="--store: write a histogram of the token counts")
    parser.add_argument("--format", default="table", choices=("table", "json"))
    return parser


def store_summary(args: argparse.Namespace) -> dict[str, Any]:
    """The ``--store`` report as plain data."""
    from ..masks import MaskStore
    from ..masks.counts import cap_effect, distribution, token_count_table

    if args.image or args.masks:
        raise ValueError("--store: give it alone (without --image/--masks)")
    for cap in args.cap:
        if cap < 1:
            raise ValueError(f"--cap: expected ints >= 1, got {cap}")
    store = MaskStore(args.store)
    options = {"alpha": args.alpha, "mode": args.mode, "frame": args.frame}
    table = token_count_table(store, args.grid, **options)
    caps = [cap_effect(table, token_count_table(store, args.grid, max_image_tokens=cap, **options), cap) for cap in args.cap]
    if args.plot:
        plot_histogram(table.counts, args.cap, args.plot, f"{store.root}: {len(table.keys)} images, {table.params.name}")
    return {
        "store": str(store.root), "params": table.params.to_json(), "options": table.options.to_dict(),
        "seconds": table.seconds, "images_per_second": table.images_per_second, "cached": table.cached,
        "distribution": distribution(table.counts), "histogram": histogram(table.counts), "caps": caps,
    }  # fmt: skip


def histogram(counts, bins: int = 12) -> list[dict[str, int]]:
    """At most ``bins`` bins of equal integer width: ``[{"low", "high", "images"}]`` (inclusive)."""
    import numpy as np

    counts = np.asarray(counts, dtype=np.int64)
    if counts.size == 0:
        return []
    low, high = int(counts.min()), int(counts.max())
    width = -(-(high - low + 1) // bins)
    images = np.bincount((counts - low) // width)
    return [{"low": low + i * width, "high": low + (i + 1) * width - 1, "images": int(n)} for i, n in enumerate(images)]


def plot_histogram(counts, caps: Sequence[int], path: str, title: str) -> None:
    """A PNG histogram of the token counts, the caps as vertical lines (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4))
    axes.hist(counts, bins=min(60, max(1, len(set(counts.tolist())))), color="#4477aa")
    for cap in caps:
        axes.axvline(cap, color="#cc3311", linestyle="--", label=f"cap {cap}")
    axes.set_xlabel("OG tokens per image")
    axes.set_ylabel("images")
    axes.set_title(title, fontsize=9)
    if caps:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def render_store(data: dict[str, Any]) -> str:
    d = data["distribution"]
    p = data["params"]
    speed = "cached" if data["cached"] else f"{data['images_per_second']:,.0f} images/s"
    lines = [
        f"mask store {data['store']}: {d['images']} images; Phi grid {p['grid'][0]}x{p['grid'][1]}, alpha {p['alpha']}, "
        f"{p['mode']}, frame {p['frame']}; counted in {data['seconds']:.2f} s ({speed})",
    ]
    if d["images"]:
        lines.append(
            f"OG tokens per image: mean {d['mean']:.1f}, min {d['min']}, p10 {d['p10']:.0f}, median {d['p50']:.0f}, "
            f"p90 {d['p90']:.0f}, p99 {d['p99']:.0f}, max {d['max']}; total {d['total']:,}"
        )
        width = max(b["images"] for b in data["histogram"]) or 1
        for b in data["histogram"]:
            lines.append(f"  {b['low']:>7}-{b['high']:<7} {b['images']:>8}  " + "#" * round(40 * b["images"] / width))
    rows = [[str(c["cap"]), f"{c['images_over']} ({100 * c['images_over_fraction']:.1f}%)",
             f"{c['tokens_dropped']:,} ({100 * c['tokens_dropped_fraction']:.1f}%)", str(c["max_after"])] for c in data["caps"]]  # fmt: skip
    if rows:
        lines += ["", _table(["cap", "images_over_cap", "tokens_dropped", "max_after_cap"], rows)]
    return "\n".join(lines)


def _strategy_list(text: str, with_og: bool) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    allowed = set(budget.STRATEGIES) | {"og"}
    for name in names:
        if name not in allowed:
            raise ValueError(
                f"--strategies: expected names from {', '.join(sorted(allowed))}, got {name!r}"
            )
    if "og" in names and not with_og:
        raise ValueError("--strategies: 'og' needs --masks, got no mask files")
    if with_og and "og" not in names:
        names.append("og")
    return list(dict.fromkeys(names))


def compute(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the CLI prints, as plain data."""
    config = budget.llm_dims(load_llm_config(args.llm_config))
    per_elem = budget.dtype_bytes(args.dtype)
    causal = args.attention == "causal"
    images: list[dict[str, Any]] = [
        {"source": "--image", "height": h, "width": w} for h, w in args.image
    ]
    masks = [load_masks(path) for path in args.masks]
    for path, m in zip(args.masks, masks):
        images.append({"source": path, "height": int(m.shape[1]), "width": int(m.shape[2])})
    if not images:
        raise ValueError("--image/--masks: expected at least one image, got none")
    strategies = _strategy_list(args.strategies, bool(masks))
    og_counts = (
        budget.og_token_counts(masks, args.grid, alpha=args.alpha, mode=args.mode) if masks else []
    )
    first_mask_image = len(args.image)
    for index, image in enumerate(images):
        tokens: dict[str, int | None] = {}
        for name in strategies:
            if name == "og":
                has_masks = index >= first_mask_image
                tokens[name] = og_counts[index - first_mask_image] if has_masks else None
            elif name == "anyres":
                tokens[name] = budget.visual_token_count(
                    name, image["height"], image["width"], unpad=args.anyres_unpad
                )
            else:
                tokens[name] = budget.visual_token_count(name, image["height"], image["width"])
        image["tokens"] = tokens
        image["cost"] = {}
        for name, n in tokens.items():
            if n is None:
                continue
            context = n + args.text_tokens
            flops = budget.prefill_flops(context, config, causal=causal, lm_head=args.lm_head)
            image["cost"][name] = {
                "context_tokens": context,
                "kv_cache_bytes": budget.kv_cache_bytes(context, config, args.dtype),
                "prefill_flops_linear": flops.linear,
                "prefill_flops_attention": flops.attention,
            }
    batches = {}
    for name in strategies:
        lengths = [img["tokens"][name] for img in images if img["tokens"][name] is not None]
        result = budget.batch_budget(
            lengths, config, text_tokens=args.text_tokens, dtype=args.dtype, causal=causal,
            lm_head=args.lm_head, context_length=args.context_length,
        )
        batches[name] = {
            **asdict(result),
            "prefill_flops": result.prefill_flops,
            "prefill_flops_padded": result.prefill_flops_padded,
        }
    return {
        "llm": asdict(config),
        "dtype": args.dtype,
        "dtype_bytes": per_elem,
        "attention": args.attention,
        "lm_head": args.lm_head,
        "text_tokens": args.text_tokens,
        "strategies": strategies,
        "images": images,
        "batch": batches,
    }


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
    lines = ("  ".join(str(c).ljust(w) for c, w in zip(line, widths)) for line in [header, *rows])
    return "\n".join(line.rstrip() for line in lines)


def mib(n_bytes: int) -> str:
    """Bytes as MiB with 3 decimals, as printed."""
    return f"{n_bytes / MIB:.3f}"


def tflops(flops: int) -> str:
    """FLOPs as TFLOPs (10^12) with 4 decimals, as printed."""
    return f"{flops / TERA:.4f}"


def render_table(data: dict[str, Any]) -> str:
    llm = data["llm"]
    head = (
        f"LLM {llm['name']}: {llm['num_hidden_layers']} layers, hidden {llm['hidden_size']}, "
        f"{llm['num_attention_heads']} heads ({llm['num_key_value_heads']} KV) x {llm['head_dim']}, "
        f"MLP {llm['intermediate_size']}, vocab {llm['vocab_size']} | KV dtype {data['dtype']} "
        f"({data['dtype_bytes']} B) | {data['attention']} attention, LM head: {data['lm_head']} | "
        f"text tokens per sample: {data['text_tokens']}"
    )
    rows = []
    for index, image in enumerate(data["images"]):
        size = f"{image['height']}x{image['width']}"
        for name in data["strategies"]:
            n = image["tokens"][name]
            if n is None:
                rows.append([str(index), size, name, "-", "-", "-", "-", image["source"]])
                continue
            cost = image["cost"][name]
            flops = cost["prefill_flops_linear"] + cost["prefill_flops_attention"]
            rows.append([
                str(index), size, name, str(n), str(cost["context_tokens"]),
                mib(cost["kv_cache_bytes"]), tflops(flops), image["source"],
            ])
    per_image = _table(
        ["image", "HxW", "strategy", "visual_tokens", "context_tokens", "kv_cache_MiB",
         "prefill_TFLOPs", "source"],
        rows,
    )
    batch_rows = []
    for name in data["strategies"]:
        b = data["batch"][name]
        batch_rows.append([
            name, str(len(b["lengths"])), str(b["total_tokens"]), str(b["max_length"]),
            str(b["padded_tokens"]), mib(b["kv_cache_bytes"]), mib(b["kv_cache_bytes_padded"]),
            tflops(b["prefill_flops"]), tflops(b["prefill_flops_padded"]),
            "-" if b["context_length"] is None else str(len(b["over_context"])),
        ])
    summary = _table(
        ["strategy", "B", "total_tokens", "max_tokens", "padded_tokens", "kv_MiB_varlen",
         "kv_MiB_padded", "TFLOPs_varlen", "TFLOPs_padded", "over_context"],
        batch_rows,
    )
    return f"{head}\n\n{per_image}\n\nbatch (varlen = packed; padded = B x max_tokens)\n{summary}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ogkernels-budget``; returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error already printed by argparse
        return int(exc.code or 0)
    try:
        if args.text_tokens < 0:
            raise ValueError(f"--text-tokens: expected an int >= 0, got {args.text_tokens}")
        data = store_summary(args) if args.store else compute(args)
    except (ValueError, TypeError, OSError, ImportError) as exc:  # MaskStoreError is a ValueError
        print(f"ogkernels-budget: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps(data, indent=2))
    else:
        print(render_store(data) if args.store else render_table(data))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
