"""Errors raised by the data layer: a malformed dataset file, or one unreadable sample."""
from __future__ import annotations

from pathlib import Path


class BrodenFormatError(ValueError):
    """A Broden file is malformed; the message names the file (and line where known)."""

    def __init__(self, path, message: str, line: int | None = None):
        self.path, self.line = Path(path), line
        where = f"{path}" if line is None else f"{path}, line {line}"
        super().__init__(f"{where}: {message}")


class CorruptSampleError(BrodenFormatError):
    """One sample cannot be loaded (missing/unreadable image or label PNG, wrong size, too many
    pixels, unknown label id). Drivers catch this to count and skip the image; `.index` is the
    dataset index, `.reason` a short category for the counts ("missing", "unreadable", "wrong
    size", "too large", "unknown label")."""

    def __init__(self, path, message: str, index: int, line: int | None = None, reason: str = "unreadable"):
        self.index, self.reason = index, reason
        super().__init__(path, message, line)
