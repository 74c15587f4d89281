"""``ogkernels-train``: train a LLaVA with OG-Fusion on padding-free packed batches.

Tiny random model, synthetic data, CPU, no download (the main job; about a minute on 2 cores)::

    ogkernels-train                                  # or: python -m ogkernels.jobs.train_llava
    HF_HUB_OFFLINE=1 python -m integration.train_llava    # the same, in a checkout

Real model and data (a LLaVA-HF checkpoint, LLaVA JSON, images, an ``ogkernels.masks`` store)::

    torchrun --nproc_per_node 8 -m ogkernels.jobs.train_llava \\
        --model llava-hf/llava-1.5-7b-hf --data llava_mix665k.json --image-root images/ \\
        --mask-store masks/ --dtype bf16 --token-budget 16384 --steps 10000 --lora 128

    accelerate launch --use_deepspeed --zero_stage 2 -m ogkernels.jobs.train_llava --accelerate ...

Each step logs the loss, real LLM tokens/s and samples/s, and what the packed batch saves
against the reference's padded batches (every image padded to the batch's ``L_max`` OG tokens
and spliced with its pad rows, the batch then padded to its longest sequence — reference §6,
§9). The job leaves its output folder (``--output-dir``, default
``runs/train_llava-<UTC timestamp>``): ``metrics.jsonl`` (one line per micro-batch, see
:mod:`ogkernels.jobs.train_metrics`), ``metrics.png`` (loss, tokens/s and LLM rows per step),
and the trained model (``save_pretrained``: an ``OGLlavaForConditionalGeneration`` that
``from_pretrained`` reloads; with ``--lora`` the merged model, the adapter in ``adapter/``).

``--token-budget N`` batches with :class:`ogkernels.packing.TokenBudgetSampler` over every
sample's packed length (text + OG tokens, computed up front) instead of ``--batch-size``: each
step's packed row holds at most ``N`` tokens. ``--baseline`` trains the reference path
(reference connector + reference merge, padded batches) instead; ``--compare`` trains both on
the same batches, one after the other, and plots them side by side. ``--verify-save`` reloads
the saved model (own class and ``AutoModelForImageTextToText``) and checks its logits are
bit-identical. A progress bar replaces the step lines when stderr is a terminal (or with
``--progress``).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from ..integrations.hf_llava import apply_ogfusion_to_llava
from ..integrations.llava_collator import OGLlavaCollator
from ..options import OGTokenOptions
from ..tools.reference_llava import reference_llava_forward
from .llava_data import CharTokenizer, LlavaJsonDataset, SyntheticCaptions, packed_lengths, reference_batch
from .llava_model import (
    apply_lora,
    build_tiny_llava,
    default_attention,
    equip_with_reference_weights,
    num_patches,
    reference_connector,
    register_attention,
    set_trainable,
    tiny_llava_config,
    unwrap,
)
from .train_metrics import (
    MetricsLog,
    Progress,
    batch_cost,
    padding_cost,
    peak_memory,
    plot_metrics,
    read_metrics,
    reset_peak_memory,
    step_record,
)

PROG = "ogkernels-train"
TINY_IMAGE_TOKEN_ID = 127
COST_KEYS = ("tokens", "tokens_ref", "attention_flops", "attention_flops_ref", "projector_rows",
             "projector_rows_ref", "sum_sq", "sum_sq_ref")  # fmt: skip


class JobSetupError(ValueError):
    """An argument or path the job cannot start with (exit status 2)."""


# ------------------------------------------------------------------------------------ arguments


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (built from config) or a LLaVA-HF checkpoint path/name")
    p.add_argument("--data", default=None, help="LLaVA-format JSON (default: synthetic captions)")
    p.add_argument("--image-root", default=".", help="folder the JSON's image paths are relative to")
    p.add_argument("--mask-store", default=None, help="ogkernels.masks store with the images' SAM2 masks")
    p.add_argument("--missing-masks", choices=("reference", "none"), default="reference")
    p.add_argument("--synthetic-samples", type=int, default=512)
    p.add_argument("--text-only-fraction", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=60, help="optimizer steps")
    p.add_argument("--batch-size", type=int, default=8, help="samples per step and rank (without --token-budget)")
    p.add_argument("--token-budget", type=int, default=None, metavar="N",
                   help="batches of at most N packed tokens (TokenBudgetSampler) instead of --batch-size")
    p.add_argument("--oversize", choices=("error", "drop"), default="error",
                   help="with --token-budget: a sample longer than N stops the job (error) or is dropped")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-length", type=int, default=2048, help="longest packed sample")
    p.add_argument("--truncation", choices=("error", "drop_text_tail"), default="drop_text_tail")
    p.add_argument("--trainable", choices=("all", "connector", "connector+llm"), default="all",
                   help="which parameters train (ignored with --lora)")
    p.add_argument("--lora", type=int, default=None, metavar="R",
                   help="LoRA of rank R on the LLM's projections (alpha 2R, dropout 0.05), the connector trained in full")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--attn-implementation", default=None,
                   help="ogkernels_varlen | sdpa | eager | flash_attention_2 "
                        "(default: flash_attention_2 on CUDA with flash-attn, else ogkernels_varlen)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--baseline", action="store_true", help="train the reference path (padded batches) instead")
    mode.add_argument("--compare", action="store_true", help="train the packed and the reference path on the same batches")
    p.add_argument("--accelerate", action="store_true", help="use accelerate (DeepSpeed via `accelerate launch`)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--output-dir", default=None, help="metrics, plot and model (default: runs/train_llava-<timestamp>)")
    p.add_argument("--no-save", action="store_true", help="do not save the model (metrics and plot only)")
    p.add_argument("--verify-save", action="store_true", help="reload the saved model and check bit-identical logits")
    p.add_argument("--progress", action="store_true", default=None, help="a progress bar even when stderr is not a TTY")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112, help="tiny model: vision input size (patch 14, 8x8 patches)")
    return p


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def check_args(args: argparse.Namespace) -> None:
    """Raise :class:`JobSetupError` for values the job cannot run with."""
    for name in ("steps", "batch_size", "grad_accum", "log_every", "synthetic_samples", "max_length"):
        if getattr(args, name) < 1:
            raise JobSetupError(f"--{name.replace('_', '-')}: expected an int >= 1, got {getattr(args, name)}")
    if args.token_budget is not None and args.token_budget < 1:
        raise JobSetupError(f"--token-budget: expected an int >= 1, got {args.token_budget}")
    if args.lora is not None and args.lora < 1:
        raise JobSetupError(f"--lora: expected a rank >= 1, got {args.lora}")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise JobSetupError(f"--lr: expected a positive number, got {args.lr}")
    if (args.baseline or args.compare) and (args.accelerate or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        raise JobSetupError("--baseline and --compare run in a single process (they are the timing baseline)")
    if args.verify_save and args.no_save:
        raise JobSetupError("--verify-save needs the model saved (drop --no-save)")
    for name in ("data", "mask_store"):
        path = getattr(args, name)
        if path is not None and not os.path.exists(path):
            raise JobSetupError(f"--{name.replace('_', '-')}: {path!r} does not exist")
    if args.data is not None and args.model == "tiny":
        raise JobSetupError("--data needs a real --model (its image processor sizes the images)")


def default_output_dir() -> Path:
    return Path("runs") / time.strftime("train_llava-%Y%m%d-%H%M%S", time.gmtime())


# ------------------------------------------------------------------------------------ setup


def init_distributed(device_arg: str | None) -> tuple[int, int, torch.device]:
    """``(rank, world, device)``; starts a process group under torchrun (gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg is not None:
        device = torch.device(device_arg)
    else:
        device = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if world > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(args: argparse.Namespace, device: torch.device, mode: str) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, image_processor)``; ``mode="packed"``: the model equipped with
    OG-Fusion (an ``OGLlavaForConditionalGeneration``), ``"reference"``: left plain."""
    attn = attention_of(args, device)
    register_attention(attn)
    if args.model == "tiny":
        model = build_tiny_llava(attn, seed=args.seed, image_size=args.image_size)
        tokenizer, image_processor = CharTokenizer(), None
    else:
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=DTYPES[args.dtype], attn_implementation=attn)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        image_processor = AutoImageProcessor.from_pretrained(args.model)
    model.to(device=device, dtype=DTYPES[args.dtype])
    if mode == "packed":
        model = apply_ogfusion_to_llava(model, attn_implementation=None)  # keep the attention chosen here
    set_trainable(model, args.trainable)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tokenizer, image_processor


def attention_of(args: argparse.Namespace, device: torch.device) -> str:
    return args.attn_implementation or default_attention(device)


def build_dataset(args: argparse.Namespace, model: Any, image_processor: Any) -> Any:
    if args.data is None:
        return SyntheticCaptions(
            args.synthetic_samples,
            image_size=model.config.vision_config.image_size,
            text_only_fraction=args.text_only_fraction,
            seed=args.seed,
        )
    return LlavaJsonDataset(
        args.data, args.image_root, image_processor, mask_store=args.mask_store, missing_masks=args.missing_masks
    )


def packed_collator(model: Any, tokenizer: Any, image_processor: Any, args: argparse.Namespace) -> OGLlavaCollator:
    """The packed batches' collator, with the model's OG settings (``from_model``). A
    transformers tokenizer with a chat template goes through the processor (its template,
    labels on assistant turns); otherwise the fixed ``USER:/ASSISTANT:`` template. A model
    not equipped (the reference run) gets the default options, which are the reference's."""
    options = dict(max_length=args.max_length, truncation=args.truncation)
    if getattr(model.config, "og_options", None) is None:
        return OGLlavaCollator(
            model.config.image_token_id, grid=num_patches(model), tokenizer=tokenizer, og_options=OGTokenOptions(), **options
        )
    if getattr(tokenizer, "chat_template", None) is None:
        image_processor = None
    return OGLlavaCollator.from_model(model, tokenizer=tokenizer, image_processor=image_processor, **options)


