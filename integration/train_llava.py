"""Train a LLaVA with OG-Fusion on padding-free packed batches (transformers + ogkernels).

Tiny model, synthetic data, CPU, under 2 minutes (no download)::

    HF_HUB_OFFLINE=1 python -m integration.train_llava

Real model and data (a LLaVA-HF checkpoint, LLaVA JSON, images, an ``ogkernels.masks`` store)::

    torchrun --nproc_per_node 8 -m integration.train_llava \\
        --model llava-hf/llava-1.5-7b-hf --data llava_mix665k.json --image-root images/ \\
        --mask-store masks/ --dtype bf16 --batch-size 4 --steps 10000 --trainable connector

    accelerate launch --use_deepspeed --zero_stage 2 -m integration.train_llava --accelerate ...

Each step prints the loss, LLM tokens/s, and what the packed batch saved against the
reference's padded batches (every image padded to the batch's ``L_max`` OG tokens and spliced
with its pad rows, the batch then padded to its longest sequence — reference §6, §9): LLM
tokens, attention FLOPs (``Σ L_i²``-type vs ``B · L_max²``-type, via
``ogkernels.budget.batch_budget``) and projector rows. ``--baseline`` trains the reference
path instead (reference connector + reference merge), for timing comparisons.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import sys
import time
from typing import Any, Sequence

import torch

if __package__ in (None, ""):  # run as a file: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from integration.llava_data import CharTokenizer, LlavaJsonDataset, SyntheticCaptions, reference_batch  # noqa: E402
from ogkernels.budget import batch_budget  # noqa: E402
from ogkernels.integrations.hf_llava import (  # noqa: E402
    apply_ogfusion_to_llava,
    copy_llava_projector,
    reference_llava_forward,
)
from ogkernels.integrations.llava_collator import OGLlavaCollator  # noqa: E402
from ogkernels.reference import ReferenceOGFusion  # noqa: E402

TINY_IMAGE_TOKEN_ID = 127


# ------------------------------------------------------------------------------------ model


def tiny_llava_config(
    *,
    image_size: int = 56,
    patch_size: int = 14,
    vision_hidden: int = 64,
    vision_layers: int = 2,
    text_hidden: int = 128,
    text_layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab_size: int = 128,
) -> Any:
    """A small ``LlavaConfig``: CLIP vision tower (``(image_size / patch_size)²`` patches),
    Llama language model with grouped-query attention, ``image_token_id = vocab_size - 1``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        image_size=image_size,
        patch_size=patch_size,
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=heads,
        projection_dim=vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=4096,
        use_cache=False,
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=vocab_size - 1,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )


def build_tiny_llava(attn_implementation: str = "sdpa", seed: int = 0, **config: Any) -> Any:
    """A randomly initialised tiny ``LlavaForConditionalGeneration`` (no download)."""
    from transformers import LlavaForConditionalGeneration

    _register_attention(attn_implementation)
    torch.manual_seed(seed)
    return LlavaForConditionalGeneration._from_config(tiny_llava_config(**config), attn_implementation=attn_implementation)


def _register_attention(name: str) -> None:
    if name == "ogkernels_varlen":
        from ogkernels.integrations.hf_attention import register_varlen_attention

        register_varlen_attention()


def default_attention(device: torch.device) -> str:
    """``flash_attention_2`` on CUDA with flash-attn installed, else ``ogkernels_varlen``.

    ``sdpa`` is exact on packed batches too (transformers isolates the samples through the
    packed ``position_ids``), but it materialises one block-diagonal ``S × S`` mask over the
    whole packed row and attends densely: ``(Σ L_i)²`` work instead of ``Σ L_i²``
    (measured 3.3× slower than ``ogkernels_varlen`` on the mid-size CPU benchmark)."""
    from ogkernels.attention import flash_attn_available

    return "flash_attention_2" if device.type == "cuda" and flash_attn_available() else "ogkernels_varlen"


def num_patches(model: Any) -> int:
    vision = model.config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


# ------------------------------------------------------------------------------------ cost


def padding_cost(image_lengths: Sequence[int], text_lengths: Sequence[int], config: Any) -> dict[str, int]:
    """LLM tokens, attention FLOPs and projector rows of a packed batch and of the reference's
    padded batch for the same samples (``image_lengths[b]`` = 0: no image).

    Reference (§6, §9): every image gets ``L_max`` rows (pad rows attended), then the batch is
    padded to its longest sequence (attended too, §9's pad-id quirk): ``B × S_ref`` tokens and
    ``B`` dense ``S_ref``-long sequences. Packed: ``Σ L_b`` tokens, each sample attends itself.
    """
    longest_image = max(image_lengths, default=0)
    ref_image_rows = [longest_image if n > 0 else 0 for n in image_lengths]
    ours = batch_budget(list(image_lengths), config, text_tokens=list(text_lengths))
    ref = batch_budget(ref_image_rows, config, text_tokens=list(text_lengths))
    return {
        "tokens": ours.total_tokens,
        "tokens_ref": ref.padded_tokens,
        "attention_flops": ours.prefill_flops_attention,
        "attention_flops_ref": ref.prefill_flops_attention_padded,
        "projector_rows": sum(image_lengths),
        "projector_rows_ref": sum(ref_image_rows),
        "sum_sq": sum(n * n for n in ours.lengths),
        "sum_sq_ref": len(ours.lengths) * ref.max_length**2,
    }


