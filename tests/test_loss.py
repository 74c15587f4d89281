"""``packed_causal_lm_loss`` equals the unpacked computation: transformers' ``ForCausalLMLoss``
on per-sample padded ``(B, L)`` logits (``"token"``, ``num_items_in_batch``) and a hand loop
(``"sample"``), values and gradients (float32: rtol 1e-6; bfloat16 logits are upcast as
transformers does, so the same tolerance holds); and the model's own loss on a packed batch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers.loss.loss_utils import ForCausalLMLoss

from ogkernels.loss import packed_causal_lm_loss

IGNORE = -100
VOCAB = 11
RTOL, ATOL = 1e-6, 1e-7


def packed_case(lengths: list[int], seed: int, dtype=torch.float32, ignore_p: float = 0.3):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    logits = torch.randn(total, VOCAB, generator=g).to(dtype).requires_grad_()
    labels = torch.randint(0, VOCAB, (total,), generator=g)
    labels[torch.rand(total, generator=g) < ignore_p] = IGNORE
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(lengths), 0)
    return logits, labels, cu


def padded(logits, labels, lengths):
    """Per-sample ``(B, L, V)`` logits (differentiable back to the packed ones) and labels."""
    width = max(max(lengths), 1)
    rows, targets = [], []
    for x, y in zip(torch.split(logits, lengths), torch.split(labels, lengths)):
        rows.append(torch.cat([x, x.new_zeros(width - x.shape[0], VOCAB)]))
        targets.append(torch.cat([y, y.new_full((width - y.numel(),), IGNORE)]))
    return torch.stack(rows), torch.stack(targets)


def per_sample_mean_by_hand(logits, labels, lengths):
    means = []
    for x, y in zip(torch.split(logits, lengths), torch.split(labels, lengths)):
        terms = [F.cross_entropy(x[t].float()[None], y[t + 1][None]) for t in range(len(y) - 1) if y[t + 1] != IGNORE]
        if terms:
            means.append(torch.stack(terms).mean())
    return torch.stack(means).mean() if means else torch.tensor(float("nan"))


def supervised(labels, lengths):
    return sum(int((y[1:] != IGNORE).sum()) for y in torch.split(labels, lengths))


def value_and_grad(fn, logits):
    logits.grad = None
    loss = fn()
    if loss.requires_grad:
        loss.backward()
    grad = logits.grad.clone() if logits.grad is not None else torch.zeros_like(logits)
    return loss.detach(), grad


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 7), min_size=1, max_size=5),
    seed=st.integers(0, 10_000),
    normalization=st.sampled_from(["token", "sample", "num_items"]),
    batched=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_equals_the_unpacked_computation(lengths, seed, normalization, batched, dtype):
    logits, labels, cu = packed_case(lengths, seed, dtype)
    num_items = supervised(labels, lengths) + 3 if normalization == "num_items" else None  # other micro-batches too
    shape = (lambda t: t[None]) if batched else (lambda t: t)

    def ours():
        mode = "sample" if normalization == "sample" else "token"
        return packed_causal_lm_loss(shape(logits), shape(labels), cu, normalization=mode, num_items_in_batch=num_items)

    def unpacked():
        if normalization == "sample":
            return per_sample_mean_by_hand(logits, labels, lengths)
        x, y = padded(logits, labels, lengths)
        return ForCausalLMLoss(x, y, VOCAB, num_items_in_batch=num_items)

    got, got_grad = value_and_grad(ours, logits)
    want, want_grad = value_and_grad(unpacked, logits)
    assert got.dtype == torch.float32
    if normalization != "num_items" and supervised(labels, lengths) == 0:
        assert math.isnan(got) and math.isnan(want)
        return
    torch.testing.assert_close(got, want.float(), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(got_grad, want_grad, rtol=RTOL, atol=ATOL)


def test_a_sample_start_label_is_never_predicted_across_the_boundary():
    lengths = [4, 5, 3]
    logits, labels, cu = packed_case(lengths, seed=1, ignore_p=0.0)
    base = packed_causal_lm_loss(logits, labels, cu)
    changed = labels.clone()
    changed[cu[1:-1].long()] = (changed[cu[1:-1].long()] + 1) % VOCAB  # the 2nd and 3rd samples' first tokens
    assert torch.equal(packed_causal_lm_loss(logits, changed, cu), base)
    # the plain shift over the row (what ForCausalLMLoss would do) does read them
    assert not torch.equal(ForCausalLMLoss(logits[None], changed[None], VOCAB), ForCausalLMLoss(logits[None], labels[None], VOCAB))


def test_sample_normalization_weighs_samples_equally():
    # two samples: 1 supervised token with loss a, 3 with loss b → token mean (a + 3b)/4, sample mean (a + b)/2
    logits = torch.zeros(6, VOCAB)
    logits[0, 2] = 5.0  # sample 0 predicts label 2 at row 1
    labels = torch.tensor([IGNORE, 2, IGNORE, 1, 1, 1])
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    a = F.cross_entropy(logits[0][None], torch.tensor([2]))
    b = F.cross_entropy(logits[2][None], torch.tensor([1]))
    torch.testing.assert_close(packed_causal_lm_loss(logits, labels, cu, normalization="sample"), (a + b) / 2)
    torch.testing.assert_close(packed_causal_lm_loss(logits, labels, cu), (a + 3 * b) / 4)
    torch.testing.assert_close(packed_causal_lm_loss(logits, labels, cu, num_items_in_batch=torch.tensor(8)), (a + 3 * b) / 8)


def test_token_normalization_is_the_models_own_loss_on_a_collated_batch():
    from ogkernels.integrations.llava_collator import OGLlavaCollator

    from .hf_tiny import images_and_masks, processor_for, tiny_model

    model = tiny_model(seed=0)
    collate = OGLlavaCollator.from_model(model, processor_for(model))
    images, masks = images_and_masks(3, seed=4)
    answers = ["a blob", "two round things", "x"]
    samples = [
        {"image": i, "masks": m, "conversations": [{"from": "human", "value": "<image>\nWhat?"}, {"from": "gpt", "value": a}]}
        for i, m, a in zip(images, masks, answers)
    ]
    batch = collate(samples)
    with torch.no_grad():
        out = model(**batch)
    ours = packed_causal_lm_loss(out.logits, batch["labels"], batch["cu_seq_lens_q"])
    assert torch.equal(ours, out.loss)
    with torch.no_grad():  # Trainer's gradient-accumulation convention, through the model's loss kwargs
        accumulated = model(**batch, num_items_in_batch=torch.tensor(40)).loss
    ours = packed_causal_lm_loss(out.logits, batch["labels"], batch["cu_seq_lens_q"], num_items_in_batch=torch.tensor(40))
    assert torch.equal(ours, accumulated)
    per_sample = packed_causal_lm_loss(out.logits, batch["labels"], batch["cu_seq_lens_q"], normalization="sample")
    assert torch.isfinite(per_sample) and not torch.equal(per_sample, ours)  # answers of different lengths


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (dict(normalization="sample", num_items_in_batch=4), ValueError, r"num_items_in_batch: expected None with normalization='sample'"),
        (dict(normalization="mean"), ValueError, r"normalization: expected one of 'token', 'sample'"),
        (dict(num_items_in_batch=0), ValueError, r"num_items_in_batch: expected an int >= 1"),
        (dict(num_items_in_batch=2.0), TypeError, r"num_items_in_batch"),
        (dict(cu_seqlens=torch.tensor([0, 3, 5], dtype=torch.int32)), ValueError, r"cu_seqlens: expected non-decreasing offsets from 0 to 6"),
        (dict(cu_seqlens=torch.tensor([0, 4, 2, 6], dtype=torch.int32)), ValueError, r"cu_seqlens: expected non-decreasing"),
        (dict(cu_seqlens=torch.tensor([0.0, 6.0])), TypeError, r"cu_seqlens: expected dtype int32"),
        (dict(labels=torch.zeros(5, dtype=torch.long)), ValueError, r"labels: expected shape \(6,\)"),
        (dict(labels=torch.zeros(6)), TypeError, r"labels: expected an integer tensor"),
        (dict(logits=torch.zeros(2, 3, VOCAB)), ValueError, r"logits: expected a \(1, S, V\) or \(S, V\) tensor"),
        (dict(ignore_index=None), TypeError, r"ignore_index"),
    ],
)
def test_bad_arguments_are_named(change, error, match):
    args = dict(logits=torch.zeros(6, VOCAB), labels=torch.zeros(6, dtype=torch.long), cu_seqlens=torch.tensor([0, 2, 6], dtype=torch.int32))
    args.update(change)
    with pytest.raises(error, match=match):
        packed_causal_lm_loss(args.pop("logits"), args.pop("labels"), args.pop("cu_seqlens"), **args)
