"""Mask order: the reference loader's lexicographic file order vs SAM2's output order."""

from __future__ import annotations

from .._validation import check_choice

ORDER_CHOICES = ("lexicographic", "numeric")


def mask_file_name(index: int) -> str:
    """The reference's file name of SAM2 output mask ``index``: ``mask_<index>.npy``."""
    return f"mask_{index}.npy"


def reference_order(num_masks: int) -> list[int]:
    """SAM2 output indices in the order the reference loader reads them.

    The reference loads ``sorted(glob("mask_*.npy"))``: lexicographic file names, so
    ``mask_10`` comes before ``mask_2``. E.g. ``reference_order(12) ==
    [0, 1, 10, 11, 2, 3, 4, 5, 6, 7, 8, 9]``.
    """
    return sorted(range(num_masks), key=mask_file_name)


def order_permutation(num_masks: int, order: str) -> list[int]:
    """``reference_order`` for ``"lexicographic"``, the identity for ``"numeric"``."""
    check_choice("order", order, ORDER_CHOICES)
    return reference_order(num_masks) if order == "lexicographic" else list(range(num_masks))
