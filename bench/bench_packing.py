"""Token-budget packing vs today's one-row varlen vs the reference's padded batches (issue 12,
"Measure"), side by side in one run on the CPU, and the loader with full masks vs stored bitmaps.

1. ``test_epoch``: one pass (forward + backward, fp32) over the same pool of OG-like samples
   with a mid-size random LLaVA (CLIP 168 px / patch 14 → V = 144, 2 layers of 128; Llama with
   4 layers, hidden 512, 8 heads / 4 KV heads): images of 240–480 px with 3–12 SAM2-like masks
   (OG tokens per image 170–480, mean ≈ 310), captions plus 20–200 characters of text (one
   token per character).
   * ``reference-padded``: ``B`` samples a step, the reference connector (a padded ``(B, L_max,
     D)`` block) and merge (§6, §9), the batch right-padded and attended (sdpa, causal);
   * ``varlen-one-row``: the same ``B``-sample batches packed into one row
     (``OGLlavaCollator``, ``ogkernels_varlen`` attention);
   * ``token-budget``: :class:`ogkernels.packing.TokenBudgetSampler` batches of at most ``N``
     tokens, ``N`` = the longest packed ``B``-sample row above (the same peak row, fuller steps).
   ``extra_info``: samples/s and real LLM tokens/s (text + OG tokens) of the epoch, per second
   of wall time and per second of this process's CPU time (all threads; what other jobs on a
   shared machine disturb least), LLM rows
   run, padding fraction, steps, the shortest and longest step's rows, mean budget fill, and
   the peak of each step's new CPU allocations (torch profiler memory timeline, one profiled
   pass): min / max / spread.
2. ``test_loader``: a ``DataLoader`` with 2 workers making the collated batches (text, OG token
   counts, masks) of 480×640 images with 20–60 real SA-V mask shapes (``sav_000001``, CC BY
   4.0, as ``bench_mask_store.py`` builds them), the masks read as full bit-packed masks
   (``MaskStore.get``) or as stored Φ bitmaps (``MaskStore.load_bitmaps``, V = 576):
   images/s and bytes per image handed to the training process.

Two sample mixes (``MIXES``): ``narrow`` (3–12 masks, 20–200 extra characters) and ``wide``
(1–24 masks, 20–600 characters). Run (about 3 min on 2 idle cores; ``OGKERNELS_BENCH_FULL=1`` triples the pool,
``OGKERNELS_BENCH_POOL=n`` sets it)::

    .venv/bin/python -m pytest bench/bench_packing.py -q -p no:cacheprovider
"""

from __future__ import annotations

import functools
import os
import statistics
import time

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ogkernels.integrations.hf_llava import apply_ogfusion_to_llava  # noqa: E402
from ogkernels.integrations.llava_collator import OGLlavaCollator  # noqa: E402
from ogkernels.jobs.llava_data import CharTokenizer, SyntheticCaptions, packed_lengths, reference_batch  # noqa: E402
from ogkernels.jobs.llava_model import build_tiny_llava  # noqa: E402
from ogkernels.jobs.train_metrics import batch_cost  # noqa: E402
from ogkernels.tools.reference_llava import reference_connector_like, reference_llava_forward  # noqa: E402

from .bench_training import peak_new_cpu_bytes  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore::UserWarning")

FULL = os.environ.get("OGKERNELS_BENCH_FULL") == "1"
POOL = int(os.environ.get("OGKERNELS_BENCH_POOL", 48 if FULL else 16))  # samples per epoch
BATCH = 4  # samples per step of the fixed-size paths
MODEL = dict(image_size=168, vision_hidden=128, vision_layers=2, text_hidden=512, text_layers=4, heads=8, kv_heads=4)
TOKENIZER = CharTokenizer()
PATHS = ("reference-padded", "varlen-one-row", "token-budget")
WORDS = ("object", "mask", "region", "left", "right", "colour", "shape", "near", "above", "the", "a", "blob")


#: The sample mixes: masks per image and extra characters of text per sample.
MIXES = {
    "narrow": {"masks_per_image": (3, 12), "extra_text": (20, 200)},  # OG tokens 131-441 per image (pool of 16)
    "wide": {"masks_per_image": (1, 24), "extra_text": (20, 600)},  # OG tokens 85-1,049 per image (pool of 16)
}


