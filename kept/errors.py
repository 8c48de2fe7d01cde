"""Errors a user can act on. The CLI prints them as one line; anything else is a bug."""

from __future__ import annotations

from pathlib import Path


class KeptError(Exception):
    """Base class for expected, user-facing failures."""


class InputFileError(KeptError):
    """A file is missing or malformed; names the file, the line, and what the file is."""

    def __init__(self, path: str | Path, message: str, line: int | None = None):
        self.path = str(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {message}")


def require_file(path: str | Path, what: str) -> Path:
    """Return `path` as a Path, or raise an error saying which file was expected there."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, f"file not found (expected {what})")
    return p
