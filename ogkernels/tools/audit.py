"""Static GPU audit: compile every Triton kernel ahead of time, without a GPU.

Each kernel is compiled with ``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` at the
configurations the launchers pick for the benchmark shapes; the bundled ``ptxas -v`` reports
registers, spill bytes and shared memory, and the PTX shows the width of the global loads
and stores (128-bit = ``.v4.b32`` / ``.v2.b64``). ``python -m ogkernels.tools.audit`` prints the
table; the tests fail on any spill or compile failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass, field
from typing import Callable

ARCHS = (80, 90)


@dataclass(frozen=True)
class KernelConfig:
    """One compile of one kernel: its signature, constexprs, and the arguments that the
    launcher's data makes 16-divisible (pointers 16-byte aligned, sizes multiples of 16)."""

    name: str
    kernel: Callable[[], object]  # returns the @triton.jit function (imported lazily)
    signature: dict[str, str]
    constexprs: dict[str, object]
    aligned: tuple[str, ...] = ()
    num_warps: int = 4
    expect_128bit: bool = False  # the hot loop must move rows with 128-bit accesses


@dataclass
class KernelAudit:
    name: str
    arch: int
    registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    shared_bytes: int
    load_bits: list[int] = field(default_factory=list)
    store_bits: list[int] = field(default_factory=list)

    @property
    def max_load_bits(self) -> int:
        return max(self.load_bits, default=0)

    @property
    def max_store_bits(self) -> int:
        return max(self.store_bits, default=0)


def _phi_kernel():
    from ..kernels.downsample import phi_bins_kernel

    return phi_bins_kernel


def _gather_kernel():
    from ..kernels.gather_rows import gather_rows_kernel

    return gather_rows_kernel


def _segment_kernel():
    from ..kernels.gather_rows import segment_sum_kernel

    return segment_sum_kernel


def _phi_config(name: str, packed: bool, bin_pixels: int, grid_w: int) -> KernelConfig:
    from ..ops.downsample import _tile_sizes

    block_c, block_w = _tile_sizes(bin_pixels, grid_w, packed)
    return KernelConfig(
        name,
        _phi_kernel,
        {
            "image_params_ptr": "*i64",
            "mask_image_ptr": "*i32",
            "mask_local_ptr": "*i32",
            "out_ptr": "*u8",
            "GH": "i32",
            "GW": "i32",
            "PACKED": "constexpr",
            "BLOCK_C": "constexpr",
            "BLOCK_W": "constexpr",
        },
        {"PACKED": packed, "BLOCK_C": block_c, "BLOCK_W": block_w},
        aligned=("image_params_ptr", "mask_image_ptr", "mask_local_ptr", "out_ptr"),
    )


