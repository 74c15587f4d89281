"""Hugging Face LLaVA + OG-Fusion: the model class, its checkpoints, packed batches, and the
og_llava adapter, on tiny random models (CPU, float32).

Tolerances (float32 throughout unless stated):
- save → reload, own and Auto classes, plain checkpoints on the plain path: bit-identical;
- a sample in a packed batch vs the same sample alone: logits and loss rtol = atol = 1e-5
  (same operations; only GEMM blocking over a different row count differs);
- OG-Fusion path vs the reference path at batch size 1: loss rtol 1e-5 / atol 1e-6, gradients
  rtol 1e-4 / atol 1e-6 (same rows, different reduction order); bfloat16 loss rtol 2e-2.
"""

from __future__ import annotations

import json
import logging
import os
import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from ogkernels import reference as R  # noqa: E402
from ogkernels.fusion import OGFusion  # noqa: E402
from ogkernels.integrations import hf_llava  # noqa: E402
from ogkernels.integrations.hf_llava import (  # noqa: E402
    OGLlavaConfig,
    OGLlavaForConditionalGeneration,
    apply_ogfusion_to_llava,
    use_packed_attention,
)
from ogkernels.integrations.llava_collator import OGLlavaCollator, tokenize_conversation  # noqa: E402
from ogkernels.integrations.og_llava import masks_to_device, use_ogfusion_in_reference_model  # noqa: E402
from ogkernels.jobs.llava_data import CharTokenizer, SyntheticCaptions, reference_batch  # noqa: E402
from ogkernels.jobs.llava_model import build_tiny_llava  # noqa: E402
from ogkernels.packed_masks import PackedMasks  # noqa: E402
from ogkernels.packing import IGNORE_INDEX  # noqa: E402
from ogkernels.tools.reference_llava import reference_connector_like, reference_llava_forward  # noqa: E402

from .hf_tiny import IMAGE_SIZE, LLM_DIM, PATCHES, VISION_DIM, images_and_masks, processor_for, tiny_model  # noqa: E402
from .strategies import mask_stacks  # noqa: E402
from .test_fusion import StandInReferenceModel  # noqa: E402

IMAGE_TOKEN = 127
TOKENIZER = CharTokenizer()


def equipped(attn: str = "sdpa", seed: int = 0):
    """A plain tiny LLaVA with ``attn`` equipped with a seeded connector (attention kept)."""
    model = build_tiny_llava(attn, seed=seed, image_size=IMAGE_SIZE)
    torch.manual_seed(seed + 1)
    return apply_ogfusion_to_llava(model, connector=OGFusion(VISION_DIM, LLM_DIM), attn_implementation=None)


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


# ------------------------------------------------------------------------------ the model class


def test_apply_returns_the_same_model_as_the_og_class_with_weights_shared():
    model = build_tiny_llava("sdpa", image_size=IMAGE_SIZE)
    old = model.model.multi_modal_projector
    language_weights = [p for p in model.model.language_model.parameters()]
    equipped_model = apply_ogfusion_to_llava(model, alpha=0.25, max_masks=3, gate=False)
    assert equipped_model is model and type(model) is OGLlavaForConditionalGeneration
    assert type(model.config) is OGLlavaConfig and model.model.config is model.config
    assert all(a is b for a, b in zip(model.model.language_model.parameters(), language_weights))
    connector = model.model.multi_modal_projector
    assert isinstance(connector, OGFusion) and connector.options.alpha == 0.25 and not connector.options.gate
    assert torch.equal(connector.mm_projector[0].weight, old.linear_1.weight)  # built here: projector copied
    assert torch.equal(connector.mm_projector[2].bias, old.linear_2.bias)
    assert model.config.og_options == connector.options.to_dict() and model.config.og_options["gate"] is False
    assert "model.multi_modal_projector.mm_bom_mask_token" in dict(model.named_parameters())
    with pytest.raises(ValueError, match="model: expected a LLaVA model not yet equipped"):
        apply_ogfusion_to_llava(model)
    with pytest.raises(TypeError, match="model: expected a transformers LlavaForConditionalGeneration"):
        apply_ogfusion_to_llava(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="ogfusion_options"):
        apply_ogfusion_to_llava(build_tiny_llava(image_size=IMAGE_SIZE), connector=OGFusion(VISION_DIM, LLM_DIM), alpha=0.5)
    with pytest.raises(TypeError, match="connector: expected an ogkernels.OGFusion"):
        apply_ogfusion_to_llava(build_tiny_llava(image_size=IMAGE_SIZE), connector=torch.nn.Linear(2, 2))


