"""A tiny random OG-LLaVA for the Hugging Face tests (CPU, float32, no download).

CLIP 56 px / patch 14 (V = 16 patches), a 2-layer Llama (128 vocab), a character-level fast
tokenizer with Llama 3's header tokens and ``<image>`` at id 127 (the model's
``image_token_id``), a CLIP image processor, and images of different original sizes with
SAM 2-like masks at that size.
"""

from __future__ import annotations

import os

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ogkernels.jobs.llava_model import tiny_llava_config  # noqa: E402
from ogkernels.integrations.hf_llava import OGLlavaConfig, OGLlavaForConditionalGeneration  # noqa: E402
from ogkernels.integrations.hf_processor import OGLlavaProcessor  # noqa: E402
from ogkernels.tools.synthetic import sam2_like_masks  # noqa: E402

IMAGE_SIZE, PATCHES, VISION_DIM, LLM_DIM, IMAGE_TOKEN_ID = 56, 16, 64, 128, 127
LLAMA3_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")

#: The Llama 3 instruct layout (header tokens, ``<|eot_id|>`` after each turn), text content only.
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)


def char_tokenizer(chat_template: str | None = None):
    """Printable ASCII and newline → one token each; ``<pad> <s> </s> <unk>`` = 0–3, Llama 3's
    header tokens, ``<image>`` = 127. Adds ``<s>`` like Llama's tokenizer."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    chars = [chr(c) for c in range(32, 127)] + ["\n"]
    vocab = {token: i for i, token in enumerate(specials + chars + list(LLAMA3_SPECIALS))}
    vocab["<image>"] = IMAGE_TOKEN_ID
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t in specials + list(LLAMA3_SPECIALS) + ["<image>"]]
    )
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def image_processor():
    from transformers import CLIPImageProcessor

    return CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})


def og_config(**og_options) -> OGLlavaConfig:
    return OGLlavaConfig.from_llava_config(tiny_llava_config(image_size=IMAGE_SIZE), **og_options)


def tiny_model(seed: int = 0, attn: str | None = None, **og_options) -> OGLlavaForConditionalGeneration:
    """A random tiny OG-LLaVA (eval mode); ``attn`` None: the class's default attention."""
    torch.manual_seed(seed)
    kwargs = {} if attn is None else {"attn_implementation": attn}
    return OGLlavaForConditionalGeneration._from_config(og_config(**og_options), **kwargs).eval()


def processor_for(model, chat_template: str | None = None) -> OGLlavaProcessor:
    return OGLlavaProcessor.from_model(
        model, tokenizer=char_tokenizer(chat_template), image_processor=image_processor()
    )


def images_and_masks(count: int, seed: int = 0, masks_per_image=(1, 6)):
    """``count`` RGB uint8 images ``(H, W, 3)`` of different sizes and their SAM 2-like masks
    ``(N, H, W)`` bool at that size."""
    g = torch.Generator().manual_seed(seed)
    images, masks = [], []
    for _ in range(count):
        height, width = (int(x) for x in torch.randint(40, 96, (2,), generator=g))
        n = int(torch.randint(masks_per_image[0], masks_per_image[1] + 1, (1,), generator=g))
        masks.append(sam2_like_masks(n, height, width, generator=g, min_area=0.01, max_area=0.4))
        images.append((torch.rand(height, width, 3, generator=g) * 255).to(torch.uint8).numpy())
    return images, masks