def og_like_samples(count: int, seed: int = 1, mix: str = "narrow") -> list[dict]:
    """Synthetic image–caption samples with SAM2-like masks and a varied amount of text."""
    spec = MIXES[mix]
    data = SyntheticCaptions(count, image_size=MODEL["image_size"], masks_per_image=spec["masks_per_image"],
                             original_sizes=(240, 480), seed=seed)  # fmt: skip
    rng = np.random.default_rng(seed)
    samples = []
    for i in range(count):
        sample = dict(data[i])
        words, text = [], 0
        target = int(rng.integers(spec["extra_text"][0], spec["extra_text"][1] + 1))
        while text < target:
            words.append(WORDS[int(rng.integers(len(WORDS)))])
            text += len(words[-1]) + 1
        sample["caption"] = sample["caption"] + ". " + " ".join(words)
        samples.append(sample)
    return samples


@functools.lru_cache(maxsize=1)
def models() -> dict:
    """The two models (the same weights) and the collator, shared by the mixes."""
    packed_model = apply_ogfusion_to_llava(build_tiny_llava("ogkernels_varlen", seed=0, **MODEL), attn_implementation=None)
    reference_model = build_tiny_llava("sdpa", seed=0, **MODEL)
    for model in (packed_model, reference_model):
        model.train()
    twin = reference_connector_like(packed_model.model.multi_modal_projector)
    collate = OGLlavaCollator.from_model(packed_model, tokenizer=TOKENIZER)
    return {"packed_model": packed_model, "reference_model": reference_model, "twin": twin, "collate": collate}


@functools.lru_cache(maxsize=2)
def setup(mix: str = "narrow") -> dict:
    """Models, collator, the mix's samples and each path's batches."""
    shared = models()
    collate = shared["collate"]
    samples = og_like_samples(POOL, mix=mix)
    fixed = [list(range(i, min(i + BATCH, POOL))) for i in range(0, POOL, BATCH)]
    packed_fixed = [collate([samples[i] for i in batch]) for batch in fixed]
    budget = max(int(b["cu_seq_lens_q"][-1]) for b in packed_fixed)
    from ogkernels.packing import TokenBudgetSampler

    lengths = packed_lengths(samples, collate)
    sampler = TokenBudgetSampler(lengths, budget, shuffle=True, seed=0)
    by_budget = list(sampler)
    return {
        **shared,
        "budget": budget,
        "lengths": lengths,
        "batches": {
            "reference-padded": [(collate([samples[i] for i in b]), reference_batch([samples[i] for i in b], TOKENIZER)) for b in fixed],
            "varlen-one-row": [(p, None) for p in packed_fixed],
            "token-budget": [(collate([samples[i] for i in b]), None) for b in by_budget],
        },
    }


def make_step(path: str, state: dict):
    """``step(packed, reference) -> loss`` for a path (gradients cleared first)."""
    if path == "reference-padded":
        model, twin = state["reference_model"], state["twin"]

        def step(packed, ref):
            model.zero_grad(set_to_none=True)
            twin.zero_grad(set_to_none=True)
            loss = reference_llava_forward(model, twin, ref["pixel_values"], ref["masks"], ref["input_ids"], ref["labels"]).loss
            loss.backward()
            return loss

        return step
    model = state["packed_model"]

    def step(packed, ref):
        model.zero_grad(set_to_none=True)
        loss = model(**packed).loss
        loss.backward()
        return loss

    return step


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mix", list(MIXES))
def test_epoch(benchmark, mix, path):
    state = setup(mix)
    batches = state["batches"][path]
    step = make_step(path, state)
    benchmark.group = (f"LLaVA epoch (fwd+bwd) of {POOL} OG-like samples ({mix} mix): B={BATCH} vs token budget "
                       f"{state['budget']}, V=144, Llama 4x512, fp32, CPU")  # fmt: skip
    step(*batches[0])  # warm-up outside the timing

    cpu_seconds = []

    def epoch():
        start = time.process_time()
        for packed, ref in batches:
            step(packed, ref)
        cpu_seconds.append(time.process_time() - start)

    benchmark.pedantic(epoch, rounds=3 if FULL else 2, iterations=1)
    seconds, cpu = benchmark.stats.stats.median, statistics.median(cpu_seconds)
    image_token_id = state["packed_model"].config.image_token_id
    costs = [batch_cost(packed, image_token_id, state["packed_model"].config) for packed, _ in batches]
    tokens = sum(c["tokens"] for c in costs)
    rows = sum(c["tokens_ref"] if path == "reference-padded" else c["tokens"] for c in costs)
    samples = sum(c["samples"] for c in costs)
    step_rows = [c["tokens_ref"] if path == "reference-padded" else c["tokens"] for c in costs]
    assert samples == POOL  # every path trains on every sample once
    peaks = [peak_new_cpu_bytes(lambda p=packed, r=ref: step(p, r)) for packed, ref in batches]
    info = {
        "samples_per_s": samples / seconds,
        "real_tokens_per_s": tokens / seconds,
        "samples_per_cpu_s": samples / cpu,  # CPU time of this process: less sensitive to a busy machine
        "real_tokens_per_cpu_s": tokens / cpu,
        "llm_rows": rows,
        "padding_fraction": 1 - tokens / rows,
        "steps": len(batches),
        "step_rows_min": min(step_rows),
        "step_rows_max": max(step_rows),
    }
    if path == "token-budget":
        info["mean_fill"] = statistics.mean(c["tokens"] / state["budget"] for c in costs)
        assert all(c["tokens"] <= state["budget"] for c in costs)
    if all(p is not None for p in peaks):
        info.update(peak_MB_min=min(peaks) / 1e6, peak_MB_max=max(peaks) / 1e6, peak_MB_spread=(max(peaks) - min(peaks)) / 1e6)
    benchmark.extra_info.update(info)


