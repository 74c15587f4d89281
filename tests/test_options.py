"""OGTokenOptions: one validated, serialisable options object for og_tokens, counts and OGFusion."""

import json

import pytest
import torch

import ogkernels
from ogkernels import OGTokenOptions
from ogkernels.budget import og_token_counts


def test_defaults_are_the_reference_behaviour():
    o = OGTokenOptions()
    assert (o.global_view, o.no_masktoken, o.averaging, o.image_filling) == ("mean", False, False, False)
    assert (o.alpha, o.mode, o.frame, o.max_masks, o.maskless) == (0.5, "flat", "none", None, "reference")
    assert o.budget is None


def test_json_round_trip_keeps_every_field():
    o = OGTokenOptions(global_view="full", mode="patch", frame="pad", grid=(4, 6), max_image_tokens=99,
                       drop_priority="area", alpha=0.25, maskless="plain")
    back = OGTokenOptions.from_dict(json.loads(json.dumps(o.to_dict())))
    assert back == o and back.grid == (4, 6)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        ({"global_view": "max"}, ValueError, "global_view"),
        ({"alpha": 0.0}, ValueError, "alpha"),
        ({"alpha": True}, TypeError, "alpha"),
        ({"alpha": float("nan")}, ValueError, "alpha"),
        ({"averaging": 1}, TypeError, "averaging"),
        ({"max_masks": 0}, ValueError, "max_masks"),
        ({"frame": "pad"}, ValueError, "frame"),  # flat mode has no frames
        ({"mode": "patch", "grid": 10}, ValueError, "grid"),
        ({"max_batch_tokens": 2**31}, ValueError, "max_batch_tokens"),
        ({"drop_priority": "size"}, ValueError, "drop_priority"),
        ({"maskless": "none"}, ValueError, "maskless"),
        ({"global_veiw": "mean"}, TypeError, "global_veiw"),
    ],
)
def test_bad_options_name_the_field(kwargs, error, name):
    with pytest.raises(error, match=name):
        OGTokenOptions.resolve(None, **kwargs)


def test_unknown_keyword_is_refused_by_every_entry_point():
    masks = [torch.ones(1, 4, 4, dtype=torch.bool)]
    with pytest.raises(TypeError, match="golbal_view"):
        ogkernels.og_tokens(torch.zeros(1, 4, 2), masks, golbal_view="mean")
    with pytest.raises(TypeError, match="golbal_view"):
        og_token_counts(masks, 4, golbal_view="mean")
    with pytest.raises(TypeError, match="golbal_view"):
        ogkernels.OGFusion(2, 3, golbal_view="mean")


def test_an_options_object_and_keywords_give_the_same_tokens():
    torch.manual_seed(0)
    features = torch.randn(2, 9, 3)
    masks = [torch.rand(3, 6, 6) > 0.5, torch.rand(2, 5, 7) > 0.6]
    options = OGTokenOptions(global_view="full", no_masktoken=True)
    a = ogkernels.og_tokens(features, masks, None, options)
    b = ogkernels.og_tokens(features, masks, global_view="full", no_masktoken=True)
    c = ogkernels.og_tokens(features, masks, None, OGTokenOptions(global_view="full"), no_masktoken=True)
    assert torch.equal(a.values, b.values) and torch.equal(a.values, c.values)
    assert og_token_counts(masks, 9, options) == a.lengths.tolist()
    assert ogkernels.OGFusion(3, 4, options).options == options
