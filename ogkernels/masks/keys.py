"""The image-key grammar of the mask store (writer, reader, importer and the mask job).

An image key is the image's path relative to the dataset root, as LLaVA's JSON files write
it (``coco/train2017/000000000009.jpg``):

* a ``str`` of 1 to :data:`MAX_KEY_BYTES` bytes in UTF-8 (no lone surrogates);
* parts separated by ``/``, each non-empty and neither ``.`` nor ``..`` — so no leading,
  trailing or doubled ``/``, no absolute path, no way out of the root;
* no NUL or other control character (U+0000–U+001F, U+007F), no backslash, and no Windows
  drive prefix (``C:``) in the first part.

A key that breaks the grammar is refused wherever it enters: :class:`MaskStoreWriter.add`
(``ValueError``), a shard index (:class:`MaskStoreError` naming the shard), a LLaVA JSON or
an image folder (:class:`MaskFileError` naming the file).
"""

from __future__ import annotations

import re

from .._validation import fail

MAX_KEY_BYTES = 4096
_CONTROL = re.compile(r"[\x00-\x1f\x7f\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")
_PART = r"(?!\.\.?(?:/|$))[^/\x00-\x1f\x7f\\]+"
_VALID_ASCII = re.compile(rf"(?![A-Za-z]:){_PART}(?:/{_PART})*")  # the whole grammar, for ASCII keys


def key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid image key, or ``None`` when it is."""
    if type(key) is str and key.isascii() and len(key) <= MAX_KEY_BYTES and _VALID_ASCII.fullmatch(key):
        return None  # the common case, in one regex
    if not isinstance(key, str):
        return f"a str, got {type(key).__name__}"
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        return "valid UTF-8 text (it holds a lone surrogate)"
    if not 1 <= size <= MAX_KEY_BYTES:
        return f"1 to {MAX_KEY_BYTES} bytes of UTF-8, got {size}"
    bad = _CONTROL.search(key)
    if bad is not None:
        return f"no NUL, control character or backslash, got {bad.group()!r} at position {bad.start()}"
    parts = key.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "a relative path of '/'-separated parts, none empty, '.' or '..'"
    if _DRIVE.match(key):
        return "a relative path (no drive prefix like 'C:')"
    return None


def check_key(key: object, argument: str = "key") -> str:
    """``key`` itself, or a ``TypeError``/``ValueError`` naming ``argument`` and the grammar."""
    problem = key_problem(key)
    if problem is not None:
        expected = "an image key (a relative '/'-separated path; see ogkernels.masks.keys)"
        fail(argument, f"{expected}: {problem}", repr(key), error=TypeError if not isinstance(key, str) else ValueError)
    return key