def _gather_config(name: str, dtype: str, element_size: int, width: int, tables: int) -> KernelConfig:
    from ..ops.gather_rows import _block_cols

    block_c = _block_cols(width, element_size)
    signature = {"out_ptr": f"*{dtype}", "table_index_ptr": "*i32", "row_index_ptr": "*i64"}
    signature.update({f"table{k}_ptr": f"*{dtype}" for k in range(4)})
    signature.update(
        {"num_rows": "i32", "num_cols": "i32", "NUM_TABLES": "constexpr", "BLOCK_R": "constexpr", "BLOCK_C": "constexpr"}
    )
    aligned = ("out_ptr", "table_index_ptr", "row_index_ptr", "num_cols") + tuple(
        f"table{k}_ptr" for k in range(4)
    )
    return KernelConfig(
        name,
        _gather_kernel,
        signature,
        {"NUM_TABLES": tables, "BLOCK_R": max(1, 4096 // block_c), "BLOCK_C": block_c},
        aligned,
        expect_128bit=True,
    )


def _segment_config(name: str, dtype: str, element_size: int, width: int) -> KernelConfig:
    from ..ops.gather_rows import _block_cols

    return KernelConfig(
        name,
        _segment_kernel,
        {
            "grad_tables_ptr": f"*{dtype}",
            "grad_out_ptr": f"*{dtype}",
            "order_ptr": "*i64",
            "row_ptr_ptr": "*i64",
            "num_cols": "i32",
            "ACC_FP64": "constexpr",
            "BLOCK_C": "constexpr",
        },
        {"ACC_FP64": dtype == "fp64", "BLOCK_C": _block_cols(width, element_size)},
        ("grad_tables_ptr", "grad_out_ptr", "order_ptr", "row_ptr_ptr", "num_cols"),
        expect_128bit=True,
    )


def _token_plan_kernel():
    from ..kernels.token_plan import token_plan_kernel

    return token_plan_kernel


def _place_tokens_kernel():
    from ..kernels.token_plan import place_tokens_kernel

    return place_tokens_kernel


def _plan_configs(num_tokens: int) -> list[KernelConfig]:
    block = min(1024, 1 << (num_tokens - 1).bit_length())
    plan = KernelConfig(
        f"token_plan V={num_tokens}",
        _token_plan_kernel,
        {
            "bitmaps_ptr": "*u8", "mask_start_ptr": "*i64", "state_ptr": "*i8", "token_counts_ptr": "*i64",
            "offsets_ptr": "*i64", "lengths_ptr": "*i64", "num_tokens": "i32", "global_rows": "i32",
            "max_masks": "i64", "BOM": "constexpr", "AVERAGING": "constexpr", "BLOCK_V": "constexpr",
        },
        {"BOM": 1, "AVERAGING": False, "BLOCK_V": block},
        ("bitmaps_ptr", "mask_start_ptr", "state_ptr", "token_counts_ptr", "offsets_ptr", "lengths_ptr"),
    )  # fmt: skip
    place = KernelConfig(
        f"place_tokens V={num_tokens}",
        _place_tokens_kernel,
        {
            "bitmaps_ptr": "*u8", "state_ptr": "*i8", "mask_image_ptr": "*i64", "offsets_ptr": "*i64",
            "cu_seqlens_ptr": "*i32", "table_ptr": "*i32", "row_ptr": "*i64", "source_ptr": "*i64",
            "num_masks": "i32", "num_tokens": "i32", "buffer_rows": "i32", "GLOBAL_VIEW": "constexpr",
            "BOM": "constexpr", "AVERAGING": "constexpr", "BLOCK_V": "constexpr",
        },
        {"GLOBAL_VIEW": 1, "BOM": 1, "AVERAGING": False, "BLOCK_V": block},
        ("bitmaps_ptr", "state_ptr", "mask_image_ptr", "offsets_ptr", "cu_seqlens_ptr", "table_ptr", "row_ptr", "source_ptr"),
    )  # fmt: skip
    return [plan, place]


def kernel_configs() -> list[KernelConfig]:
    """The configurations the benchmarks run (LLaVA-1.5: V = 576, F = 1024, D = 4096)."""
    return [
        _phi_config("phi flat 480x640 V=576", False, 534, 576),
        _phi_config("phi flat packed 480x640 V=576", True, 534, 576),
        _phi_config("phi patch 480x640 24x24", False, 28, 24),
        _phi_config("phi patch packed 480x640 24x24", True, 28, 24),
        _gather_config("gather_rows fp32 F=1024", "fp32", 4, 1024, 3),
        _gather_config("gather_rows bf16 F=1024", "bf16", 2, 1024, 3),
        _gather_config("gather_rows bf16 D=4096", "bf16", 2, 4096, 2),
        _segment_config("segment_sum fp32 F=1024", "fp32", 4, 1024),
        _segment_config("segment_sum bf16 D=4096", "bf16", 2, 4096),
        *_plan_configs(576),
        *_plan_configs(729),
    ]


def _tool(name: str) -> str:
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


_PTXAS_LINE = re.compile(
    r"(\d+) bytes spill stores, (\d+) bytes spill loads|Used (\d+) registers|(\d+) bytes smem"
)
_ACCESS = re.compile(r"\b(ld|st)\.global(?:\.[a-z]+)*?(?:\.v(\d))?\.(b|u|s|f)(\d+)\b")


def access_bits(ptx: str) -> tuple[list[int], list[int]]:
    """Widths in bits of the global loads and stores found in ``ptx``."""
    loads, stores = set(), set()
    for op, vec, _, bits in _ACCESS.findall(ptx):
        width = int(vec or 1) * int(bits)
        (loads if op == "ld" else stores).add(width)
    return sorted(loads), sorted(stores)


def _ptx_target(ptx: str) -> str:
    """The ``.target`` of the PTX (``sm_90a`` for Hopper: Triton uses its accelerated ISA)."""
    match = re.search(r"^\.target\s+(\w+)", ptx, re.MULTILINE)
    return match.group(1) if match else "sm_80"


def compile_config(config: KernelConfig, arch: int):
    """``triton.compile`` one configuration for ``sm_<arch>``; returns the compiled kernel."""
    import triton
    from triton.backends.compiler import GPUTarget

    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        raise RuntimeError(
            "TRITON_INTERPRET=1: kernels are interpreted and cannot be compiled ahead of time; "
            "run the audit in a process without it (python -m ogkernels.tools.audit)"
        )
    fn = config.kernel()
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in config.aligned}
    source = triton.compiler.ASTSource(fn=fn, signature=config.signature, constexprs=config.constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": config.num_warps})


def audit_config(config: KernelConfig, arch: int) -> KernelAudit:
    compiled = compile_config(config, arch)
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as handle:
            handle.write(ptx)
        result = subprocess.run(
            [_tool("ptxas"), f"-arch={_ptx_target(ptx)}", "-v", path, "-o", os.path.join(tmp, "kernel.cubin")],
            capture_output=True,
            text=True,
            check=True,
        )
    registers = spill_st = spill_ld = smem = 0
    for match in _PTXAS_LINE.finditer(result.stderr + result.stdout):
        if match.group(1):
            spill_st, spill_ld = int(match.group(1)), int(match.group(2))
        elif match.group(3):
            registers = int(match.group(3))
        elif match.group(4):
            smem = int(match.group(4))
    shared = max(smem, int(compiled.metadata.shared))
    loads, stores = access_bits(ptx)
    return KernelAudit(config.name, arch, registers, spill_st, spill_ld, shared, loads, stores)


def audit_all(archs: tuple[int, ...] = ARCHS) -> list[KernelAudit]:
    return [audit_config(config, arch) for config in kernel_configs() for arch in archs]


def format_table(audits: list[KernelAudit]) -> str:
    header = f"{'kernel':34} {'arch':>5} {'regs':>5} {'spill B':>8} {'smem B':>7} {'ld bits':>9} {'st bits':>9}"
    lines = [header, "-" * len(header)]
    for a in audits:
        lines.append(
            f"{a.name:34} {'sm_' + str(a.arch):>5} {a.registers:5d} {a.spill_store_bytes + a.spill_load_bytes:8d} "
            f"{a.shared_bytes:7d} {a.max_load_bits:9d} {a.max_store_bits:9d}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m ogkernels.tools.audit [--json]``: the audit table (or JSON records)."""
    import argparse
    import dataclasses
    import json

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON list of records")
    args = parser.parse_args(argv)
    audits = audit_all()
    if args.json:
        print(json.dumps([dataclasses.asdict(a) for a in audits]))
    else:
        print(format_table(audits))


if __name__ == "__main__":
    main()