def make_loader(dataset: Any, collate: Any, args: argparse.Namespace, rank: int, world: int, lengths: list[int] | None) -> Any:
    """Fixed ``--batch-size`` batches (shuffled, ``DistributedSampler`` under DDP), or with
    ``lengths`` token-budget batches from :class:`ogkernels.packing.TokenBudgetSampler`."""
    if lengths is not None:
        from ..packing import TokenBudgetSampler

        sampler = TokenBudgetSampler(
            lengths, args.token_budget, shuffle=True, seed=args.seed, num_replicas=world, rank=rank, oversize=args.oversize
        )
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=args.num_workers)
    sampler = None
    if world > 1:
        sampler = torch.utils.data.distributed.DistributedSampler(dataset, world, rank, shuffle=True, seed=args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=args.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        collate_fn=collate,
        num_workers=args.num_workers,
        generator=generator,
        drop_last=True,
    )


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=True)
        elif key == "masks" and value is not None:
            out[key] = [None if m is None else m.to(device, non_blocking=True) for m in value]
        else:
            out[key] = value
    return out


# ------------------------------------------------------------------------------------ loop


@dataclass
class RunResult:
    """One mode's training run: its summary, the trained model (unwrapped of DDP, still
    PEFT-wrapped with ``--lora``), its reference connector (reference mode) and collator."""

    mode: str
    summary: dict[str, Any]
    model: Any
    reference: Any
    collate: OGLlavaCollator
    tokenizer: Any
    dataset: Any
    records: list[dict[str, Any]] = field(default_factory=list)