def test_a_given_connector_keeps_its_weights_unless_asked():
    connector = OGFusion(VISION_DIM, LLM_DIM)
    before = connector.mm_projector[0].weight.detach().clone()
    apply_ogfusion_to_llava(build_tiny_llava(image_size=IMAGE_SIZE), connector=connector)
    assert torch.equal(connector.mm_projector[0].weight, before)
    model = build_tiny_llava(image_size=IMAGE_SIZE)
    apply_ogfusion_to_llava(model, connector=(copied := OGFusion(VISION_DIM, LLM_DIM)), copy_projector=True)
    assert torch.equal(copied.mm_projector[0].weight, model.model.multi_modal_projector.mm_projector[0].weight)


def test_gelu_mismatch_keeps_connector_weights(caplog):
    model = build_tiny_llava("sdpa", image_size=IMAGE_SIZE)
    model.config.projector_hidden_act = "gelu_pytorch_tanh"
    connector = OGFusion(VISION_DIM, LLM_DIM)
    before = connector.mm_projector[0].weight.clone()
    apply_ogfusion_to_llava(model, connector=connector, copy_projector=True)
    assert torch.equal(connector.mm_projector[0].weight, before)
    assert "not exact GELU" in caplog.text and model.config.projector_hidden_act == "gelu"


def _logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def processed():
    """Two images with different OG token counts, processed for the tiny model."""
    images, masks = images_and_masks(2, seed=5)
    return images, masks


def _inputs(model, images, masks):
    processor = processor_for(model)
    return processor(text=["a <image> b", "<image> c d"], images=images, masks=masks, return_tensors="pt", padding=True)


@pytest.mark.parametrize("loader", ["own", "auto"])
def test_save_reload_bit_identical_logits(tmp_path, processed, loader):
    from safetensors import safe_open
    from transformers import AutoModelForImageTextToText

    model = tiny_model(seed=1, alpha=0.3, max_masks=4)
    with torch.no_grad():
        model.model.multi_modal_projector.mm_bom_mask_token.normal_()
    inputs = _inputs(model, *processed)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "og_llava" and config["og_options"]["alpha"] == 0.3
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert set(handle.keys()) == set(model.state_dict())  # what load_state_dict (Trainer resume) reads
    cls = OGLlavaForConditionalGeneration if loader == "own" else AutoModelForImageTextToText
    reloaded = cls.from_pretrained(tmp_path).eval()
    assert type(reloaded) is OGLlavaForConditionalGeneration
    assert reloaded.model.multi_modal_projector.options == model.model.multi_modal_projector.options
    assert torch.equal(_logits(reloaded, inputs), _logits(model, inputs))


def test_plain_llava_checkpoint_loads_into_the_og_class(tmp_path, processed, caplog):
    plain = build_tiny_llava("sdpa", seed=2, image_size=IMAGE_SIZE).eval()
    plain.save_pretrained(tmp_path)  # transformers' legacy key names (language_model.model.*, linear_1/2)
    with caplog.at_level(logging.WARNING):
        model = OGLlavaForConditionalGeneration.from_pretrained(tmp_path).eval()
    connector = model.model.multi_modal_projector
    assert torch.equal(connector.mm_projector[0].weight, plain.model.multi_modal_projector.linear_1.weight)
    assert torch.equal(connector.mm_projector[2].bias, plain.model.multi_modal_projector.linear_2.bias)
    assert torch.equal(model.lm_head.weight, plain.lm_head.weight)
    bom = connector.mm_bom_mask_token.detach()
    assert torch.isfinite(bom).all() and 0.5 < float(bom.std()) < 1.5 and abs(float(bom.mean())) < 0.5  # randn, initialised
    images, _ = processed
    inputs = _inputs(model, images, None)  # no masks: the plain LLaVA path, V tokens per image
    assert int((inputs["input_ids"] == IMAGE_TOKEN).sum()) == 2 * PATCHES
    with torch.no_grad():
        expected = plain(**{k: v for k, v in inputs.items() if k != "masks"}).logits
    torch.testing.assert_close(_logits(model, inputs), expected, rtol=1e-6, atol=1e-6)


