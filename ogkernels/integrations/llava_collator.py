"""``OGLlavaCollator``: (image, masks, text) samples → one padding-free packed LLaVA batch.

Each image becomes as many ``image_token_id`` placeholders as OG-Fusion will emit for it
(``ogkernels.budget.og_token_counts``; ``V`` per image when no image of the batch has a
non-empty mask, OG-Fusion's plain path). Samples are concatenated into one row with
``position_ids`` restarting at 0, labels IGNORE on visual rows and on each sample's first
row, and transformers' ``FlashAttentionKwargs`` — the layout of
:func:`ogkernels.packing.plan_packing`, computed on the CPU with no model in the loop.

Text comes as pre-tokenised ``input_ids`` (+ ``labels``) holding one -200 placeholder, or as
a LLaVA conversation / a caption tokenised with a simple template:
- caption: ``<image>`` ``caption`` ``eos``, loss on ``caption eos``;
- conversation (LLaVA JSON ``[{"from": "human"|"gpt", "value": …}, …]``): ``bos``, then per
  turn ``"USER: " value "\\n"`` (no loss) or ``"ASSISTANT: "`` (no loss) ``value`` ``eos``
  (loss); ``<image>`` in a human turn marks where the image goes (prepended to the first
  human turn when a sample has an image but no ``<image>``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch

from .._validation import check_choice, fail
from ..downsample import parse_grid
from ..packed_masks import PackedMasks
from ..packing import IGNORE_INDEX, REFERENCE_IMAGE_TOKEN_ID, TRUNCATIONS, plan_packing

IMAGE_TAG = "<image>"
TokenCounter = Callable[[list[Any]], Sequence[int]]


def any_mask(masks: Any) -> bool:
    """True when ``masks`` (a mask tensor or :class:`PackedMasks`) has a set pixel."""
    if masks is None:
        return False
    bits = masks.bits if isinstance(masks, PackedMasks) else masks
    return bool(bits.numel()) and bool(bits.any())


def tokenize_caption(caption: str, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``[-200] + caption + [eos]``; labels IGNORE on the placeholder."""
    text = tokenizer.encode(caption, add_special_tokens=False) + _eos(tokenizer)
    ids = [REFERENCE_IMAGE_TOKEN_ID] + text
    return torch.tensor(ids, dtype=torch.int64), torch.tensor([IGNORE_INDEX] + text, dtype=torch.int64)