def batch_cost(batch: dict[str, Any], image_token_id: int, config: Any) -> dict[str, int]:
    """:func:`padding_cost` of a packed batch made by ``OGLlavaCollator``."""
    cu = batch["cu_seq_lens_q"].long()
    lengths = cu[1:] - cu[:-1]
    is_image = (batch["input_ids"][0] == image_token_id).long()
    sample = torch.repeat_interleave(torch.arange(lengths.numel()), lengths)
    image_rows = torch.zeros(lengths.numel(), dtype=torch.long).index_add_(0, sample, is_image)
    return padding_cost(image_rows.tolist(), (lengths - image_rows).tolist(), config)


# ------------------------------------------------------------------------------------ setup


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny", help="'tiny' (built from config) or a LLaVA-HF checkpoint path/name")
    p.add_argument("--data", default=None, help="LLaVA-format JSON (default: synthetic captions)")
    p.add_argument("--image-root", default=".", help="folder the JSON's image paths are relative to")
    p.add_argument("--mask-store", default=None, help="ogkernels.masks store with the images' SAM2 masks")
    p.add_argument("--missing-masks", choices=("reference", "none"), default="reference")
    p.add_argument("--synthetic-samples", type=int, default=512)
    p.add_argument("--text-only-fraction", type=float, default=0.0)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=8, help="samples per step and rank")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--max-length", type=int, default=2048, help="longest packed sample")
    p.add_argument("--truncation", choices=("error", "drop_text_tail"), default="drop_text_tail")
    p.add_argument("--trainable", choices=("all", "connector", "connector+llm"), default="all")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    p.add_argument("--attn-implementation", default=None,
                   help="ogkernels_varlen | sdpa | eager | flash_attention_2 "
                        "(default: flash_attention_2 on CUDA with flash-attn, else ogkernels_varlen)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--baseline", action="store_true", help="train the reference path (padded batches) instead")
    p.add_argument("--accelerate", action="store_true", help="use accelerate (DeepSpeed via `accelerate launch`)")
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--output-dir", default=None, help="save the connector's state dict here at the end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=112, help="tiny model: vision input size (patch 14, 8x8 patches)")
    return p.parse_args(argv)


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


