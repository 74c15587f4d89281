"""Argument checks shared by the public API.

Every check raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad type or dtype)
with a message that names the argument, what was expected and what was received.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    return f"{value!r} ({type(value).__name__})"


def fail(argument: str, expected: str, received: Any, *, error: type[Exception] = ValueError):
    """Raise ``error`` naming ``argument``, what was ``expected`` and what was ``received``."""
    got = received if isinstance(received, str) else describe(received)
    raise error(f"{argument}: expected {expected}, got {got}")


def check_tensor(argument: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        fail(argument, "a torch.Tensor", value, error=TypeError)
    return value


def check_ndim(argument: str, value: torch.Tensor, ndims: Iterable[int], layout: str) -> None:
    ndims = tuple(ndims)
    if value.dim() not in ndims:
        fail(argument, f"a {layout} tensor", value)


def check_dtype(argument: str, value: torch.Tensor, dtypes: Iterable[torch.dtype]) -> None:
    dtypes = tuple(dtypes)
    if value.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        fail(argument, f"dtype in ({names})", value, error=TypeError)


def check_device(argument: str, value: torch.Tensor, device: torch.device, what: str) -> None:
    if value.device != device:
        fail(argument, f"a tensor on {device} (the device of {what})", value)


def check_choice(argument: str, value: Any, choices: Iterable[str]) -> str:
    choices = tuple(choices)
    if value not in choices:
        fail(argument, "one of " + ", ".join(repr(c) for c in choices), value)
    return value


def check_positive_int(argument: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(argument, "a positive int", value, error=TypeError)
    if value < 1:
        fail(argument, "an int >= 1", value)
    return value
