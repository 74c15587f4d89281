"""Launch settings of every Triton kernel (tile sizes, warps), in one place.

The launchers ask here how to launch; the static audit (``ogkernels.tools.audit``) compiles
the very launches the launchers build (:class:`Launch`), and the GPU check's tuning sweep
overrides these settings with :func:`overrides` to find the best ones on a real GPU. A new
setting found there is committed here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

KERNELS = ("phi_bins", "gather_rows", "segment_sum", "token_plan", "place_tokens")

_overrides: dict[str, dict[str, int]] = {}


@contextlib.contextmanager
def overrides(kernel: str, **settings: int) -> Iterator[None]:
    """Launch ``kernel`` with ``settings`` (e.g. ``num_warps=8, BLOCK_C=32``) inside the block."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel: expected one of {', '.join(KERNELS)}, got {kernel!r}")
    previous = _overrides.get(kernel)
    _overrides[kernel] = {**(previous or {}), **settings}
    try:
        yield
    finally:
        if previous is None:
            _overrides.pop(kernel, None)
        else:
            _overrides[kernel] = previous


def _settled(kernel: str, settings: dict[str, int]) -> dict[str, int]:
    return {**settings, **_overrides.get(kernel, {})}


def next_power_of_2(n: int) -> int:
    """The smallest power of two ``>= max(n, 1)``."""
    return 1 << max(int(n) - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def phi_bins(bin_pixels: int, grid_w: int, packed: bool) -> dict[str, int]:
    """``phi_bins_kernel``: ``BLOCK_W`` words per inner step (about one bin's words, 8–64) and
    ``BLOCK_C`` bins per program (a grid row's bins, at most 1024 words per tile)."""
    words_per_bin = max(1, cdiv(bin_pixels, 32 if packed else 4))
    block_w = min(64, max(8, next_power_of_2(words_per_bin)))
    block_c = min(next_power_of_2(grid_w), max(1, 1024 // block_w), 64)
    return _settled("phi_bins", {"BLOCK_C": block_c, "BLOCK_W": block_w, "num_warps": 4})


def _row_columns(width: int, element_size: int) -> int:
    """Columns per tile row: the row width, at most 2 KiB of elements (512 fp32 / 1024 bf16)."""
    return max(16, min(next_power_of_2(width), 2048 // element_size))


def gather_rows(width: int, element_size: int) -> dict[str, int]:
    """``gather_rows_kernel``: tiles of ``BLOCK_R × BLOCK_C`` (4096 elements), 128-bit rows."""
    block_c = _row_columns(width, element_size)
    return _settled("gather_rows", {"BLOCK_R": max(1, 4096 // block_c), "BLOCK_C": block_c, "num_warps": 4})


def segment_sum(width: int, element_size: int) -> dict[str, int]:
    """``segment_sum_kernel``: one source row per program, ``BLOCK_C`` columns."""
    return _settled("segment_sum", {"BLOCK_C": _row_columns(width, element_size), "num_warps": 4})


def token_plan(num_tokens: int) -> dict[str, int]:
    """``token_plan_kernel``: ``BLOCK_V`` tokens per step of a mask's count (at most 1024)."""
    return _settled("token_plan", {"BLOCK_V": min(1024, next_power_of_2(num_tokens)), "num_warps": 4})


def place_tokens(num_tokens: int) -> dict[str, int]:
    """``place_tokens_kernel``: ``BLOCK_V`` tokens per program (a grid axis over the blocks)."""
    return _settled("place_tokens", {"BLOCK_V": min(1024, next_power_of_2(num_tokens)), "num_warps": 4})


_POINTER_TYPES = {
    torch.float16: "*fp16",
    torch.bfloat16: "*bf16",
    torch.float32: "*fp32",
    torch.float64: "*fp64",
    torch.int8: "*i8",
    torch.uint8: "*u8",
    torch.int32: "*i32",
    torch.int64: "*i64",
}


@dataclass
class Launch:
    """One kernel launch: the kernel, its grid, its arguments in order and its settings
    (``tl.constexpr`` values and ``num_warps``)."""

    kernel: Callable[..., Any]
    grid: tuple[int, ...]
    args: dict[str, Any]
    constexprs: dict[str, Any] = field(default_factory=dict)
    num_warps: int = 4

    @classmethod
    def of(cls, kernel, grid, args: dict[str, Any], settings: dict[str, Any], **constexprs) -> "Launch":
        settings = dict(settings)
        num_warps = settings.pop("num_warps", 4)
        return cls(kernel, tuple(grid), args, {**constexprs, **settings}, num_warps)

    def run(self) -> None:
        if all(self.grid):
            self.kernel[self.grid](*self.args.values(), **self.constexprs, num_warps=self.num_warps)

    def signature(self) -> tuple[dict[str, str], dict[str, Any], tuple[str, ...]]:
        """For an ahead-of-time compile: the Triton signature, the constexprs, and the
        arguments Triton's runtime would specialise as 16-divisible (pointers 16-byte aligned,
        integers multiples of 16), from the argument values of this launch."""
        signature, aligned = {}, []
        for name, value in self.args.items():
            if isinstance(value, torch.Tensor):
                signature[name] = _POINTER_TYPES[value.dtype]
                if value.data_ptr() % 16 == 0:
                    aligned.append(name)
            elif isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Launch.args[{name!r}]: expected a tensor or an int, got {value!r}")
            else:
                signature[name] = "i32" if -(2**31) <= value < 2**31 else "i64"
                if value % 16 == 0:
                    aligned.append(name)
        signature.update({name: "constexpr" for name in self.constexprs})
        return signature, dict(self.constexprs), tuple(aligned)
