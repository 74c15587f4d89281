"""``OGTokenOptions``: every option of object-guided tokens, in one frozen, validated object.

The same object configures :func:`ogkernels.og_tokens`, :func:`ogkernels.budget.og_token_counts`,
:class:`ogkernels.OGFusion`, the Hugging Face processor, collator and model config. It
serialises to a plain JSON dict (:meth:`OGTokenOptions.to_dict`) and back
(:meth:`OGTokenOptions.from_dict`), so a model saved with its options reloads with them.
Adding an option means adding a field here (and its effect in the ops).

Defaults are the reference connector's hard-coded behaviour.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ._validation import check_bool, check_choice, check_positive_int, fail
from .ops.frames import FRAMES
from .ops.token_budget import PRIORITIES, TokenBudget
from .ops.token_plan import GLOBAL_VIEWS, MASKLESS, Layout

MODES = ("flat", "patch")
INT32_MAX = 2**31 - 1


def parse_grid(grid: Any, mode: str, argument: str = "grid") -> tuple[int, int]:
    """``V`` or ``(gh, gw)`` → ``(gh, gw)``; a bare ``V`` in patch mode must be a square;
    ``V = gh·gw`` at most ``2**31 - 1`` (int32 token indices: checked before any allocation)."""
    shape = _parse_grid(grid, mode, argument)
    if shape[0] * shape[1] > INT32_MAX:
        fail(argument, f"at most {INT32_MAX} tokens (gh·gw; int32 token indices)", grid)
    return shape


def _parse_grid(grid: Any, mode: str, argument: str) -> tuple[int, int]:
    if isinstance(grid, bool):
        fail(argument, "an int V >= 1 or a pair (gh, gw)", grid, error=TypeError)
    if isinstance(grid, int):
        if grid < 1:
            fail(argument, "V >= 1", grid)
        if mode == "flat":
            return 1, grid
        side = math.isqrt(grid)
        if side * side != grid:
            fail(argument, "a square token count V = g·g for mode='patch', or a pair (gh, gw)", grid)
        return side, side
    if (
        isinstance(grid, (tuple, list))
        and len(grid) == 2
        and all(isinstance(g, int) and not isinstance(g, bool) for g in grid)
    ):
        if grid[0] < 1 or grid[1] < 1:
            fail(argument, "gh >= 1 and gw >= 1", tuple(grid))
        return int(grid[0]), int(grid[1])
    fail(argument, "an int V >= 1 or a pair of ints (gh, gw)", grid, error=TypeError)


def check_alpha(value: Any, argument: str = "alpha") -> float:
    """``alpha``: a finite real number > 0 (bool rejected)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(argument, "a positive real number", value, error=TypeError)
    if not (0 < value < math.inf):
        fail(argument, "a finite number > 0", value)
    return float(value)


def check_cap(argument: str, value: Any) -> int | None:
    """An optional token count in ``[1, 2**31 - 1]`` (int32 ``cu_seqlens``)."""
    if value is None:
        return None
    check_positive_int(argument, value)
    if value > INT32_MAX:
        fail(argument, f"<= {INT32_MAX} (int32 cu_seqlens)", value)
    return value


