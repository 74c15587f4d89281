"""The reference merge of visual tokens into the text sequence (``ogkernels/reference/BEHAVIOUR.md`` §9).

``prepare_inputs_labels_for_multimodal`` written plainly, step by step as §9 describes, with the
same Python loops and per-sample host reads as the reference. It is the oracle of the
integration tests and the baseline of the training benchmark; nothing here is optimised.

What it reproduces on purpose: every image contributes all ``L_max`` rows of its block (the
``(B, L_max, D)`` output of the reference connector, pad rows included), truncation happens
after splicing (it can cut an image or every supervised token), the batch is then padded to
its longest sequence.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200


def prepare_inputs_labels_for_multimodal(
    input_ids: torch.Tensor,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    past_key_values: Any,
    labels: torch.Tensor | None,
    image_features: torch.Tensor | None,
    embed_tokens: Callable[[torch.Tensor], torch.Tensor],
    *,
    image_token_index: int = IMAGE_TOKEN_INDEX,
    model_max_length: int | None = 2048,
    padding_side: str = "right",
) -> tuple[
    torch.Tensor | None,
    torch.Tensor | None,
    torch.Tensor | None,
    Any,
    torch.Tensor | None,
    torch.Tensor | None,
]:
    """Splice each sample's visual block into its text, then pad the batch (§9 steps 1–8).

    Args:
        input_ids: ``(B, T)`` int64 with ``image_token_index`` where ``<image>`` was.
        position_ids: ``(B, T)`` or None.
        attention_mask: ``(B, T)`` (bool or int) or None.
        past_key_values: passed through.
        labels: ``(B, T)`` int64 or None.
        image_features: the visual block ``Z`` ``(B_img, L, D)`` (the reference connector's
            output, ``L = L_max``) or None. Images are consumed in order across the batch.
        embed_tokens: the LLM's token embedding, ``(N,) → (N, D)``.
        image_token_index: the placeholder id (-200).
        model_max_length: truncation length applied after splicing (None: no truncation).
        padding_side: ``"right"`` (training) or ``"left"``.

    Returns:
        ``(None, position_ids, attention_mask, past_key_values, inputs_embeds, labels)``:
        ``inputs_embeds (B, S_max, D)``; ``labels (B, S_max)`` or None if none was passed;
        ``attention_mask (B, S_max)`` in the caller's dtype, or None if none was passed;
        ``position_ids (B, S_max)`` or None if none was passed. With no image or ``T == 1``
        the inputs come back unchanged: ``(input_ids, position_ids, attention_mask,
        past_key_values, None, labels)``.
    """
    # Step 1: nothing to merge.
    if image_features is None or input_ids.shape[1] == 1:
        return input_ids, position_ids, attention_mask, past_key_values, None, labels

    # Step 3: defaults, remembering what the caller passed.
    passed_labels, passed_position_ids, passed_attention_mask = labels, position_ids, attention_mask
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
    else:
        attention_mask = attention_mask.bool()
    if position_ids is None:
        position_ids = torch.arange(0, input_ids.shape[1], dtype=torch.long, device=input_ids.device)
    if labels is None:
        labels = torch.full_like(input_ids, IGNORE_INDEX)

    # Step 4: keep the attended tokens of each sample.
    kept_ids = [ids[mask] for ids, mask in zip(input_ids, attention_mask)]
    kept_labels = [lab[mask] for lab, mask in zip(labels, attention_mask)]

    # Step 5: splice, one sample at a time; the image counter runs across the batch.
    new_embeds, new_labels = [], []
    image_index = 0
    for b, ids in enumerate(kept_ids):
        num_images = int((ids == image_token_index).sum())
        if num_images == 0:
            image = image_features[image_index]
            text_embeds = embed_tokens(ids)
            new_embeds.append(torch.cat([text_embeds, image[0:0]], dim=0))
            new_labels.append(kept_labels[b])
            image_index += 1
            continue
        cuts = [-1] + torch.where(ids == image_token_index)[0].tolist() + [ids.shape[0]]
        text_pieces, label_pieces = [], []
        for i in range(len(cuts) - 1):
            text_pieces.append(ids[cuts[i] + 1 : cuts[i + 1]])
            label_pieces.append(kept_labels[b][cuts[i] + 1 : cuts[i + 1]])
        sizes = [piece.shape[0] for piece in label_pieces]
        text_embeds = torch.split(embed_tokens(torch.cat(text_pieces)), sizes, dim=0)
        sample_embeds, sample_labels = [], []
        for i in range(num_images + 1):
            sample_embeds.append(text_embeds[i])
            sample_labels.append(label_pieces[i])
            if i < num_images:
                image = image_features[image_index]
                image_index += 1
                sample_embeds.append(image)
                sample_labels.append(
                    torch.full((image.shape[0],), IGNORE_INDEX, device=ids.device, dtype=kept_labels[b].dtype)
                )
        sample_embeds = [e.to(image_features.device) for e in sample_embeds]
        new_embeds.append(torch.cat(sample_embeds))
        new_labels.append(torch.cat(sample_labels))

    # Step 6: truncate after splicing.
    if model_max_length is not None:
        new_embeds = [e[:model_max_length] for e in new_embeds]
        new_labels = [lab[:model_max_length] for lab in new_labels]

    # Step 7: pad to the batch's longest sequence.
    longest = max(e.shape[0] for e in new_embeds)
    batch = len(new_embeds)
    padded_embeds = []
    padded_labels = torch.full((batch, longest), IGNORE_INDEX, dtype=new_labels[0].dtype, device=new_labels[0].device)
    out_mask = torch.zeros((batch, longest), dtype=attention_mask.dtype, device=attention_mask.device)
    out_positions = torch.zeros((batch, longest), dtype=position_ids.dtype, device=position_ids.device)
    for b, (embeds, labs) in enumerate(zip(new_embeds, new_labels)):
        length = embeds.shape[0]
        pad = torch.zeros((longest - length, embeds.shape[1]), dtype=embeds.dtype, device=embeds.device)
        positions = torch.arange(0, length, dtype=position_ids.dtype, device=position_ids.device)
        if padding_side == "left":
            padded_embeds.append(torch.cat([pad, embeds], dim=0))
            if length > 0:
                padded_labels[b, -length:] = labs
                out_mask[b, -length:] = True
                out_positions[b, -length:] = positions
        else:
            padded_embeds.append(torch.cat([embeds, pad], dim=0))
            if length > 0:
                padded_labels[b, :length] = labs
                out_mask[b, :length] = True
                out_positions[b, :length] = positions
    inputs_embeds = torch.stack(padded_embeds, dim=0)

    # Step 8: give back only what the caller passed.
    out_labels = None if passed_labels is None else padded_labels
    out_attention = None if passed_attention_mask is None else out_mask.to(dtype=passed_attention_mask.dtype)
    out_position_ids = None if passed_position_ids is None else out_positions
    return None, out_position_ids, out_attention, past_key_values, inputs_embeds, out_labels
