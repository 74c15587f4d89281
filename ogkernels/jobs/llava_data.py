"""Data for the main job (:mod:`ogkernels.jobs.train_llava`): synthetic image–caption samples with SAM2-like
masks, a character tokenizer for the tiny model, a LLaVA-JSON dataset with a mask store, and
the reference's padded batch format (for the baseline path).

Samples are mappings read by :class:`ogkernels.integrations.llava_collator.OGLlavaCollator`:
``pixel_values (3, H, W)``, ``masks (N, H0, W0)`` bool or ``PackedMasks`` at the image's
original resolution (never resized, as in the reference), and ``caption`` or ``conversations``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from ..integrations.llava_collator import tokenize_caption, tokenize_conversation
from ..packing import IGNORE_INDEX
from ..tools.synthetic import sam2_like_masks

COLOURS = {
    "red": (0.9, 0.1, 0.1),
    "green": (0.1, 0.8, 0.2),
    "blue": (0.1, 0.2, 0.9),
    "yellow": (0.9, 0.9, 0.1),
    "white": (0.95, 0.95, 0.95),
    "purple": (0.6, 0.1, 0.7),
}
SIZES = ("tiny", "small", "big", "huge")


class CharTokenizer:
    """Bytes of printable ASCII → ids ``3 … 97``; ``pad = 0``, ``bos = 1``, ``eos = 2``.
    The tiny model's vocabulary is 128; ids 98–127 are never produced by text (127 is the
    tiny model's ``image_token_id``)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2
    vocab_size = 98

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = [3 + ord(c) - 32 if 32 <= ord(c) < 127 else 3 for c in text]
        return ([self.bos_token_id] + ids + [self.eos_token_id]) if add_special_tokens else ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(chr(i - 3 + 32) for i in ids if 3 <= i < 98)


class SyntheticCaptions(torch.utils.data.Dataset):
    """Images of coloured SAM2-like blobs with captions naming them; deterministic per index.

    Each image has an original size drawn in ``original_sizes`` (its masks' resolution) and is
    resized to ``image_size`` for the vision tower. The caption names the colour and size of
    the largest blobs (``"a big red blob and a tiny blue blob"``), so the loss can fall.
    ``text_only_fraction`` of the samples carry no image (a plain sentence).
    """

    def __init__(
        self,
        length: int,
        *,
        image_size: int = 56,
        original_sizes: tuple[int, int] = (48, 112),
        masks_per_image: tuple[int, int] = (1, 8),
        text_only_fraction: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.length, self.image_size, self.seed = length, image_size, seed
        self.original_sizes, self.masks_per_image = original_sizes, masks_per_image
        self.text_only_fraction = text_only_fraction

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + index)
        if float(torch.rand(1, generator=g)) < self.text_only_fraction:
            return {"conversations": [{"from": "human", "value": "say hi"}, {"from": "gpt", "value": "hi"}]}
        lo, hi = self.original_sizes
        height, width = (int(x) for x in torch.randint(lo, hi + 1, (2,), generator=g))
        count = int(torch.randint(self.masks_per_image[0], self.masks_per_image[1] + 1, (1,), generator=g))
        masks = sam2_like_masks(count, height, width, generator=g, min_area=0.01, max_area=0.4)
        names = list(COLOURS)
        colours = [names[int(i)] for i in torch.randint(len(names), (count,), generator=g)]
        image = torch.full((3, height, width), 0.2) + 0.05 * torch.randn(3, height, width, generator=g)
        for mask, name in zip(masks, colours):
            image[:, mask] = torch.tensor(COLOURS[name])[:, None]
        pixel_values = F.interpolate(image[None], size=(self.image_size, self.image_size), mode="bilinear")[0]
        areas = masks.flatten(1).float().mean(1)
        order = torch.argsort(areas, descending=True)[:2].tolist()
        phrases = [f"a {SIZES[min(int(areas[i] * 12), 3)]} {colours[i]} blob" for i in order]
        return {
            "pixel_values": (pixel_values - 0.5) / 0.25,
            "masks": masks,
            "caption": " and ".join(phrases),
        }


