"""``pack_multimodal`` / ``plan_packing`` / ``merge_image_tokens`` against a plain-loop oracle.

Row placement is a copy: the packed rows must equal the oracle's bit for bit (rtol = atol = 0),
in float32 and bfloat16; gradients are sums of copies (float32 accumulation): exact as well.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import DataCollatorWithFlattening

from ogkernels.packing import (
    IGNORE_INDEX,
    embed_packed,
    merge_image_tokens,
    pack_multimodal,
    plan_packing,
)
from ogkernels.varlen import VarlenBatch

PH = -200
WIDTH = 6


def varlen(lengths, width=WIDTH, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    cu = torch.tensor([0] + torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist(), dtype=torch.int32)
    return VarlenBatch(torch.randn(total, width, generator=g).to(dtype), cu, max(lengths, default=0))


def oracle(ids, labels, image_seqs, embed, max_length=None):
    """Plain loops: per sample, text rows and the sample's image rows in order."""
    rows, positions, out_labels, lengths = [], [], [], []
    images = iter(image_seqs)
    for b, sample in enumerate(ids):
        sample_rows, sample_labels = [], []
        for i, tok in enumerate(sample.tolist()):
            if tok == PH:
                image = next(images)
                for r in range(image.shape[0]):
                    sample_rows.append(image[r])
                    sample_labels.append(IGNORE_INDEX)
            else:
                sample_rows.append(embed(torch.tensor([tok]))[0])
                sample_labels.append(int(labels[b][i]) if labels is not None else 0)
        if max_length is not None:
            sample_rows, sample_labels = sample_rows[:max_length], sample_labels[:max_length]
        if sample_labels:
            sample_labels[0] = IGNORE_INDEX
        rows += sample_rows
        out_labels += sample_labels
        positions += list(range(len(sample_rows)))
        lengths.append(len(sample_rows))
    return torch.stack(rows) if rows else None, positions, out_labels, lengths


def check_against_oracle(packed, ids, labels, image_seqs, embed, max_length=None):
    rows, positions, out_labels, lengths = oracle(ids, labels, image_seqs, embed, max_length)
    assert packed.inputs_embeds.shape == (1, sum(lengths), WIDTH)
    if rows is not None:
        torch.testing.assert_close(packed.inputs_embeds[0], rows, rtol=0, atol=0)
    assert packed.position_ids.tolist() == [positions]
    assert packed.position_ids.dtype == torch.int64
    if labels is not None:
        assert packed.labels.tolist() == [out_labels]
    cu = [0]
    for n in lengths:
        cu.append(cu[-1] + n)
    for name in ("cu_seq_lens_q", "cu_seq_lens_k"):
        tensor = getattr(packed, name)
        assert tensor.dtype == torch.int32 and tensor.tolist() == cu
    assert packed.max_length_q == packed.max_length_k == max(lengths, default=0)
    assert isinstance(packed.max_length_q, int)


@pytest.fixture
def embed():
    torch.manual_seed(0)
    return torch.nn.Embedding(40, WIDTH)


def sample_batch():
    ids = [
        torch.tensor([1, 2, PH, 3, 4]),  # image in the middle
        torch.tensor([5, 6, 7]),  # no image
        torch.tensor([PH, 8]),  # image first
        torch.tensor([9, PH]),  # image last
    ]
    labels = [torch.tensor([11, 12, IGNORE_INDEX, 13, 14]), torch.tensor([15, 16, 17]),
              torch.tensor([IGNORE_INDEX, 18]), torch.tensor([19, IGNORE_INDEX])]
    return ids, labels


def test_layout_and_rows_match_oracle(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])  # one sequence per sample with an image
    packed = pack_multimodal(ids, images, embed, labels)
    check_against_oracle(packed, ids, labels, images.split(), embed)
    # visual rows are IGNORE, each sample's first row too, text labels survive
    assert packed.labels[0, 0] == IGNORE_INDEX and packed.labels[0, 1] == 12
    assert packed.layout.image_lengths.tolist() == [3, 0, 1, 2]


def test_one_sequence_per_sample_with_empty_entries(embed):
    ids, labels = sample_batch()
    per_image = varlen([3, 1, 2])
    per_sample = VarlenBatch(per_image.values, torch.tensor([0, 3, 3, 4, 6], dtype=torch.int32), 3)
    a = pack_multimodal(ids, per_image, embed, labels)
    b = pack_multimodal(ids, per_sample, embed, labels)
    assert torch.equal(a.inputs_embeds, b.inputs_embeds) and torch.equal(a.labels, b.labels)
    bad = VarlenBatch(per_image.values, torch.tensor([0, 2, 3, 4, 6], dtype=torch.int32), 2)
    with pytest.raises(ValueError, match=r"image_tokens \(sequence 1\).*length 0"):
        pack_multimodal(ids, bad, embed, labels)


