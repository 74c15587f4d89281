"""``OGLlavaProcessor``: image processor + tokenizer + the OG options, as one HF processor.

``processor(text=..., images=..., masks=..., return_tensors="pt", padding=True)`` tokenises the
text with each image's placeholder (the tokenizer's own image token) repeated as many times as
the model's OG-Fusion emits rows for that image, so ``model(**inputs)`` and
``model.generate(**inputs)`` merge the right rows. The counts are the connector's own rule
(:func:`image_token_counts`): ``V`` per image without masks (the plain LLaVA path), otherwise
``ogkernels.budget.og_token_counts(masks, grid, options)`` — the reference's batch gate
(``OGTokenOptions.gate``) and the rule for an image whose entry is None
(``OGTokenOptions.maskless``) included.

The options are never given twice: :meth:`OGLlavaProcessor.from_model` reads them (and the
patch grid and the image token) from the model's config, and
:func:`check_matches_model` names the first difference when a processor made elsewhere is
used with a model.

``apply_chat_template`` renders image blocks (``{"type": "image"}``) as the image token, also
with plain-text templates such as Llama 3's: when a template does not write the image token
for image blocks itself, each message's blocks are joined into one string first (an image
block becomes the image token on its own line).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping, Sequence

import torch
from transformers import ProcessorMixin
from transformers.image_utils import make_flat_list_of_images

from .._validation import fail
from ..options import OGTokenOptions, parse_grid

#: A LLaVA-1.5 style template (``USER: … ASSISTANT: …``) for tokenizers without one.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}USER: {{ message['content'] }}\n"
    "{% else %}ASSISTANT: {{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT: {% endif %}"
)
DEFAULT_IMAGE_TOKEN = "<image>"


def image_token_counts(
    masks: Sequence[Any] | None, num_images: int, grid: int | tuple[int, int], options: OGTokenOptions
) -> list[int]:
    """Each image's connector rows, as ``OGFusion(options)`` emits them.

    ``masks``: None (the plain path for every image) or one entry per image (masks,
    ``PackedMasks``, bitmaps or None). ``grid``: the features' ``V`` (or the options' grid).
    """
    if masks is None:
        return [plain_token_count(grid, options)] * num_images
    from ..budget import og_token_counts

    return [int(n) for n in og_token_counts(list(masks), grid, options)]


def plain_token_count(grid: int | tuple[int, int] | list[int], options: OGTokenOptions) -> int:
    """``V``: the rows per image of the plain LLaVA path, for ``grid`` (``V`` or ``(gh, gw)``)."""
    rows, cols = parse_grid(grid, options.mode)
    return rows * cols


def as_mask_list(masks: Any, num_images: int) -> list[Any] | None:
    """``masks`` as one entry per image: a list as given, a ``(B, N, H, W)`` tensor as its
    ``B`` images, a single image's masks (one image) as a one-entry list."""
    if masks is None:
        return None
    if isinstance(masks, torch.Tensor) and masks.dim() == 4:
        masks = list(masks.unbind(0))
    elif not isinstance(masks, (list, tuple)):
        masks = [masks]
    if len(masks) != num_images:
        fail("masks", f"{num_images} entries (one per image; an entry may be None)", f"{len(masks)} entries")
    return list(masks)


def model_og_settings(model: Any) -> dict[str, Any]:
    """What a processor or collator must agree on with ``model`` (an
    ``OGLlavaForConditionalGeneration``, or a PEFT wrapper of one): ``og_options`` (dict),
    ``grid`` and ``image_token_id``, read from its config."""
    config = getattr(model, "config", None)
    if getattr(config, "og_options", None) is None:
        fail(
            "model",
            "an OGLlavaForConditionalGeneration (from_pretrained, or apply_ogfusion_to_llava)",
            type(model).__name__,
            error=TypeError,
        )
    options = OGTokenOptions.from_dict(config.og_options)
    vision = config.vision_config
    side = vision.image_size // vision.patch_size
    num_patches = side * side + (0 if config.vision_feature_select_strategy == "default" else 1)
    return {
        "og_options": options.to_dict(),
        "grid": options.grid if options.grid is not None else num_patches,
        "image_token_id": int(config.image_token_id),
    }