def train(args: argparse.Namespace, mode: str = "packed", log: MetricsLog | None = None) -> RunResult:
    """Train one mode (``"packed"`` or ``"reference"``) for ``args.steps`` steps."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rank, world, device = init_distributed(args.device)
    torch.manual_seed(args.seed + rank)
    model, tokenizer, image_processor = build_model(args, device, mode)
    dataset = build_dataset(args, model, image_processor)
    image_token_id = model.config.image_token_id
    og_collate = packed_collator(model, tokenizer, image_processor, args)
    reference = reference_connector(core_model=model) if mode == "reference" else None
    if args.lora is not None:
        model = apply_lora(model, args.lora)

    lengths = None
    if args.token_budget is not None:
        start = time.perf_counter()
        lengths = packed_lengths(dataset, og_collate)
        if rank == 0:
            print(f"[train_llava] packed lengths of {len(lengths)} samples in {time.perf_counter() - start:.2f} s "
                  f"(min {min(lengths)}, mean {sum(lengths) / len(lengths):.0f}, max {max(lengths)}); "
                  f"token budget {args.token_budget}", flush=True)

    def collate(samples):
        packed = og_collate(samples)
        if mode == "reference":
            return {"packed": packed, "reference": reference_batch(samples, tokenizer)}
        return packed

    loader = make_loader(dataset, collate, args, rank, world, lengths)
    params = [p for p in model.parameters() if p.requires_grad]
    if reference is not None:
        params += list(reference.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)

    accelerator = None
    if args.accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator()  # accumulation is done here (no_sync below), not by accelerate
        model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
        device = accelerator.device
    elif world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=True
        )
    core = unwrap(model)
    model.train()

    totals = dict.fromkeys(COST_KEYS, 0)
    records: list[dict[str, Any]] = []
    step, micro = 0, 0
    if rank == 0:
        path = "reference (padded)" if mode == "reference" else "OG-Fusion packed"
        batching = f"token budget {args.token_budget}" if lengths is not None else f"batch={args.batch_size}/rank"
        print(f"[train_llava] {path} | model={args.model} attn={core.config.text_config._attn_implementation} "
              f"device={device} world={world} {batching} steps={args.steps}"
              f"{f' lora r={args.lora}' if args.lora else ''}", flush=True)
    progress = Progress(args.steps, mode, enabled=args.progress if rank == 0 else False)
    iterator = _forever(loader)
    while step < args.steps:
        batch = next(iterator)
        packed = batch["packed"] if mode == "reference" else batch
        cost = batch_cost(packed, image_token_id, core.config)
        for key in totals:
            totals[key] += cost[key]
        reset_peak_memory(device)
        start = time.perf_counter()
        sync = contextlib.nullcontext()
        if (micro + 1) % args.grad_accum:  # not the last micro-batch: no gradient all-reduce
            if accelerator is not None:
                sync = accelerator.no_sync(model)
            elif world > 1:
                sync = model.no_sync()
        with sync:
            if mode == "reference":
                ref = to_device(batch["reference"], device)
                loss = reference_llava_forward(
                    core, reference, ref["pixel_values"], ref["masks"], ref["input_ids"], ref["labels"]
                ).loss
            else:
                loss = model(**to_device(packed, device)).loss
            scaled = loss / args.grad_accum
            if accelerator is not None:
                accelerator.backward(scaled)
            else:
                scaled.backward()
        micro += 1
        stepped = micro % args.grad_accum == 0
        if stepped:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        record = step_record(mode, step, micro, float(loss.detach()), cost, elapsed, args.token_budget, peak_memory(device))
        records.append(record)
        if rank == 0:
            if log is not None:
                log.write(record)
            progress.update(int(stepped), record)
            if not progress.active and micro % (args.log_every * args.grad_accum) == 0:
                print(f"step {step:4d}/{args.steps} loss {record['loss']:.4f} | LLM tokens {cost['tokens']:5d} "
                      f"(reference {cost['tokens_ref']:5d}) | {record['tokens_per_s']:8.0f} tok/s "
                      f"{record['samples_per_s']:6.1f} samples/s | {elapsed * 1e3:6.0f} ms", flush=True)
    progress.close()

    totals = _all_reduce(totals, world, device)
    checksum = float(sum(p.detach().double().sum() for p in params))
    if world > 1:
        print(f"[rank {rank}] trainable parameter checksum {checksum:.10e}", flush=True)
    summary = summarize(records, totals)
    summary.update(world_size=world, parameter_checksum=checksum, mode=mode)
    if rank == 0:
        _print_summary(summary)
    return RunResult(mode, summary, model.module if hasattr(model, "module") else model, reference, og_collate,
                     tokenizer, dataset, records)


def summarize(records: list[dict[str, Any]], totals: dict[str, int]) -> dict[str, Any]:
    """Loss, step time (median and mean), throughput (LLM rows/s: median of the steps; real
    tokens/s and samples/s: totals over time), all after the first step, and the cost totals."""
    losses = [r["loss"] if r["loss"] is not None else math.nan for r in records]
    warm = records[1:] if len(records) > 1 else records
    return {
        "first_loss": losses[0],
        "last_loss": sum(losses[-5:]) / len(losses[-5:]),
        "step_time_s": statistics.median(r["time_s"] for r in warm),
        "mean_step_time_s": sum(r["time_s"] for r in warm) / len(warm),
        "tokens_per_s": statistics.median(r["llm_rows"] / r["time_s"] for r in warm),
        "real_tokens_per_s": sum(r["tokens"] for r in warm) / sum(r["time_s"] for r in warm),
        "samples_per_s": sum(r["samples"] for r in warm) / sum(r["time_s"] for r in warm),
        "padding_fraction": 1 - sum(r["tokens"] for r in records) / max(sum(r["llm_rows"] for r in records), 1),
        "max_step_tokens": max(r["tokens"] for r in records),
        **totals,
        "token_ratio": totals["tokens"] / max(totals["tokens_ref"], 1),
        "attention_flops_ratio": totals["attention_flops"] / max(totals["attention_flops_ref"], 1),
        "projector_rows_ratio": totals["projector_rows"] / max(totals["projector_rows_ref"], 1),
        "sum_sq_ratio": totals["sum_sq"] / max(totals["sum_sq_ref"], 1),
    }


def _forever(loader: Any):
    epoch = 0
    while True:
        for owner in (getattr(loader, "batch_sampler", None), getattr(loader, "sampler", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(epoch)
                break
        yield from loader
        epoch += 1


def _all_reduce(totals: dict[str, int], world: int, device: torch.device) -> dict[str, int]:
    if world == 1 or not torch.distributed.is_initialized():
        return totals
    keys = sorted(totals)
    values = torch.tensor([float(totals[k]) for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return {k: int(v) for k, v in zip(keys, values.tolist())}


def _print_summary(s: dict[str, Any]) -> None:
    def saved(ours: float, ref: float) -> str:
        return f"{ours:.3g} vs {ref:.3g} (saved {100 * (1 - ours / ref):.1f}%, {ref / ours:.2f}x fewer)" if ours else "n/a"

    print(f"[train_llava] summary ({s['mode']})", flush=True)
    print(f"  loss {s['first_loss']:.4f} -> {s['last_loss']:.4f} (mean of last 5 steps)")
    print(f"  step time {s['step_time_s'] * 1e3:.0f} ms median ({s['mean_step_time_s'] * 1e3:.0f} ms mean), "
          f"{s['real_tokens_per_s']:.0f} real LLM tokens/s, {s['samples_per_s']:.1f} samples/s "
          f"(after the first step), padding {100 * s['padding_fraction']:.1f}% of LLM rows")
    print(f"  LLM tokens (ours vs reference padded): {saved(s['tokens'], s['tokens_ref'])}")
    print(f"  attention FLOPs (causal, all layers):  {saved(s['attention_flops'], s['attention_flops_ref'])}")
    print(f"  sum L_i^2 vs B*L_max^2:                {saved(s['sum_sq'], s['sum_sq_ref'])}")
    print(f"  projector rows:                        {saved(s['projector_rows'], s['projector_rows_ref'])}", flush=True)


# ------------------------------------------------------------------------------------ save


def trained_model(result: RunResult) -> Any:
    """The run's model as a plain ``OGLlavaForConditionalGeneration`` (LoRA merged, the
    reference run's connector weights in an ``OGFusion``)."""
    model = result.model
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    if result.mode == "reference":
        model = equip_with_reference_weights(model, result.reference)
    return model


