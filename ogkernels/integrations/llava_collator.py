"""``OGLlavaCollator``: (image, masks, text) samples → one padding-free packed LLaVA batch.

Each image becomes as many ``image_token_id`` placeholders as OG-Fusion will emit for it (the
processor's count, :func:`~ogkernels.integrations.hf_processor.image_token_counts`: ``V`` per
image on the plain path). Samples are concatenated into one row with ``position_ids``
restarting at 0, labels IGNORE on visual rows and on each sample's first row, and
transformers' ``FlashAttentionKwargs`` — the layout of :func:`ogkernels.packing.plan_packing`,
computed on the CPU with no model in the loop.

Build it with :meth:`OGLlavaCollator.from_model`, which reads the OG options, the patch grid
and the image token from the model (never given twice) and, with a transformers
tokenizer, tokenises conversations with the processor's chat template (labels on the
assistant turns only, the end-of-turn token included).

Text comes as
- pre-tokenised ``input_ids`` (+ ``labels``) with one image placeholder (the model's
  ``image_token_id``, or the reference's -200) per sample with an image;
- ``messages`` (``[{"role": "user" | "assistant" | "system", "content": str | blocks}]``) or
  ``conversations`` (LLaVA JSON ``[{"from": "human" | "gpt", "value": …}]``), where
  ``<image>`` (or an image block) marks the image; without one, the image goes first in the
  first user turn;
- ``caption``: ``<image> caption eos``, loss on ``caption eos`` (pre-training).

``Trainer`` with its defaults (``remove_unused_columns=True``) keeps only the model's forward
inputs of each sample (``input_ids``, ``labels``, ``pixel_values``, ``masks``): tokenise in
the dataset with :meth:`OGLlavaCollator.encode` (or set ``remove_unused_columns=False``).

Without a transformers tokenizer (a plain ``encode``/``bos_token_id``/``eos_token_id``
tokenizer) conversations use a fixed template: ``bos``, then per turn ``"USER: " value "\\n"``
(no loss) or ``"ASSISTANT: "`` (no loss) ``value`` ``eos`` (loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch

from .._validation import check_choice, fail
from ..options import OGTokenOptions
from ..packing import IGNORE_INDEX, REFERENCE_IMAGE_TOKEN_ID, TRUNCATIONS, plan_packing
from .hf_processor import (
    OGLlavaProcessor,
    check_matches_model,
    image_token_counts,
    model_og_settings,
    plain_token_count,
)

IMAGE_TAG = "<image>"
TEXT_KEYS = ("input_ids", "messages", "conversations", "caption")
ROLES = {"human": "user", "gpt": "assistant", "system": "system"}
TokenCounter = Callable[[list[Any]], Sequence[int]]


def tokenize_caption(caption: str, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``[-200] + caption + [eos]``; labels IGNORE on the placeholder."""
    text = tokenizer.encode(caption, add_special_tokens=False) + _eos(tokenizer)
    ids = [REFERENCE_IMAGE_TOKEN_ID] + text
    return torch.tensor(ids, dtype=torch.int64), torch.tensor([IGNORE_INDEX] + text, dtype=torch.int64)


