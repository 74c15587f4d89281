"""Machine-independent cost counters: host syncs and device operations.

``HostSyncCounter`` is a ``TorchDispatchMode`` that counts, while active, the operations that
make the host wait for the device on a GPU: reading values back (``item``, ``bool(t)``,
``tolist``, ``numpy``), shapes that depend on data (``nonzero``, boolean indexing,
``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``) and
device→host copies. On a CPU run it counts the same call sites, so the figure is the number of
syncs the code would make on CUDA, whatever the machine (an upper bound: a host read of a
tensor that already lives on the host is counted too). It also counts the aten operations
that run (≈ kernel launches on a GPU, views excluded) and the Triton kernel launches; the
tensor work the Triton interpreter does inside a launch is not counted.
"""

from __future__ import annotations

import collections

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

_SYNC_OPS = {
    aten._local_scalar_dense,
    aten.nonzero,
    aten.nonzero_static,
    aten.masked_select,
    aten._unique2,
    aten.unique_consecutive,
    aten.unique_dim,
}
_VIEW_TAGS = (torch.Tag.view_copy,) if hasattr(torch.Tag, "view_copy") else ()


def _is_bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in (indices or ()) if i is not None)


def _triton_launchers() -> list[type]:
    """The classes whose ``run`` launches a Triton kernel (compiled, and interpreted)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except Exception:  # pragma: no cover - triton missing
        return []
    return [JITFunction, InterpretedFunction]


def _counting(original, counter: "HostSyncCounter"):
    def run(fn, *args, **kwargs):
        counter.triton_launches += 1
        counter._inside_launch += 1  # the interpreter's own tensor work is not device work
        try:
            return original(fn, *args, **kwargs)
        finally:
            counter._inside_launch -= 1

    return run


class HostSyncCounter(TorchDispatchMode):
    """Count host syncs (``syncs``, with ``sync_ops`` by name), device operations (``ops``)
    and Triton launches (``triton_launches``) of the code run inside ``with``."""

    def __init__(self):
        super().__init__()
        self.sync_ops: collections.Counter[str] = collections.Counter()
        self.ops = 0
        self.triton_launches = 0
        self._inside_launch = 0
        self._patched: list[tuple[object, str, object]] = []

    @property
    def syncs(self) -> int:
        return sum(self.sync_ops.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._inside_launch:
            return func(*args, **kwargs)
        packet = func.overloadpacket
        name = packet.__name__
        if func in _SYNC_OPS or packet in _SYNC_OPS:
            self.sync_ops[name] += 1
        elif packet in (aten.index, aten.index_put, aten.index_put_, aten._index_put_impl_) and _is_bool_index(args):
            self.sync_ops[name + "[bool]"] += 1
        elif packet is aten.repeat_interleave and kwargs.get("output_size") is None and len(args) < 3:
            self.sync_ops[name] += 1
        elif packet in (aten._to_copy, aten.copy_):
            source = args[1] if packet is aten.copy_ else args[0]
            target = args[0].device if packet is aten.copy_ else kwargs.get("device", source.device)
            if isinstance(source, torch.Tensor) and source.device.type != "cpu" and torch.device(target).type == "cpu":
                self.sync_ops["device_to_host"] += 1
        if not func.is_view and not any(tag in func.tags for tag in _VIEW_TAGS):
            self.ops += 1
        return func(*args, **kwargs)

    def _patch(self, owner, attr, wrapper):
        self._patched.append((owner, attr, getattr(owner, attr)))
        setattr(owner, attr, wrapper)

    def __enter__(self):
        counter = self
        original_tolist, original_numpy = torch.Tensor.tolist, torch.Tensor.numpy

        def tolist(tensor, *args, **kwargs):
            if not counter._inside_launch:
                counter.sync_ops["tolist"] += 1
            return original_tolist(tensor, *args, **kwargs)

        def numpy(tensor, *args, **kwargs):
            if not counter._inside_launch:
                counter.sync_ops["numpy"] += 1
            return original_numpy(tensor, *args, **kwargs)

        self._patch(torch.Tensor, "tolist", tolist)
        self._patch(torch.Tensor, "numpy", numpy)
        for owner in _triton_launchers():
            self._patch(owner, "run", _counting(owner.run, counter))
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            while self._patched:
                owner, attr, value = self._patched.pop()
                setattr(owner, attr, value)