def save_model(result: RunResult, out: Path) -> Any:
    """``save_pretrained`` into ``out`` (with ``--lora`` the adapter first, into
    ``out/adapter``); returns the saved model."""
    if hasattr(result.model, "merge_and_unload"):
        result.model.save_pretrained(out / "adapter")
    model = trained_model(result)
    model.save_pretrained(out)
    if hasattr(result.tokenizer, "save_pretrained"):
        result.tokenizer.save_pretrained(out)
    return model


def verify_saved(model: Any, result: RunResult, out: Path, samples: int = 4) -> dict[str, bool]:
    """Reload ``out`` with ``OGLlavaForConditionalGeneration`` and
    ``AutoModelForImageTextToText``; ``{class name: logits bit-identical to model's}`` on a
    packed batch of the first ``samples`` samples (eval mode)."""
    from transformers import AutoModelForImageTextToText

    from ..integrations.hf_llava import OGLlavaForConditionalGeneration

    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    attn = model.config.text_config._attn_implementation
    collate = OGLlavaCollator.from_model(model, tokenizer=result.collate.tokenizer,
                                         max_length=result.collate.max_length, truncation=result.collate.truncation)
    batch = to_device(collate([result.dataset[i] for i in range(min(samples, len(result.dataset)))]), device)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        expected = model(**batch).logits
        verdicts = {}
        for cls in (OGLlavaForConditionalGeneration, AutoModelForImageTextToText):
            reloaded = cls.from_pretrained(out, dtype=dtype, attn_implementation=attn).to(device).eval()
            verdicts[cls.__name__] = type(reloaded) is OGLlavaForConditionalGeneration and torch.equal(
                reloaded(**batch).logits, expected
            )
    model.train(was_training)
    return verdicts


