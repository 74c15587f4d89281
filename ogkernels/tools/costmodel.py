"""Machine-independent cost model: memory traffic, FLOPs and modeled GPU time.

Three kinds of figure, none of which needs a GPU:

* **Counted traffic** — :class:`TrafficCounter` (a :class:`~ogkernels.tools.profiling.HostSyncCounter`
  that also adds up bytes) runs any PyTorch code and charges each aten operation the bytes it
  reads and writes, as if every operation were one GPU kernel going through HBM with no cache
  reuse between kernels (see :func:`op_traffic` for the rules). This is what an eager,
  unfused run moves.
* **Formulas** — the bytes the fused kernels are designed to move (:func:`phi_bytes`,
  :func:`gather_bytes`, …), the minimum any implementation must move
  (:func:`og_tokens_min_bytes`), and the projector's FLOPs and bytes.
* **Modeled time** — :func:`roofline_seconds`: ``max(bytes / HBM bandwidth, FLOPs / peak)``
  on the GPUs of :data:`GPUS` (datasheet figures); :func:`overhead_seconds`: a floor from
  kernel launches and host syncs at *assumed* per-event latencies. Modeled, not measured.

Units: bytes (``MB = 1e6`` bytes where printed), FLOPs (one multiply–add = 2 FLOPs),
seconds, bandwidth in bytes/s, peaks in FLOP/s.
"""

from __future__ import annotations

import collections
import math
import os
import traceback
from dataclasses import dataclass

import torch
from torch.utils._pytree import tree_flatten

from .profiling import HostSyncCounter

aten = torch.ops.aten