def tokenize_conversation(
    conversations: Sequence[Mapping[str, str]], tokenizer: Any, *, has_image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A LLaVA conversation → ``(ids, labels)`` with the fixed template (module docstring)
    and one -200 placeholder if ``has_image``."""
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


def chat_messages(conversation: Sequence[Mapping[str, Any]], image_token: str, *, has_image: bool) -> list[dict]:
    """LLaVA JSON turns or chat messages → chat messages, ``<image>`` written as
    ``image_token``; the image put first in the first user turn when none is marked."""
    messages, images = [], 0
    for t, turn in enumerate(conversation):
        if "from" in turn:
            role, content = ROLES.get(turn.get("from")), turn.get("value")
        else:
            role, content = turn.get("role"), turn.get("content")
        if role not in ("user", "assistant", "system") or not isinstance(content, (str, list)):
            fail(f"conversations[{t}]", "a chat turn (role user/assistant/system, str or block content)", str(dict(turn))[:80])
        if isinstance(content, str):
            content = content.replace(IMAGE_TAG, image_token)
            images += content.count(image_token)
        else:
            images += sum(isinstance(b, Mapping) and b.get("type") == "image" for b in content)
        messages.append({"role": role, "content": content})
    if has_image and images == 0:
        first = next((m for m in messages if m["role"] == "user"), None)
        if first is None:
            fail("conversations", "a user turn to hold the image", "no user turn")
        content = first["content"]
        first["content"] = image_token + "\n" + content if isinstance(content, str) else [{"type": "image"}, *content]
        images = 1
    if images != int(has_image):
        fail("conversations", "one image per sample with an image, none without", f"{images} images (has_image={has_image})")
    return messages


def chat_ids_and_labels(
    conversation: Sequence[Mapping[str, Any]], processor: OGLlavaProcessor, *, has_image: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A conversation → ``(ids, labels)`` through ``processor``'s chat template, one image
    token (unexpanded) if ``has_image``; labels on the assistant turns' text and their
    end-of-turn token, IGNORE elsewhere."""
    messages = chat_messages(conversation, processor.image_token, has_image=has_image)
    text = processor.apply_chat_template(messages, tokenize=False)
    spans = assistant_spans(messages, processor, text)
    tokenizer = processor.tokenizer
    bos = getattr(tokenizer, "bos_token", None)
    encoded = tokenizer(
        text, add_special_tokens=not (bos and text.startswith(bos)), return_offsets_mapping=True
    )
    ids = torch.tensor(encoded["input_ids"], dtype=torch.int64)
    supervised = torch.tensor(
        [end > start and any(start < e and end > s for s, e in spans) for start, end in encoded["offset_mapping"]],
        dtype=torch.bool,
    )
    return ids, torch.where(supervised & (ids != processor.image_token_id), ids, IGNORE_INDEX)


def assistant_spans(messages: list[dict], processor: OGLlavaProcessor, text: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns in ``text`` (the rendered conversation): each
    turn is what its rendering adds to the rendering of the turns before it plus the
    generation prompt."""
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        if i == 0:
            fail("conversations[0]", "a user or system turn before the first assistant turn", "an assistant turn")
        before = processor.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True)
        through = processor.apply_chat_template(messages[: i + 1], tokenize=False)
        if not (through.startswith(before) and text.startswith(through)):
            fail(
                "processor.chat_template",
                "a template whose rendering of the first turns is a prefix of the whole conversation's "
                "(how the assistant turns are found)",
                f"one that renders turn {i} differently",
            )
        spans.append((len(before), len(through)))
    return spans


def _eos(tokenizer: Any) -> list[int]:
    eos = getattr(tokenizer, "eos_token_id", None)
    return [int(eos)] if eos is not None else []


def _bos(tokenizer: Any) -> list[int]:
    bos = getattr(tokenizer, "bos_token_id", None)
    return [int(bos)] if bos is not None else []


@dataclass
class OGLlavaCollator:
    """Collate samples into one packed batch for an OG-Fusion LLaVA.

    Prefer :meth:`from_model`. Fields (given directly, all but the processor path):
        image_token_id: the model's ``config.image_token_id`` (one per visual row in the
            output ``input_ids``).
        grid: the vision features' ``V`` (576 for CLIP ViT-L/14-336), or the options' grid.
        tokenizer: for ``caption`` / ``conversations`` samples (``encode``,
            ``bos_token_id``, ``eos_token_id``; the fixed template).
        max_length: longest packed sample (None: no limit); see ``truncation``.
        truncation: ``"error"`` or ``"drop_text_tail"`` (:mod:`ogkernels.packing`).
        token_counter: ``masks list → token counts`` instead of the connector's rule.
        og_options: ``OGTokenOptions`` (or its fields as a mapping) of the model's connector.
        processor: an :class:`OGLlavaProcessor`; it then supplies the image token, grid,
            options, tokenizer and chat template (giving any of them too is an error).

    Samples (mappings): ``pixel_values`` ``(C, H, W)`` (or ``image``, run through the
    processor's image processor) or None; ``masks`` ``(N, H, W)`` bool / ``PackedMasks`` /
    bitmaps / None; and one of ``input_ids`` (+ ``labels``), ``messages``,
    ``conversations``, ``caption``.

    Returns a dict: ``input_ids``, ``labels``, ``position_ids`` ``(1, S)`` int64;
    ``cu_seq_lens_q/k`` ``(B+1,)`` int32; ``max_length_q/k`` int; ``pixel_values``
    ``(n_images, C, H, W)`` or None; ``masks`` (list, one per image) or None; ``image_rows``
    (int: the image placeholders, so the model sizes its image rows without a host read).
    """

    image_token_id: int | None = None
    grid: int | tuple[int, int] | None = None
    tokenizer: Any = None
    max_length: int | None = None
    truncation: str = "error"
    token_counter: TokenCounter | None = None
    og_options: OGTokenOptions | Mapping[str, Any] | None = None
    processor: OGLlavaProcessor | None = None

    def __post_init__(self) -> None:
        check_choice("truncation", self.truncation, TRUNCATIONS)
        if self.processor is not None:
            if not isinstance(self.processor, OGLlavaProcessor):
                fail("processor", "an OGLlavaProcessor", self.processor, error=TypeError)
            for name in ("image_token_id", "grid", "tokenizer", "token_counter", "og_options"):
                if getattr(self, name) is not None:
                    fail(name, "None with a processor (it holds the model's OG settings and the tokenizer)", "a value", error=TypeError)
            self.image_token_id = self.processor.image_token_id
            self.grid = self.processor.grid
            self.tokenizer = self.processor.tokenizer
            self.og_options = self.processor.options
        if isinstance(self.image_token_id, bool) or not isinstance(self.image_token_id, int):
            fail("image_token_id", "an int", self.image_token_id, error=TypeError)
        if self.grid is None:
            fail("grid", "the vision features' V (or the options' grid)", None, error=TypeError)
        if isinstance(self.grid, list):
            self.grid = tuple(self.grid)
        options = self.og_options
        if not isinstance(options, OGTokenOptions):
            options = OGTokenOptions.resolve(None, **dict(options or {}))
        self.og_options = options
        self.num_patches = plain_token_count(self.grid, options)

    @classmethod
    def from_model(
        cls,
        model: Any,
        processor: OGLlavaProcessor | None = None,
        *,
        tokenizer: Any = None,
        image_processor: Any = None,
        max_length: int | None = None,
        truncation: str = "error",
    ) -> "OGLlavaCollator":
        """A collator with ``model``'s OG settings: through ``processor`` (checked against
        the model: a difference fails here, naming it), or one built from ``tokenizer`` and
        ``image_processor``, or — for a plain tokenizer — the fixed template."""
        if processor is not None:
            if tokenizer is not None or image_processor is not None:
                fail("tokenizer", "None with a processor (it has its own)", "a value", error=TypeError)
            check_matches_model(processor, model)
            return cls(max_length=max_length, truncation=truncation, processor=processor)
        from transformers import PreTrainedTokenizerBase

        if isinstance(tokenizer, PreTrainedTokenizerBase) and image_processor is not None:
            processor = OGLlavaProcessor.from_model(model, tokenizer=tokenizer, image_processor=image_processor)
            return cls(max_length=max_length, truncation=truncation, processor=processor)
        settings = model_og_settings(model)
        return cls(
            settings["image_token_id"],
            settings["grid"],
            tokenizer,
            max_length,
            truncation,
            og_options=OGTokenOptions.from_dict(settings["og_options"]),
        )

    # ------------------------------------------------------------------------------------------
    def __call__(self, samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        if not isinstance(samples, (list, tuple)) or not samples:
            fail("samples", "a non-empty list of sample mappings", samples, error=TypeError)
        encoded = [self.encode(sample, index=b) for b, sample in enumerate(samples)]
        with_image = [item["pixel_values"] is not None for item in encoded]
        pixels = [item["pixel_values"] for item in encoded if item["pixel_values"] is not None]
        masks = [item["masks"] for item in encoded if item["pixel_values"] is not None]
        counts = iter(self.count_tokens(masks))
        layout = plan_packing(
            [item["input_ids"] for item in encoded],
            [next(counts) if flag else 0 for flag in with_image],
            [item["labels"] for item in encoded],
            image_token_id=self.image_token_id,
            max_length=self.max_length,
            truncation=self.truncation,
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
            "image_rows": int(layout.image_lengths.sum()),
        }

    def encode(self, sample: Mapping[str, Any], index: int = 0) -> dict[str, Any]:
        """One sample → ``input_ids`` / ``labels`` (1-D int64, one ``image_token_id`` where the
        image goes), ``pixel_values`` ``(C, H, W)`` or None, ``masks``: what the collator
        packs, and what a dataset can return for ``Trainer``'s default column filter."""
        name = f"samples[{index}]"
        if not isinstance(sample, Mapping):
            fail(name, "a mapping", sample, error=TypeError)
        pixel_values = sample.get("pixel_values")
        if pixel_values is None and self._has_image(name, sample):
            pixel_values = self.processor.image_processor(images=sample["image"], return_tensors="pt")["pixel_values"][0]
        ids, labels = self._ids_and_labels(name, sample, has_image=pixel_values is not None)
        return {"input_ids": ids, "labels": labels, "pixel_values": pixel_values, "masks": sample.get("masks")}

    def sample_length(self, sample: Mapping[str, Any], index: int = 0) -> int:
        """The packed length of one sample (text tokens after its image's expansion): what
        :class:`~ogkernels.batch_sampler.TokenBudgetSampler` needs per sample.

        Packed as ``__call__`` packs it (``max_length`` and ``truncation`` applied, their errors
        raised). Equal to its span in any batch, except where the connector's batch rules
        shrink an image's rows (the batch gate, ``maskless="reference"``, ``max_batch_tokens``):
        an image alone never has fewer rows than inside a batch, so this is then an upper bound
        and a token budget still holds.
        """
        name = f"samples[{index}]"
        if not isinstance(sample, Mapping):
            fail(name, "a mapping", sample, error=TypeError)
        has_image = self._has_image(name, sample)  # no image processing: only the counts matter
        ids, _ = self._ids_and_labels(name, sample, has_image=has_image)
        layout = plan_packing(
            [ids],
            [self.count_tokens([sample.get("masks")])[0] if has_image else 0],
            image_token_id=self.image_token_id,
            max_length=self.max_length,
            truncation=self.truncation,
        )
        return layout.total_length

    def count_tokens(self, masks: list[Any]) -> list[int]:
        """Each image's token count, as the model's connector emits them."""
        if not masks:
            return []
        if self.token_counter is None:
            return image_token_counts(masks, len(masks), self.grid, self.og_options)
        counts = [int(n) for n in self.token_counter(masks)]
        if len(counts) != len(masks):
            fail("token_counter", f"{len(masks)} counts (one per image)", f"{len(counts)} counts")
        return counts

    def _has_image(self, name: str, sample: Mapping[str, Any]) -> bool:
        """Whether ``sample`` has an image (``pixel_values``, or an ``image`` for the processor)."""
        if sample.get("pixel_values") is not None:
            return True
        if sample.get("image") is None:
            return False
        if self.processor is None:
            fail(f"{name}['image']", "pixel_values, or a collator with a processor (to process the image)", "an image")
        return True

    def _ids_and_labels(self, name: str, sample: Mapping[str, Any], *, has_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The sample's text with one unexpanded ``image_token_id`` iff ``has_image``; labels
        IGNORE on it."""
        ids, labels = self._text(name, sample, has_image=has_image)
        ids = torch.where(ids == REFERENCE_IMAGE_TOKEN_ID, self.image_token_id, ids)
        placeholders = int((ids == self.image_token_id).sum())
        if placeholders != int(has_image):
            fail(
                name,
                f"one image placeholder ({self.image_token_id}, unexpanded) exactly when an image is given",
                f"{placeholders} placeholders, pixel_values={'given' if has_image else None}",
            )
        return ids, torch.where(ids == self.image_token_id, IGNORE_INDEX, labels)

    def _text(self, name: str, sample: Mapping[str, Any], *, has_image: bool) -> tuple[torch.Tensor, torch.Tensor]:
        if "input_ids" in sample:
            ids = _token_ids(f"{name}['input_ids']", sample["input_ids"])
            labels = sample.get("labels")
            if labels is None:
                return ids, ids.clone()
            labels = _token_ids(f"{name}['labels']", labels)
            if labels.shape != ids.shape:
                fail(f"{name}['labels']", f"{ids.numel()} labels (one per input id)", labels)
            return ids, labels
        key = next((k for k in TEXT_KEYS if k in sample), None)
        if key is None:
            fail(
                name,
                "input_ids, messages, conversations or caption (under Trainer's remove_unused_columns=True, "
                "tokenise in the dataset with OGLlavaCollator.encode)",
                sorted(sample),
            )
        if self.tokenizer is None:
            fail("tokenizer", f"a tokenizer for {name} (it has no input_ids)", None)
        if key == "caption":
            if not has_image:
                fail(name, "pixel_values with a caption", None)
            return tokenize_caption(sample["caption"], self.tokenizer)
        if self.processor is not None:
            return chat_ids_and_labels(sample[key], self.processor, has_image=has_image)
        if key == "messages":
            fail(f"{name}['messages']", "a collator with a processor (chat template)", "no processor")
        return tokenize_conversation(sample[key], self.tokenizer, has_image=has_image)


def _token_ids(argument: str, value: Any) -> torch.Tensor:
    """A 1-D int64 tensor from a list of ints or an integer tensor (floats and bools refused)."""
    try:
        ids = torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError):
        fail(argument, "a 1-D sequence of int token ids", value, error=TypeError)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        fail(argument, "integer token ids", ids, error=TypeError)
    if ids.dim() != 1:
        fail(argument, "a 1-D sequence of token ids", ids)
    return ids.to(torch.int64)