@dataclass(frozen=True)
class OGTokenOptions:
    """How masks become object-guided token sequences.

    Layout (per image: ``[global] ++ for each kept mask: [BOM] ++ rows``):
        global_view: ``"mean"`` (1 row, the mean of the ``V`` patch rows — the reference),
            ``"full"`` (all ``V`` rows) or ``"none"``.
        no_masktoken: no BOM rows.
        image_filling: append the tokens no mask covers as a last mask.
        averaging: each mask contributes the mean of its rows (1 row).
        max_masks: keep at most this many masks per image (the reference's ``mask_limit``,
            applied after cleaning, in order); None: no limit.
        gate: the reference's batch gate: a batch in which no mask has a set pixel takes the
            plain LLaVA path — every image its ``V`` patch rows, no global row, no BOM.
        maskless: what an image without masks (None, or zero masks) gets inside a batch that
            has masks: ``"reference"`` (the reference's rule: its global row(s) only) or
            ``"plain"`` (its ``V`` patch rows, as the plain LLaVA path gives every image of a
            batch without masks).

    Downsampling (:func:`ogkernels.downsample_masks`):
        alpha: threshold, > 0; read as the decimal number it prints as (``0.1`` is 1/10).
        mode: ``"flat"`` (the reference operator) or ``"patch"`` (2-D pooling).
        frame: ``"none"``, ``"pad"`` or ``"crop"`` (``mode="patch"`` only).
        grid: ``(gh, gw)`` for ``mode="patch"`` with a non-square grid; None: ``V`` itself
            (flat) or the square ``√V × √V`` (patch).

    Token caps (static output sizes, no host sync):
        max_image_tokens, max_batch_tokens: caps, global rows included.
        drop_priority: which masks go first when a cap bites: ``"order"`` (the last),
            ``"area"`` (the smallest), ``"score"`` (the lowest SAM 2 predicted IoU).
    """

    global_view: str = "mean"
    no_masktoken: bool = False
    image_filling: bool = False
    averaging: bool = False
    max_masks: int | None = None
    gate: bool = True
    maskless: str = "reference"
    alpha: float = 0.5
    mode: str = "flat"
    frame: str = "none"
    grid: tuple[int, int] | None = None
    max_image_tokens: int | None = None
    max_batch_tokens: int | None = None
    drop_priority: str = "order"

    def __post_init__(self) -> None:
        check_choice("global_view", self.global_view, GLOBAL_VIEWS)
        for name in ("no_masktoken", "image_filling", "averaging", "gate"):
            check_bool(name, getattr(self, name))
        if self.max_masks is not None:
            check_positive_int("max_masks", self.max_masks)
        check_choice("maskless", self.maskless, MASKLESS)
        object.__setattr__(self, "alpha", check_alpha(self.alpha))
        check_choice("mode", self.mode, MODES)
        check_choice("frame", self.frame, FRAMES)
        if self.mode == "flat" and self.frame != "none":
            fail("frame", "'none' with mode='flat' (frames apply to mode='patch')", self.frame)
        if self.grid is not None:
            object.__setattr__(self, "grid", parse_grid(self.grid, self.mode))
        check_cap("max_image_tokens", self.max_image_tokens)
        check_cap("max_batch_tokens", self.max_batch_tokens)
        check_choice("drop_priority", self.drop_priority, PRIORITIES)

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def resolve(cls, options: "OGTokenOptions | None" = None, **overrides: Any) -> "OGTokenOptions":
        """``options`` (default: the defaults) with keyword ``overrides`` applied; an unknown
        keyword raises ``TypeError`` naming it."""
        if options is not None and not isinstance(options, cls):
            fail("options", "an OGTokenOptions (or None)", options, error=TypeError)
        if not overrides:
            return options if options is not None else cls()
        unknown = sorted(set(overrides) - _FIELDS)
        if unknown:
            fail(unknown[0], "a field of OGTokenOptions: " + ", ".join(sorted(_FIELDS)), "an unknown option", error=TypeError)
        base = options if options is not None else cls()
        return dataclasses.replace(base, **overrides)

    def replace(self, **changes: Any) -> "OGTokenOptions":
        """A copy with ``changes`` applied (validated)."""
        return OGTokenOptions.resolve(self, **changes)

    # -- serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of every field (``grid`` as a list or None)."""
        out = dataclasses.asdict(self)
        out["grid"] = list(self.grid) if self.grid is not None else None
        return out

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "OGTokenOptions":
        """The inverse of :meth:`to_dict` (missing fields take their defaults; unknown ones
        raise ``TypeError``)."""
        if not isinstance(values, Mapping):
            fail("values", "a mapping of OGTokenOptions fields", values, error=TypeError)
        values = dict(values)
        if isinstance(values.get("grid"), list):
            values["grid"] = tuple(values["grid"])
        return cls.resolve(None, **values)

    # -- what the ops consume -------------------------------------------------------------
    @property
    def budget(self) -> TokenBudget | None:
        if self.max_image_tokens is None and self.max_batch_tokens is None:
            return None
        return TokenBudget(self.max_image_tokens, self.max_batch_tokens, self.drop_priority)

    @property
    def layout(self) -> Layout:
        return Layout(
            self.global_view,
            not self.no_masktoken,
            self.averaging,
            self.image_filling,
            self.max_masks,
            self.budget,
            self.maskless,
        )

    def grid_shape(self, num_tokens: int) -> tuple[int, int]:
        """The ``(gh, gw)`` token grid for features with ``V = num_tokens`` rows."""
        shape = self.grid if self.grid is not None else parse_grid(num_tokens, self.mode)
        if shape[0] * shape[1] != num_tokens:
            fail("grid", f"gh·gw == V = {num_tokens} (the features' rows)", tuple(shape))
        return shape


_FIELDS = frozenset(f.name for f in dataclasses.fields(OGTokenOptions))
