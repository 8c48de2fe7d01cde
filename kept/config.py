"""Typed configs from TOML: the one loader behind every `--config file.toml` (HSAP, the coder, data
preparation). Defaults come from the dataclass, then the file, then the flags; a key the dataclass
does not have is an error that names the file, never a silently ignored setting."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: its PyPI twin, same API
    import tomli as tomllib

from kept.errors import InputFileError

__all__ = ["tomllib", "read_toml", "load_config"]

T = TypeVar("T")


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict; a missing, unreadable or malformed file names itself (and the line)."""
    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "config file not found")
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputFileError(p, f"cannot read config: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:  # its message gives the line and column
        raise InputFileError(p, f"not valid TOML: {exc}") from None


def load_config(cls: type[T], path: str | Path | None = None, section: str | None = None,
                overrides: dict[str, Any] | None = None) -> T:
    """`cls` from its defaults, then a TOML file's keys (its `[section]` table when it has one, else
    its top level; `section=None`: the top level), then the non-None `overrides` (command-line flags).
    TOML arrays become tuples, the type config fields use for lists."""
    values: dict[str, Any] = {}
    if path:
        p = Path(path)
        data = read_toml(p)
        values = dict(data.get(section, data)) if section else data
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputFileError(p, f"unknown keys {unknown}; known: {sorted(names)}")
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