class LlavaJsonDataset(torch.utils.data.Dataset):
    """A LLaVA-format JSON list (``{"image": relative path, "conversations": [...]}``) with
    images under ``image_root`` and, optionally, masks in an ``ogkernels.masks`` store.

    The store is opened lazily in each worker (``MaskStore`` is fork-safe). Missing masks follow
    ``missing_masks``: ``"reference"`` gives the reference trainer's fallback, one all-ones
    3×3 mask (⇒ every patch token), ``"none"`` gives no masks (the image then contributes its
    global row only in an OG-Fusion batch).
    """

    def __init__(
        self,
        json_path: str | os.PathLike,
        image_root: str | os.PathLike,
        image_processor: Any,
        *,
        mask_store: str | os.PathLike | None = None,
        missing_masks: str = "reference",
    ) -> None:
        with open(json_path, encoding="utf-8") as handle:
            self.entries = json.load(handle)
        if not isinstance(self.entries, list):
            raise ValueError(f"json_path: expected a JSON list of samples, got {type(self.entries).__name__}")
        if missing_masks not in ("reference", "none"):
            raise ValueError(f"missing_masks: expected 'reference' or 'none', got {missing_masks!r}")
        self.image_root = Path(image_root)
        self.image_processor = image_processor
        self.mask_store_path = mask_store
        self.missing_masks = missing_masks
        self._store = None

    def __len__(self) -> int:
        return len(self.entries)

    def _masks(self, key: str) -> Any:
        if self.mask_store_path is None:
            return None
        if self._store is None:
            from ogkernels.masks import MaskStore

            self._store = MaskStore(self.mask_store_path)
        if key in self._store:
            return self._store.get(key)
        return torch.ones(1, 3, 3, dtype=torch.bool) if self.missing_masks == "reference" else None

    def length_sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as :func:`packed_lengths` needs it: text and masks, the image not
        read (``pixel_values`` an empty stand-in)."""
        entry = self.entries[index]
        sample: dict[str, Any] = {"conversations": entry["conversations"]}
        key = entry.get("image")
        if key is not None:
            sample["pixel_values"] = torch.empty(0)
            sample["masks"] = self._masks(key)
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        entry = self.entries[index]
        sample: dict[str, Any] = {"conversations": entry["conversations"]}
        key = entry.get("image")
        if key is not None:
            from ogkernels.masks.images import load_image_rgb

            image = load_image_rgb(self.image_root / key, key)
            sample["pixel_values"] = self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]
            sample["masks"] = self._masks(key)
        return sample


def packed_lengths(dataset: Any, collate: Any) -> list[int]:
    """Every sample's packed length — text tokens plus its image's OG tokens, after the
    collator's ``max_length`` truncation — as ``collate`` (an ``OGLlavaCollator``) packs it:
    the lengths a :class:`ogkernels.packing.TokenBudgetSampler` groups by
    (``OGLlavaCollator.sample_length``: exact, or an upper bound where the batch gate
    would shrink an image inside a batch).

    Uses ``dataset.length_sample(i)`` where the dataset has it (text and masks without
    reading the image), else ``dataset[i]``."""
    get = getattr(dataset, "length_sample", dataset.__getitem__)
    return [collate.sample_length(get(index), index=index) for index in range(len(dataset))]


def reference_batch(
    samples: Sequence[Mapping[str, Any]], tokenizer: Any, pad_token_id: int = 0
) -> dict[str, Any]:
    """The reference trainer's batch: ``input_ids (B, T)`` right-padded with ``pad_token_id``
    (-200 where the image goes), ``labels`` padded with IGNORE, ``attention_mask`` None (the
    reference's pad-id mismatch makes it all ones, §9), ``pixel_values``, dense ``masks``."""
    ids, labels, pixels, masks = [], [], [], []
    for sample in samples:
        if "caption" in sample:
            sample_ids, sample_labels = tokenize_caption(sample["caption"], tokenizer)
        else:
            sample_ids, sample_labels = tokenize_conversation(
                sample["conversations"], tokenizer, has_image=sample.get("pixel_values") is not None
            )
        ids.append(sample_ids)
        labels.append(sample_labels)
        if sample.get("pixel_values") is not None:
            pixels.append(sample["pixel_values"])
            m = sample.get("masks")
            masks.append(m.unpack() if hasattr(m, "unpack") else m)
    longest = max(x.numel() for x in ids)
    input_ids = torch.full((len(ids), longest), pad_token_id, dtype=torch.int64)
    label_block = torch.full((len(ids), longest), IGNORE_INDEX, dtype=torch.int64)
    for b, (x, y) in enumerate(zip(ids, labels)):
        input_ids[b, : x.numel()] = x
        label_block[b, : y.numel()] = y
    return {
        "input_ids": input_ids,
        "labels": label_block,
        "attention_mask": None,
        "pixel_values": torch.stack(pixels) if pixels else None,
        "masks": masks if pixels else None,
    }