def tokenize_conversation(
    conversations: Sequence[Mapping[str, str]], tokenizer: Any, *, has_image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A LLaVA conversation → ``(ids, labels)`` with one -200 placeholder if ``has_image``."""
    ids: list[int] = list(_bos(tokenizer))
    labels: list[int] = [IGNORE_INDEX] * len(ids)
    placed = False
    for t, turn in enumerate(conversations):
        role, value = turn.get("from"), turn.get("value")
        if role not in ("human", "gpt") or not isinstance(value, str):
            fail(f"conversations[{t}]", "{'from': 'human' | 'gpt', 'value': str}", str(dict(turn))[:80])
        if role == "human":
            if has_image and not placed and IMAGE_TAG not in value:
                value = IMAGE_TAG + "\n" + value
            pieces = ("USER: " + value + "\n").split(IMAGE_TAG)
            if len(pieces) > 2 or (len(pieces) == 2 and (placed or not has_image)):
                fail(f"conversations[{t}]", "one <image> per sample with an image, none without", value[:80])
            for i, piece in enumerate(pieces):
                if i:
                    ids.append(REFERENCE_IMAGE_TOKEN_ID)
                    labels.append(IGNORE_INDEX)
                    placed = True
                tokens = tokenizer.encode(piece, add_special_tokens=False)
                ids += tokens
                labels += [IGNORE_INDEX] * len(tokens)
        else:
            prompt = tokenizer.encode("ASSISTANT: ", add_special_tokens=False)
            answer = tokenizer.encode(value, add_special_tokens=False) + _eos(tokenizer)
            ids += prompt + answer
            labels += [IGNORE_INDEX] * len(prompt) + answer
    if has_image and not placed:
        fail("conversations", "a human turn to hold the image", "no human turn")
    return torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if eos is not None else []


def _bos(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


@dataclass
class OGLlavaCollator:
    """Collate samples into one packed batch for an OG-Fusion LLaVA.

    Args:
        image_token_id: the model's ``config.image_token_id`` (one per visual token in the
            output ``input_ids``).
        grid: the patch grid of the vision tower, ``V`` or ``(gh, gw)`` (576 or (24, 24) for
            CLIP ViT-L/14-336).
        tokenizer: needed for ``caption`` / ``conversations`` samples (``encode``,
            ``bos_token_id``, ``eos_token_id``).
        max_length: longest packed sample (None: no limit); see ``truncation``.
        truncation: ``"error"`` or ``"drop_text_tail"`` (:mod:`ogkernels.packing`).
        token_counter: ``masks list → token counts``; default
            ``og_token_counts(masks, grid, **og_options)``. Must agree with the model's
            connector (same options).
        og_options: OG-Fusion layout options for the default counter.

    Samples (mappings): ``pixel_values`` ``(C, H, W)`` or None; ``masks`` ``(N, H, W)`` bool
    tensor / ``PackedMasks`` / None; and ``input_ids`` (+ ``labels``) with one -200
    placeholder, or ``conversations``, or ``caption``.

    Returns a dict: ``input_ids``, ``labels``, ``position_ids`` ``(1, S)`` int64;
    ``cu_seq_lens_q/k`` ``(B+1,)`` int32; ``max_length_q/k`` int; ``pixel_values``
    ``(n_images, C, H, W)`` or None; ``masks`` (list, one per image) or None.
    """

    image_token_id: int
    grid: int | tuple[int, int]
    tokenizer: Any = None
    max_length: int | None = None
    truncation: str = "error"
    token_counter: TokenCounter | None = None
    og_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.image_token_id, bool) or not isinstance(self.image_token_id, int):
            fail("image_token_id", "an int", self.image_token_id, error=TypeError)
        check_choice("truncation", self.truncation, TRUNCATIONS)
        rows, cols = parse_grid(self.grid, self.og_options.get("mode", "flat"))
        self.num_patches = rows * cols

    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not isinstance(samples, (list, tuple)) or not samples:
            fail("samples", "a non-empty list of sample mappings", samples, error=TypeError)
        ids, labels, pixels, masks, with_image = [], [], [], [], []
        for b, sample in enumerate(samples):
            sample_ids, sample_labels = self._text(b, sample)
            if bool((sample_ids == self.image_token_id).any()):
                fail(f"samples[{b}]", f"text without the image token id {self.image_token_id}", "text containing it")
            has_placeholder = bool((sample_ids == REFERENCE_IMAGE_TOKEN_ID).any())
            image = sample.get("pixel_values")
            if has_placeholder != (image is not None):
                fail(f"samples[{b}]", "an image placeholder exactly when pixel_values is given",
                     f"placeholder={has_placeholder}, pixel_values={'given' if image is not None else None}")
            if image is not None:
                pixels.append(image)
                masks.append(sample.get("masks"))
            with_image.append(image is not None)
            ids.append(sample_ids)
            labels.append(sample_labels)
        counts = iter(self.count_tokens(masks))
        image_lengths = [next(counts) if flag else 0 for flag in with_image]
        layout = plan_packing(
            ids, image_lengths, labels, max_length=self.max_length, truncation=self.truncation
        )
        return {
            "input_ids": layout.expanded_ids(self.image_token_id),
            "labels": layout.labels,
            "position_ids": layout.position_ids,
            "cu_seq_lens_q": layout.cu_seq_lens,
            "cu_seq_lens_k": layout.cu_seq_lens,
            "max_length_q": layout.max_length,
            "max_length_k": layout.max_length,
            "pixel_values": torch.stack(pixels) if pixels else None,
            "masks": masks if pixels else None,
        }

    def count_tokens(self, masks: list[Any]) -> list[int]:
        """Each image's token count: OG-Fusion's when any image has a non-empty mask (the
        connector's batch gate), else ``V`` per image (plain LLaVA path)."""
        if not masks:
            return []
        if not any(any_mask(m) for m in masks):
            return [self.num_patches] * len(masks)
        counter = self.token_counter
        if counter is None:
            from ..budget import og_token_counts

            return [int(n) for n in og_token_counts(masks, self.grid, **self.og_options)]
        counts = [int(n) for n in counter(masks)]
        if len(counts) != len(masks):
            fail("token_counter", f"{len(masks)} counts (one per image)", f"{len(counts)} counts")
        return counts

    def _text(self, b: int, sample: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "input_ids" in sample:
            ids = torch.as_tensor(sample["input_ids"], dtype=torch.int64)
            labels = sample.get("labels")
            if labels is None:
                return ids, torch.where(ids == REFERENCE_IMAGE_TOKEN_ID, IGNORE_INDEX, ids)
            return ids, torch.as_tensor(labels, dtype=torch.int64)
        if self.tokenizer is None:
            fail("tokenizer", f"a tokenizer for samples[{b}] (it has no input_ids)", None)
        if "conversations" in sample:
            return tokenize_conversation(
                sample["conversations"], self.tokenizer, has_image=sample.get("pixel_values") is not None
            )
        if "caption" in sample:
            if sample.get("pixel_values") is None:
                fail(f"samples[{b}]", "pixel_values with a caption", None)
            return tokenize_caption(sample["caption"], self.tokenizer)
        fail(f"samples[{b}]", "input_ids, conversations or caption", sorted(sample))
        raise AssertionError  # unreachable: fail raises