# ----------------------------------------------------------------------------------------
# GPUs
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GPUSpec:
    """Peak figures of one GPU: HBM bandwidth (bytes/s), dense BF16 tensor-core and FP32
    (non-tensor) throughput (FLOP/s)."""

    name: str
    hbm_bytes_per_s: float
    bf16_flops_per_s: float
    fp32_flops_per_s: float

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s for ``dtype`` ``"bf16"``/``"fp16"`` (tensor cores, dense) or ``"fp32"``."""
        if dtype in ("bf16", "fp16"):
            return self.bf16_flops_per_s
        if dtype == "fp32":
            return self.fp32_flops_per_s
        raise ValueError(f"dtype: expected 'bf16', 'fp16' or 'fp32', got {dtype!r}")


# The vendors' published datasheet figures (NVIDIA A100 Tensor Core GPU datasheet, A100 80GB
# SXM: HBM2e 2,039 GB/s, BF16 tensor core 312 TFLOPS dense (624 with sparsity), FP32 19.5
# TFLOPS; NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: HBM3 3.35 TB/s, BF16 tensor core
# 1,979 TFLOPS with sparsity = 989 dense, FP32 67 TFLOPS; NVIDIA H200 Tensor Core GPU
# datasheet, H200 SXM: HBM3e 4.8 TB/s, BF16 989 dense (1,979 with sparsity), FP32 67 TFLOPS).
# These are peaks: real kernels reach less, so modeled times are lower bounds.
GPUS: dict[str, GPUSpec] = {
    "A100-80GB-SXM": GPUSpec("A100-80GB-SXM", 2.039e12, 312e12, 19.5e12),
    "H100-SXM": GPUSpec("H100-SXM", 3.35e12, 989e12, 67e12),
    "H200": GPUSpec("H200", 4.8e12, 989e12, 67e12),
}

# Assumptions, not datasheet figures and not measured here: the host-side cost of one eager
# PyTorch kernel launch (dispatch + cudaLaunchKernel, a few µs) and of one host sync (a
# device→host round trip that drains the stream, ~10 µs on an idle stream). Order of
# magnitude only; they price the reference's thousands of launches and syncs.
ASSUMED_LAUNCH_S = 5e-6
ASSUMED_SYNC_S = 10e-6


def roofline_seconds(bytes_moved: float, flops: float, gpu: GPUSpec, dtype: str = "bf16") -> float:
    """Modeled time of one op: ``max(bytes / HBM bandwidth, FLOPs / peak(dtype))``, seconds."""
    if bytes_moved < 0 or flops < 0:
        raise ValueError(f"bytes_moved and flops must be >= 0, got {bytes_moved}, {flops}")
    return max(bytes_moved / gpu.hbm_bytes_per_s, flops / gpu.peak_flops(dtype))


def overhead_seconds(
    launches: int, syncs: int, launch_s: float = ASSUMED_LAUNCH_S, sync_s: float = ASSUMED_SYNC_S
) -> float:
    """A floor from the host side: ``launches · launch_s + syncs · sync_s`` seconds (assumed
    per-event latencies; a CUDA graph removes the launch term)."""
    return launches * launch_s + syncs * sync_s


def register_limited_occupancy(
    registers: int, warps_per_block: int, *, registers_per_sm: int = 65536, max_warps: int = 64, max_blocks: int = 32
) -> float:
    """Theoretical occupancy (resident warps / ``max_warps``) that ``registers`` per thread
    allow on sm_80 / sm_90 (64 K 32-bit registers and 64 warps per SM; registers allocated
    per warp in units of 256, i.e. per thread in multiples of 8). Shared memory not limiting."""
    per_warp = math.ceil(registers * 32 / 256) * 256
    blocks = min(max_blocks, registers_per_sm // (per_warp * warps_per_block)) if per_warp else max_blocks
    return min(max_warps, blocks * warps_per_block) / max_warps


# ----------------------------------------------------------------------------------------
# Formulas: bytes and FLOPs
# ----------------------------------------------------------------------------------------

INDEX_BYTES_PER_ROW = 4 + 8  # gather_rows reads an int32 table index and an int64 row index


def phi_bytes(mask_bytes: int, num_masks: int, num_tokens: int) -> int:
    """Bytes of Φ_α read-once: the stored masks (``N·H·W`` bool, or ``N·⌈H·W/8⌉`` bit-packed)
    read once and the ``(M, V)`` bool bitmaps written once. The Triton kernel's design traffic
    and the minimum of any implementation."""
    return mask_bytes + num_masks * num_tokens


def gather_bytes(rows: int, width: int, element_size: int) -> int:
    """Bytes of ``gather_rows`` for ``rows`` output rows of ``width`` elements: each source row
    read once per use and each output row written once, plus the two index entries per row."""
    return 2 * rows * width * element_size + rows * INDEX_BYTES_PER_ROW


def token_plan_bytes(num_masks: int, num_tokens: int, batch: int, rows: int) -> int:
    """Design bytes of the CUDA token plan (``kernels/token_plan.py``): the plan kernel reads
    the ``M × V`` bitmaps and writes state, count and offset per mask (17 B) and one length per
    image; the placement fills the ``R``-row index buffers (table 4 B, row 8 B, code 8 B), reads
    the bitmaps and per-mask fields again and writes the same 20 B for every placed row."""
    per_row = 4 + 8 + 8
    return 2 * num_masks * num_tokens + 2 * 17 * num_masks + 8 * batch + 2 * per_row * rows


def mean_bytes(batch: int, num_tokens: int, width: int, element_size: int) -> int:
    """Bytes of the global rows (``global_view="mean"``): ``(B, V, F)`` read, ``(B, F)`` written."""
    return (batch * num_tokens + batch) * width * element_size


def og_tokens_min_bytes(mask_bytes: int, features_bytes: int, tokens: int, width: int, element_size: int) -> int:
    """The least traffic of ``og_tokens``: masks read once, features read once, the ``T × F``
    output written once."""
    return mask_bytes + features_bytes + tokens * width * element_size


def projector_flops(rows: int, in_dim: int, out_dim: int) -> int:
    """FLOPs of ``mlp2x_gelu`` (``Linear(F→D)``, GELU, ``Linear(D→D)``) on ``rows`` rows:
    ``2·rows·(F·D + D·D)`` (GELU and biases not counted)."""
    return 2 * rows * (in_dim * out_dim + out_dim * out_dim)


def projector_bytes(rows: int, in_dim: int, out_dim: int, element_size: int) -> int:
    """Bytes of an eager ``mlp2x_gelu`` on ``rows`` rows: weights and biases read once; ``X``
    read, ``H`` written, ``H`` read and ``GELU(H)`` written, ``GELU(H)`` read and ``Y`` written
    (``rows·(F + 5·D)`` elements)."""
    weights = in_dim * out_dim + out_dim * out_dim + 2 * out_dim
    activations = rows * (in_dim + 5 * out_dim)
    return (weights + activations) * element_size


def projector_rows_reference(batch: int, max_length: int) -> int:
    """Rows the reference projects: the whole padded ``(B, L_max)`` block, pad rows included."""
    return batch * max_length


# ----------------------------------------------------------------------------------------
# Counted traffic
# ----------------------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches to read all of ``t``: broadcast (stride-0) dimensions count once."""
    elements = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            elements *= size
    return elements * t.element_size() if t.numel() else 0


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in tree_flatten(tree)[0] if isinstance(x, torch.Tensor)]


def _row_bytes(t: torch.Tensor, dim: int) -> int:
    """Bytes of one slice of ``t`` along ``dim``."""
    return t.numel() // max(t.shape[dim], 1) * t.element_size() if t.dim() else t.element_size()


_GATHERS = {aten.index_select, aten.index, aten.gather, aten.embedding, aten.take}
_NO_TRAFFIC = {aten.empty, aten.empty_like, aten.empty_strided, aten.new_empty, aten.new_empty_strided}
_WRITE_ONLY = {aten.fill_, aten.zero_}