# ------------------------------------------------------------------------------------ main


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the job; returns the (packed, or the reference's with ``--baseline``) run's
    summary, with ``output_dir``, ``metrics``/``plot`` paths, ``saved``/``verified`` and, with
    ``--compare``, the reference's summary under ``compare``. Raises
    :class:`JobSetupError` for unusable arguments."""
    args = parse_args(argv)
    check_args(args)
    rank = int(os.environ.get("RANK", "0"))
    modes = ["reference"] if args.baseline else ["packed", "reference"] if args.compare else ["packed"]
    out = Path(args.output_dir) if args.output_dir else default_output_dir()
    log = None
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.jsonl").unlink(missing_ok=True)
        log = MetricsLog(out / "metrics.jsonl")
    results = []
    try:
        for mode in modes:
            results.append(train(args, mode, log))
    finally:
        if log is not None:
            log.close()
    first = results[0]
    summary = dict(first.summary, output_dir=str(out), saved=False, verified=None)
    if rank == 0:
        summary["metrics"] = str(out / "metrics.jsonl")
        summary["plot"] = str(plot_metrics(read_metrics(out / "metrics.jsonl"), out / "metrics.png"))
        if args.compare:
            ref = results[1].summary
            summary["compare"] = ref
            print(f"[train_llava] packed vs reference padded on the same batches: "
                  f"{first.summary['samples_per_s'] / ref['samples_per_s']:.2f}x samples/s, "
                  f"{first.summary['real_tokens_per_s'] / ref['real_tokens_per_s']:.2f}x real tokens/s, "
                  f"padding {100 * first.summary['padding_fraction']:.1f}% vs {100 * ref['padding_fraction']:.1f}%",
                  flush=True)
        if not args.no_save:
            from transformers.utils import logging as hf_logging

            hf_logging.disable_progress_bar()  # the job's own lines say what was saved and reloaded
            model = save_model(first, out)
            summary["saved"] = True
            if args.verify_save:
                summary["verified"] = verdicts = verify_saved(model, first, out)
                status = ", ".join(f"{name} {'bit-identical' if ok else 'DIFFERENT'}" for name, ok in verdicts.items())
                print(f"[train_llava] reloaded {out}: logits {status}", flush=True)
        print(f"[train_llava] wrote {out}/ (metrics.jsonl, metrics.png{'' if args.no_save else ', model'})", flush=True)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def cli(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``ogkernels-train``: 0 done, 1 the saved model did not reload
    bit-identically, 2 unusable arguments or paths (a one-line error)."""
    try:
        summary = main(argv)
    except JobSetupError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2
    verified = summary.get("verified")
    return 1 if verified and not all(verified.values()) else 0


__all__ = ["JobSetupError", "build_tiny_llava", "cli", "main", "padding_cost", "tiny_llava_config", "train"]

if __name__ == "__main__":
    sys.exit(cli())
