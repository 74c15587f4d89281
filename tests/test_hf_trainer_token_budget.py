"""``OGLlavaTrainer(token_budget=…)``: every batch ``Trainer`` trains on holds at most the budget
and each epoch's batches cover the dataset once; ``OGLlavaCollator.sample_length`` is each
sample's span in a collated batch; ``EpochLengthBatches`` keeps ``Trainer``'s per-epoch count."""

from __future__ import annotations

import numpy as np
import torch
from transformers import TrainingArguments

from ogkernels.integrations.hf_trainer import EpochLengthBatches, OGLlavaTrainer
from ogkernels.integrations.llava_collator import OGLlavaCollator
from ogkernels.packing import TokenBudgetSampler

from .hf_tiny import images_and_masks, processor_for, tiny_model

ANSWERS = ["a", "a blob", "two blobs", "a red one", "something round", "it is a cat", "dogs", "sky and sea", "x y z", "nothing"]


def raw_samples(count: int, seed: int = 11):
    images, masks = images_and_masks(count, seed=seed)
    return [
        {"image": i, "masks": m, "conversations": [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": a}]}
        for i, m, a in zip(images, masks, ANSWERS)
    ]


class Spy:
    """The collator, recording each batch's samples (by their unique ``input_ids``) and row length."""

    def __init__(self, collate: OGLlavaCollator):
        self.collate, self.batches = collate, []
        self.sample_length = collate.sample_length

    def __call__(self, samples):
        batch = self.collate(samples)
        self.batches.append(([tuple(s["input_ids"].tolist()) for s in samples], batch["input_ids"].shape[1]))
        return batch


def test_trainer_batches_respect_the_budget_cover_each_epoch_and_resume(tmp_path):
    model = tiny_model(seed=0).train()
    collate = OGLlavaCollator.from_model(model, processor_for(model))
    samples = [collate.encode(s) for s in raw_samples(len(ANSWERS))]
    lengths = [collate.sample_length(s) for s in samples]
    budget = 2 * max(lengths) + 10
    identity = {tuple(s["input_ids"].tolist()): i for i, s in enumerate(samples)}
    assert len(identity) == len(samples)
    per_epoch = len(TokenBudgetSampler(lengths, budget, seed=42))  # Trainer's default seed

    def trainer_for(model, spy):
        args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, learning_rate=1e-3, save_strategy="steps",
                                 save_steps=per_epoch + 1, report_to=[], logging_strategy="no", use_cpu=True)
        return OGLlavaTrainer(model=model, args=args, train_dataset=samples, data_collator=spy, token_budget=budget)

    spy = Spy(collate)
    trainer = trainer_for(model, spy)
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))

    sampler = trainer.token_budget_sampler
    assert sampler.lengths.tolist() == lengths  # measured by the collator's sample_length
    assert len(sampler) == per_epoch < len(samples)  # batches of several samples
    assert sampler.batches(0) != sampler.batches(1)  # so the check below sees Trainer's set_epoch
    assert len(spy.batches) == 2 * per_epoch
    for epoch in range(2):
        batches = spy.batches[epoch * per_epoch : (epoch + 1) * per_epoch]
        for members, row in batches:
            assert row == sum(lengths[identity[m]] for m in members) <= budget
        assert sorted(identity[m] for members, _ in batches for m in members) == list(range(len(samples)))
        assert [[identity[m] for m in members] for members, _ in batches] == sampler.batches(epoch)

    # resumed in the middle of epoch 1: the rest of that epoch's plan, nothing else
    resumed = Spy(collate)
    trainer_for(tiny_model(seed=1).train(), resumed).train(resume_from_checkpoint=str(tmp_path / f"checkpoint-{per_epoch + 1}"))
    assert resumed.batches and resumed.batches == spy.batches[per_epoch + 1 :]


