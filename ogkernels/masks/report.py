"""Per-image failures collected by the importer and the mask job."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MaskFailure:
    """One image that could not be processed.

    Attributes:
        key: the image key (path relative to the dataset root).
        path: the file at fault (image, mask ``.npy``, metadata JSON, shard).
        reason: what went wrong, including expected and received values where they apply.
    """

    key: str
    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: image {self.key!r}: {self.reason}"

    @classmethod
    def from_exception(cls, key: str, path: str, exc: BaseException) -> "MaskFailure":
        """From an exception; drops a leading ``"<path>: image '<key>': "`` the message may repeat."""
        message = str(exc) or type(exc).__name__
        for prefix in (f"{path}: image {key!r}: ", f"{path}: "):
            if message.startswith(prefix):
                message = message[len(prefix) :]
                break
        return cls(key, path, message)
