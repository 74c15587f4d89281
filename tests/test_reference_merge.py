"""The reference merge (§9): step by step on hand-checked inputs (exact: it only copies rows)."""

from __future__ import annotations

import torch

from ogkernels.reference.merge import IGNORE_INDEX, prepare_inputs_labels_for_multimodal

PH = -200


def embed(ids: torch.Tensor) -> torch.Tensor:
    """Token t → the row [t, t] (easy to read back)."""
    return ids.float()[:, None].repeat(1, 2)


def block(batch: int, rows: int) -> torch.Tensor:
    """Image b's block: rows [100·(b+1) + r, …]."""
    values = torch.arange(rows, dtype=torch.float32)[None, :] + 100 * torch.arange(1, batch + 1)[:, None]
    return values[..., None].repeat(1, 1, 2)


def test_splices_all_rows_pads_right_and_keeps_what_was_passed():
    ids = torch.tensor([[1, PH, 2, 0], [PH, 3, 4, 5]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    labels = torch.tensor([[1, IGNORE_INDEX, 2, IGNORE_INDEX], [IGNORE_INDEX, 3, 4, 5]])
    out = prepare_inputs_labels_for_multimodal(ids, None, mask, "cache", labels, block(2, 3), embed, model_max_length=None)
    none, position_ids, attention, cache, embeds, new_labels = out
    assert none is None and position_ids is None and cache == "cache"
    # sample 0: text 1, its 3 image rows (all L_max rows), text 2; sample 1: 3 rows then 3, 4, 5
    assert embeds[0, :, 0].tolist() == [1, 100, 101, 102, 2, 0]
    assert embeds[1, :, 0].tolist() == [200, 201, 202, 3, 4, 5]
    assert new_labels[0].tolist() == [1, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 2, IGNORE_INDEX]
    assert attention.dtype == mask.dtype and attention.tolist() == [[1, 1, 1, 1, 1, 0], [1] * 6]


def test_truncation_after_splicing_can_cut_the_image_and_all_labels():
    ids = torch.tensor([[7, PH, 8, 9]])
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 8, 9]])
    *_, embeds, new_labels = prepare_inputs_labels_for_multimodal(
        ids, None, None, None, labels, block(1, 5), embed, model_max_length=4
    )
    assert embeds[0, :, 0].tolist() == [7, 100, 101, 102]  # image cut, text gone
    assert (new_labels == IGNORE_INDEX).all()


def test_sample_without_placeholder_consumes_an_image_and_left_padding():
    ids = torch.tensor([[5, 6], [PH, 7]])
    *_, position_ids, attention, _, embeds, labels = prepare_inputs_labels_for_multimodal(
        ids, torch.zeros_like(ids), None, None, None, block(2, 2), embed, padding_side="left"
    )
    # sample 0 took image 0's slot (empty slice), so sample 1 receives image 1
    assert embeds[1, :, 0].tolist() == [200, 201, 7]
    assert embeds[0, :, 0].tolist() == [0, 5, 6]
    assert position_ids.tolist() == [[0, 0, 1], [0, 1, 2]]
    assert attention is None and labels is None


def test_nothing_to_merge_returns_inputs():
    ids = torch.tensor([[1, 2]])
    out = prepare_inputs_labels_for_multimodal(ids, None, None, None, None, None, embed)
    assert out[0] is ids and out[4] is None
