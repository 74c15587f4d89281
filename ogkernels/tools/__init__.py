"""Tooling around the core: token budgets and their CLI, the GPU cost model, host-sync
profiling, the static kernel audit and synthetic SAM 2-like masks.

Nothing in the core (``ops/``, ``kernels/``, the public API) imports this package.
"""