def build(args: argparse.Namespace, device: torch.device) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, dataset)``."""
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype]
    attn = args.attn_implementation or default_attention(device)
    _register_attention(attn)
    if args.model == "tiny":
        model = build_tiny_llava(attn, seed=args.seed, image_size=args.image_size)
        tokenizer, processor = CharTokenizer(), None
    else:
        from transformers import AutoImageProcessor, AutoTokenizer, LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.model, dtype=dtype, attn_implementation=attn)
        tokenizer = AutoTokenizer.from_pretrained(args.model)
        processor = AutoImageProcessor.from_pretrained(args.model)
    model.to(device=device, dtype=dtype)
    if not args.baseline:
        apply_ogfusion_to_llava(model)
    set_trainable(model, args.trainable)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.data is None:
        dataset = SyntheticCaptions(
            args.synthetic_samples,
            image_size=model.config.vision_config.image_size,
            text_only_fraction=args.text_only_fraction,
            seed=args.seed,
        )
    else:
        if processor is None:
            raise SystemExit("--data needs a real --model (its image processor sizes the images)")
        dataset = LlavaJsonDataset(
            args.data, args.image_root, processor, mask_store=args.mask_store, missing_masks=args.missing_masks
        )
    return model, tokenizer, dataset


def set_trainable(model: Any, which: str) -> None:
    """``all``; ``connector`` (stage 1: projector and BOM); ``connector+llm`` (stage 2, full)."""
    for name, param in model.named_parameters():
        if which == "all":
            param.requires_grad_(True)
        elif which == "connector":
            param.requires_grad_(".multi_modal_projector." in name or name.startswith("model.multi_modal_projector"))
        else:
            param.requires_grad_(not name.startswith("model.vision_tower"))


def make_loader(dataset: Any, collate: Any, args: argparse.Namespace, rank: int, world: int) -> Any:
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


def train(args: argparse.Namespace) -> dict[str, Any]:
    """Run the training loop; returns a summary (losses, timings, cost totals)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    rank, world, device = init_distributed(args.device)
    torch.manual_seed(args.seed + rank)
    model, tokenizer, dataset = build(args, device)
    image_token_id = model.config.image_token_id
    og_collate = OGLlavaCollator(
        image_token_id, grid=num_patches(model), tokenizer=tokenizer, max_length=args.max_length, truncation=args.truncation
    )
    reference = reference_connector(core_model=model) if args.baseline else None

    def collate(samples):
        packed = og_collate(samples)
        if args.baseline:
            return {"packed": packed, "reference": reference_batch(samples, tokenizer)}
        return packed

    loader = make_loader(dataset, collate, args, rank, world)
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
    core = model.module if hasattr(model, "module") else model
    model.train()

    totals = {k: 0 for k in ("tokens", "tokens_ref", "attention_flops", "attention_flops_ref",
                             "projector_rows", "projector_rows_ref", "sum_sq", "sum_sq_ref")}
    losses, times, step_tokens = [], [], []
    step, micro = 0, 0
    if rank == 0:
        path = "reference (padded)" if args.baseline else "OG-Fusion packed"
        print(f"[train_llava] {path} | model={args.model} attn={core.config.text_config._attn_implementation} "
              f"device={device} world={world} batch={args.batch_size}/rank steps={args.steps}", flush=True)
    iterator = _forever(loader)
    while step < args.steps:
        batch = next(iterator)
        packed = batch["packed"] if args.baseline else batch
        cost = batch_cost(packed, image_token_id, core.config)
        for key in totals:
            totals[key] += cost[key]
        start = time.perf_counter()
        sync = contextlib.nullcontext()
        if (micro + 1) % args.grad_accum:  # not the last micro-batch: no gradient all-reduce
            if accelerator is not None:
                sync = accelerator.no_sync(model)
            elif world > 1:
                sync = model.no_sync()
        with sync:
            if args.baseline:
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
        if micro % args.grad_accum == 0:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - start
        losses.append(float(loss.detach()))
        times.append(elapsed)
        tokens = cost["tokens_ref"] if args.baseline else cost["tokens"]
        step_tokens.append(tokens)
        if rank == 0 and micro % (args.log_every * args.grad_accum) == 0:
            print(f"step {step:4d}/{args.steps} loss {losses[-1]:.4f} | LLM tokens {cost['tokens']:5d} "
                  f"(reference {cost['tokens_ref']:5d}) | {tokens / elapsed:8.0f} tok/s | {elapsed * 1e3:6.0f} ms", flush=True)

    totals = _all_reduce(totals, world, device)
    checksum = float(sum(p.detach().double().sum() for p in params))
    if world > 1:
        print(f"[rank {rank}] trainable parameter checksum {checksum:.10e}", flush=True)
    warm = times[1:] if len(times) > 1 else times
    warm_tokens = step_tokens[1:] if len(step_tokens) > 1 else step_tokens
    summary = {
        "first_loss": losses[0],
        "last_loss": sum(losses[-5:]) / len(losses[-5:]),
        "step_time_s": statistics.median(warm),
        "mean_step_time_s": sum(warm) / len(warm),
        "tokens_per_s": statistics.median(n / t for n, t in zip(warm_tokens, warm)),
        **totals,
        "token_ratio": totals["tokens"] / max(totals["tokens_ref"], 1),
        "attention_flops_ratio": totals["attention_flops"] / max(totals["attention_flops_ref"], 1),
        "projector_rows_ratio": totals["projector_rows"] / max(totals["projector_rows_ref"], 1),
        "sum_sq_ratio": totals["sum_sq"] / max(totals["sum_sq_ref"], 1),
        "world_size": world,
        "parameter_checksum": checksum,
    }
    if rank == 0:
        _print_summary(summary)
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            connector = reference if args.baseline else core.model.multi_modal_projector
            torch.save(connector.state_dict(), os.path.join(args.output_dir, "connector.pt"))
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


def reference_connector(core_model: Any) -> ReferenceOGFusion:
    """The baseline's connector: a reference OG-Fusion with the model's projector weights."""
    projector = core_model.model.multi_modal_projector
    first = projector.linear_1
    reference = ReferenceOGFusion(first.in_features, first.out_features)
    copy_llava_projector(projector, reference.mm_projector, core_model.config)
    return reference.to(device=first.weight.device, dtype=first.weight.dtype)


def _forever(loader: Any):
    epoch = 0
    while True:
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
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

    print("[train_llava] summary", flush=True)
    print(f"  loss {s['first_loss']:.4f} -> {s['last_loss']:.4f} (mean of last 5 steps)")
    print(f"  step time {s['step_time_s'] * 1e3:.0f} ms median ({s['mean_step_time_s'] * 1e3:.0f} ms mean), "
          f"{s['tokens_per_s']:.0f} LLM tokens/s median (after the first step)")
    print(f"  LLM tokens (ours vs reference padded): {saved(s['tokens'], s['tokens_ref'])}")
    print(f"  attention FLOPs (causal, all layers):  {saved(s['attention_flops'], s['attention_flops_ref'])}")
    print(f"  sum L_i^2 vs B*L_max^2:                {saved(s['sum_sq'], s['sum_sq_ref'])}")
    print(f"  projector rows:                        {saved(s['projector_rows'], s['projector_rows_ref'])}", flush=True)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.steps < 1 or args.batch_size < 1 or args.grad_accum < 1:
        raise SystemExit("--steps, --batch-size and --grad-accum must be >= 1")
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise SystemExit("--lr must be a positive number")
    if args.baseline and (args.accelerate or int(os.environ.get("WORLD_SIZE", "1")) > 1):
        raise SystemExit("--baseline runs in a single process (it is the timing baseline)")
    return train(args)


if __name__ == "__main__":
    main()