def test_epoch_length_batches_give_every_epoch_the_longest_count():
    rng = np.random.default_rng(0)
    lengths = rng.integers(40, 401, 500) + rng.integers(60, 2201, 500)
    sampler = TokenBudgetSampler(lengths, 4096, window=8, num_replicas=2, rank=1)  # tiny windows: counts vary
    counts = [len(sampler.batches(e)) for e in range(6)]
    assert len(set(counts)) > 1  # the case under test: counts differ between epochs
    fixed = EpochLengthBatches(sampler, epochs=6)
    assert len(fixed) == max(counts)
    for epoch in range(6):
        fixed.set_epoch(epoch)
        batches = list(fixed)
        assert len(batches) == max(counts)
        own = sampler.batches(epoch)
        assert batches[: len(own)] == own and batches[len(own) :] == own[: len(batches) - len(own)]


def test_sample_length_is_the_span_in_a_collated_batch():
    model = tiny_model(seed=0)
    processor = processor_for(model)
    collate = OGLlavaCollator.from_model(model, processor)
    samples = raw_samples(4, seed=3)

    def spans(collator, batch):
        cu = collator(batch)["cu_seq_lens_q"]
        return (cu[1:] - cu[:-1]).tolist()

    with_masks = [collator_len for collator_len in map(collate.sample_length, samples)]
    assert spans(collate, samples) == with_masks
    expected = [len(collate.encode(s)["input_ids"]) - 1 + n for s, n in zip(samples, collate.count_tokens([s["masks"] for s in samples]))]
    assert with_masks == expected

    plain = [{**s, "masks": None} for s in samples]  # every image on the plain path: V rows
    assert spans(collate, plain) == [collate.sample_length(s) for s in plain]
    assert all(collate.sample_length(p) - collate.sample_length(s) == collate.num_patches - n
               for p, s, n in zip(plain, samples, collate.count_tokens([s["masks"] for s in samples])))

    truncating = OGLlavaCollator.from_model(model, processor, max_length=min(with_masks) + 3, truncation="drop_text_tail")
    short = [s for s in samples if truncating.sample_length(s) <= min(with_masks) + 3]
    assert spans(truncating, short) == [truncating.sample_length(s) for s in short]

    mixed = samples[:2] + plain[2:]  # maskless images inside a batch with masks: fewer rows than alone
    alone = [collate.sample_length(s) for s in mixed]
    in_batch = spans(collate, mixed)
    assert in_batch[:2] == alone[:2] and all(b <= a for a, b in zip(alone, in_batch)) and in_batch[2:] != alone[2:]


def test_sample_loss_normalization_packed_and_padded(tmp_path):
    from transformers.loss.loss_utils import ForCausalLMLoss

    from ogkernels.loss import packed_causal_lm_loss

    model = tiny_model(seed=0)
    processor = processor_for(model)
    collate = OGLlavaCollator.from_model(model, processor)
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = OGLlavaTrainer(model=model, args=args, data_collator=collate, loss_normalization="sample")
    assert trainer.loss_is_scaled_for_ga is False  # Trainer averages the micro-batches

    batch = collate(raw_samples(3, seed=5))
    with torch.no_grad():
        packed = trainer.compute_loss(model, batch)
        logits = model(**batch).logits
    assert torch.equal(packed, packed_causal_lm_loss(logits, batch["labels"], batch["cu_seq_lens_q"], normalization="sample"))

    images, masks = images_and_masks(2, seed=6)
    inputs = processor(text=["<image> a cat", "<image> b"], images=images, masks=masks, return_tensors="pt", padding=True)
    labels = torch.where(inputs["attention_mask"].bool() & (inputs["input_ids"] != model.config.image_token_id), inputs["input_ids"], -100)
    with torch.no_grad():
        padded = trainer.compute_loss(model, {**inputs, "labels": labels})
        logits = model(**inputs).logits
    by_row = torch.stack([ForCausalLMLoss(logits[b : b + 1], labels[b : b + 1], logits.shape[-1]) for b in range(2)]).mean()
    torch.testing.assert_close(padded, by_row, rtol=1e-6, atol=1e-7)
