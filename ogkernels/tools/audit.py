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
    """One compile of one kernel: the launch its launcher builds for a benchmark shape (on
    the meta device: no data, no GPU), and whether its hot loop must move 128-bit rows."""

    name: str
    build: Callable[[], object]  # () -> ogkernels.ops.launch.Launch
    expect_128bit: bool = False


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


META = "meta"


def _phi_config(name: str, packed: bool, height: int, width: int, grid: tuple[int, int], mode: str) -> KernelConfig:
    def build():
        import torch

        from ..ops.phi import MaskImage, phi_launch

        if packed:
            data = torch.empty(30, -(-height * width // 8), dtype=torch.uint8, device=META)
        else:
            data = torch.empty(30, height, width, dtype=torch.bool, device=META)
        image = MaskImage(data, 30, height, width, packed)
        return phi_launch([image] * 8, grid, 0.5, mode, "none", [])[0]

    return KernelConfig(name, build)


def _gather_config(name: str, dtype: str, width: int, tables: int, rows: int = 4608) -> KernelConfig:
    def build():
        import torch

        from ..ops.gather_rows import gather_launch

        t = getattr(torch, dtype)
        sources = [torch.empty(rows, width, dtype=t, device=META)] * tables
        out = torch.empty(rows, width, dtype=t, device=META)
        index = torch.empty(rows, dtype=torch.int32, device=META)
        return gather_launch(out, sources, index, index.to(torch.int64))

    return KernelConfig(name, build, expect_128bit=True)


def _segment_config(name: str, dtype: str, width: int, rows: int = 4608) -> KernelConfig:
    def build():
        import torch

        from ..ops.gather_rows import segment_sum_launch

        t = getattr(torch, dtype)
        grads = torch.empty(rows, width, dtype=t, device=META)
        order = torch.empty(rows, dtype=torch.int64, device=META)
        return segment_sum_launch(grads, grads, order, order)

    return KernelConfig(name, build, expect_128bit=True)


def _plan_configs(num_tokens: int, batch: int = 8, masks: int = 240) -> list[KernelConfig]:
    def tensors():
        import torch

        def new(n, dtype):
            return torch.empty(n, dtype=dtype, device=META)

        bitmaps = torch.empty(masks, num_tokens, dtype=torch.bool, device=META)
        return bitmaps, new, torch

    def plan():
        from ..ops.token_plan import Layout, token_plan_launch

        bitmaps, new, torch = tensors()
        i64 = torch.int64
        return token_plan_launch(bitmaps, new(batch + 1, i64), new(batch, torch.bool), new(masks, torch.int8),
                                 new(masks, i64), new(masks, i64), new(batch, i64), Layout())  # fmt: skip

    def place():
        from ..ops.place_tokens import place_tokens_launch

        bitmaps, new, torch = tensors()
        i64, rows = torch.int64, 4608
        return place_tokens_launch(bitmaps, new(masks, torch.int8), new(masks, i64), new(masks, i64),
                                   new(batch + 1, torch.int32), new(batch, torch.bool), new(rows, torch.int32),
                                   new(rows, i64), new(rows, i64), num_tokens, "mean", True, False)  # fmt: skip

    return [KernelConfig(f"token_plan V={num_tokens}", plan), KernelConfig(f"place_tokens V={num_tokens}", place)]


def kernel_configs() -> list[KernelConfig]:
    """The configurations the benchmarks run (LLaVA-1.5: V = 576, F = 1024, D = 4096; B = 8
    images of 480×640 with 30 masks each)."""
    return [
        _phi_config("phi flat 480x640 V=576", False, 480, 640, (1, 576), "flat"),
        _phi_config("phi flat packed 480x640 V=576", True, 480, 640, (1, 576), "flat"),
        _phi_config("phi patch 480x640 24x24", False, 480, 640, (24, 24), "patch"),
        _phi_config("phi patch packed 480x640 24x24", True, 480, 640, (24, 24), "patch"),
        _gather_config("gather_rows fp32 F=1024", "float32", 1024, 3),
        _gather_config("gather_rows bf16 F=1024", "bfloat16", 1024, 3),
        _gather_config("gather_rows bf16 D=4096", "bfloat16", 4096, 2),
        _segment_config("segment_sum fp32 F=1024", "float32", 1024),
        _segment_config("segment_sum bf16 D=4096", "bfloat16", 4096),
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
    run = config.build()
    signature, constexprs, aligned = run.signature()
    fn = run.kernel
    attrs = {(fn.arg_names.index(name),): [["tt.divisibility", 16]] for name in aligned}
    source = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": run.num_warps})


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