def test_reference_checkpoint_connector_survives_save_and_reload(tmp_path, processed):
    ref = R.ReferenceOGFusion(VISION_DIM, LLM_DIM)
    stage1 = tmp_path / "stage1"
    stage1.mkdir()
    torch.save({f"model.mm_projector.{k}": v for k, v in ref.mm_projector.state_dict().items()}, stage1 / "mm_projector.bin")
    torch.save({"model.mm_bom_mask_token.mm_bom_mask_token": ref.mm_bom_mask_token.mm_bom_mask_token.detach()},
               stage1 / "mm_bom_mask_token.bin")
    model = apply_ogfusion_to_llava(
        build_tiny_llava("sdpa", image_size=IMAGE_SIZE), connector=OGFusion.from_reference_checkpoint(stage1)
    ).eval()
    connector = model.model.multi_modal_projector
    assert torch.equal(connector.mm_projector[0].weight, ref.mm_projector[0].weight)
    assert torch.equal(connector.mm_bom_mask_token, ref.mm_bom_mask_token.mm_bom_mask_token)
    inputs = _inputs(model, *processed)
    model.save_pretrained(tmp_path / "hf")
    reloaded = OGLlavaForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    assert torch.equal(_logits(reloaded, inputs), _logits(model, inputs))


def test_config_validates_and_round_trips_the_options():
    config = OGLlavaConfig.from_llava_config(build_tiny_llava(image_size=IMAGE_SIZE).config, mode="patch", frame="pad")
    again = OGLlavaConfig.from_dict(config.to_dict())
    assert again.og_token_options == config.og_token_options and again.og_token_options.frame == "pad"
    with pytest.raises(ValueError, match="og_projection"):
        OGLlavaConfig(og_projection="sideways")
    with pytest.raises(TypeError, match="gate: expected a bool"):
        OGLlavaConfig(og_options={"gate": "yes"})
    with pytest.raises(TypeError, match="an unknown option"):
        OGLlavaConfig(og_options={"alpah": 0.5})


# ------------------------------------------------------------------------------ attention default


def test_packed_rows_use_varlen_attention_unless_chosen():
    assert tiny_model().config.text_config._attn_implementation == "ogkernels_varlen"
    assert tiny_model(attn="sdpa").config.text_config._attn_implementation == "sdpa"
    model = apply_ogfusion_to_llava(build_tiny_llava("sdpa", image_size=IMAGE_SIZE))  # sdpa: transformers' default
    assert model.model.language_model.config._attn_implementation == "ogkernels_varlen"
    kept = apply_ogfusion_to_llava(build_tiny_llava("sdpa", image_size=IMAGE_SIZE), attn_implementation=None)
    assert kept.model.language_model.config._attn_implementation == "sdpa"
    eager = apply_ogfusion_to_llava(build_tiny_llava("eager", image_size=IMAGE_SIZE))  # a choice: kept
    assert eager.model.language_model.config._attn_implementation == "eager"


def test_says_once_when_varlen_attention_cannot_be_registered(monkeypatch, caplog):
    from ogkernels.integrations import hf_attention

    def broken(name):
        raise RuntimeError("no AttentionInterface")

    monkeypatch.setattr(hf_attention, "register_varlen_attention", broken)
    hf_llava.packed_attention.cache_clear()
    hf_llava._warn_once.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=hf_llava.__name__):
            model = build_tiny_llava("sdpa", image_size=IMAGE_SIZE)
            apply_ogfusion_to_llava(model)
            apply_ogfusion_to_llava(build_tiny_llava("sdpa", image_size=IMAGE_SIZE))
        assert model.model.language_model.config._attn_implementation == "sdpa"
        assert caplog.text.count("cannot register 'ogkernels_varlen'") == 1
    finally:
        monkeypatch.undo()
        hf_llava.packed_attention.cache_clear()
    assert use_packed_attention(model) == "ogkernels_varlen"


# ------------------------------------------------------------------------------ masks on the host


def test_masks_to_device_moves_every_tensor_and_keeps_types():
    dense = torch.rand(2, 5, 7) < 0.5
    packed = PackedMasks.from_dense(dense)
    moved = masks_to_device([dense, packed, None], torch.device("meta"))
    assert moved[0].device.type == "meta" and moved[2] is None
    assert isinstance(moved[1], PackedMasks) and moved[1].bits.device.type == "meta" and moved[1].shape == packed.shape
    assert masks_to_device(dense, dense.device) is dense


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_host_masks_with_a_cuda_model(processed):
    model = tiny_model(seed=3).cuda()
    inputs = _inputs(model, *processed)
    on_host = model(**{k: v.cuda() if torch.is_tensor(v) else v for k, v in inputs.items()}).logits
    on_device = model(**inputs.to("cuda")).logits
    torch.testing.assert_close(on_host, on_device, rtol=0, atol=0)


