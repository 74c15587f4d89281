"""Hugging Face LLaVA + OG-Fusion + packed batches, on a tiny random model (CPU, float32).

Tolerances (float32 throughout unless stated):
- a sample in a packed batch vs the same sample alone: logits and loss rtol = atol = 1e-5
  (same operations; only GEMM blocking over a different row count differs);
- OG-Fusion path vs the reference path at batch size 1: loss rtol 1e-5 / atol 1e-6, gradients
  rtol 1e-4 / atol 1e-6 (same rows, different reduction order); bfloat16 loss rtol 2e-2.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from integration.llava_data import CharTokenizer, SyntheticCaptions, reference_batch  # noqa: E402
from integration.train_llava import build_tiny_llava  # noqa: E402
from ogkernels.integrations.hf_llava import (  # noqa: E402
    apply_ogfusion_to_llava,
    reference_connector_like,
    reference_llava_forward,
)
from ogkernels.integrations.llava_collator import OGLlavaCollator, tokenize_conversation  # noqa: E402
from ogkernels.fusion import OGFusion  # noqa: E402
from ogkernels.packing import IGNORE_INDEX  # noqa: E402

IMAGE_SIZE, PATCHES, VISION_DIM, LLM_DIM, IMAGE_TOKEN = 56, 16, 64, 128, 127
TOKENIZER = CharTokenizer()


def equipped(attn: str = "sdpa", seed: int = 0):
    model = build_tiny_llava(attn, seed=seed, image_size=IMAGE_SIZE)
    torch.manual_seed(seed + 1)
    apply_ogfusion_to_llava(model, connector=OGFusion(VISION_DIM, LLM_DIM))
    return model


def collator(**kwargs):
    return OGLlavaCollator(IMAGE_TOKEN, grid=PATCHES, tokenizer=TOKENIZER, **kwargs)


@pytest.fixture(scope="module")
def samples():
    data = SyntheticCaptions(16, image_size=IMAGE_SIZE, seed=3)
    chosen = [data[i] for i in range(4)]
    chosen.insert(2, {"conversations": [{"from": "human", "value": "hello"}, {"from": "gpt", "value": "hi there"}]})
    return chosen


def per_sample_losses(logits, labels, cu):
    """Mean next-token cross-entropy of each packed sample (shifted inside the sample)."""
    out = []
    bounds = cu.tolist()
    for a, b in zip(bounds[:-1], bounds[1:]):
        out.append(F.cross_entropy(logits[0, a : b - 1], labels[0, a + 1 : b], ignore_index=IGNORE_INDEX))
    return torch.stack(out)


def test_apply_installs_connector_and_copies_projector():
    model = build_tiny_llava("sdpa", image_size=IMAGE_SIZE)
    old = model.model.multi_modal_projector
    connector = OGFusion(VISION_DIM, LLM_DIM)
    assert apply_ogfusion_to_llava(model, connector=connector) is model
    assert model.model.multi_modal_projector is connector
    assert torch.equal(connector.mm_projector[0].weight, old.linear_1.weight)
    assert torch.equal(connector.mm_projector[2].bias, old.linear_2.bias)
    assert any(name == "model.multi_modal_projector.mm_bom_mask_token" for name, _ in model.named_parameters())
    with pytest.raises(ValueError, match="model: expected a LLaVA model not yet equipped"):
        apply_ogfusion_to_llava(model, connector=OGFusion(VISION_DIM, LLM_DIM))
    with pytest.raises(TypeError, match="model: expected a transformers LlavaForConditionalGeneration"):
        apply_ogfusion_to_llava(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ogfusion_options"):
        apply_ogfusion_to_llava(build_tiny_llava(image_size=IMAGE_SIZE), connector=connector, alpha=0.5)


def test_gelu_mismatch_keeps_connector_weights(caplog):
    model = build_tiny_llava("sdpa", image_size=IMAGE_SIZE)
    model.config.projector_hidden_act = "gelu_pytorch_tanh"
    connector = OGFusion(VISION_DIM, LLM_DIM)
    before = connector.mm_projector[0].weight.clone()
    apply_ogfusion_to_llava(model, connector=connector)
    assert torch.equal(connector.mm_projector[0].weight, before)
    assert "not exact GELU" in caplog.text


@pytest.mark.parametrize("attn", ["sdpa", "eager", "ogkernels_varlen"])
def test_packed_sample_equals_sample_alone(samples, attn):
    model = equipped(attn)
    collate = collator()
    batch = collate(samples)
    cu = batch["cu_seq_lens_q"]
    assert batch["input_ids"].shape[0] == 1 and cu.dtype == torch.int32
    assert batch["pixel_values"].shape[0] == 4 and len(batch["masks"]) == 4
    with torch.no_grad():
        packed = model(**batch)
        losses = per_sample_losses(packed.logits, batch["labels"], cu)
        for b, sample in enumerate(samples):
            alone_batch = collate([sample])
            alone = model(**alone_batch)
            seg = slice(int(cu[b]), int(cu[b + 1]))
            torch.testing.assert_close(packed.logits[0, seg], alone.logits[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(losses[b], alone.loss, rtol=1e-5, atol=1e-5)
    # the packed loss is the token-weighted mean of the samples' losses
    counts = torch.stack([(batch["labels"][0, int(a) + 1 : int(b)] != IGNORE_INDEX).sum() for a, b in zip(cu[:-1], cu[1:])])
    torch.testing.assert_close(packed.loss, (losses * counts).sum() / counts.sum(), rtol=1e-5, atol=1e-6)


def test_connector_sees_masks_and_lengths_match_collator(samples):
    model = equipped()
    batch = collator()(samples)
    with torch.no_grad():
        out = model(**batch)
    placeholders = int((batch["input_ids"] == IMAGE_TOKEN).sum())
    assert out.image_hidden_states.shape == (placeholders, LLM_DIM)
    # OG path: lengths differ per image and are not all V
    is_image = (batch["input_ids"][0] == IMAGE_TOKEN).long()
    cu = batch["cu_seq_lens_q"].tolist()
    per_sample = [int(is_image[a:b].sum()) for a, b in zip(cu[:-1], cu[1:])]
    assert per_sample[2] == 0 and len(set(per_sample)) > 2 and per_sample != [PATCHES] * 5


def test_plain_path_when_no_mask_is_set(samples):
    model = equipped()
    plain = [dict(s, masks=torch.zeros_like(s["masks"])) if "masks" in s else s for s in samples]
    batch = collator()(plain)
    is_image = int((batch["input_ids"] == IMAGE_TOKEN).sum())
    assert is_image == 4 * PATCHES
    with torch.no_grad():
        out = model(**batch)
    assert torch.isfinite(out.loss)


def test_unpacked_padded_batch_matches_packed(samples):
    # (B, T) right-padded with an attention mask, as generation would call it.
    model = equipped()
    batch = collator()(samples[:2])
    cu = batch["cu_seq_lens_q"].tolist()
    rows = [batch["input_ids"][0, a:b] for a, b in zip(cu[:-1], cu[1:])]
    longest = max(r.numel() for r in rows)
    ids = torch.zeros(2, longest, dtype=torch.long)
    mask = torch.zeros(2, longest, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : r.numel()] = r
        mask[i, : r.numel()] = 1
    with torch.no_grad():
        packed = model(**batch)
        padded = model(input_ids=ids, attention_mask=mask, pixel_values=batch["pixel_values"], masks=batch["masks"])
    for i, (a, b) in enumerate(zip(cu[:-1], cu[1:])):
        torch.testing.assert_close(padded.logits[i, : b - a], packed.logits[0, a:b], rtol=1e-5, atol=1e-5)


def _gradients(named):
    return {n: p.grad.detach().clone() for n, p in named}


@pytest.mark.parametrize("index", [0, 3])
def test_batch_size_one_training_step_equals_reference(samples, index):
    model = equipped()
    model.train()
    sample = samples[index]
    ours = model(**collator()([sample]))
    ours.loss.backward()
    connector = model.model.multi_modal_projector
    grads_ours = _gradients(connector.mm_projector.named_parameters())
    bom_ours = connector.mm_bom_mask_token.grad.clone()
    embed_ours = model.get_input_embeddings().weight.grad.clone()
    model.zero_grad(set_to_none=True)

    twin = reference_connector_like(connector)
    ref_batch = reference_batch([sample], TOKENIZER)
    ref = reference_llava_forward(
        model, twin, ref_batch["pixel_values"], ref_batch["masks"], ref_batch["input_ids"], ref_batch["labels"]
    )
    ref.loss.backward()
    torch.testing.assert_close(ours.loss, ref.loss, rtol=1e-5, atol=1e-6)
    for name, grad in _gradients(twin.mm_projector.named_parameters()).items():
        torch.testing.assert_close(grads_ours[name], grad, rtol=1e-4, atol=1e-6, msg=f"mm_projector.{name}")
    torch.testing.assert_close(bom_ours, twin.mm_bom_mask_token.mm_bom_mask_token.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(embed_ours, model.get_input_embeddings().weight.grad, rtol=1e-4, atol=1e-6)
    assert bom_ours.abs().sum() > 0  # the BOM was used and trained


def test_batch_size_one_bfloat16_loss_equals_reference(samples):
    model = equipped().to(torch.bfloat16)
    sample = samples[1]
    with torch.no_grad():
        ours = model(**collator()([sample]))
        twin = reference_connector_like(model.model.multi_modal_projector)
        ref_batch = reference_batch([sample], TOKENIZER)
        ref = reference_llava_forward(
            model, twin, ref_batch["pixel_values"], ref_batch["masks"], ref_batch["input_ids"], ref_batch["labels"]
        )
    torch.testing.assert_close(ours.loss.float(), ref.loss.float(), rtol=2e-2, atol=1e-3)


def test_reference_pad_rows_change_losses_and_cost_tokens(samples):
    """Batch of 4 images: the reference pads every image to L_max and attends the pad rows.
    Its per-sample losses then differ from the same sample alone; ours do not."""
    model = equipped()
    images = [s for s in samples if "pixel_values" in s]
    collate = collator()
    with torch.no_grad():
        batch = collate(images)
        ours = per_sample_losses(model(**batch).logits, batch["labels"], batch["cu_seq_lens_q"])
        twin = reference_connector_like(model.model.multi_modal_projector)
        rb = reference_batch(images, TOKENIZER)
        ref = reference_llava_forward(model, twin, rb["pixel_values"], rb["masks"], rb["input_ids"], rb["labels"])
        logits, labels = ref.logits, ref.labels
        ref_batched = torch.stack(
            [F.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=IGNORE_INDEX) for b in range(len(images))]
        )
        alone = []
        for s in images:
            one = reference_batch([s], TOKENIZER)
            alone.append(reference_llava_forward(model, twin, one["pixel_values"], one["masks"], one["input_ids"], one["labels"]).loss)
        ref_alone = torch.stack(alone)

    is_image = (batch["input_ids"][0] == IMAGE_TOKEN).long()
    cu = batch["cu_seq_lens_q"].tolist()
    lengths = [int(is_image[a:b].sum()) for a, b in zip(cu[:-1], cu[1:])]
    longest = max(lengths)
    pad_rows = sum(longest - n for n in lengths)
    ref_tokens = labels.numel()
    print("\nimage tokens L_b:", lengths, "L_max:", longest)
    print("reference loss batched:", [f"{x:.5f}" for x in ref_batched.tolist()])
    print("reference loss alone:  ", [f"{x:.5f}" for x in ref_alone.tolist()])
    print("ours (packed):         ", [f"{x:.5f}" for x in ours.tolist()])
    print(f"reference LLM tokens {ref_tokens} (image pad rows {pad_rows}) vs packed {batch['input_ids'].shape[1]}")

    assert ref.image_rows == longest
    torch.testing.assert_close(ours, ref_alone, rtol=1e-5, atol=1e-5)  # packed == reference without padding
    for b, n in enumerate(lengths):
        if n == longest:
            torch.testing.assert_close(ref_batched[b], ref_alone[b], rtol=1e-5, atol=1e-5)
        else:
            assert abs(float(ref_batched[b] - ref_alone[b])) > 1e-4, (b, n, longest)
    assert pad_rows > 0 and ref_tokens > batch["input_ids"].shape[1]


def test_conversation_tokenization_labels_only_answers():
    ids, labels = tokenize_conversation(
        [{"from": "human", "value": "what?\n<image>"}, {"from": "gpt", "value": "a cat"}], TOKENIZER, has_image=True
    )
    assert int((ids == -200).sum()) == 1
    supervised = [int(i) for i, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    assert TOKENIZER.decode(supervised) == "a cat" and supervised[-1] == TOKENIZER.eos_token_id
    # an image sample without <image> gets it prepended to the first human turn
    ids, _ = tokenize_conversation([{"from": "human", "value": "x"}, {"from": "gpt", "value": "y"}], TOKENIZER, has_image=True)
    assert ids.tolist().index(-200) == 1 + len("USER: ")  # bos, "USER: ", then the image
    with pytest.raises(ValueError, match=r"conversations\[0\].*one <image>"):
        tokenize_conversation([{"from": "human", "value": "<image><image>"}], TOKENIZER, has_image=True)


def test_collator_errors_name_the_sample(samples):
    collate = collator()
    with pytest.raises(ValueError, match=r"samples\[0\].*placeholder exactly when pixel_values"):
        collate([{"input_ids": torch.tensor([1, -200, 2])}])
    with pytest.raises(ValueError, match=r"samples\[0\].*image token id 127"):
        collate([{"input_ids": torch.tensor([1, 127, 2])}])
    with pytest.raises(ValueError, match=r"input_ids\[1\].*max_length=10"):
        collator(max_length=10)([{"input_ids": torch.tensor([1, 2])}, samples[0]])
    with pytest.raises(ValueError, match=r"token_counter.*1 counts"):
        collator(token_counter=lambda masks: [3, 4])([samples[0]])


def test_varlen_attention_from_position_ids_alone_matches_sdpa():
    # no cu_seq_lens: the "ogkernels_varlen" implementation splits on the packed position ids
    varlen = build_tiny_llava("ogkernels_varlen", image_size=IMAGE_SIZE).model.language_model
    sdpa = build_tiny_llava("sdpa", image_size=IMAGE_SIZE).model.language_model
    x = torch.randn(1, 12, LLM_DIM)
    positions = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2, 3, 4]])
    with torch.no_grad():
        a = varlen(inputs_embeds=x, position_ids=positions, use_cache=False).last_hidden_state
        b = sdpa(inputs_embeds=x, position_ids=positions, use_cache=False).last_hidden_state
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_varlen_attention_honours_padding_masks(side):
    varlen = build_tiny_llava("ogkernels_varlen", image_size=IMAGE_SIZE).model.language_model
    sdpa = build_tiny_llava("sdpa", image_size=IMAGE_SIZE).model.language_model
    x = torch.randn(3, 7, LLM_DIM)
    mask = torch.ones(3, 7, dtype=torch.long)
    pads = [0, 3, 6]
    for row, n in enumerate(pads):
        if n:
            mask[row, :n] = 0 if side == "left" else 1
            mask[row, 7 - n :] = 1 if side == "left" else 0
    with torch.no_grad():
        a = varlen(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
        b = sdpa(inputs_embeds=x, attention_mask=mask, use_cache=False).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(a[real], b[real], rtol=1e-5, atol=1e-5)


def test_generation_with_cache_matches_sdpa(samples):
    # decode steps: 1 query against a growing cache (bottom-right causal alignment)
    scores = []
    for attn in ("sdpa", "ogkernels_varlen"):
        model = equipped(attn).eval()
        batch = collator()([samples[0]])
        ids = batch["input_ids"]
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), pixel_values=batch["pixel_values"],
            masks=batch["masks"], max_new_tokens=4, do_sample=False, use_cache=True,
            output_logits=True, return_dict_in_generate=True,
        )
        scores.append(torch.stack(out.logits))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-5, atol=1e-5)
