"""The house rules that code can check: the fast path never imports the reference or the
tooling, and kernel modules hold only Triton kernels and their constants."""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import ogkernels

PACKAGE = pathlib.Path(ogkernels.__file__).parent

FAST_PATH = """
import sys, torch, ogkernels
from ogkernels.tools.synthetic import sam2_like_masks
fusion = ogkernels.OGFusion(8, 16)
masks = [torch.rand(3, 20, 30) > 0.5, torch.zeros(0, 10, 10, dtype=torch.bool)]
out = fusion(torch.randn(2, 4, 8), masks)
out.values.sum().backward()
ogkernels.og_tokens(torch.randn(2, 4, 8), masks, torch.randn(1, 8))
print(sorted(m for m in sys.modules if m.startswith(("ogkernels.reference", "ogkernels.tools.")) and m != "ogkernels.tools.synthetic"))
"""


def test_the_fast_path_imports_neither_the_reference_nor_the_tooling():
    done = subprocess.run([sys.executable, "-c", FAST_PATH], capture_output=True, text=True, timeout=120,
                          cwd=PACKAGE.parent)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_kernel_modules_hold_only_triton_kernels_and_constants():
    # (the package __init__ holds the interpreter compatibility hook, applied on import)
    for path in sorted(set((PACKAGE / "kernels").glob("*.py")) - {PACKAGE / "kernels" / "__init__.py"}):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                decorators = [ast.unparse(d) for d in node.decorator_list]
                assert any(d.startswith(("triton.jit", "jit")) for d in decorators), (path.name, node.name, decorators)
            else:
                assert isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.Expr, ast.If, ast.Try)), (
                    path.name, ast.unparse(node)[:80])