# ------------------------------------------------------------------------------ packed batches


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


def test_placeholder_mismatch_names_the_cause(samples):
    model = equipped()
    batch = collator(og_options={"global_view": "full"})(samples[:1])  # a collator with other options than the model
    with pytest.raises(ValueError, match="OGLlavaCollator.from_model"):
        model(**batch)
    with pytest.raises(ValueError, match="masks: expected None without pixel_values"):
        model(input_ids=batch["input_ids"], masks=batch["masks"])


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
    assert ref.image_rows == longest
    torch.testing.assert_close(ours, ref_alone, rtol=1e-5, atol=1e-5)  # packed == reference without padding
    for b, n in enumerate(lengths):
        if n == longest:
            torch.testing.assert_close(ref_batched[b], ref_alone[b], rtol=1e-5, atol=1e-5)
        else:
            assert abs(float(ref_batched[b] - ref_alone[b])) > 1e-4, (b, n, longest)
    assert pad_rows > 0 and labels.numel() > batch["input_ids"].shape[1]


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
    with pytest.raises(ValueError, match=r"samples\[0\].*one image placeholder.*exactly when an image is given"):
        collate([{"input_ids": torch.tensor([1, -200, 2])}])
    with pytest.raises(ValueError, match=r"samples\[0\].*2 placeholders"):
        collate([dict(samples[0], input_ids=torch.tensor([1, 127, 127, 2]))])
    with pytest.raises(ValueError, match=r"input_ids\[1\].*max_length=10"):
        collator(max_length=10)([{"input_ids": torch.tensor([1, 2])}, samples[0]])
    with pytest.raises(ValueError, match=r"token_counter.*1 counts"):
        collator(token_counter=lambda masks: [3, 4])([samples[0]])
    with pytest.raises(ValueError, match=r"samples\[0\].*remove_unused_columns"):
        collate([{"pixel_values": samples[0]["pixel_values"], "masks": samples[0]["masks"]}])


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


# ------------------------------------------------------------------------------ the og_llava adapter


def _reference_model_with_rope():
    torch.manual_seed(0)
    model = StandInReferenceModel()
    model.model.custom_rotary_embedding = True
    model.model.rotary_emb = types.SimpleNamespace(group_ranges=[[(0, 1)]])
    return model


@settings(max_examples=25)
@given(
    masks=st.lists(mask_stacks(max_masks=4, max_side=12), min_size=1, max_size=3),
    layout=st.sampled_from([{}, {"global_view": "full"}, {"global_view": "none"}, {"averaging": True}]),
)
def test_adapter_sets_the_reference_group_ranges(masks, layout):
    flags = R.ReferenceFlags(
        global_view=layout.get("global_view") != "none",
        averaging_global_view=layout.get("global_view", "mean") == "mean",
        averaging=layout.get("averaging", False),
    )
    model = _reference_model_with_rope()
    images = torch.randn(len(masks), 3, 4, 4)
    features = model.model.get_vision_tower()(images)
    bom = model.model.mm_bom_mask_token.mm_bom_mask_token
    use_ogfusion_in_reference_model(model, **layout)
    got = model.encode_images(images, masks, masking=True)
    if R.masks_gate(list(masks)):
        reference = R.og_fusion_embed(features, list(masks), bom, flags)
        torch.testing.assert_close(got, model.model.mm_projector(reference.block), rtol=1e-5, atol=1e-5)
        assert model.model.rotary_emb.group_ranges == reference.group_ranges
    else:
        torch.testing.assert_close(got, model.model.mm_projector(features), rtol=1e-5, atol=1e-5)
        assert model.model.rotary_emb.group_ranges == [[(0, 1)]]  # the plain path sets none


def test_adapter_with_rope_needs_bom_rows():
    model = _reference_model_with_rope()
    use_ogfusion_in_reference_model(model, no_masktoken=True)
    with pytest.raises(ValueError, match="custom_rotary_embedding: expected a connector with BOM rows"):
        model.encode_images(torch.randn(1, 3, 4, 4), [torch.rand(2, 9, 9) < 0.3], masking=True)
