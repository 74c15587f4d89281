"""The HF model with the collator's ``image_rows``: the connector and the merge run without a
host read, and give bit-identical logits and gradients."""

from __future__ import annotations

import pytest
import torch

from ogkernels.integrations.hf_llava import image_tokens_for
from ogkernels.integrations.llava_collator import OGLlavaCollator
from ogkernels.tools.profiling import HostSyncCounter

from .hf_tiny import images_and_masks, processor_for, tiny_model


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=0).train()
    images, masks = images_and_masks(4, seed=1)
    collate = OGLlavaCollator(processor=processor_for(model))
    samples = [{"image": images[i], "masks": masks[i], "caption": "a shape near the other one"} for i in range(3)]
    samples.append({"image": images[3], "masks": None, "caption": "an image without masks"})
    return model, collate(samples)


def loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


def test_the_collator_counts_the_placeholders(setup):
    model, batch = setup
    assert batch["image_rows"] == int((batch["input_ids"] == model.config.image_token_id).sum()) > 0


def test_image_rows_give_bit_identical_logits_and_gradients(setup):
    model, batch = setup
    unbounded = {key: value for key, value in batch.items() if key != "image_rows"}
    logits, grads = loss_and_grads(model, batch)
    logits_ref, grads_ref = loss_and_grads(model, unbounded)
    assert torch.equal(logits, logits_ref)
    assert grads.keys() == grads_ref.keys() and all(torch.equal(grads[k], grads_ref[k]) for k in grads)


def test_connector_and_merge_make_no_host_read_with_image_rows(setup, monkeypatch):
    model, batch = setup
    rows = batch["image_rows"]

    def image_part(bound):
        tokens = image_tokens_for(model, batch["pixel_values"], batch["masks"], max_tokens=bound)
        return model._embed(batch["input_ids"], tokens, None, bound)

    with HostSyncCounter() as counter:
        image_part(None)
    assert counter.syncs >= 3, dict(counter.sync_ops)  # the connector's total, the rows in use, the count
    # A CPU tensor's checks run on the host; take the device branch (torch._assert_async, as on CUDA).
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    with HostSyncCounter() as counter:
        embeds = image_part(rows)
    assert counter.syncs == 0, dict(counter.sync_ops)
    monkeypatch.undo()
    assert torch.equal(embeds, image_part(None))


@pytest.mark.parametrize("wrong", [-1, 1.5, True])
def test_image_rows_of_the_wrong_type_are_named(setup, wrong):
    model, batch = setup
    with pytest.raises((TypeError, ValueError), match="image_rows"):
        model(**{**batch, "image_rows": wrong})


@pytest.mark.parametrize("delta", [-1, 1])
def test_image_rows_that_disagree_with_the_placeholders_are_named(setup, delta):
    model, batch = setup
    with pytest.raises(ValueError, match="max_tokens|image_rows|input_ids"):
        model(**{**batch, "image_rows": batch["image_rows"] + delta})
