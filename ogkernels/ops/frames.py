"""Frames of ``mode="patch"``: which pixel window of a mask the token grid covers."""

from __future__ import annotations

FRAMES = ("none", "pad", "crop")


def frame_window(height: int, width: int, frame: str) -> tuple[int, int, int, int]:
    """The window ``(top, left, window_height, window_width)`` in mask pixel coordinates.

    ``"none"``: the mask itself. ``"pad"``: LLaVA's ``expand2square`` — the mask centred in a
    ``max(H, W)`` square (the window reaches outside the mask, where pixels count as 0).
    ``"crop"``: the centred ``min(H, W)`` square that a shortest-edge resize + centre crop
    keeps (to within one pixel of the resampled image).
    """
    if frame == "none":
        return 0, 0, height, width
    if frame == "pad":
        side = max(height, width)
        return -((side - height) // 2), -((side - width) // 2), side, side
    if frame == "crop":
        side = min(height, width)
        return (height - side) // 2, (width - side) // 2, side, side
    raise ValueError(f"frame: expected one of 'none', 'pad', 'crop', got {frame!r}")
