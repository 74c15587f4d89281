"""Argument checks shared by the public API.

Every check raises ``ValueError`` (bad value or shape) or ``TypeError`` (bad type or dtype)
with a message that names the argument, what was expected and what was received.
"""

from __future__ import annotations

from typing import Any, Iterable, NoReturn

import torch


def describe(value: Any) -> str:
    """A short description of ``value`` for error messages."""
    if isinstance(value, torch.Tensor):
        return f"tensor of shape {tuple(value.shape)}, dtype {value.dtype}, device {value.device}"
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of length {len(value)}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):  # numpy and other array types
        return f"{type(value).__module__}.{type(value).__name__} of shape {tuple(value.shape)}, dtype {value.dtype}"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} module"
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def fail(argument: str, expected: str, received: Any, *, error: type[Exception] = ValueError) -> NoReturn:
    """Raise ``error`` naming ``argument``, what was ``expected`` and what was ``received``."""
    got = received if isinstance(received, str) else describe(received)
    raise error(f"{argument}: expected {expected}, got {got}")


def numpy_hint(value: Any) -> str:
    """``"; convert it with torch.from_numpy"`` for a numpy value, else ``""``."""
    return "; convert it with torch.from_numpy" if type(value).__module__ == "numpy" else ""


def check_tensor(argument: str, value: Any, expected: str = "a torch.Tensor") -> torch.Tensor:
    """``value`` is a tensor (``TypeError`` naming ``argument`` otherwise; numpy arrays get a
    hint)."""
    if not isinstance(value, torch.Tensor):
        fail(argument, expected + numpy_hint(value), value, error=TypeError)
    return value


def check_bool(argument: str, value: Any, *, optional: bool = False) -> bool | None:
    """A Python bool (``None`` too when ``optional``); ints, strings and numpy bools fail."""
    if optional and value is None:
        return None
    if not isinstance(value, bool):
        fail(argument, "a bool" + (" or None" if optional else ""), value, error=TypeError)
    return value


def check_finite(argument: str, value: torch.Tensor) -> None:
    """Every entry of a floating tensor is finite (one host read)."""
    if value.numel() and not bool(torch.isfinite(value).all()):
        fail(argument, "finite values (no NaN or inf)", describe(value) + " with non-finite values")


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


def check_int(argument: str, value: Any, minimum: int | None = None) -> int:
    """A Python int (bool refused: ``TypeError``), ``>= minimum`` when given (``ValueError``)."""
    if isinstance(value, bool) or not isinstance(value, int):
        fail(argument, "an int" if minimum is None else f"an int >= {minimum}", value, error=TypeError)
    if minimum is not None and value < minimum:
        fail(argument, f"an int >= {minimum}", value)
    return value


def check_positive_int(argument: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        fail(argument, "a positive int", value, error=TypeError)
    if value < 1:
        fail(argument, "an int >= 1", value)
    return value
