"""``@triton.jit`` kernels (imported lazily by the launchers in ``ogkernels.ops``).

Importing this package under the Triton interpreter (``TRITON_INTERPRET=1``) also applies
:func:`_interpreter_scalar_index`, so loops over run-time bounds (``for i in range(start,
end)``) run there with every supported triton/numpy pair. Compiled kernels are untouched.
"""

from __future__ import annotations

import os


def _interpreter_scalar_index() -> None:
    """Let the Triton interpreter turn a scalar into a Python int under numpy >= 2.5.

    The interpreter holds every scalar as a 1-element array; triton < 3.7 converts it with
    ``int(array)``, which numpy 2.5 rejects for arrays that are not 0-dimensional
    (``TypeError: only 0-dimensional arrays can be converted to Python scalars`` at the first
    ``range`` over a loaded scalar or an int argument). triton >= 3.7 squeezes first; this
    installs the same conversion on the older interpreters (a no-op on the newer ones).
    """
    try:
        from triton.runtime import interpreter
    except Exception:  # pragma: no cover - triton missing: nothing to interpret
        return
    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None or getattr(original, "_ogkernels_index", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    patch_lang_tensor._ogkernels_index = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if os.environ.get("TRITON_INTERPRET", "0") == "1":
    _interpreter_scalar_index()