# --------------------------------------------------------------------------- loader


LOADER_IMAGES, LOADER_BATCH, GRID = 16, 4, 576


class _LoaderDataset(torch.utils.data.Dataset):
    """One training sample: a caption, a stand-in image, and the image's masks from a store,
    full (``PackedMasks``) or as stored Φ bitmaps (``MaskBitmaps``, V = 576)."""

    def __init__(self, root, keys: list[str], kind: str) -> None:
        from ogkernels.masks import MaskStore

        self.store, self.keys, self.kind = MaskStore(root), keys, kind

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int) -> dict:
        key = self.keys[index]
        masks = self.store.get(key) if self.kind == "masks" else self.store.load_bitmaps([key], GRID)[0]
        return {"pixel_values": torch.zeros(3, 1, 1), "masks": masks, "caption": "a blob"}


@functools.lru_cache(maxsize=1)
def loader_store(root: str) -> list[str]:
    from ogkernels.masks.bitmap_store import BitmapParams
    from ogkernels.masks.downsample_job import downsample_store

    from .bench_mask_store import _image_masks, _sav_masks, _write_store

    rng = np.random.default_rng(0)
    source = _sav_masks()
    images = {f"coco/train2017/{i:012d}.jpg": _image_masks(source, rng) for i in range(LOADER_IMAGES)}
    _write_store(root, images, "packbits")
    downsample_store(root, BitmapParams.of(GRID))
    return list(images)


def _handed_bytes(masks) -> int:
    """Bytes of the tensors a worker hands over for one image's masks."""
    return sum(t.nbytes for t in (getattr(masks, "bits", None), getattr(masks, "nonempty", None)) if t is not None)


LOADER_TOKENS: dict[str, int] = {}


@pytest.mark.parametrize("kind", ["masks", "bitmaps"])
def test_loader(benchmark, kind, tmp_path_factory):
    root = tmp_path_factory.getbasetemp() / "packing_loader_store"
    keys = loader_store(str(root))
    collate = OGLlavaCollator(127, grid=GRID, tokenizer=TOKENIZER)
    loader = torch.utils.data.DataLoader(_LoaderDataset(root, keys, kind), batch_size=LOADER_BATCH, num_workers=2,
                                         persistent_workers=True, collate_fn=collate)  # fmt: skip
    benchmark.group = f"DataLoader (2 workers) of collated batches, {LOADER_IMAGES} images 480x640, 20-60 SA-V masks, V={GRID}"
    list(loader)  # start the workers outside the timing

    def epoch():
        return list(loader)

    batches = benchmark.pedantic(epoch, rounds=3, iterations=1)
    handed = sum(_handed_bytes(m) for b in batches for m in b["masks"])
    LOADER_TOKENS[kind] = sum(int(b["cu_seq_lens_q"][-1]) for b in batches)
    if len(LOADER_TOKENS) == 2:  # both ran: the bitmaps give the same OG token counts as the masks
        assert LOADER_TOKENS["masks"] == LOADER_TOKENS["bitmaps"], LOADER_TOKENS
    benchmark.extra_info.update(
        images_per_s=LOADER_IMAGES / benchmark.stats.stats.median,
        handed_bytes_per_image=handed / LOADER_IMAGES,
        llm_tokens=LOADER_TOKENS[kind],
    )