def check_matches_model(processor: "OGLlavaProcessor", model: Any) -> None:
    """Raise ``ValueError`` naming the first OG setting in which ``processor`` differs from
    ``model``'s config (options, grid, image token)."""
    expected = model_og_settings(model)
    have = {
        "og_options": processor.og_options,
        "grid": processor.grid,
        "image_token_id": processor.image_token_id,
    }
    for name, value in expected.items():
        if name == "og_options":
            changed = sorted(k for k in value if value[k] != have[name].get(k))
            if changed:
                first = changed[0]
                fail(
                    f"processor.og_options[{first!r}]",
                    f"{value[first]!r}, the model's (build it with OGLlavaProcessor.from_model(model))",
                    repr(have[name].get(first)),
                )
        elif _normal(value) != _normal(have[name]):
            fail(f"processor.{name}", f"{value!r}, the model's (build it with OGLlavaProcessor.from_model(model))", repr(have[name]))


def _normal(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class OGLlavaProcessor(ProcessorMixin):
    """A LLaVA processor whose image placeholders match OG-Fusion's token counts.

    Args:
        image_processor: the vision tower's image processor (e.g. ``CLIPImageProcessor``).
        tokenizer: a transformers tokenizer holding the image token.
        chat_template: Jinja template; default the tokenizer's, else
            :data:`DEFAULT_CHAT_TEMPLATE`.
        og_options: ``OGTokenOptions`` or its ``to_dict()`` (default: the reference's).
        grid: the vision features' ``V`` (576 for CLIP ViT-L/14-336), or the options' grid.
        image_token: default ``tokenizer.image_token`` if set, else ``"<image>"``.

    Prefer :meth:`from_model`, which takes ``og_options``, ``grid`` and the image token from
    the model. Saved and loaded with ``save_pretrained`` / ``from_pretrained``
    (``processor_config.json`` holds the OG settings).
    """

    return_mm_token_type_ids = True  # marks the image rows, so a generated image id stays a token

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        og_options: OGTokenOptions | Mapping[str, Any] | None = None,
        grid: int | Sequence[int] = 576,
        image_token: str | None = None,
        **kwargs: Any,
    ) -> None:
        if chat_template is None:
            chat_template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)
        if isinstance(og_options, OGTokenOptions):
            og_options = og_options.to_dict()
        self.og_options = OGTokenOptions.from_dict(og_options or {}).to_dict()
        options = self.options
        self.grid = list(grid) if isinstance(grid, (list, tuple)) else grid
        plain_token_count(tuple(self.grid) if isinstance(self.grid, list) else self.grid, options)  # validates
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == getattr(tokenizer, "unk_token_id", None):
            fail("tokenizer", f"a tokenizer with the image token {self.image_token!r} in its vocabulary", "none")
        self._image_counts: list[int] | None = None

    @classmethod
    def from_model(
        cls, model: Any, *, tokenizer: Any, image_processor: Any, chat_template: str | None = None
    ) -> "OGLlavaProcessor":
        """A processor with ``model``'s OG options and grid; the image token is the
        tokenizer's (``tokenizer.image_token``, else the token of the model's
        ``image_token_id``), and its id must be the model's ``image_token_id``."""
        settings = model_og_settings(model)
        image_token_id = settings.pop("image_token_id")
        image_token = getattr(tokenizer, "image_token", None) or tokenizer.convert_ids_to_tokens(image_token_id)
        if tokenizer.convert_tokens_to_ids(image_token) != image_token_id:
            fail(
                "tokenizer",
                f"the model's image_token_id {image_token_id} for its image token {image_token!r}",
                f"id {tokenizer.convert_tokens_to_ids(image_token)}",
            )
        return cls(image_processor, tokenizer, chat_template=chat_template, image_token=image_token, **settings)

    @property
    def options(self) -> OGTokenOptions:
        return OGTokenOptions.from_dict(self.og_options)

    @property
    def num_patches(self) -> int:
        """``V``: the plain LLaVA path's rows per image."""
        return plain_token_count(self._grid_arg(), self.options)

    def _grid_arg(self) -> int | tuple[int, int]:
        return tuple(self.grid) if isinstance(self.grid, list) else self.grid

    def count_image_tokens(self, masks: Sequence[Any] | None, num_images: int) -> list[int]:
        """Each image's placeholder count for a batch (see :func:`image_token_counts`)."""
        return image_token_counts(masks, num_images, self._grid_arg(), self.options)

    # -- processing ---------------------------------------------------------------------------
    def __call__(self, images: Any = None, text: Any = None, masks: Any = None, **kwargs: Any):
        """``text`` (str or list) with one image token per image, ``images``, and ``masks``
        (None, or one entry per image: ``(N, H, W)`` masks at the image's original size,
        ``PackedMasks``, bitmaps or None). Returns a ``BatchFeature``: ``input_ids``,
        ``attention_mask``, ``mm_token_type_ids`` (1 on image rows), ``pixel_values`` and
        ``masks`` (the list, when given)."""
        num_images = 0 if images is None else len(make_flat_list_of_images(images))
        masks = as_mask_list(masks, num_images)
        if masks is not None and images is None:
            fail("masks", "None without images", f"{len(masks)} entries")
        self._image_counts = self.count_image_tokens(masks, num_images)
        try:
            out = super().__call__(images=images, text=text, **kwargs)
        finally:
            self._image_counts = None
        if masks is not None:
            out["masks"] = masks
        return out

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs: Any) -> str:
        return self.image_token * self._image_counts[image_idx]

    # -- chat templates -----------------------------------------------------------------------
    def apply_chat_template(self, conversation: Any, chat_template: str | None = None, **kwargs: Any):
        """``ProcessorMixin.apply_chat_template``, with image blocks rendered as the image
        token by any template (see the module docstring). With ``tokenize=True``, pass the
        masks as ``processor_kwargs={"masks": [...]}``."""
        template = self._resolve_chat_template(chat_template)
        batched = isinstance(conversation[0], (list, tuple)) if conversation else False
        conversations = conversation if batched else [conversation]
        if not self._renders_image_blocks(template):
            conversations, images = zip(*(_flatten_images(c, self.image_token) for c in conversations))
            if kwargs.get("tokenize") and any(images):
                processor_kwargs = dict(kwargs.get("processor_kwargs") or {})
                processor_kwargs.setdefault("images", list(images) if batched else images[0])
                kwargs["processor_kwargs"] = processor_kwargs
            conversations = list(conversations)
        return super().apply_chat_template(
            conversations if batched else conversations[0], chat_template=template, **kwargs
        )

    def _renders_image_blocks(self, template: str) -> bool:
        probe = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "x"}]}]
        rendered = super().apply_chat_template(probe, chat_template=template, tokenize=False)
        return rendered.count(self.image_token) == 1


def _flatten_images(conversation: Sequence[Mapping[str, Any]], image_token: str) -> tuple[list[dict], list[Any]]:
    """Messages with list contents joined into strings (image block → ``image_token``, blocks
    separated by newlines), and the image payloads in order."""
    messages, images = [], []
    for message in conversation:
        message = copy.copy(dict(message))
        content = message.get("content")
        if isinstance(content, list):
            parts = []
            for block in content:
                kind = block.get("type") if isinstance(block, Mapping) else None
                if kind == "image":
                    parts.append(image_token)
                    images.extend(block[key] for key in ("image", "url", "path", "base64") if key in block)
                elif kind == "text":
                    parts.append(block.get("text", ""))
                else:
                    fail("conversation", "content blocks of type 'image' or 'text'", repr(block)[:80])
            message["content"] = "\n".join(parts)
        messages.append(message)
    return messages, images


__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "OGLlavaProcessor",
    "as_mask_list",
    "check_matches_model",
    "image_token_counts",
    "model_og_settings",
    "plain_token_count",
]