def op_traffic(func, args: tuple, kwargs: dict, out) -> tuple[int, int]:
    """``(bytes read, bytes written)`` charged to one aten op.

    Rules: views and allocations move nothing; gathers (``index_select``, ``index``,
    ``gather``, …) read the rows they return plus their indices, not the whole table;
    indexed writes (``index_copy_``, ``index_put_``, ``scatter_``, ``index_add_``,
    ``index_fill_``) touch only the indexed rows (accumulating ones read them too);
    ``copy_`` and ``fill_`` do not read their destination; every other op reads each tensor
    input once (broadcast dimensions once) and writes each output once.
    """
    packet = func.overloadpacket
    if func.is_view or packet in _NO_TRAFFIC:
        return 0, 0
    kwargs = kwargs or {}
    outputs = _tensors(out)
    written = sum(tensor_bytes(t) for t in outputs)
    if packet in _WRITE_ONLY:
        return 0, written
    if packet is aten.copy_:
        return tensor_bytes(args[1]), tensor_bytes(args[0])
    if packet in _GATHERS:
        indices = [t for t in _tensors(args[1:])]
        return written + sum(tensor_bytes(t) for t in indices), written
    if packet in (aten.index_copy_, aten.index_copy, aten.index_add_, aten.index_add):
        _, dim, index, source = args[:4]
        moved = tensor_bytes(source)
        accumulate = packet in (aten.index_add_, aten.index_add)
        return moved * (2 if accumulate else 1) + tensor_bytes(index), moved
    if packet is aten.index_fill_:
        self, dim, index = args[:3]
        return tensor_bytes(index), index.numel() * _row_bytes(self, dim)
    if packet in (aten.index_put_, aten.index_put, aten._index_put_impl_):
        self, indices, values = args[:3]
        accumulate = bool(args[3]) if len(args) > 3 else bool(kwargs.get("accumulate", False))
        index_tensors = [i for i in indices if i is not None]
        if index_tensors and index_tensors[0].dtype == torch.bool:
            rows = int(index_tensors[0].sum())
            row_bytes = self.numel() // max(index_tensors[0].numel(), 1) * self.element_size()
        else:
            rows = index_tensors[0].numel() if index_tensors else 0
            row_bytes = _row_bytes(self, 0)
        moved = rows * row_bytes
        read = sum(tensor_bytes(i) for i in index_tensors) + min(tensor_bytes(values), moved)
        return read + (moved if accumulate else 0), moved
    if packet in (aten.scatter_, aten.scatter, aten.scatter_add_, aten.scatter_add, aten.scatter_reduce_):
        self, dim, index = args[:3]
        moved = index.numel() * self.element_size()
        source = args[3] if len(args) > 3 and isinstance(args[3], torch.Tensor) else None
        read = tensor_bytes(index) + (min(tensor_bytes(source), moved) if source is not None else 0)
        accumulate = packet not in (aten.scatter_, aten.scatter)
        return read + (moved if accumulate else 0), moved
    out_kw = kwargs.get("out")
    skip = {id(t) for t in _tensors(out_kw)} if out_kw is not None else set()
    read = sum(tensor_bytes(t) for t in _tensors((args, kwargs)) if id(t) not in skip)
    return read, written


def _call_site() -> str:
    """``path:line`` of the innermost ogkernels frame calling into torch (``?`` if none)."""
    package = os.path.dirname(os.path.abspath(__file__))
    for frame in reversed(traceback.extract_stack()):
        if frame.filename.startswith(package) and not frame.filename.endswith("costmodel.py"):
            return f"{os.path.relpath(frame.filename, package)}:{frame.lineno}"
    return "?"


class TrafficCounter(HostSyncCounter):
    """:class:`HostSyncCounter` that also adds up each aten op's traffic (:func:`op_traffic`):
    ``bytes_read``, ``bytes_written`` and their sum ``bytes``. Triton launches are counted
    (``triton_launches``) but their traffic is not (kernels take raw pointers): price them with
    the formulas of this module.

    ``host_uploads`` counts, by ogkernels call site, the tensors made from host data
    (``torch.tensor(list)``, ``torch.from_numpy``: ``aten.lift_fresh``). With a CUDA target
    each is a host→device copy, and PyTorch makes a blocking one (``non_blocking=False``, the
    default of ``torch.tensor(..., device=)`` and ``.to``) with ``cudaMemcpyAsync`` +
    ``cudaStreamSynchronize``: a host sync that :class:`HostSyncCounter` does not see (on a
    CPU run the copy does not exist). Pinned, ``non_blocking=True`` copies do not sync."""

    def __init__(self):
        super().__init__()
        self.bytes_read = 0
        self.bytes_written = 0
        self.host_uploads: collections.Counter[str] = collections.Counter()

    @property
    def bytes(self) -> int:
        return self.bytes_read + self.bytes_written

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if self._inside_launch:  # the Triton interpreter's own work
            return out
        if func.overloadpacket is aten.lift_fresh:
            self.host_uploads[_call_site()] += 1
        read, written = op_traffic(func, args, kwargs or {}, out)
        self.bytes_read += read
        self.bytes_written += written
        return out


__all__ = [
    "ASSUMED_LAUNCH_S",
    "ASSUMED_SYNC_S",
    "GPUS",
    "GPUSpec",
    "TrafficCounter",
    "gather_bytes",
    "mean_bytes",
    "og_tokens_min_bytes",
    "op_traffic",
    "overhead_seconds",
    "phi_bytes",
    "projector_bytes",
    "projector_flops",
    "projector_rows_reference",
    "register_limited_occupancy",
    "roofline_seconds",
    "tensor_bytes",
    "token_plan_bytes",
]
