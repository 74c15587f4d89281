"""``transformers.Trainer`` with the tiny OG-LLaVA: default arguments, save → resume, LoRA.

The dataset returns what ``OGLlavaCollator.encode`` makes (``input_ids`` with one image token,
``labels``, ``pixel_values``, ``masks``): the model's forward declares these inputs, so
``Trainer``'s default ``remove_unused_columns=True`` keeps the masks. Every comparison of
weights and logits after a reload or a resume is exact (``torch.equal``); the fresh models
that receive a checkpoint start from another seed, so a weight that is not restored shows.
"""

from __future__ import annotations

import pytest
import torch
from transformers import Trainer, TrainingArguments

from ogkernels.integrations.hf_llava import OGLlavaForConditionalGeneration
from ogkernels.integrations.llava_collator import OGLlavaCollator

from .hf_tiny import IMAGE_TOKEN_ID, images_and_masks, processor_for, tiny_model

STEPS = 2
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def dataset(model, count: int = 4):
    processor = processor_for(model)
    collate = OGLlavaCollator.from_model(model, processor)
    images, masks = images_and_masks(count, seed=11)
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "a blob"}]
    samples = [collate.encode({"image": i, "masks": m, "conversations": turns}) for i, m in zip(images, masks)]
    return samples, collate, processor, images, masks


def train(model, output_dir, *, resume=None, collator=None):
    samples, collate, *_ = dataset(model)
    args = TrainingArguments(output_dir=str(output_dir), max_steps=STEPS, save_steps=STEPS, per_device_train_batch_size=2,
                             learning_rate=1e-2)
    trainer = Trainer(model=model, args=args, train_dataset=samples, data_collator=collator or collate)
    return trainer.train(resume_from_checkpoint=resume)


def logits(model, inputs):
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained by ``Trainer`` with its defaults, what its collator saw, and the
    checkpoint folder."""
    out = tmp_path_factory.mktemp("trainer")
    model = tiny_model(seed=0).train()
    samples, collate, processor, images, masks = dataset(model)
    seen = []

    def spy(batch):
        seen.append({"keys": sorted(batch[0]), "placeholders": None})
        packed = collate(batch)
        seen[-1]["placeholders"] = int((packed["input_ids"] == IMAGE_TOKEN_ID).sum())
        seen[-1]["expected"] = sum(processor.count_image_tokens([s["masks"] for s in batch], len(batch)))
        return packed

    result = train(model, out, collator=spy)
    inputs = processor(text=["a <image>", "<image> b"], images=images[:2], masks=masks[:2], return_tensors="pt", padding=True)
    return model, seen, result, out / f"checkpoint-{STEPS}", inputs


def test_default_arguments_keep_the_masks(trained):
    _, seen, result, _, _ = trained
    assert TrainingArguments(output_dir="unused").remove_unused_columns  # the default under test
    assert len(seen) == STEPS and torch.isfinite(torch.tensor(result.training_loss))
    for batch in seen:
        assert batch["keys"] == ["input_ids", "labels", "masks", "pixel_values"]
        assert batch["placeholders"] == batch["expected"]  # OG counts, not the plain path's V


def test_resume_restores_every_weight(trained, tmp_path):
    model, _, _, checkpoint, inputs = trained
    fresh = tiny_model(seed=5).train()
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    train(fresh, tmp_path, resume=str(checkpoint))  # already at max_steps: loads, trains no further
    expected = model.state_dict()
    assert {k: torch.equal(v, expected[k]) for k, v in fresh.state_dict().items()} == {k: True for k in expected}
    assert torch.equal(logits(fresh, inputs), logits(model, inputs))


def test_checkpoint_reloads_bit_identical(trained):
    model, _, _, checkpoint, inputs = trained
    reloaded = OGLlavaForConditionalGeneration.from_pretrained(checkpoint)
    assert torch.equal(logits(reloaded, inputs), logits(model, inputs))


def test_lora_stage_two_resume_merge_and_reload(tmp_path):
    """Stage 2 of OG-LLaVA: LoRA on the LLM's linear layers, the connector trained in full."""
    from peft import LoraConfig, PeftModel, get_peft_model

    def lora_model(seed):
        torch.manual_seed(seed)  # LoRA's A matrices
        return get_peft_model(tiny_model(seed=0), LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS,
                                                              modules_to_save=["multi_modal_projector"]))

    model = lora_model(1)
    train(model, tmp_path / "run")
    checkpoint = tmp_path / "run" / f"checkpoint-{STEPS}"
    trainable = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
    assert any("multi_modal_projector" in k for k in trainable) and any("lora_A" in k for k in trainable)

    resumed = lora_model(2)
    train(resumed, tmp_path / "resumed", resume=str(checkpoint))
    restored = dict(resumed.named_parameters())
    assert {k: torch.equal(v, restored[k]) for k, v in trainable.items()} == {k: True for k in trainable}

    _, _, processor, images, masks = dataset(tiny_model(seed=0))
    inputs = processor(text=["a <image>", "<image> b"], images=images[:2], masks=masks[:2], return_tensors="pt", padding=True)
    expected = logits(model, inputs)
    adapters = PeftModel.from_pretrained(tiny_model(seed=0), checkpoint)
    assert torch.equal(logits(adapters, inputs), expected)

    merged = model.merge_and_unload()
    assert type(merged) is OGLlavaForConditionalGeneration
    torch.testing.assert_close(logits(merged, inputs), expected, rtol=1e-5, atol=1e-5)  # W + BA vs Wx + B(Ax)
    merged.save_pretrained(tmp_path / "merged")
    reloaded = OGLlavaForConditionalGeneration.from_pretrained(tmp_path / "merged")
    assert torch.equal(logits(reloaded, inputs), logits(merged, inputs))
