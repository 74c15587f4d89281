"""``OGLlavaProcessor`` and the processor-based ``OGLlavaCollator`` on the tiny OG-LLaVA (CPU).

The oracle of every count is the connector itself: ``OGFusion`` with the same options run on
features of the same batch (and ``og_tokens`` where the batch takes the OG path).
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ogkernels import OGFusion, OGTokenOptions, og_tokens
from ogkernels.integrations.hf_processor import DEFAULT_CHAT_TEMPLATE, OGLlavaProcessor
from ogkernels.integrations.llava_collator import OGLlavaCollator
from ogkernels.packing import IGNORE_INDEX

from .hf_tiny import (
    IMAGE_TOKEN_ID,
    LLAMA3_TEMPLATE,
    PATCHES,
    char_tokenizer,
    image_processor,
    images_and_masks,
    processor_for,
    tiny_model,
)
from .strategies import mask_stacks

TOKENIZER = char_tokenizer()
IMAGE_PROCESSOR = image_processor()
LAYOUTS = [{}, {"global_view": "full"}, {"max_masks": 2}, {"no_masktoken": True, "alpha": 0.25}, {"gate": False},
           {"maskless": "plain"}]
#: A template that renders image blocks itself (as llava-hf's does).
BLOCK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<image>{% else %}{{ block['text'] }}{% endif %}"
    "{% endfor %}\n{% endfor %}"
)


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=4)


def processor(**og_options) -> OGLlavaProcessor:
    return OGLlavaProcessor(IMAGE_PROCESSOR, TOKENIZER, og_options=og_options, grid=PATCHES)


def connector_lengths(masks, options: OGTokenOptions) -> list[int]:
    features = torch.randn(len(masks), PATCHES, 8)
    return OGFusion(8, 8, options)(features, masks).lengths.tolist()


def placeholders_per_row(inputs) -> list[int]:
    return (inputs["input_ids"] == IMAGE_TOKEN_ID).sum(1).tolist()


def fake_images(masks):
    return [torch.randint(0, 255, (20, 30, 3), dtype=torch.uint8).numpy() for _ in masks]


@settings(max_examples=30)
@given(
    masks=st.lists(st.one_of(st.none(), mask_stacks(max_masks=4, max_side=12)), min_size=1, max_size=3),
    layout=st.sampled_from(LAYOUTS),
)
def test_counts_equal_the_connector_and_og_tokens(masks, layout):
    options = OGTokenOptions(**layout)
    proc = processor(**layout)
    counts = proc.count_image_tokens(masks, len(masks))
    assert counts == connector_lengths(masks, options)
    if any(m is not None and bool(m.any()) for m in masks):  # the OG path (the batch gate is open)
        assert counts == og_tokens(torch.randn(len(masks), PATCHES, 8), masks, options=options).lengths.tolist()
    inputs = proc(text=[f"x{i} <image> y" for i in range(len(masks))], images=fake_images(masks), masks=masks,
                  return_tensors="pt", padding=True)
    assert placeholders_per_row(inputs) == counts
    assert inputs["masks"] == list(masks)


@pytest.mark.parametrize("maskless", ["reference", "plain"])
def test_mixed_batch_with_an_image_without_masks(model, maskless):
    images, masks = images_and_masks(2, seed=1)
    masks[1] = None
    options = OGTokenOptions(maskless=maskless)
    proc = OGLlavaProcessor(IMAGE_PROCESSOR, TOKENIZER, og_options=options, grid=PATCHES)
    counts = proc.count_image_tokens(masks, 2)
    assert counts == connector_lengths(masks, options)
    assert counts[1] == (1 if maskless == "reference" else PATCHES)  # its global row, or its V patch rows
    equipped = tiny_model(seed=4, maskless=maskless)
    inputs = processor_for(equipped)(text=["a <image>", "b <image> c"], images=images, masks=masks,
                                     return_tensors="pt", padding=True)
    assert placeholders_per_row(inputs) == counts
    with torch.no_grad():
        out = equipped(**inputs)
        features = equipped.vision_features(inputs["pixel_values"])[1]
        projector = equipped.model.multi_modal_projector.mm_projector
        expected = projector(features.mean(0, keepdim=True)) if maskless == "reference" else projector(features)
    assert torch.isfinite(out.logits).all() and out.image_hidden_states.shape[0] == sum(counts)
    torch.testing.assert_close(out.image_hidden_states[counts[0] :], expected, rtol=1e-5, atol=1e-5)


def test_batch_without_any_mask_takes_the_plain_path():
    proc = processor()
    assert proc.count_image_tokens([None, torch.zeros(2, 9, 9, dtype=torch.bool)], 2) == [PATCHES, PATCHES]
    assert proc.count_image_tokens(None, 3) == [PATCHES] * 3
    ungated = processor(gate=False)
    assert ungated.count_image_tokens([None, None], 2) == connector_lengths([None, None], OGTokenOptions(gate=False)) == [1, 1]


def test_masks_must_match_the_images():
    images, masks = images_and_masks(2)
    proc = processor()
    with pytest.raises(ValueError, match="masks: expected 2 entries"):
        proc(text=["<image>", "<image>"], images=images, masks=masks[:1])
    with pytest.raises(ValueError, match="masks: expected None without images"):
        proc(text=["hi"], masks=[])
    single = proc(text="<image> hi", images=images[0], masks=masks[0], return_tensors="pt")  # one image, one stack
    assert placeholders_per_row(single) == proc.count_image_tokens([masks[0]], 1)


def test_from_model_reads_the_model_settings(model):
    equipped = tiny_model(seed=1, alpha=0.3, max_masks=2, gate=False)
    proc = processor_for(equipped)
    assert proc.options == equipped.model.multi_modal_projector.options and proc.options.gate is False
    assert proc.grid == PATCHES and proc.image_token_id == equipped.config.image_token_id
    other = tiny_model(seed=1)
    other.config.image_token_id = 5
    with pytest.raises(ValueError, match="tokenizer: expected the model's image_token_id 5"):
        processor_for(other)


@pytest.mark.parametrize("loader", ["own", "auto"])
def test_save_and_load(tmp_path, loader):
    from transformers import AutoProcessor

    proc = OGLlavaProcessor(IMAGE_PROCESSOR, TOKENIZER, chat_template=LLAMA3_TEMPLATE, grid=PATCHES,
                            og_options=OGTokenOptions(global_view="full", max_masks=3, gate=False))
    proc.save_pretrained(tmp_path)
    cls = OGLlavaProcessor if loader == "own" else AutoProcessor
    loaded = cls.from_pretrained(tmp_path)
    assert type(loaded) is OGLlavaProcessor
    assert loaded.options == proc.options and loaded.options.gate is False and loaded.grid == PATCHES
    assert loaded.chat_template == LLAMA3_TEMPLATE and loaded.image_token == "<image>"
    images, masks = images_and_masks(2, seed=2)
    text = ["<image> one", "two <image>"]
    a = proc(text=text, images=images, masks=masks, return_tensors="pt", padding=True)
    b = loaded(text=text, images=images, masks=masks, return_tensors="pt", padding=True)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["pixel_values"], b["pixel_values"])


CONVERSATION = [
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
]


@pytest.mark.parametrize("template", [None, LLAMA3_TEMPLATE, BLOCK_TEMPLATE], ids=["default", "llama3", "blocks"])
def test_chat_template_renders_image_blocks_as_the_image_token(template):
    proc = OGLlavaProcessor(IMAGE_PROCESSOR, char_tokenizer(template), grid=PATCHES)
    text = proc.apply_chat_template(CONVERSATION)
    assert text.count("<image>") == 1 and "What is it?" in text and "A cat." in text
    if template is LLAMA3_TEMPLATE:
        assert text.startswith("<s><|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is it?<|eot_id|>")
    if template is None:
        assert proc.chat_template == DEFAULT_CHAT_TEMPLATE
    images, masks = images_and_masks(1, seed=3)
    inputs = proc.apply_chat_template(
        CONVERSATION[:1], add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt",
        processor_kwargs={"images": images, "masks": masks},
    )
    assert placeholders_per_row(inputs) == proc.count_image_tokens(masks, 1)
    assert int((inputs["input_ids"] == TOKENIZER.bos_token_id).sum()) == 1  # the template's bos is not doubled


# ------------------------------------------------------------------------------ the collator


def supervised_text(proc, encoded) -> str:
    ids, labels = encoded["input_ids"].tolist(), encoded["labels"].tolist()
    return proc.tokenizer.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX])


@pytest.mark.parametrize("template", [None, LLAMA3_TEMPLATE], ids=["default", "llama3"])
def test_collator_labels_only_the_assistant_turns(model, template):
    proc = processor_for(model, template)
    collate = OGLlavaCollator.from_model(model, proc)
    sample = {
        "pixel_values": torch.zeros(3, 56, 56),
        "masks": images_and_masks(1)[1][0],
        "conversations": [
            {"from": "human", "value": "<image>\nWhat?"},
            {"from": "gpt", "value": "A cat."},
            {"from": "human", "value": "More?"},
            {"from": "gpt", "value": "No."},
        ],
    }
    encoded = collate.encode(sample)
    end = "</s>" if template is None else "<|eot_id|>"
    assert supervised_text(proc, encoded) == f"A cat.{end}No.{end}"
    assert int((encoded["input_ids"] == IMAGE_TOKEN_ID).sum()) == 1  # unexpanded until collation
    text_only = collate.encode({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    assert supervised_text(proc, text_only) == f"yo{end}"


def test_collated_batch_runs_through_the_model(model):
    proc = processor_for(model, LLAMA3_TEMPLATE)
    collate = OGLlavaCollator.from_model(model, proc)
    images, masks = images_and_masks(2, seed=6)
    samples = [
        {"image": images[0], "masks": masks[0], "messages": CONVERSATION},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"pixel_values": torch.zeros(3, 56, 56), "masks": masks[1], "caption": "a blob"},
    ]
    batch = collate(samples)
    counts = proc.count_image_tokens([masks[0], masks[1]], 2)
    assert int((batch["input_ids"] == IMAGE_TOKEN_ID).sum()) == sum(counts)
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss) and out.image_hidden_states.shape[0] == sum(counts)


def test_collator_takes_its_settings_from_the_model_once(model):
    proc = processor_for(model)
    with pytest.raises(TypeError, match="og_options: expected None with a processor"):
        OGLlavaCollator(processor=proc, og_options={"alpha": 0.3})
    other = OGLlavaProcessor(IMAGE_PROCESSOR, TOKENIZER, grid=PATCHES, og_options={"max_masks": 2})
    with pytest.raises(ValueError, match=r"processor.og_options\['max_masks'\]: expected None, the model's"):
        OGLlavaCollator.from_model(model, other)
    with pytest.raises(ValueError, match="processor.grid: expected 16"):
        OGLlavaCollator.from_model(model, OGLlavaProcessor(IMAGE_PROCESSOR, TOKENIZER, grid=25))
    built = OGLlavaCollator.from_model(model, tokenizer=TOKENIZER, image_processor=IMAGE_PROCESSOR)
    assert built.processor is not None and built.og_options == model.model.multi_modal_projector.options
    with pytest.raises(TypeError, match="model: expected an OGLlavaForConditionalGeneration"):
        OGLlavaCollator.from_model(torch.nn.Linear(2, 2), tokenizer=TOKENIZER, image_processor=IMAGE_PROCESSOR)
