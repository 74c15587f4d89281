"""SAM2 per-mask metadata of one image, as arrays (one row per mask, in mask order)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from .._validation import fail

_FIELDS = {  # name -> (dtype, trailing shape)
    "area": (np.int64, ()),
    "bbox": (np.float64, (4,)),
    "predicted_iou": (np.float64, ()),
    "stability_score": (np.float64, ()),
    "point_coords": (np.float64, (2,)),
    "crop_box": (np.float64, (4,)),
}


@dataclass(frozen=True, eq=False)
class MaskMetadata:
    """The SAM2 automatic-mask-generator fields of ``N`` masks.

    Attributes:
        area: ``int64 (N,)`` mask areas in pixels.
        bbox: ``float64 (N, 4)`` mask boxes, XYWH.
        predicted_iou: ``float64 (N,)``.
        stability_score: ``float64 (N,)``.
        point_coords: ``float64 (N, 2)``: the ``(x, y)`` point prompt of each mask (SAM2
            writes it as ``[[x, y]]``).
        crop_box: ``float64 (N, 4)`` the crop each mask was generated in, XYWH.
    """

    area: np.ndarray
    bbox: np.ndarray
    predicted_iou: np.ndarray
    stability_score: np.ndarray
    point_coords: np.ndarray
    crop_box: np.ndarray

    def __post_init__(self) -> None:
        n = None
        for name, (dtype, tail) in _FIELDS.items():
            value = getattr(self, name)
            if not isinstance(value, np.ndarray):
                fail(f"MaskMetadata.{name}", "a numpy array", value, error=TypeError)
            if value.dtype != dtype:
                fail(f"MaskMetadata.{name}", f"dtype {np.dtype(dtype)}", f"dtype {value.dtype}", error=TypeError)
            if value.ndim != 1 + len(tail) or value.shape[1:] != tail:
                layout = "(N" + "".join(f", {t}" for t in tail) + ")"
                fail(f"MaskMetadata.{name}", f"shape {layout}", f"shape {value.shape}")
            n = value.shape[0] if n is None else n
            if value.shape[0] != n:
                fail(f"MaskMetadata.{name}", f"{n} rows (one per mask, as in 'area')", f"shape {value.shape}")

    @property
    def num_masks(self) -> int:
        return int(self.area.shape[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaskMetadata):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f), equal_nan=True) for f in _FIELDS)

    def select(self, order: Sequence[int]) -> "MaskMetadata":
        """The rows in ``order`` (e.g. a mask permutation)."""
        index = np.asarray(order, dtype=np.int64)
        return MaskMetadata(**{f: getattr(self, f)[index] for f in _FIELDS})

    @classmethod
    def empty(cls, num_masks: int = 0) -> "MaskMetadata":
        """``num_masks`` rows of zeros (areas) and NaNs (floats)."""
        return cls(**{f: np.full((num_masks,) + t, 0 if d is np.int64 else np.nan, d) for f, (d, t) in _FIELDS.items()})

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Any]) -> "MaskMetadata":
        """From a mapping of the six fields (array-likes), cast to the documented dtypes."""
        missing = [f for f in _FIELDS if f not in arrays]
        if missing:
            fail("arrays", f"the fields {', '.join(_FIELDS)}", f"a mapping missing {', '.join(missing)}")
        out = {}
        for name, (dtype, tail) in _FIELDS.items():
            value = np.asarray(arrays[name])
            if value.size == 0:
                value = value.reshape((0,) + tail)
            out[name] = value.astype(dtype, copy=False)
        return cls(**out)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]], *, source: str = "records") -> "MaskMetadata":
        """From SAM2 records (dicts with ``area``, ``bbox``, ``predicted_iou``,
        ``stability_score``, ``point_coords`` as ``[[x, y]]`` or ``[x, y]``, ``crop_box``).

        Raises ``ValueError`` naming ``source`` and the record on a missing or malformed field.
        """
        columns: dict[str, list] = {f: [] for f in _FIELDS}
        for i, record in enumerate(records):
            if not isinstance(record, Mapping):
                fail(f"{source}[{i}]", "a dict of SAM2 mask fields", record, error=TypeError)
            for name, (_, tail) in _FIELDS.items():
                if name not in record:
                    fail(f"{source}[{i}]", f"a {name!r} field", f"fields {sorted(record)}")
                value = record[name]
                if name == "point_coords":
                    value = np.asarray(value, dtype=np.float64)
                    if value.shape not in ((2,), (1, 2)):
                        fail(f"{source}[{i}].point_coords", "one point [[x, y]]", f"shape {value.shape}")
                    value = value.reshape(2)
                try:
                    array = np.asarray(value, dtype=np.float64)
                except (TypeError, ValueError):
                    fail(f"{source}[{i}].{name}", "a number or list of numbers", value)
                if array.shape != tail:
                    fail(f"{source}[{i}].{name}", f"shape {tail}", f"shape {array.shape}")
                if name == "area" and (not math.isfinite(float(array)) or float(array) != int(array)):
                    fail(f"{source}[{i}].area", "an integer", value)
                columns[name].append(array)
        return cls.from_arrays(
            {f: np.stack(c) if c else np.zeros((0,) + _FIELDS[f][1]) for f, c in columns.items()}
        )

    def to_records(self) -> list[dict[str, Any]]:
        """SAM2-style records (no ``segmentation``): python ints/floats, ``point_coords`` as
        ``[[x, y]]``, boxes as lists."""
        return [
            {
                "area": int(self.area[i]),
                "bbox": self.bbox[i].tolist(),
                "predicted_iou": float(self.predicted_iou[i]),
                "point_coords": [self.point_coords[i].tolist()],
                "stability_score": float(self.stability_score[i]),
                "crop_box": self.crop_box[i].tolist(),
            }
            for i in range(self.num_masks)
        ]
