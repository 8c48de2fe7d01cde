"""Read the SPECIALIST Lexicon's `LRABR` (abbreviations and acronyms with their expansions).

Each line is `EUI|abbreviation|type|EUI|expansion|` where type is `acronym` or `abbreviation`.
The graph attaches an abbreviation to every term whose normalised text equals the expansion.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from kept.errors import InputFileError, require_file
from kept.io import input_error, open_text

LRABR_TYPES = frozenset({"acronym", "abbreviation"})
_N_FIELDS = 6  # five columns and the trailing pipe


@dataclass(frozen=True)
class Abbreviation:
    abbreviation: str
    type: str  # acronym | abbreviation
    expansion: str
    abbreviation_eui: str
    expansion_eui: str


def iter_lrabr(path: str | Path) -> Iterator[Abbreviation]:
    """Yield LRABR entries in file order; a malformed line raises with its line number."""
    path = require_file(path, "SPECIALIST Lexicon LRABR (EUI|abbreviation|type|EUI|expansion|)")
    with input_error(path, "SPECIALIST LRABR, UTF-8 text"), open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line:
                continue
            f = line.split("|")
            if len(f) != _N_FIELDS or f[-1]:
                raise InputFileError(
                    path, f"malformed LRABR row: expected 5 pipe-separated columns and a trailing "
                    f"pipe, found {len(f) - 1} separators", line=lineno)
            eui, abbr, kind, exp_eui, expansion = f[:5]
            if kind not in LRABR_TYPES:
                raise InputFileError(
                    path, f"malformed LRABR row: type {kind!r} is not one of {sorted(LRABR_TYPES)}",
                    line=lineno)
            if not abbr.strip() or not expansion.strip():
                raise InputFileError(path, "malformed LRABR row: empty abbreviation or expansion",
                                     line=lineno)
            yield Abbreviation(abbr.strip(), kind, expansion.strip(), eui, exp_eui)
