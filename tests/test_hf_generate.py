"""``generate`` on the tiny OG-LLaVA: a left-padded batch of two images with different OG token
counts, against each image alone.

The oracle of greedy decoding is a manual loop per image, without a cache: the prompt's
embeddings as the model merges them (captured at the language model's input, from the
image alone, unpadded), then one forward over the whole sequence per new token, argmax.
Beam search is compared with ``generate`` on each image alone (no padding, no batch).
Tokens must match exactly (float32). The tiny config has ``use_cache=False``; the tests pass
``use_cache`` explicitly (both ways for greedy decoding and for generated image ids).
"""

from __future__ import annotations

import pytest
import torch
from transformers import LogitsProcessor, LogitsProcessorList

from .hf_tiny import IMAGE_TOKEN_ID, images_and_masks, processor_for, tiny_model

PROMPTS = ["describe <image> now", "<image> hi"]
STEPS = 6


def make_setup(attn):
    model = tiny_model(seed=7, attn=attn)
    processor = processor_for(model)
    processor.tokenizer.padding_side = "left"
    images, masks = images_and_masks(2, seed=5)
    counts = processor.count_image_tokens(masks, 2)
    assert counts[0] != counts[1]
    return model, processor, images, masks


@pytest.fixture(scope="module")
def setup():
    """The model's default attention for packed rows, ``ogkernels_varlen``."""
    return make_setup(None)


@pytest.fixture(scope="module")
def setup_sdpa():
    return make_setup("sdpa")


def batch_inputs(processor, images, masks):
    return processor(text=PROMPTS, images=images, masks=masks, return_tensors="pt", padding=True)


def alone_inputs(processor, images, masks, i):
    return processor(text=[PROMPTS[i]], images=[images[i]], masks=None if masks is None else [masks[i]], return_tensors="pt")


def prompt_embeddings(model, inputs) -> torch.Tensor:
    """The language model's input embeddings for a prompt (image rows merged)."""
    captured = {}

    def grab(module, args, kwargs):
        captured["embeds"] = kwargs["inputs_embeds"]

    handle = model.model.language_model.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            model(**inputs, use_cache=False)
    finally:
        handle.remove()
    return captured["embeds"]


def manual_greedy(model, inputs, steps: int = STEPS, forced: dict[int, int] | None = None) -> list[int]:
    embeds = prompt_embeddings(model, inputs)
    tokens: list[int] = []
    with torch.no_grad():
        for step in range(steps):
            logits = model(inputs_embeds=embeds, use_cache=False).logits[0, -1]
            token = (forced or {}).get(step, int(logits.argmax()))
            tokens.append(token)
            embeds = torch.cat([embeds, model.get_input_embeddings()(torch.tensor([[token]]))], dim=1)
    return tokens


def new_tokens(output, prompt_length: int) -> list[list[int]]:
    return output[:, prompt_length:].tolist()


@pytest.mark.parametrize("attn, use_cache", [("ogkernels_varlen", True), ("ogkernels_varlen", False), ("sdpa", True)])
def test_greedy_batch_equals_a_manual_loop_per_image(request, attn, use_cache):
    model, processor, images, masks = request.getfixturevalue("setup" if attn == "ogkernels_varlen" else "setup_sdpa")
    assert model.config.text_config._attn_implementation == attn
    inputs = batch_inputs(processor, images, masks)
    assert (inputs["attention_mask"][:, 0] == 0).any()  # left padding is exercised
    out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, use_cache=use_cache)
    for i, row in enumerate(new_tokens(out, inputs["input_ids"].shape[1])):
        assert row == manual_greedy(model, alone_inputs(processor, images, masks, i)), i


def test_greedy_without_masks_equals_a_manual_loop(setup):
    model, processor, images, _ = setup
    inputs = batch_inputs(processor, images, None)  # evaluation without mask infusion: the plain path
    assert "masks" not in inputs
    out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, use_cache=True)
    for i, row in enumerate(new_tokens(out, inputs["input_ids"].shape[1])):
        assert row == manual_greedy(model, alone_inputs(processor, images, None, i)), i


@pytest.mark.parametrize("beams, sequences", [(3, 1), (3, 2)])
def test_beam_search_batch_equals_each_image_alone(setup, beams, sequences):
    model, processor, images, masks = setup
    inputs = batch_inputs(processor, images, masks)
    settings = dict(max_new_tokens=STEPS, num_beams=beams, num_return_sequences=sequences, do_sample=False, use_cache=True)
    out = model.generate(**inputs, **settings)
    assert out.shape[0] == 2 * sequences
    rows = new_tokens(out, inputs["input_ids"].shape[1])
    for i in range(2):
        alone = alone_inputs(processor, images, masks, i)
        expected = new_tokens(model.generate(**alone, **settings), alone["input_ids"].shape[1])
        assert rows[i * sequences : (i + 1) * sequences] == expected, i


def test_several_sampled_sequences_per_image(setup):
    model, processor, images, masks = setup
    inputs = batch_inputs(processor, images, masks)
    # top_k=1 sampling is greedy: every returned sequence must be each image's greedy answer
    out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=True, top_k=1, num_return_sequences=3, use_cache=True)
    rows = new_tokens(out, inputs["input_ids"].shape[1])
    for i in range(2):
        greedy = manual_greedy(model, alone_inputs(processor, images, masks, i))
        assert rows[3 * i : 3 * i + 3] == [greedy] * 3, i
    torch.manual_seed(0)
    sampled = model.generate(**inputs, max_new_tokens=STEPS, do_sample=True, num_return_sequences=2, use_cache=True)
    assert sampled.shape == (4, inputs["input_ids"].shape[1] + STEPS)
    assert ((sampled >= 0) & (sampled < model.config.text_config.vocab_size)).all()


class ForceAt(LogitsProcessor):
    """Forces ``token`` as the ``step``-th new token."""

    def __init__(self, step: int, token: int, prompt_length: int):
        self.step, self.token, self.prompt_length = step, token, prompt_length

    def __call__(self, input_ids, scores):
        if input_ids.shape[1] - self.prompt_length == self.step:
            scores = torch.full_like(scores, -float("inf"))
            scores[:, self.token] = 0.0
        return scores


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_generated_image_id_is_an_ordinary_token(setup, use_cache):
    model, processor, images, masks = setup
    inputs = batch_inputs(processor, images, masks)
    length = inputs["input_ids"].shape[1]
    force = LogitsProcessorList([ForceAt(1, IMAGE_TOKEN_ID, length)])
    out = model.generate(**inputs, max_new_tokens=STEPS, do_sample=False, logits_processor=force, use_cache=use_cache)
    rows = new_tokens(out, length)
    for i in range(2):
        assert rows[i][1] == IMAGE_TOKEN_ID
        assert rows[i] == manual_greedy(model, alone_inputs(processor, images, masks, i), forced={1: IMAGE_TOKEN_ID}), i