def test_bfloat16_rows_exact_and_image_cast_to_embedding_dtype(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2], dtype=torch.float32)
    embed_bf16 = embed.to(torch.bfloat16)
    packed = pack_multimodal(ids, images, embed_bf16, labels)
    assert packed.inputs_embeds.dtype == torch.bfloat16
    rows, *_ = oracle(ids, labels, [s.to(torch.bfloat16) for s in images.split()], embed_bf16)
    torch.testing.assert_close(packed.inputs_embeds[0], rows, rtol=0, atol=0)


def test_gradients_reach_embeddings_and_image_tokens(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    values = images.values.clone().requires_grad_(True)
    images = images.map_values(values)
    weights = torch.randn(1, 15, WIDTH)
    (pack_multimodal(ids, images, embed, labels).inputs_embeds * weights).sum().backward()
    grad_values, grad_embed = values.grad.clone(), embed.weight.grad.clone()

    values.grad = None
    embed.weight.grad = None
    rows, *_ = oracle(ids, labels, images.split(), embed)
    (rows[None] * weights).sum().backward()
    torch.testing.assert_close(grad_values, values.grad, rtol=0, atol=0)
    torch.testing.assert_close(grad_embed, embed.weight.grad, rtol=1e-6, atol=1e-6)


def test_text_only_matches_data_collator_with_flattening(embed):
    ids = [torch.tensor([3, 4, 5]), torch.tensor([6, 7]), torch.tensor([8, 9, 10, 11])]
    labels = [torch.tensor([13, 14, 15]), torch.tensor([16, 17]), torch.tensor([18, 19, 20, 21])]
    packed = pack_multimodal(ids, None, embed, labels)
    hf = DataCollatorWithFlattening(return_flash_attn_kwargs=True)(
        [{"input_ids": i.tolist(), "labels": l.tolist()} for i, l in zip(ids, labels)]
    )
    assert packed.labels.tolist() == hf["labels"].tolist()
    assert packed.position_ids.tolist() == hf["position_ids"].tolist()
    for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
        assert getattr(packed, key).dtype == hf[key].dtype == torch.int32
        assert getattr(packed, key).tolist() == hf[key].tolist()
    assert packed.max_length_q == hf["max_length_q"]
    torch.testing.assert_close(packed.inputs_embeds, embed(hf["input_ids"]), rtol=0, atol=0)


def test_expanded_ids_and_merge_image_tokens_agree(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    packed = pack_multimodal(ids, images, embed, labels)
    expanded = packed.layout.expanded_ids(image_token_id=39)
    assert expanded.shape == (1, 15) and int((expanded == 39).sum()) == 6
    merged = merge_image_tokens(expanded, images, embed, image_token_id=39)
    torch.testing.assert_close(merged, packed.inputs_embeds, rtol=0, atol=0)
    # (B, T) padded form: the k-th placeholder in row-major order takes image row k
    two_rows = torch.tensor([[1, 39, 39, 2], [39, 3, 4, 0]])
    out = merge_image_tokens(two_rows, images.values[:3], embed, image_token_id=39)
    assert out.shape == (2, 4, WIDTH)
    assert torch.equal(out[0, 1], images.values[0]) and torch.equal(out[1, 0], images.values[2])
    with pytest.raises(ValueError, match=r"input_ids: expected 6 image placeholders \(39\).*got 3"):
        merge_image_tokens(two_rows, images, embed, image_token_id=39)


def test_plan_in_collator_then_embed(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    layout = plan_packing(ids, [3, 0, 1, 2], labels)
    packed = embed_packed(layout, images, embed)
    check_against_oracle(packed, ids, labels, images.split(), embed)


def test_truncation_error_names_the_sample(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    with pytest.raises(ValueError, match=r"input_ids\[0\].*max_length=6.*got 7 rows"):
        pack_multimodal(ids, images, embed, labels, max_length=6)
    packed = pack_multimodal(ids, images, embed, labels, max_length=7)  # fits exactly
    check_against_oracle(packed, ids, labels, images.split(), embed)


def test_truncation_drop_text_tail(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    packed = pack_multimodal(ids, images, embed, labels, max_length=5, truncation="drop_text_tail")
    check_against_oracle(packed, ids, labels, images.split(), embed, max_length=5)
    assert packed.cu_seq_lens_q.tolist() == [0, 5, 8, 10, 13]  # sample 0 lost its last 2 text rows


def test_truncation_never_cuts_an_image(embed):
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    # sample 0's image occupies rows 2..4: max_length=4 would cut it
    with pytest.raises(ValueError, match=r"input_ids\[0\].*rows 2…4.*max_length=4.*never cuts an image"):
        pack_multimodal(ids, images, embed, labels, max_length=4, truncation="drop_text_tail")
    # an image starting past max_length would be dropped whole: also an error (sample 3: rows 1..2)
    with pytest.raises(ValueError, match=r"input_ids\[0\]"):
        pack_multimodal(ids, images, embed, labels, max_length=1, truncation="drop_text_tail")
    short = [ids[1], ids[3]]
    with pytest.raises(ValueError, match=r"input_ids\[1\].*rows 1…2"):
        pack_multimodal(short, varlen([2]), embed, [labels[1], labels[3]], max_length=2, truncation="drop_text_tail")


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda e: pack_multimodal([torch.tensor([PH, 1, PH])], varlen([2]), e), ValueError,
         r"input_ids\[0\].*at most one image placeholder.*2 placeholders"),
        (lambda e: pack_multimodal([torch.tensor([1, PH])], None, e), ValueError, r"image_tokens.*1 images.*None"),
        (lambda e: pack_multimodal([torch.tensor([1, 2])], varlen([2]), e), ValueError,
         r"image_tokens \(sequence 0\).*length 0.*got length 2"),
        (lambda e: pack_multimodal([torch.tensor([PH]), torch.tensor([1])], varlen([1, 1, 1]), e), ValueError,
         r"image_tokens.*1 sequences.*or 2.*3 sequences"),
        (lambda e: pack_multimodal([torch.tensor([1, 2])], None, e, [torch.tensor([1])]), ValueError,
         r"labels\[0\].*2 labels"),
        (lambda e: pack_multimodal(torch.tensor([[1, 2]]), None, e), TypeError, r"input_ids.*list of 1-D"),
        (lambda e: pack_multimodal([torch.tensor([1.0])], None, e), TypeError, r"input_ids\[0\].*integer"),
        (lambda e: pack_multimodal([torch.tensor([1])], None, e, max_length=0), ValueError, r"max_length.*>= 1"),
        (lambda e: pack_multimodal([torch.tensor([1])], None, e, truncation="cut"), ValueError,
         r"truncation.*'error', 'drop_text_tail', got cut"),
        (lambda e: plan_packing([torch.tensor([1, 2])], [3]), ValueError, r"image_lengths\[0\].*no image placeholder"),
        (lambda e: plan_packing([torch.tensor([1, 2])], [0, 0]), ValueError, r"image_lengths.*1 entries"),
        (lambda e: embed_packed(plan_packing([torch.tensor([PH])], [4]), varlen([3]), e), ValueError,
         r"image_tokens.*at least 4 rows"),
        (lambda e: pack_multimodal([torch.tensor([PH])], varlen([2], width=3), e), ValueError,
         r"image_tokens.*width 6"),
    ],
)
def test_bad_input_names_the_argument(embed, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(embed)


def test_empty_batch(embed):
    packed = pack_multimodal([], None, embed)
    assert packed.inputs_embeds.shape == (1, 0, WIDTH)
    assert packed.cu_seq_lens_q.tolist() == [0] and packed.max_length_q == 0


def test_triton_gather_path_matches(embed, triton_path):
    # Runs gather_rows' Triton kernel (the interpreter on CPU): same rows, bit for bit.
    ids, labels = sample_batch()
    images = varlen([3, 1, 2])
    packed = pack_multimodal(ids, images, embed, labels)
    check_against_oracle(packed, ids, labels, images.split(), embed)


@settings(max_examples=40, deadline=None)
@given(data=st.data(), batch=st.integers(1, 5))
def test_hypothesis_random_batches(data, batch):
    torch.manual_seed(1)
    embed = torch.nn.Embedding(30, WIDTH)
    ids, labels, image_lengths = [], [], []
    for _ in range(batch):
        text = data.draw(st.lists(st.integers(0, 29), min_size=0, max_size=6))
        if data.draw(st.booleans()):
            at = data.draw(st.integers(0, len(text)))
            text = text[:at] + [PH] + text[at:]
            image_lengths.append(data.draw(st.integers(0, 5)))
        ids.append(torch.tensor(text, dtype=torch.int64))
        labels.append(torch.tensor([t if t != PH else IGNORE_INDEX for t in text], dtype=torch.int64))
    images = varlen(image_lengths) if image_lengths else None
    longest = max(len(t) - int((t == PH).any()) for t in ids) + max(image_lengths, default=0)
    max_length = data.draw(st.one_of(st.none(), st.integers(1, longest + 1)))
    seqs = images.split() if images is not None else []
    try:
        packed = pack_multimodal(ids, images, embed, labels, max_length=max_length, truncation="drop_text_tail")
    except ValueError as err:
        # only allowed when an image would be cut: check the oracle agrees
        assert "never cuts an image" in str(err)
        rows_per_sample = []
        it = iter(seqs)
        for t in ids:
            before = t.tolist().index(PH) if PH in t.tolist() else None
            if before is not None:
                rows_per_sample.append(before + next(it).shape[0])
        assert max_length is not None and any(end > max_length for end in rows_per_sample if end)
        return
    check_against_oracle(packed, ids, labels, seqs, embed, max_length=max_length)
